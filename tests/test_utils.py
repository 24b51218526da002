"""Unit tests of latentseg_utils: shapes, gradients, determinism, metrics, errors, checkpoints."""
import math

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import latentseg_utils as u  # noqa: E402


def small_batch(n=2, size=32, seed=0):
    return u.make_shapes_batch(n, size, seed=seed)


# ---- 1. the tutorial's model ------------------------------------------------

def test_parameter_counts_match_the_tutorial():
    assert u.count_parameters(u.SegmentationModel()) == 70_504
    assert u.count_parameters(u.SegmentationModel(num_classes=4)) == 70_744


def test_encoder_downsamples_by_four():
    out = u.SimpleEncoder()(torch.rand(2, 3, 32, 48))
    assert out.shape == (2, 64, 8, 12)
    assert (out >= 0).all()  # ends in ReLU + max-pool


def test_latent_attention_shapes_and_weights():
    la = u.LatentAttention(feature_dim=64, latent_dim=32, num_latents=8, num_heads=4)
    x = torch.rand(3, 20, 64)
    out = la(x)
    assert out.shape == (3, 8, 32)
    out2, w = la(x, return_attention=True)
    assert torch.allclose(out, out2, atol=1e-6)
    assert w.shape == (3, 4, 8, 20)
    assert torch.allclose(w.sum(-1), torch.ones(3, 4, 8), atol=1e-5)


def test_expert_segmentation_shapes_and_weights():
    es = u.ExpertSegmentation(feature_dim=64, latent_dim=32, num_heads=2, num_classes=5)
    pixels, experts = torch.rand(2, 30, 64), torch.rand(2, 8, 32)
    logits = es(pixels, experts)
    assert logits.shape == (2, 30, 5)
    logits2, w = es(pixels, experts, return_attention=True)
    assert torch.allclose(logits, logits2, atol=1e-6)
    assert w.shape == (2, 2, 30, 8)


@pytest.mark.parametrize("make", [
    lambda: u.SegmentationModel(num_classes=4),
    lambda: u.LatentSegNet(),
    lambda: u.LatentSegNetAblation(encoder_depth=1, positions=False, refine=False, local_loss=0,
                                   detach_attention=False, colour_tokens=False),
    lambda: u.LatentSegNet(rounds=2),
    lambda: u.LatentSegNet(attention=False),
    lambda: u.PixelClassifier(),
    *(lambda c=c: u.LatentSegNetAblation(c) for c in u.ABLATION_STEPS.values()),
])
def test_models_output_shape_and_gradients_reach_every_parameter(make):
    torch.manual_seed(0)
    model = make()
    x, y = small_batch(2, 32)
    logits = model(x)
    assert logits.shape == (2, 4, 32, 32)
    loss = model.training_loss(x, y) if hasattr(model, "training_loss") else F.cross_entropy(logits, y)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("make", [lambda: u.SegmentationModel(num_classes=4), lambda: u.LatentSegNet()])
def test_return_attention_keeps_the_default_output(make):
    model = make().eval()
    x, _ = small_batch(2, 32)
    logits = model(x)
    logits2, attn = model(x, return_attention=True)
    assert torch.allclose(logits, logits2, atol=1e-5)
    n = (32 // 4) ** 2
    assert attn["latent"].shape == (2, 4, 16, n)
    assert attn["pixel"].shape == (2, 4, n, 16)


def test_latentsegnet_without_attention_has_no_attention_parameters():
    model = u.LatentSegNet(attention=False)
    assert not any("attention" in name or "latents" in name for name, _ in model.named_parameters())
    assert u.count_parameters(model) < u.count_parameters(u.LatentSegNet())


def test_local_loss_adds_an_auxiliary_term():
    torch.manual_seed(0)
    with_aux = u.LatentSegNet(local_loss=0.5)
    torch.manual_seed(0)
    without = u.LatentSegNet(local_loss=0)
    x, y = small_batch(2, 32)
    plain = F.cross_entropy(without(x), y)
    assert torch.allclose(without.training_loss(x, y), plain)
    assert with_aux.training_loss(x, y) > F.cross_entropy(with_aux(x), y)


def test_fourier_positions_shape_and_range():
    pos = u.fourier_positions(4, 6)
    assert pos.shape == (24, 16)
    assert pos.abs().max() <= 1.0 + 1e-6
    assert len({tuple(r) for r in pos.round(decimals=4).tolist()}) == 24  # every cell distinct


# ---- bad settings ------------------------------------------------------------

@pytest.mark.parametrize("build", [
    lambda: u.SegmentationModel(latent_dim=64, num_heads=5),
    lambda: u.LatentAttention(64, 30, 8, 4),
    lambda: u.ExpertSegmentation(64, 30, 4, 2),
    lambda: u.LatentSegNet(num_heads=3),
])
def test_heads_that_do_not_divide_the_width_are_refused(build):
    with pytest.raises(ValueError, match="num_heads"):
        build()


@pytest.mark.parametrize("build, word", [
    (lambda: u.SegmentationModel(num_classes=1), "num_classes"),
    (lambda: u.LatentSegNet(num_classes=1), "num_classes"),
    (lambda: u.LatentSegNet(rounds=0), "rounds"),
    (lambda: u.LatentSegNet(num_latents=0), "num_latents"),
    (lambda: u.LatentSegNetAblation(encoder_depth=0), "encoder_depth"),
    (lambda: u.LatentSegNetAblation(local_loss=-1), "local_loss"),
    (lambda: u.LatentSegNet(local_loss=-1), "local_loss"),
    (lambda: u.LatentSegNetAblation(stem=False), "stem"),
])
def test_impossible_settings_are_refused(build, word):
    with pytest.raises(ValueError, match=word):
        build()


@pytest.mark.parametrize("model", [u.SegmentationModel(), u.LatentSegNet(), u.PixelClassifier()])
def test_bad_images_get_clear_errors(model):
    with pytest.raises(ValueError, match="multiple of 4"):
        model(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match="channels"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        model(torch.rand(3, 32, 32))
    bad = torch.rand(1, 3, 32, 32)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(bad)


def test_labels_outside_the_classes_are_refused():
    model = u.SegmentationModel(num_classes=2)
    x, y = small_batch(2, 32)  # labels go up to 3
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        u.train(model, steps=1, progress=False, image_size=32)
    with pytest.raises(ValueError, match="labels must lie"):
        u.evaluate(model, x, y)
    with pytest.raises(ValueError, match="integer"):
        u.confusion_matrix(y.float(), y.float(), 4)


def test_bad_training_settings_are_refused():
    with pytest.raises(ValueError, match="lr"):
        u.train(u.PixelClassifier(), steps=1, lr=-1.0, progress=False)
    with pytest.raises(ValueError, match="steps"):
        u.train(u.PixelClassifier(), steps=0, progress=False)
    with pytest.raises(ValueError, match="schedule"):
        u.train(u.PixelClassifier(), steps=1, schedule="linear", progress=False)


# ---- data ----------------------------------------------------------------------

def test_shapes_batch_is_deterministic_and_well_formed():
    x1, y1 = u.make_shapes_batch(8, 64, seed=3)
    x2, y2 = u.make_shapes_batch(8, 64, seed=3)
    x3, _ = u.make_shapes_batch(8, 64, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert x1.shape == (8, 3, 64, 64) and x1.dtype == torch.float32
    assert y1.shape == (8, 64, 64) and y1.dtype == torch.int64
    assert set(y1.unique().tolist()) <= {0, 1, 2, 3}
    assert ((y1 > 0).flatten(1).any(1)).all(), "every image holds at least one object"


def test_all_classes_appear_and_colour_does_not_give_the_class():
    x, y = u.make_shapes_batch(1024, 32, seed=0, noise=0.0)
    counts = torch.bincount(y.flatten(), minlength=4)
    assert (counts > 0).all()
    # The mean colour of each object class is nearly the same: colour carries no class.
    means = torch.stack([x.permute(0, 2, 3, 1)[y == c].mean(0) for c in (1, 2, 3)])
    assert (means.max(0).values - means.min(0).values).max() < 0.04


def test_generator_argument_continues_a_stream():
    g = torch.Generator().manual_seed(0)
    a, _ = u.make_shapes_batch(2, 32, seed=g)
    b, _ = u.make_shapes_batch(2, 32, seed=g)
    assert not torch.equal(a, b)


def test_heldout_set_is_fixed():
    x1, y1 = u.make_heldout_set(4, 32)
    x2, y2 = u.make_heldout_set(4, 32)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    xt, _ = u.make_shapes_batch(4, 32, seed=0)
    assert not torch.equal(x1, xt)


def test_key_variant_labels_only_the_shape_the_key_names():
    x, y = u.make_shapes_batch(64, 64, seed=1, key=True, noise=0.0)
    _, y_plain = u.make_shapes_batch(64, 64, seed=1, noise=0.0)
    k = 64 // 16  # the frame's width
    for i in range(64):
        key_colour = x[i, :, 0, 0]
        kind = int((u.KEY_COLORS - key_colour).abs().sum(1).argmin()) + 1
        assert torch.allclose(x[i, :, :k, :], key_colour.view(3, 1, 1).expand(3, k, 64))
        assert torch.allclose(x[i, :, :, -k:], key_colour.view(3, 1, 1).expand(3, 64, k))
        assert (y[i, :k] == 0).all() and (y[i, :, -k:] == 0).all()
        assert set(y[i].unique().tolist()) <= {0, kind}
        assert (y[i] == kind).any(), "the key names a shape that is in the image"
    assert (y > 0).sum() < (y_plain > 0).sum()


def test_noise_batch_is_noise():
    x, y = u.make_noise_batch(4, 32, num_classes=2, seed=0)
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 32, 32)
    assert 0 <= x.min() and x.max() <= 1
    assert abs(y.float().mean().item() - 0.5) < 0.02


def test_bad_data_settings_are_refused():
    with pytest.raises(ValueError, match="image_size"):
        u.make_shapes_batch(2, 8)
    with pytest.raises(ValueError, match="batch_size"):
        u.make_shapes_batch(0, 64)


# ---- metrics ------------------------------------------------------------------

def test_metrics_against_a_hand_computed_case():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 0]])
    conf = u.confusion_matrix(pred, target, 4)
    expected = torch.tensor([[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]])
    assert torch.equal(conf, expected)
    iou = u.per_class_iou(conf)
    # class 0: tp 2, fp 1, fn 1 -> 2/4; class 1: 2/3; class 2: 2/3; class 3 absent -> NaN
    assert torch.allclose(iou[:3], torch.tensor([0.5, 2 / 3, 2 / 3], dtype=torch.float64))
    assert math.isnan(iou[3])
    assert u.mean_iou(pred, target, 4) == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert u.pixel_accuracy(pred, target) == pytest.approx(6 / 8)


def test_a_class_predicted_but_absent_from_truth_counts_as_zero():
    target = torch.tensor([0, 0, 0, 0])
    pred = torch.tensor([0, 0, 0, 1])
    assert u.mean_iou(pred, target, 3) == pytest.approx((3 / 4 + 0.0) / 2)


def test_metrics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        u.confusion_matrix(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="shape"):
        u.pixel_accuracy(torch.zeros(3), torch.zeros(4))


# ---- training ---------------------------------------------------------------

def test_training_is_deterministic_under_a_seed():
    held = u.make_heldout_set(8, 32)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # model init
        model = u.SegmentationModel(num_classes=4)
        runs.append(u.train(model, steps=5, image_size=32, batch_size=4, heldout=held,
                            eval_every=5, progress=False, seed=7))
    assert runs[0]["loss"] == runs[1]["loss"]
    assert runs[0]["miou"] == runs[1]["miou"]
    assert runs[0]["steps_done"] == 5 and runs[0]["eval_step"] == [5]


def test_training_resets_the_global_seed_and_returns_the_model_in_eval_mode():
    """The two side effects u.train's docstring states."""
    draws = []
    for caller_seed in (999, 12345):
        torch.manual_seed(caller_seed)
        model = u.SegmentationModel(num_classes=4)
        u.train(model, steps=1, image_size=32, batch_size=2, progress=False, seed=5)
        assert not model.training
        draws.append(torch.rand(3))
    assert torch.equal(draws[0], draws[1]), "the caller's seed before training no longer matters"


def test_callback_sees_every_step_and_an_interrupt_keeps_the_history():
    seen = []

    def callback(step, history):
        seen.append(step)
        if step == 3:
            raise KeyboardInterrupt

    model = u.PixelClassifier()
    before = [p.clone() for p in model.parameters()]
    history = u.train(model, steps=50, image_size=32, batch_size=2, progress=False,
                      heldout=u.make_heldout_set(4, 32), callback=callback)
    assert seen == [1, 2, 3]
    assert history["interrupted"] and history["steps_done"] == 3 and len(history["loss"]) == 3
    assert history["eval_step"] == [3] and len(history["miou"]) == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_get_device_is_a_device():
    device = u.get_device()
    assert device.type == ("cuda" if torch.cuda.is_available() else device.type)


def test_evaluate_and_predict():
    model = u.PixelClassifier()
    x, y = u.make_heldout_set(4, 32)
    scores = u.evaluate(model, x, y)
    assert 0 <= scores["miou"] <= 1 and 0 <= scores["pixel_accuracy"] <= 1
    assert scores["confusion"].sum() == y.numel()
    assert u.predict(model, x, batch_size=3).shape == y.shape


def test_noise_data_stays_at_ln2_while_shapes_data_is_learned():
    """The lesson of notebook 04, as a held-out check."""
    def final_loss(data):
        torch.manual_seed(0)
        model = u.SegmentationModel(num_classes=2)
        def two_class(b, s, seed):
            x, y = data(b, s, seed=seed)
            return x, (y > 0).long()
        h = u.train(model, steps=150, batch_size=8, image_size=32, lr=1e-3, data=two_class,
                    progress=False, schedule="constant")
        return sum(h["loss"][-30:]) / 30

    assert abs(final_loss(u.make_noise_batch) - math.log(2)) < 0.01
    assert final_loss(u.make_shapes_batch) < math.log(2) - 0.05


def test_a_per_pixel_classifier_cannot_solve_the_shapes_data():
    torch.manual_seed(0)
    model = u.PixelClassifier()
    held = u.make_heldout_set(64, 64)
    h = u.train(model, steps=150, batch_size=16, heldout=held, eval_every=150, progress=False)
    assert h["miou"][-1] <= 0.5


# ---- checkpoints ---------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path):
    model = u.LatentSegNet(rounds=1).eval()
    x, _ = small_batch(2, 32)
    path = tmp_path / "sub" / "model.pt"
    u.save_checkpoint(str(path), model, extra={"miou": 0.5})
    loaded, extra = u.load_checkpoint(str(path), device="cpu")
    assert extra == {"miou": 0.5}
    assert type(loaded) is u.LatentSegNet and loaded.config == model.config
    assert torch.equal(u.predict(model, x), u.predict(loaded, x))
    assert torch.allclose(model(x), loaded(x))
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left


def test_saving_the_same_checkpoint_again_leaves_the_file_untouched(tmp_path):
    path = tmp_path / "model.pt"
    torch.manual_seed(0)
    model = u.PixelClassifier()
    u.save_checkpoint(str(path), model, extra={"miou": 0.5})
    before = path.read_bytes()
    u.save_checkpoint(str(path), model, extra={"miou": 0.5})
    assert path.read_bytes() == before
    u.save_checkpoint(str(path), model, extra={"miou": 0.6})          # other extra: rewritten
    assert u.load_checkpoint(str(path), device="cpu")[1] == {"miou": 0.6}
    with torch.no_grad():
        model.net[0].bias.add_(1.0)
    u.save_checkpoint(str(path), model, extra={"miou": 0.6})          # other weights: rewritten
    loaded, _ = u.load_checkpoint(str(path), device="cpu")
    assert torch.equal(loaded.net[0].bias, model.net[0].bias)


def test_corrupt_missing_and_mismatched_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt"):
        u.load_checkpoint(str(bad))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        u.load_checkpoint(str(tmp_path / "missing.pt"))
    good = tmp_path / "good.pt"
    u.save_checkpoint(str(good), u.PixelClassifier())
    payload = torch.load(good, weights_only=True)
    payload["config"]["hidden"] = 8
    torch.save(payload, good)
    with pytest.raises(ValueError, match=r"does not match its config PixelClassifier\(.*"
                                         r"hidden.*delete it and train again") as error:
        u.load_checkpoint(str(good))
    assert "size mismatch" not in str(error.value)   # not load_state_dict's raw dump
    payload = torch.load(good, weights_only=True)
    payload["config"] = {**payload["config"], "hidden": 32, "renamed_option": True}
    torch.save(payload, good)
    with pytest.raises(ValueError, match="cannot build.*another version.*train again"):
        u.load_checkpoint(str(good))
    torch.save({"something": 1}, good)
    with pytest.raises(ValueError, match="not a latentseg checkpoint"):
        u.load_checkpoint(str(good))


def test_integer_images_are_refused_with_the_conversion():
    images = torch.randint(0, 255, (1, 3, 64, 64))
    for model in (u.SegmentationModel(num_classes=4), u.LatentSegNet(), u.PixelClassifier()):
        with pytest.raises(TypeError, match=r"images are integers \(torch.int64\).*"
                                            r"images.float\(\) / 255"):
            model(images)
    with pytest.raises(TypeError, match="images.float"):
        u.predict(u.PixelClassifier(), images.to(torch.uint8))


# ---- plotting ----------------------------------------------------------------

def test_plots_return_titled_figures():
    x, y = small_batch(3, 32)
    figs = [u.plot_samples(x, y), u.plot_predictions(x, y, y),
            u.plot_history({"step": [1, 2], "loss": [1.0, 0.5], "eval_step": [2], "miou": [0.3]},
                           reference_loss=math.log(2)),
            u.plot_attention(x[0], torch.rand(4, 64))]
    for fig in figs:
        assert fig._suptitle is not None and fig._suptitle.get_text()
        plt.close(fig)
    assert len(figs[0].legends) == 1  # the class legend


def test_plot_history_redraws_in_place():
    fig = u.plot_history({"step": [1], "loss": [1.0], "eval_step": [], "miou": []})
    again = u.plot_history({"step": [1, 2], "loss": [1.0, 0.9], "eval_step": [2], "miou": [0.4]}, fig=fig)
    assert again is fig and len(fig.axes) == 2
    plt.close(fig)


def test_plot_attention_refuses_a_non_grid():
    x, _ = small_batch(1, 32)
    with pytest.raises(ValueError, match="grid"):
        u.plot_attention(x[0], torch.rand(2, 63))


def test_class_colormap_refuses_too_many_classes():
    with pytest.raises(ValueError, match="palette"):
        u.class_colormap(99)


# ---- data variants, splits and the multi-seed runner --------------------------

def test_every_data_variant_draws_valid_fixed_splits():
    assert set(u.LONG_RANGE_VARIANTS) <= set(u.DATA_VARIANTS) and "shapes" in u.DATA_VARIANTS
    for variant in u.DATA_VARIANTS:
        val_x, val_y = u.make_split(variant, "validation", num_images=8)
        test_x, test_y = u.make_split(variant, "test", num_images=8)
        again_x, _ = u.make_split(variant, "test", num_images=8)
        assert val_x.shape == (8, 3, 64, 64) and val_y.shape == (8, 64, 64)
        assert torch.equal(test_x, again_x), variant                  # fixed
        assert not torch.equal(val_x, test_x), variant                # two different sets
        assert val_y.dtype == torch.int64 and 0 <= int(val_y.min()) and int(val_y.max()) <= 3
        batch_x, batch_y = u.variant_data(variant)(4, 32, seed=0)
        assert batch_x.shape == (4, 3, 32, 32) and batch_y.shape == (4, 32, 32)
    # the shapes test set is the held-out set every notebook has used
    assert torch.equal(u.make_split("shapes", "test")[1], u.make_heldout_set()[1])


def test_variants_change_what_they_say():
    shapes_x, shapes_y = u.make_split("shapes", "test", num_images=64)
    small_y = u.make_split("small", "test", num_images=64)[1]
    assert (small_y > 0).float().mean() < 0.5 * (shapes_y > 0).float().mean()
    crowded_y = u.make_split("crowded", "test", num_images=64)[1]
    assert (crowded_y > 0).float().mean() > (shapes_y > 0).float().mean()
    noisy_x = u.make_split("noisy", "test", num_images=64)[0]
    assert (noisy_x - noisy_x.mean((2, 3), keepdim=True)).std() > \
        (shapes_x - shapes_x.mean((2, 3), keepdim=True)).std()
    # low contrast: objects differ from their background by less than in the shapes data
    def contrast(variant):
        x, y = u.make_split(variant, "test", num_images=64)
        x = u.make_shapes_batch(64, 64, seed=u.HELDOUT_SEED, noise=0.0,
                                **u.DATA_VARIANTS[variant])[0]
        background = x[:, :, :1, :1]                # a corner pixel is background here
        return ((x - background).abs().amax(1) * (y > 0)).sum() / (y > 0).sum()
    assert contrast("low_contrast") < 0.6 * contrast("shapes")
    # the corner key: a small square of a key colour in the top-left corner, labelled background
    x, y = u.make_split("corner_key", "test", num_images=8, image_size=64)
    corner = x[:, :, 2, 2]                                  # a pixel inside the square
    assert all(any(torch.allclose(corner[i], c, atol=0.5) for c in u.KEY_COLORS)
               for i in range(8))
    assert (y[:, :6, :6] == 0).all()


def test_bad_variant_split_and_key_are_refused():
    with pytest.raises(ValueError, match="unknown data variant 'sharp'.*choose from"):
        u.make_split("sharp")
    with pytest.raises(ValueError, match="split='train'.*validation.*test"):
        u.make_split("shapes", "train")
    with pytest.raises(ValueError, match="key='corner'"):
        u.make_shapes_batch(2, 32, key="corner")
    with pytest.raises(ValueError, match="contrast"):
        u.make_shapes_batch(2, 32, contrast=(0.5, 0.2))


def test_seed_summary_and_findings():
    assert u.seed_summary([0.5, 0.7, 0.6]) == pytest.approx(
        {"mean": 0.6, "spread": 0.2, "worst": 0.5})
    assert u.is_finding([0.9, 0.91, 0.92], [0.80, 0.81, 0.79])
    assert not u.is_finding([0.9, 0.91, 0.92], [0.89, 0.92, 0.90])       # sign flips
    assert not u.is_finding([0.9, 0.95, 0.99], [0.85, 0.90, 0.98])       # gap below the spread
    with pytest.raises(ValueError, match="at least 3"):
        u.is_finding([0.9, 0.8], [0.7, 0.6])


def test_run_seeds_gives_one_row_per_model_and_variant_with_the_same_recipe():
    seen = []
    rows = u.run_seeds({"1x1": lambda: u.PixelClassifier(hidden=4)}, ["shapes", "small"],
                       seeds=(0, 1, 2), steps=2, batch_size=2, eval_images=4, progress=False,
                       on_row=seen.append, measure=lambda m, x, y: {"n": len(x)})
    assert [(r["model"], r["data"]) for r in rows] == [("1x1", "shapes"), ("1x1", "small")]
    assert seen == rows
    for r in rows:
        assert r["steps"] == 2 and r["seeds"] == [0, 1, 2] and len(r["miou"]) == 3
        assert r["spread"] == pytest.approx(max(r["miou"]) - min(r["miou"]))
        assert r["measured"] == [{"n": 4}] * 3
    again = u.run_seeds({"1x1": lambda: u.PixelClassifier(hidden=4)}, ["shapes"],
                        seeds=(0, 1, 2), steps=2, batch_size=2, eval_images=4, progress=False)
    assert again[0]["miou"] == rows[0]["miou"]                           # same seeds, same scores
    with pytest.raises(ValueError, match="unknown data variant"):
        u.run_seeds({"1x1": u.PixelClassifier}, ["nope"], steps=1, progress=False)


def test_attention_scale_and_detach_attention_options():
    torch.manual_seed(0)
    gated = u.LatentSegNetAblation(attention_scale=0.0)
    torch.manual_seed(0)
    plain = u.LatentSegNetAblation()
    x, y = small_batch(2, 32)
    scales = [b.attention_scale for b in gated.writes]
    assert all(float(s.detach().abs().max()) == 0.0 for s in scales)
    gated.training_loss(x, y).backward()
    assert all(s.grad is not None and float(s.grad.abs().sum()) > 0 for s in scales)
    # detach_attention: no gradient reaches the encoder through the attention
    torch.manual_seed(0)
    detached = u.LatentSegNetAblation(detach_attention=True, local_loss=0)
    torch.manual_seed(0)
    attached = u.LatentSegNetAblation(detach_attention=False, local_loss=0)
    detached.load_state_dict(attached.state_dict())
    detached.eval(), attached.eval()
    assert torch.allclose(detached(x), attached(x))          # same forward pass
    grads = []
    for model in (detached, attached):
        model.zero_grad()
        model(x).sum().backward()
        grads.append(model.down[-1][0].weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])
    assert plain.config["attention_scale"] is None
    assert plain.config["detach_attention"] is True and plain.config["colour_tokens"] is True


def test_colour_tokens_let_the_latents_read_the_input_colours():
    """colour_tokens: what the latents read depends on each block's mean colour through a
    learned map of its own, so the attention sees colours the encoder may have dropped."""
    x, _ = small_batch(2, 32)
    torch.manual_seed(0)
    with_colours = u.LatentSegNetAblation(colour_tokens=True).eval()
    torch.manual_seed(0)
    without = u.LatentSegNetAblation(colour_tokens=False).eval()
    assert set(with_colours.state_dict()) - set(without.state_dict()) == {
        "colour_proj.weight", "colour_proj.bias"}
    without.load_state_dict({k: v for k, v in with_colours.state_dict().items()
                             if not k.startswith("colour_proj")})
    _, read_with = with_colours(x, return_attention=True)
    _, read_without = without(x, return_attention=True)
    assert not torch.allclose(read_with["latent"], read_without["latent"])
    with torch.no_grad():
        with_colours.colour_proj.weight.zero_(), with_colours.colour_proj.bias.zero_()
    assert torch.allclose(with_colours(x), without(x), atol=1e-6)   # a zero map adds nothing
    x.requires_grad_(True)
    with_colours.colour_proj.weight.data.normal_()
    with_colours.train().training_loss(x, torch.zeros(2, 32, 32, dtype=torch.long)).backward()
    assert with_colours.colour_proj.weight.grad.abs().sum() > 0
    assert "colour_proj.weight" not in u.LatentSegNetAblation(attention=False).state_dict()
    assert "colour_proj.weight" not in u.LatentSegNet(attention=False).state_dict()


def test_a_checkpoint_from_before_an_option_existed_loads_as_it_was(tmp_path):
    """colour_tokens came later: a config without it means the model had none."""
    torch.manual_seed(0)
    old = u.LatentSegNetAblation(colour_tokens=False).eval()
    path = tmp_path / "old.pt"
    u.save_checkpoint(str(path), old)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["colour_tokens"]
    torch.save(payload, path)
    loaded, _ = u.load_checkpoint(str(path), device="cpu")
    assert loaded.config["colour_tokens"] is False
    x, _ = small_batch(2, 32)
    assert torch.equal(u.predict(loaded, x), u.predict(old, x))


def test_step_1a_is_the_tutorials_design_in_latentsegnets_parts():
    """All six options of step 1 off: no LayerNorm, BatchNorm, MLP, stem or fuse; the encoder is
    the tutorial's conv-pool-conv-pool, and each attention replaces what it reads."""
    torch.manual_seed(0)
    model = u.LatentSegNetAblation(u.ABLATION_STEPS["1a the tutorial's design in LatentSegNet's parts"])
    kinds = {type(m) for m in model.modules()}
    assert not kinds & {torch.nn.LayerNorm, torch.nn.BatchNorm2d}
    assert model.stem is None and not hasattr(model, "fuse")
    assert [type(m) for m in model.down] == [torch.nn.Sequential, torch.nn.MaxPool2d,
                                              torch.nn.Sequential, torch.nn.MaxPool2d]
    assert [tuple(m[0].weight.shape[:2]) for m in model.down if isinstance(m, torch.nn.Sequential)] == \
        [(32, 3), (64, 32)]                                # the tutorial's two convolutions
    assert all(not hasattr(b, "mlp") for b in [*model.reads, *model.writes])
    # no residual: the pixels' output is the attention's alone, so changing the tokens that go
    # in changes nothing when the latents are fixed and the attention looks elsewhere
    block = model.writes[0].eval()
    x, context = torch.randn(1, 5, 64), torch.randn(1, 3, 64)
    attended, _ = block.attention(x, context, context)
    assert torch.allclose(block(x, context), attended, atol=1e-6)


@pytest.mark.parametrize("option", ["residual", "layer_norm", "mlp"])
def test_attention_block_options_each_change_the_block(option):
    torch.manual_seed(0)
    full = u.AttentionBlock(16, 2).eval()
    torch.manual_seed(0)
    less = u.AttentionBlock(16, 2, **{option: False}).eval()
    less.load_state_dict(full.state_dict(), strict=False)
    x, context = torch.randn(2, 4, 16), torch.randn(2, 6, 16)
    assert not torch.allclose(full(x, context), less(x, context), atol=1e-4)
    if option == "residual":          # without the residual: x = MLP(LN(Attention(...)))
        attended, _ = full.attention(full.norm_x(x), full.norm_context(context),
                                     full.norm_context(context))
        assert torch.allclose(less(x, context), full.mlp(full.norm_mlp(attended)), atol=1e-5)


def test_ablation_rows_compare_each_row_with_one_that_differs_by_one_option():
    rows = u.ablation_rows()
    names = [name for name, _, _ in rows]
    assert len(names) == len(set(names)) == len(u.ABLATION_STEPS) + 4
    for name, build, against in rows[2:]:      # rows 0 and 1a: the tutorial's model, rewritten
        mine, other = build().config, next(b for n, b, _ in rows if n == against)().config
        assert len({k for k in mine if mine[k] != other[k]}) == 1, (name, against)


def test_seed_table_gives_verdicts_by_the_series_rule():
    rows = [{"model": "a", "miou": [0.5, 0.52, 0.51], "mean": 0.51, "spread": 0.02},
            {"model": "b", "miou": [0.7, 0.71, 0.72], "mean": 0.71, "spread": 0.02},
            {"model": "c", "miou": [0.8, 0.6, 0.75], "mean": 0.7167, "spread": 0.2}]
    table = u.seed_table(rows, {"b": "a", "c": "b"}).splitlines()
    assert table[3] == "| b | 0.700, 0.710, 0.720 | 0.710 | 0.020 | a | +0.200, a finding |"
    assert table[4].endswith("| b | +0.007, no measurable difference |")
    assert table[2].endswith("|  |  |")


def test_cue_distance_and_accuracy_by_distance():
    frame, corner = u.cue_distance("frame_key"), u.cue_distance("corner_key")
    assert frame.shape == corner.shape == (64, 64)
    assert frame[0, 10] == 0 and frame[4, 32] == 1 and frame[32, 32] == 28   # the frame is 4 px
    assert corner[0, 0] == 0 and corner[5, 5] == 0 and corner[6, 5] == 1     # a 6-px square
    assert corner[63, 63] == pytest.approx(58 * 2 ** 0.5)
    with pytest.raises(ValueError, match="no cue"):
        u.cue_distance("shapes")
    images, labels = u.make_split("corner_key", "validation", num_images=16)
    distance = u.cue_distance("corner_key")
    perfect = [a for a in u.accuracy_by_distance(labels, labels, distance) if not math.isnan(a)]
    assert len(perfect) >= 5 and all(a == 1 for a in perfect)
    wrong = torch.where(labels > 0, 0, labels)                  # every object missed
    missed = [a for a in u.accuracy_by_distance(wrong, labels, distance) if not math.isnan(a)]
    assert len(missed) == len(perfect) and all(a == 0 for a in missed)
    bands = u.accuracy_by_distance(labels, labels, u.cue_distance("frame_key"))
    assert all(math.isnan(a) for a in bands[4:])                # no pixel is 32 px from a frame


def test_distance_measure_and_its_plot():
    torch.manual_seed(0)
    rows = u.run_seeds({"final": lambda: u.LatentSegNet(feature_dim=16, num_heads=2),
                        "twin": lambda: u.LatentSegNet(feature_dim=16, num_heads=2, attention=False)},
                       ["corner_key"], steps=1, batch_size=2, eval_images=4, progress=False,
                       measure=u.distance_measure("corner_key"))
    assert [len(m["accuracy_by_distance"]) for m in rows[0]["measured"]] == \
        [len(u.DISTANCE_EDGES) - 1] * 3
    fig = u.plot_accuracy_by_distance(rows)
    assert fig.axes[0].get_title() == "corner_key" and len(fig.axes[0].lines) == 2
    plt.close(fig)
