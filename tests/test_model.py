"""LatentSegNet, the final model written out, against LatentSegNetAblation at the final options
(the same model with every switch of notebook 05's ablation); the committed checkpoint, saved
while LatentSegNet still had those switches, loads and migrates; other switch values raise."""
import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import torch

import latentseg_utils as u

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "notebooks" / "checkpoints" / "latentsegnet.pt"


def twins(**sizes):
    """LatentSegNet(**sizes) and LatentSegNetAblation(**sizes) at the final options, with the
    first one's weights loaded into the second (strict: every name must match)."""
    torch.manual_seed(0)
    final = u.LatentSegNet(**sizes)
    ablation = u.LatentSegNetAblation(**sizes)
    ablation.load_state_dict(final.state_dict())
    return final, ablation


@pytest.mark.parametrize("sizes", [{}, dict(rounds=2), dict(attention=False),
                                   dict(local_loss=0.0),
                                   dict(feature_dim=16, num_heads=2, num_latents=5)])
def test_the_ablation_at_the_final_options_is_latentsegnet(sizes):
    final, ablation = twins(**sizes)
    assert list(final.state_dict()) == list(ablation.state_dict())
    torch.manual_seed(0)
    seeded = u.LatentSegNetAblation(**sizes)          # the same seed draws the same weights
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(),
                                                 seeded.state_dict().values()))
    x, y = u.make_shapes_batch(4, 32, seed=5)
    final.eval(), ablation.eval()
    with torch.no_grad():
        assert torch.allclose(final(x), ablation(x), atol=1e-5)
    final.train(), ablation.train()
    losses = [model.training_loss(x, y) for model in (final, ablation)]
    for loss in losses:
        loss.backward()
    assert torch.allclose(losses[0], losses[1], atol=1e-5)
    for a, b in zip(final.down.parameters(), ablation.down.parameters()):   # the encoder
        assert torch.allclose(a.grad, b.grad, atol=1e-5)


def test_latentsegnet_has_only_sizes_rounds_local_loss_and_attention_as_options():
    options = set(inspect.signature(u.LatentSegNet).parameters)
    assert options == {"in_channels", "num_classes", "feature_dim", "num_latents", "num_heads",
                       "rounds", "local_loss", "attention", "stem_dim", "refine_dim"}
    assert set(u.LatentSegNet().config) == options
    source = inspect.getsource(u.LatentSegNet)
    assert len(source.splitlines()) <= 120
    forward = inspect.getsource(u.LatentSegNet._run)
    assert len(re.findall(r"\bif self\.", forward)) <= 4         # option branches in forward


def test_the_ablation_switches_are_a_frozen_dataclass_whose_defaults_are_the_final_model():
    options = u.AblationOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.fuse = False
    assert u.LatentSegNetAblation().options == options == list(u.ABLATION_STEPS.values())[-1]
    model = u.LatentSegNetAblation(u.ABLATION_STEPS["3 + full-resolution refinement"],
                                   attention=False)
    assert model.options == dataclasses.replace(u.ABLATION_STEPS["3 + full-resolution refinement"],
                                                attention=False)
    assert u.LatentSegNetAblation(**model.config).config == model.config   # what checkpoints do
    with pytest.raises(TypeError, match="no option"):
        u.LatentSegNetAblation(no_such_switch=True)


def test_the_committed_checkpoint_loads_as_latentsegnet_with_the_same_predictions():
    payload = torch.load(CHECKPOINT, weights_only=True)
    model, _ = u.load_checkpoint(str(CHECKPOINT), device="cpu")
    assert type(model) is u.LatentSegNet and model.config == u.LatentSegNet().config
    # The same weights in the class that still has the switches, built from the saved config
    # (the code LatentSegNet had when the checkpoint was written): the same predictions.
    old = u.LatentSegNetAblation(**payload["config"]).eval()
    old.load_state_dict(payload["state_dict"])
    images = u.make_heldout_set()[0][:8]
    with torch.no_grad():
        assert torch.allclose(model(images), old(images), atol=1e-5)
    assert torch.equal(u.predict(model, images), u.predict(old, images))


def old_style_checkpoint(tmp_path, **switches):
    """A LatentSegNet checkpoint as it was saved before the switches moved: every switch in
    its config (the final model's values, changed by `switches`; None deletes one)."""
    torch.manual_seed(0)
    model = u.LatentSegNet().eval()
    path = tmp_path / "old.pt"
    u.save_checkpoint(str(path), model)
    payload = torch.load(path, weights_only=True)
    payload["config"].update(dataclasses.asdict(u.AblationOptions()))
    for key, value in switches.items():
        if value is None:
            del payload["config"][key]
        else:
            payload["config"][key] = value
    torch.save(payload, path)
    return path, model


def test_an_old_checkpoint_with_the_final_switches_migrates(tmp_path):
    path, model = old_style_checkpoint(tmp_path)
    loaded, _ = u.load_checkpoint(str(path), device="cpu")
    assert type(loaded) is u.LatentSegNet and loaded.config == model.config
    x, _ = u.make_shapes_batch(2, 32, seed=0)
    assert torch.equal(u.predict(loaded, x), u.predict(model, x))


@pytest.mark.parametrize("switches, named", [
    (dict(detach_attention=False), "detach_attention"),
    (dict(fuse=False, stem=False), "fuse"),
    (dict(colour_tokens=None), "colour_tokens"),     # absent: saved before it existed, so off
])
def test_an_old_checkpoint_with_other_switches_raises_a_clear_error(tmp_path, switches, named):
    path, _ = old_style_checkpoint(tmp_path, **switches)
    with pytest.raises(ValueError, match=rf"{named}.*LatentSegNetAblation"):
        u.load_checkpoint(str(path), device="cpu")


def test_final_model_and_ablation_class_train_bit_for_bit_alike():
    """Not only equal losses: the same float operations in the same order, so that a seeded
    training gives the very same weights (notebook 05 trains both, notebooks 06, 08 and 09 analyse the
    checkpoint it saves; the committed outputs depend on it)."""
    models = []
    for build in (u.LatentSegNet, u.LatentSegNetAblation):
        torch.manual_seed(0)
        model = build()
        u.train(model, steps=5, batch_size=4, lr=3e-3, seed=0, progress=False)
        models.append(model.state_dict())
    assert list(models[0]) == list(models[1])
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
