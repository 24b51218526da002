"""Unit tests of latentseg_widgets: every callback called directly, no browser, no kernel.

They run under ipywidgets 8 (the project's environment) and under Colab's ipywidgets 7.7.1:
the last test reruns this file in a second environment named by LATENTSEG_WIDGETS77_PYTHON
(.ci/run builds it), so `python -m pytest` stays the one test command.
"""
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import ipywidgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import latentseg_utils as u  # noqa: E402
import latentseg_widgets as uw  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The CI machine has 2 shared cores; one thread per process avoids oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_figures_left_open():
    plt.close("all")
    yield
    # A figure left open would be drawn a second time below the widget in a notebook.
    assert plt.get_fignums() == [], "a widget left a matplotlib figure open"


def small_panel(**options):
    """The default panel with a small held-out set, and tiny runs unless a test says otherwise."""
    options.setdefault("heldout_size", 8)
    panel = uw.training_panel(**options)
    c = panel.controller
    c.steps.value, c.batch_size.value = 3, 2
    return panel, c


def png_of(out: ipywidgets.Output):
    assert len(out.outputs) == 1, out.outputs
    return out.outputs[0]["data"]["image/png"]


# ---- the training panel: settings and validation --------------------------------

def test_default_panel_is_valid_and_uses_the_defaults():
    panel = uw.training_panel()
    c = panel.controller
    assert isinstance(panel, ipywidgets.VBox)
    assert c.validate() == []
    assert not c.train_button.disabled
    assert c.message.value.startswith("Ready:") and "Cannot" not in c.message.value
    assert (c.num_latents.value, c.num_heads.value, c.latent_dim.value) == (16, 4, 64)
    assert c.lr.value == pytest.approx(3e-3) and c.settings()["lr"] == 3e-3
    c.lr.value = 10 ** -2.52          # where a browser's slider puts 3e-3: still 3.0e-3
    assert c.settings()["lr"] == 3e-3
    assert c.batch_size.value == 16 and c.steps.value == 200
    assert c.variant.value == "latentsegnet"
    assert list(c.num_heads.options) == [1, 2, 3, 4, 8]
    assert (c.latent_dim.min, c.latent_dim.max, c.latent_dim.step) == (16, 128, 16)
    assert (c.num_latents.min, c.num_latents.max) == (1, 64)
    assert dict(c.variant.options) == uw.VARIANTS
    # Nothing trained or drawn before Train is pressed.
    assert c.history is None and c.live_out.outputs == () and c.prediction_out.outputs == ()


def test_heads_not_dividing_the_width_disable_train_with_a_clear_message():
    _, c = small_panel()
    c.num_heads.value = 3                          # 64 % 3 != 0: observe() validates
    assert c.train_button.disabled
    assert "num_heads=3" in c.message.value and "latent_dim=64" in c.message.value
    assert "Cannot train" in c.message.value and "Traceback" not in c.message.value
    assert c.on_train_clicked(c.train_button) is None     # cannot be started
    assert c.history is None and c.progress.value == 0 and c.model is None

    c.num_heads.value = 4                          # fixed: enabled again
    assert not c.train_button.disabled and c.message.value.startswith("Ready:")

    c.num_heads.value = 3
    c.latent_dim.value = 48                        # or fixed from the other side: 48 % 3 == 0
    assert not c.train_button.disabled and c.validate() == []


@pytest.mark.parametrize("settings, word", [
    (dict(num_latents=0), "num_latents"), (dict(steps=0), "steps"),
    (dict(batch_size=0), "batch_size"), (dict(lr=0.0), "lr"), (dict(lr=float("nan")), "lr"),
    (dict(variant="nonsense"), "variant"), (dict(num_heads=0), "num_heads"),
])
def test_check_settings_names_each_impossible_setting(settings, word):
    good = dict(variant="latentsegnet", num_latents=16, num_heads=4, latent_dim=64, lr=3e-3,
                steps=10, batch_size=2)
    assert uw.check_settings(**good) == []
    problems = uw.check_settings(**{**good, **settings})
    assert problems and word in " ".join(problems)


def test_validation_keeps_the_random_state():
    state = torch.random.get_rng_state()
    _, c = small_panel()
    c.num_latents.value, c.latent_dim.value = 8, 32
    assert torch.equal(torch.random.get_rng_state(), state)


def test_build_model_variants():
    m = uw.build_model("latentsegnet", num_latents=8, num_heads=2, latent_dim=32)
    assert isinstance(m, u.LatentSegNet) and m.config["feature_dim"] == 32 and m.attention
    assert m.config["num_latents"] == 8 and m.config["num_heads"] == 2 and m.num_classes == 4
    m = uw.build_model("tutorial", num_latents=8, num_heads=2, latent_dim=32)
    assert isinstance(m, u.SegmentationModel) and m.config["latent_dim"] == 32
    m = uw.build_model("no-attention", num_latents=8, num_heads=2, latent_dim=32)
    assert isinstance(m, u.LatentSegNet) and not m.attention
    with pytest.raises(ValueError, match="variant"):
        uw.build_model("nonsense")


# ---- the training panel: a run ------------------------------------------------------

def test_short_training_run_updates_progress_plot_and_predictions():
    _, c = small_panel()
    history = c.on_train_clicked(c.train_button)
    assert history is c.history and c.error is None
    assert c.progress.max == 3 and c.progress.value == c.progress.max
    assert c.progress.bar_style == "success"
    assert history["step"] == [1, 2, 3] and len(history["loss"]) == 3 and history["miou"]
    assert c.message.value.startswith("Done: 3 steps") and "mIoU" in c.message.value
    assert png_of(c.live_out) and png_of(c.prediction_out)
    loss_line = c.live_figure.axes[0].lines[0]
    assert list(loss_line.get_xdata()) == [1, 2, 3]      # the final redraw shows every step
    assert len(c.prediction_figure.axes) >= 4 * c.shown_images
    assert isinstance(c.model, u.LatentSegNet) and not c.model.training
    # Ready for another run.
    assert not c.train_button.disabled
    assert not any(w.disabled for w in c.settings_widgets)


def test_live_plot_is_redrawn_in_place_while_training(monkeypatch):
    shown = []
    real_show_in = uw.show_in

    def record(out, fig):
        real_show_in(out, fig)
        shown.append((out, fig, png_of(out)))

    monkeypatch.setattr(uw, "show_in", record)
    _, c = small_panel(redraws=4)
    c.steps.value = 8
    c.on_train_clicked(None)
    live = [(fig, png) for out, fig, png in shown if out is c.live_out]
    assert len(live) == 4                           # steps 2, 4, 6 and the final redraw
    assert all(fig is c.live_figure for fig, _ in live)   # one figure, redrawn
    assert len({png for _, png in live}) == len(live)     # and it changed every time
    assert [out for out, _, _ in shown].count(c.prediction_out) == 1


def test_the_stop_button_after_training_is_a_message(monkeypatch):
    _, c = small_panel()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(c, "_show_predictions", interrupted)
    c.on_train_clicked(None)
    assert c.error == "interrupted" and "Stopped" in c.message.value
    assert not c.train_button.disabled and not c.running


def test_training_is_seeded():
    runs = []
    for _ in range(2):
        _, c = small_panel()
        runs.append(c.on_train_clicked(None)["loss"])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("variant, cls, attention", [
    ("tutorial", u.SegmentationModel, None), ("no-attention", u.LatentSegNet, False)])
def test_each_variant_trains(variant, cls, attention):
    _, c = small_panel()
    c.variant.value = variant
    c.steps.value = 2
    c.on_train_clicked(None)
    assert c.message.value.startswith("Done"), c.message.value
    assert isinstance(c.model, cls)
    if attention is not None:
        assert c.model.attention is attention


def test_an_error_during_training_is_a_message_not_a_traceback():
    _, c = small_panel()
    c.on_train_clicked(None)
    assert c.live_out.outputs and c.prediction_out.outputs
    # A setting the panel's checks do not cover: images whose size is not a multiple of 4.
    c.image_size, c.heldout = 30, None
    assert not c.train_button.disabled
    assert c.on_train_clicked(None) is None
    assert c.live_out.outputs == () and c.prediction_out.outputs == ()   # no stale plots
    assert c.error.startswith("ValueError") and "multiple of 4" in c.error
    assert "Training failed" in c.message.value and "Traceback" not in c.message.value
    assert c.progress.bar_style == "danger"
    assert not c.train_button.disabled and not c.running
    assert not any(w.disabled for w in c.settings_widgets)


# ---- the expert browser ---------------------------------------------------------------

@pytest.fixture(scope="module")
def browse_data():
    return u.make_heldout_set(3, 32)


@pytest.mark.parametrize("model_fn", [
    lambda: u.LatentSegNet(num_classes=4, feature_dim=32, num_latents=5, num_heads=2),
    lambda: u.SegmentationModel(num_classes=4, latent_dim=32, num_latents=5, num_heads=2),
], ids=["LatentSegNet", "SegmentationModel"])
def test_expert_browser_at_every_extreme(model_fn, browse_data):
    torch.manual_seed(0)
    images, labels = browse_data
    panel = uw.expert_browser(model_fn(), images, labels)
    b = panel.controller
    assert isinstance(panel, ipywidgets.VBox)
    assert (b.sample.min, b.sample.max, b.expert.min, b.expert.max) == (0, 2, 0, 4)
    heads = [value for _, value in b.head.options]
    assert heads == [-1, 0, 1]
    figure, pngs = b.figure, {png_of(b.out)}
    for view in uw.VIEWS:             # each setting moved to its top, then back to its bottom
        b.view.value = view
        for widget, top, bottom in ((b.sample, b.sample.max, b.sample.min),
                                    (b.expert, b.expert.max, b.expert.min),
                                    (b.head, heads[-1], heads[0])):
            widget.value = top
            pngs.add(png_of(b.out))
        for widget, bottom in ((b.sample, b.sample.min), (b.expert, b.expert.min),
                               (b.head, heads[0])):
            widget.value = bottom
            pngs.add(png_of(b.out))
    assert b.figure is figure and len(figure.legends) == 1   # redrawn in place
    assert len(pngs) >= 12


def test_expert_browser_with_one_expert_and_one_head(browse_data):
    images, labels = browse_data
    model = u.LatentSegNet(num_classes=4, feature_dim=16, num_latents=1, num_heads=1)
    b = uw.expert_browser(model, images[:1], labels[:1]).controller
    for view in uw.VIEWS:     # one sample, one expert: sliders whose min equals their max
        b.view.value = view
        assert png_of(b.out)


def test_expert_browser_refuses_a_model_without_attention(browse_data):
    model = u.LatentSegNet(num_classes=4, attention=False)
    with pytest.raises(ValueError, match="no attention"):
        uw.expert_browser(model, *browse_data)


# ---- the latent masks (notebook 08) ---------------------------------------------------

def small_mask_head(num_latents=3):
    torch.manual_seed(0)
    return u.MaskLatentSegNet(num_classes=4, feature_dim=16, num_latents=num_latents,
                              num_heads=2, rounds=1, mask_dim=8)


def test_latent_masks_at_every_extreme_with_probabilities_in_the_titles():
    images, _ = u.make_heldout_set(8, 32)
    model = small_mask_head()
    panel = uw.latent_masks(model, images)
    m = panel.controller
    assert isinstance(panel, ipywidgets.VBox)
    assert (m.latent.min, m.latent.max, m.latent.value) == (0, 2, 0)
    assert len(m.images) == 6 and tuple(m.masks.shape) == (6, 3, 32, 32)   # six images at most
    with torch.no_grad():
        class_logits, _ = model.eval().predict_masks(images[:6])
    probabilities = class_logits.softmax(-1)
    figure, pngs = m.figure, {png_of(m.out)}
    for value in (m.latent.max, m.latent.min, 1):        # top, bottom, and one between
        m.latent.value = value
        pngs.add(png_of(m.out))
        titles = [ax.get_title() for ax in figure.axes[:6]]
        for b, title in enumerate(titles):
            c = int(probabilities[b, value].argmax())
            assert title == f"{m.answer_names[c]} {float(probabilities[b, value, c]):.2f}"
        assert titles == m.titles()
    assert m.figure is figure and len(figure.axes) == 7     # six panels and a colour bar, redrawn
    assert len(pngs) == 3
    assert m.answer_names == list(u.CLASS_NAMES) + ["no object"]
    assert 0 <= float(m.masks.min()) and float(m.masks.max()) <= 1


def test_latent_masks_with_one_latent_and_one_image():
    images, _ = u.make_heldout_set(1, 32)
    m = uw.latent_masks(small_mask_head(num_latents=1), images).controller
    assert (m.latent.min, m.latent.max) == (0, 0)       # a slider whose min equals its max
    assert png_of(m.out) and len(m.figure.axes) == 2


def test_latent_masks_keeps_the_model_mode_and_refuses_what_it_cannot_show():
    images, _ = u.make_heldout_set(2, 32)
    model = small_mask_head().train()
    uw.latent_masks(model, images)
    assert model.training                                # put back as it was
    with pytest.raises(ValueError, match="mask head"):
        uw.latent_masks(u.LatentSegNet(num_classes=4, feature_dim=16), images)
    with pytest.raises(ValueError, match="B >= 1"):
        uw.latent_masks(model, images[:0])


def test_latent_masks_uses_only_the_api_shared_by_ipywidgets_7_and_8():
    images, _ = u.make_heldout_set(2, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = uw.latent_masks(small_mask_head(), images).controller
        m.latent.value = 2
    ours = [f"{w.category.__name__}: {w.message}" for w in caught
            if w.filename.endswith("latentseg_widgets.py") or "description_tooltip" in str(w.message)]
    assert ours == []


# ---- Colab and the ipywidgets versions -------------------------------------------------

def test_colab_custom_widget_manager_is_enabled_only_where_needed(monkeypatch):
    calls = []
    google = types.ModuleType("google")
    colab = types.ModuleType("google.colab")
    output = types.ModuleType("google.colab.output")
    output.enable_custom_widget_manager = lambda: calls.append("enabled")
    google.colab, colab.output = colab, output
    assert uw.enable_colab_widgets() is False and calls == []     # not in Colab
    for name, module in (("google", google), ("google.colab", colab),
                         ("google.colab.output", output)):
        monkeypatch.setitem(sys.modules, name, module)
    uw.training_panel()
    needed = uw.IPYWIDGETS_MAJOR >= 8          # Colab's own manager speaks ipywidgets 7
    assert calls == (["enabled"] if needed else [])


def test_uses_only_the_api_shared_by_ipywidgets_7_and_8(browse_data):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")       # e.g. description_tooltip's deprecation warning
        _, c = small_panel()
        c.num_heads.value = 3
        c.num_heads.value = 4
        uw.expert_browser(u.LatentSegNet(num_classes=4, feature_dim=16), *browse_data)
    ours = [f"{w.category.__name__}: {w.message}" for w in caught
            if w.filename.endswith("latentseg_widgets.py") or "description_tooltip" in str(w.message)]
    assert ours == []
    assert "description_tooltip" not in Path(uw.__file__).read_text()


@pytest.mark.slow
def test_widget_tests_pass_under_ipywidgets_7_7_1():
    """Colab's ipywidgets 7.7.1: rerun this file in the environment .ci/run builds for it."""
    python = os.environ.get("LATENTSEG_WIDGETS77_PYTHON")
    if not python:
        pytest.skip("LATENTSEG_WIDGETS77_PYTHON is not set: .ci/run builds an ipywidgets 7.7.1 "
                    "environment and sets it; set it to that environment's python to run this "
                    "here.")
    version = subprocess.run([python, "-c", "import ipywidgets; print(ipywidgets.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == "7.7.1", f"{python} has ipywidgets {version}, not 7.7.1"
    env = {k: v for k, v in os.environ.items() if k != "LATENTSEG_WIDGETS77_PYTHON"}
    result = subprocess.run(
        [python, "-m", "pytest", "tests/test_widgets.py", "-q", "-p", "no:cacheprovider",
         "-o", "addopts=", "-W", "ignore::DeprecationWarning"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    summary = result.stdout.strip().splitlines()[-1:] if result.stdout else []
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert summary and " passed" in summary[0] and " failed" not in summary[0], summary
