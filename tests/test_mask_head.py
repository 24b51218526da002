"""The mask-classification parts of latentseg_utils (MaskFormer's head on the series' latents):
instance maps, the head's shapes and semantic output, Hungarian matching against brute force,
the loss, instance inference, panoptic quality on hand-worked cases, and claims."""
import itertools
import math

import pytest
import torch

import latentseg_utils as u

OVERFIT_STEPS = 100     # enough: it reaches PQ 1.0 on the batch


def test_instance_maps_agree_with_the_class_maps():
    for variant in ("shapes", "crowded", "frame_key"):
        x, y, ids = u.make_split(variant, "validation", num_images=32, instances=True)
        x2, y2 = u.make_split(variant, "validation", num_images=32)
        assert torch.equal(x, x2) and torch.equal(y, y2)          # same data with or without
        assert torch.equal(ids > 0, y > 0)
        for b in range(32):
            for k in ids[b].unique().tolist():
                if k:
                    assert len(y[b][ids[b] == k].unique()) == 1   # one class per object
    images, labels, instances = u.variant_data("shapes", instances=True)(2, 32, seed=0)
    assert instances.shape == labels.shape == (2, 32, 32) and instances.dtype == torch.int64


def test_touching_objects_of_one_class_stay_separate_instances():
    _, y, ids = u.make_shapes_batch(256, 64, seed=5, max_objects=8, instances=True)
    more = sum(len(ids[b].unique()) - 1 > len((y[b] > 0).unique()) - 1 for b in range(256))
    assert more > 0   # images whose objects outnumber the classes present


def test_segments_of_lists_background_then_objects():
    labels = torch.tensor([[0, 1, 1], [0, 2, 2], [0, 0, 0]])
    instances = torch.tensor([[0, 3, 3], [0, 5, 5], [0, 0, 0]])
    classes, masks = u.segments_of(labels, instances)
    assert classes.tolist() == [0, 1, 2] and masks.shape == (3, 3, 3)
    assert masks[1].sum() == 2 and masks[0].sum() == 5


def test_matching_is_optimal_against_brute_force():
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        K, S = int(torch.randint(2, 6, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
        S = min(S, K)
        cost = torch.rand(K, S, generator=g)
        rows, cols = u.match_segments(cost)
        best = min(sum(cost[p[j], j] for j in range(S)) for p in itertools.permutations(range(K), S))
        assert len(set(rows.tolist())) == S and sorted(cols.tolist()) == list(range(S))
        assert float(cost[rows, cols].sum()) == pytest.approx(float(best))
    with pytest.raises(ValueError, match="more latents"):
        u.match_segments(torch.rand(2, 3))


def test_mask_head_shapes_semantic_output_and_loss_gradients():
    torch.manual_seed(0)
    model = u.MaskLatentSegNet(num_latents=8, feature_dim=32, num_heads=2, rounds=1)
    x, y, ids = u.make_shapes_batch(2, 32, seed=1, instances=True)
    classes, masks = model.predict_masks(x)
    assert classes.shape == (2, 8, 5) and masks.shape == (2, 8, 32, 32)
    scores = u.semantic_scores(classes, masks)
    expected = sum(classes.softmax(-1)[:, k, :4, None, None] * masks[:, k, None].sigmoid()
                   for k in range(8))
    assert torch.allclose(scores, expected, atol=1e-6)
    assert model(x).shape == (2, 4, 32, 32) and u.predict(model, x).shape == (2, 32, 32)
    loss = model.training_loss(x, y, ids)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.latents.grad.abs().sum() > 0 and model.stem[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="instance maps"):
        model.training_loss(x, y)


def test_mask_head_learns_with_train_and_saves():
    torch.manual_seed(0)
    model = u.MaskLatentSegNet(num_latents=8, feature_dim=32, num_heads=2, rounds=1)
    history = u.train(model, steps=12, batch_size=4, image_size=32, progress=False,
                      data=u.variant_data("shapes", instances=True))
    assert history["loss"][-1] < history["loss"][0]
    inst, cls = u.predict_instances(model, u.make_split("shapes", "test", 4, 32)[0])
    assert inst.shape == cls.shape == (4, 32, 32)
    assert torch.equal(inst > 0, cls > 0)


def test_panoptic_quality_on_hand_worked_cases():
    truth_ids = torch.zeros(1, 8, 8, dtype=torch.long)
    truth_ids[0, :4, :4], truth_ids[0, 4:, 4:] = 1, 2
    truth_cls = torch.where(truth_ids == 1, 1, torch.where(truth_ids == 2, 2, 0))
    perfect = u.panoptic_quality(truth_ids, truth_cls, truth_ids, truth_cls)
    assert perfect["pq"] == perfect["sq"] == perfect["rq"] == 1.0 and perfect["tp"] == 2
    # one object missed: class 2 has RQ 0, class 1 is perfect -> PQ 0.5
    missed_ids = torch.where(truth_ids == 2, 0, truth_ids)
    missed = u.panoptic_quality(missed_ids, torch.where(missed_ids > 0, truth_cls, 0),
                                truth_ids, truth_cls)
    assert missed["pq"] == pytest.approx(0.5) and missed["fn"] == 1 and missed["tp"] == 1
    # one false object of class 1 added: class 1 RQ = 1 / (1 + 0.5) -> PQ (2/3 + 1) / 2
    false_ids, false_cls = truth_ids.clone(), truth_cls.clone()
    false_ids[0, 6:, :2], false_cls[0, 6:, :2] = 3, 1
    false = u.panoptic_quality(false_ids, false_cls, truth_ids, truth_cls)
    assert false["pq"] == pytest.approx((2 / 3 + 1) / 2) and false["fp"] == 1
    # object 1 split into two halves (IoU 0.5 each, not above 0.5): 1 FN and 2 FP for class 1
    split_ids = truth_ids.clone()
    split_ids[0, :4, 2:4] = 4
    split = u.panoptic_quality(split_ids, truth_cls, truth_ids, truth_cls)
    assert split["fn"] == 1 and split["fp"] == 2 and split["pq"] == pytest.approx(0.5)


def test_claims_needs_one_present_latent_with_iou_at_least_half():
    instances = torch.zeros(1, 4, 4, dtype=torch.long)
    instances[0, :2, :2], instances[0, 2:, 2:] = 1, 2
    masks = torch.full((1, 3, 4, 4), -10.0)
    masks[0, 0, :2, :2] = 10       # latent 0 covers object 1
    masks[0, 1, 2:, 2:] = 10       # latents 1 and 2 both cover object 2
    masks[0, 2, 2:, 2:] = 10
    classes = torch.zeros(1, 3, 5)
    classes[..., 1] = 5.0          # all three latents say "circle", not "no object"
    assert u.claims(classes, masks, instances) == [{1: 0, 2: -2}]
    classes[0, 2, -1] = 20.0       # latent 2 now says "no object"
    assert u.claims(classes, masks, instances) == [{1: 0, 2: 1}]
    classes[0, 0, -1] = 20.0
    assert u.claims(classes, masks, instances) == [{1: -1, 2: 1}]



def test_claim_outcomes_sort_every_unclaimed_object():
    instances = torch.zeros(1, 6, 12, dtype=torch.long)
    instances[0, :2, :2], instances[0, :2, 2:4] = 1, 2      # two objects side by side
    instances[0, 2:4, :2], instances[0, 2:4, 6:8] = 3, 4
    instances[0, :4, 8:], instances[0, 4:, :5] = 5, 6
    masks = torch.full((1, 8, 6, 12), -10.0)
    masks[0, 0, :2, :4] = 10       # latent 0 holds objects 1 and 2 together: merged
    masks[0, 1:3, 2:4, :2] = 10    # latents 1 and 2 both claim object 3: several
    masks[0, 3, 2, 6] = 10         # latent 3 holds a quarter of object 4: missed
    masks[0, 4] = 0.0              # latent 4, background, owns what no one else wants
    masks[0, 5, :4, 8:10] = 10     # latents 5 and 6 hold a half of object 5 each: split
    masks[0, 6, :4, 10:] = 10
    masks[0, 7, 4:] = 10           # latent 7 holds object 6 and as much background: rough
    classes = torch.zeros(1, 8, 5)
    classes[..., 1] = 5.0          # "circle", not "no object"
    classes[0, 4, 0] = 10.0        # latent 4 says "background"
    outcomes = u.claim_outcomes(classes, masks, instances)
    assert outcomes == [{1: "merged", 2: "merged", 3: "several", 4: "missed", 5: "split",
                         6: "rough"}]
    assert set(outcomes[0].values()) | {"once"} == set(u.CLAIM_OUTCOMES)
    masks[0, 0, :2, 2:4] = -10     # latent 0 now holds object 1 alone: claimed once
    assert u.claim_outcomes(classes, masks, instances)[0][1] == "once"
    classes[0, 0, -1] = 20.0       # ... but it says "no object": now no shape latent has it
    assert u.claim_outcomes(classes, masks, instances)[0][1] == "missed"


def test_mutual_information_and_entropy_on_hand_worked_cases():
    a = torch.tensor([0, 0, 1, 1])
    assert u.entropy(a, 2) == pytest.approx(math.log(2))
    assert u.mutual_information(a, a, 2, 2) == pytest.approx(math.log(2))          # b tells all
    assert u.mutual_information(a, torch.tensor([0, 1, 0, 1]), 2, 2) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="paired samples"):
        u.mutual_information(a, a[:3], 2, 2)


def test_specialisation_separates_the_three_questions():
    classes = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    by_shape = u.specialisation(classes, classes.clone(), 4, 4)       # one owner per class
    assert by_shape == pytest.approx({"all classes": 1.0, "object or background": 1.0,
                                      "which shape": 1.0})
    fg_only = u.specialisation(classes, (classes > 0).long(), 4, 2)   # owner: object or not
    assert fg_only["object or background"] == pytest.approx(1.0)
    assert fg_only["which shape"] == pytest.approx(0.0)


def test_mask_owner_picks_the_present_latent_with_the_strongest_mask():
    classes = torch.tensor([[[0.0, 5.0, -5.0], [0.0, -5.0, 5.0]]])   # latent 1 is "no object"
    masks = torch.full((1, 2, 2, 2), -8.0)
    masks[0, 0, 0] = 3.0           # latent 0 claims the top row
    masks[0, 1] = 6.0              # latent 1 shouts everywhere but claims no object
    owner = u.mask_owner(classes, masks)
    assert owner[0, 0].tolist() == [0, 0]
    assert owner[0, 1].tolist() == [1, 1]  # nowhere strong: the absent latent's tiny share wins


def test_competing_latents_share_each_pixel_and_the_class_reads_the_mask():
    x, y, instances = u.make_shapes_batch(2, 32, seed=0, instances=True)
    torch.manual_seed(0)
    model = u.MaskLatentSegNet(num_latents=6, feature_dim=32, num_heads=2, rounds=1).eval()
    with torch.no_grad():
        classes, masks = model.predict_masks(x)
    assert torch.allclose(masks.sigmoid().sum(1), torch.ones(2, 32, 32), atol=1e-4)
    free = u.MaskLatentSegNet(num_latents=6, feature_dim=32, num_heads=2, rounds=1,
                              compete=False, pooled_class=False).eval()
    assert set(model.state_dict()) - set(free.state_dict()) == {"pool_proj.weight", "pool_proj.bias"}
    free.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("pool")})
    with torch.no_grad():
        free_classes, free_masks = free.predict_masks(x)
    assert free_masks.sigmoid().sum(1).max() > 1.5            # sigmoids: no competition
    assert not torch.allclose(classes, free_classes)         # the pooled features moved the class
    with torch.no_grad():
        model.pool_proj.weight.zero_(), model.pool_proj.bias.zero_()
        assert torch.allclose(model.predict_masks(x)[0], free_classes, atol=1e-5)
    model.train().training_loss(x, y, instances).backward()
    assert model.pool_proj.weight.grad.abs().sum() > 0


# ---- Mask2Former's panoptic inference -------------------------------------------------------

def _toy_outputs():
    """One 8x8 image, 4 latents over 4 classes (+ no object): 0 background (left half),
    1 a confident circle (top right), 2 a weaker circle that wants the same pixels plus two
    more, 3 a square whose class is 'no object'."""
    class_logits = torch.full((1, 4, 5), -10.0)
    class_logits[0, 0, 0] = 10.0          # background, score ~1
    class_logits[0, 1, 1] = 10.0          # circle, score ~1
    class_logits[0, 2, 1] = 0.0           # circle, score ~ e^0 / (e^0 + 4 e^-10): under 1
    class_logits[0, 2, 4] = 0.5           # ... and no object more likely: dropped by argmax
    class_logits[0, 3, 4] = 10.0          # no object
    masks = torch.full((1, 4, 8, 8), -10.0)
    masks[0, 0, :, :4] = 10.0
    masks[0, 1, :4, 4:] = 10.0
    masks[0, 2, :5, 4:] = 10.0
    masks[0, 3, 4:, 4:] = 10.0
    return class_logits, masks


def test_panoptic_inference_keeps_confident_objects_and_drops_the_rest():
    class_logits, masks = _toy_outputs()
    instances, classes = u.panoptic_inference(class_logits, masks, score_threshold=0.5,
                                              overlap_threshold=0.8, min_area=0)
    assert instances.shape == classes.shape == (1, 8, 8)
    assert set(instances.unique().tolist()) == {0, 1}          # one object; background is stuff
    assert bool((instances[0, :4, 4:] == 1).all()) and bool((classes[0, :4, 4:] == 1).all())
    assert int((instances > 0).sum()) == 16
    # a minimum area above the object's 16 pixels drops it
    instances, _ = u.panoptic_inference(class_logits, masks, 0.5, 0.8, min_area=17)
    assert int(instances.max()) == 0


def test_panoptic_inference_overlap_threshold_drops_a_segment_that_lost_its_mask():
    class_logits, masks = _toy_outputs()
    class_logits[0, 2, 4] = -10.0                              # latent 2 now a circle too
    class_logits[0, 2, 1] = 5.0                                # but less sure than latent 1
    kept, _ = u.panoptic_inference(class_logits, masks, 0.5, overlap_threshold=0.0, min_area=0)
    strict, _ = u.panoptic_inference(class_logits, masks, 0.5, overlap_threshold=0.8, min_area=0)
    assert int(kept.max()) == 2      # latent 2 keeps the 4 pixels latent 1 does not cover
    assert int(strict.max()) == 1    # 4 of its 20 pixels: under 0.8 of its mask, dropped


def test_panoptic_inference_rejects_bad_input():
    class_logits, masks = _toy_outputs()
    with pytest.raises(ValueError, match="predict_masks"):
        u.panoptic_inference(class_logits[0], masks)
    with pytest.raises(ValueError, match="score_threshold"):
        u.panoptic_inference(class_logits, masks, score_threshold=1.5)


def test_the_head_overfits_one_fixed_batch():
    """The overfit-one-batch check: trained on one fixed batch, the head must segment that batch
    almost perfectly (PQ near 1). A head that cannot is wrong, not slow."""
    images, labels, instances = u.make_shapes_batch(4, 32, seed=3, instances=True)
    model = u.MaskLatentSegNet(num_latents=8, feature_dim=32, num_heads=2)
    u.train(model, steps=OVERFIT_STEPS, batch_size=4, image_size=32, progress=False,
            data=lambda batch_size, image_size, seed=None: (images, labels, instances))
    scores = u.mask_head_scores(model, images, labels, instances)
    assert scores["pq"] >= 0.9 and scores["claimed_once"] == 1.0, scores


def test_training_options_keep_the_outputs_and_the_default_parameters():
    x, y, ids = u.make_shapes_batch(2, 32, seed=1, instances=True)
    small = dict(num_latents=6, feature_dim=32, num_heads=2, rounds=2)
    names = set(u.MaskLatentSegNet(**small).state_dict())
    for options in ({"coords": True}, {"semantic_weight": 0.5}, {"deep_supervision": True},
                    {"heatmap_queries": True}, {"pixel_positions": True},
                    {"query_positions": True}, {"competing_reads": True},
                    {"discriminative_weight": 0.5}, {"colours": True}):
        torch.manual_seed(0)
        model = u.MaskLatentSegNet(**small, **options)
        classes, masks = model.predict_masks(x)
        assert classes.shape == (2, 6, 5) and masks.shape == (2, 6, 32, 32)
        loss = model.training_loss(x, y, ids)
        loss.backward()
        assert torch.isfinite(loss)
        assert model.config[next(iter(options))] == next(iter(options.values()))
    # only the semantic loss adds parameters; the default head's are those of old checkpoints
    assert set(u.MaskLatentSegNet(**small, semantic_weight=0.5).state_dict()) - names == {
        "semantic_head.weight", "semantic_head.bias"}
    assert set(u.MaskLatentSegNet(**small, discriminative_weight=0.5).state_dict()) == names
    with pytest.raises(ValueError, match="semantic_weight=-1"):
        u.MaskLatentSegNet(semantic_weight=-1)



def test_discriminative_loss_pulls_objects_together_and_pushes_them_apart():
    first, second = torch.zeros(2, 4, dtype=torch.bool), torch.zeros(2, 4, dtype=torch.bool)
    first[:, :2], second[:, 2:] = True, True              # two objects side by side, 2x2 each
    segments = [(torch.tensor([1, 2]), torch.stack([first, second]))]
    apart = torch.zeros(1, 2, 2, 4)
    apart[0, 0, :, :2], apart[0, 0, :, 2:] = 0.0, 5.0    # each object one point, 5 apart
    assert float(u.discriminative_loss(apart, segments)) == pytest.approx(0.001 * 2.5, abs=1e-4)
    alike = torch.zeros(1, 2, 2, 4, requires_grad=True)  # both objects at one embedding
    loss = u.discriminative_loss(alike + 0.1, segments)
    assert loss.item() > 8.0                             # the push: (2 * 1.5 - 0) ** 2 = 9
    loss.backward()
    assert torch.isfinite(alike.grad).all()
    with pytest.raises(ValueError, match="discriminative_weight=-1"):
        u.MaskLatentSegNet(discriminative_weight=-1)
    x, y, ids = u.make_shapes_batch(2, 32, seed=1, instances=True)
    model = u.MaskLatentSegNet(num_latents=6, feature_dim=32, num_heads=2, discriminative_weight=1.0)
    model.training_loss(x, y, ids).backward()
    assert model.pixel_refine[0][0].weight.grad.abs().sum() > 0

def test_semantic_classes_read_the_semantic_head_inside_each_mask():
    """With semantic_classes a latent's class logits add the semantic head's logits averaged
    inside its mask: a semantic head that says "class 2" everywhere, loudly, makes every latent
    say class 2; without the option the same head changes no class logit."""
    x, y, ids = u.make_shapes_batch(2, 32, seed=1, instances=True)
    small = dict(num_latents=6, feature_dim=32, num_heads=2, rounds=2, semantic_weight=1.0)
    for reads in (False, True):
        torch.manual_seed(0)
        model = u.MaskLatentSegNet(**small, semantic_classes=reads).eval()
        before, _ = model.predict_masks(x)
        with torch.no_grad():
            model.semantic_head.weight.zero_()
            model.semantic_head.bias.copy_(torch.tensor([0.0, 0.0, 100.0, 0.0]))
        after, _ = model.predict_masks(x)
        if reads:
            assert (after.argmax(-1) == 2).all()
            assert torch.equal(after[..., -1], before[..., -1])         # "no object" untouched
        else:
            assert torch.equal(after, before)
    model.training_loss(x, y, ids).backward()                         # the loss reaches it
    assert model.semantic_head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="give semantic_weight > 0 as well"):
        u.MaskLatentSegNet(semantic_classes=True)


def test_competing_read_divides_each_pixel_among_the_latents():
    from latentseg.mask_head import CompetingRead
    torch.manual_seed(0)
    read = CompetingRead(8)
    torch.nn.init.zeros_(read.mlp[-1].weight), torch.nn.init.zeros_(read.mlp[-1].bias)  # read alone
    x, context = torch.randn(1, 2, 8), torch.randn(1, 3, 8)
    values = read.value(read.norm_context(context))
    # a latent allowed only pixel 0 takes exactly that pixel's value
    only_first = torch.tensor([[[False, True, True], [False, False, False]]])
    assert torch.allclose(read(x, context, only_first)[0, 0] - x[0, 0], values[0, 0], atol=1e-5)
    # two identical latents split every pixel evenly: both take the plain mean of the values
    twins = x[:, :1].expand(1, 2, 8)
    out = read(twins, context) - twins
    assert torch.allclose(out[0, 0], values[0].mean(0), atol=1e-5)
    assert torch.allclose(out[0, 0], out[0, 1], atol=1e-6)


def test_query_positions_are_distinct_grid_points_for_any_number_of_latents():
    for k in (1, 5, 6, 8, 16, 17):
        codes = u.MaskLatentSegNet(num_latents=k, query_positions=True).query_position_codes
        assert codes.shape == (k, 16) and len(torch.unique(codes, dim=0)) == k


def test_deep_supervision_predicts_after_every_round_with_masked_attention():
    x, _ = u.make_shapes_batch(2, 32, seed=1)
    torch.manual_seed(0)
    model = u.MaskLatentSegNet(num_latents=6, feature_dim=32, num_heads=2, rounds=2,
                               deep_supervision=True).eval()
    stages, extra = model.predict_stages(x)
    assert len(stages) == 3 and extra == {}                 # the initial latents, then 2 rounds
    assert torch.equal(stages[-1][1], model.predict_masks(x)[1])
    # masked attention: a latent reads only inside its mask; an empty mask reads everything
    mask_logits = torch.full((2, 6, 32, 32), -10.0)
    mask_logits[0, 0, :16] = 10.0                          # latent 0 of image 0: the top half
    blocked = model.attention_mask(mask_logits, (8, 8))   # [B * heads, K, N]
    assert blocked.shape == (4, 6, 64)
    assert blocked[0, 0, :32].logical_not().all() and blocked[0, 0, 32:].all()
    assert not blocked[0, 1].any() and not blocked[2:].any()
    assert torch.equal(blocked[0], blocked[1])             # the same mask for every head
    plain = u.MaskLatentSegNet(num_latents=6, feature_dim=32, num_heads=2, rounds=2)
    assert len(plain.predict_stages(x)[0]) == 1


def test_heatmap_queries_start_each_latent_at_a_peak_of_the_centre_heatmap():
    from latentseg.mask_head import _centre_heatmap
    instances = torch.zeros(1, 32, 32, dtype=torch.long)
    instances[0, 4:8, 4:8] = 1                             # centre (5.5, 5.5): cell (1, 1)
    instances[0, 20:24, 16:20] = 2                         # centre (21.5, 17.5): cell (5, 4)
    heat = _centre_heatmap(instances, (8, 8))
    assert heat.shape == (1, 8, 8) and heat.max() <= 1
    assert heat[0, 1, 1] > 0.99 and heat[0, 5, 4] > 0.99 and heat[0, 7, 0] < 0.01
    # the strongest local maxima come first; a cell beside a stronger one is not a peak
    logits = -5.0 - torch.arange(64.0).reshape(1, 1, 8, 8) / 64      # falls toward the end
    logits[0, 0, 5, 4], logits[0, 0, 1, 1], logits[0, 0, 1, 2] = 3.0, 2.0, 2.5
    peaks = u.MaskLatentSegNet.peak_tokens(logits, 3)[0].tolist()
    assert peaks == [5 * 8 + 4, 1 * 8 + 2, 1 * 8 + 1]     # no other peak: the strongest cell
    x, _, ids = u.make_shapes_batch(2, 32, seed=1, instances=True)
    model = u.MaskLatentSegNet(num_latents=6, feature_dim=32, num_heads=2, heatmap_queries=True)
    stages, extra = model.predict_stages(x)
    assert extra["objectness"].shape == (2, 1, 8, 8)
