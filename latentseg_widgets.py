"""latentseg_widgets: the series' interactive widgets, built on latentseg_utils.

Three widgets, written to the ipywidgets API that 7.7 (Colab's) and 8 share:

    training_panel()                      notebook 05: settings, Train button, progress bar,
                                          live loss / held-out mIoU plot, predictions
    expert_browser(model, images, labels) notebook 06: what each expert (latent) and each
                                          head looks at, one figure redrawn in place
    latent_masks(model, images)           notebook 08: a mask head's latent picked with a
                                          slider, its mask over six images, its class
                                          probability in each title

Each returns an ipywidgets box whose `.controller` holds the widgets and the callbacks,
so the tests call the callbacks directly (panel.controller.on_train_clicked(None)).

Figures follow one pattern: created once, closed at once (so the notebook never draws
them a second time below the widget), redrawn in place, and shown inside an Output
widget with `with out: clear_output(wait=True); display(fig)`.
"""
from __future__ import annotations

import base64
import html
import io
import sys
from typing import Optional

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython import get_ipython
from IPython.display import clear_output, display

import latentseg_utils as u

__all__ = ["VARIANTS", "build_model", "check_settings", "TrainingPanel", "training_panel",
           "ExpertBrowser", "expert_browser", "LatentMasks", "latent_masks",
           "enable_colab_widgets"]

IPYWIDGETS_MAJOR = int(widgets.__version__.split(".")[0])
_WIDE = {"description_width": "initial"}
_ERROR_COLOUR = "#b00020"


# ---------------------------------------------------------------------------
# Helpers shared by the widgets
# ---------------------------------------------------------------------------

def enable_colab_widgets() -> bool:
    """In Colab with ipywidgets 8, switch on Colab's custom widget manager (Colab's own
    manager speaks the ipywidgets 7 protocol). Returns True when it was switched on.
    Elsewhere, and with Colab's preinstalled ipywidgets 7.7, it does nothing.

    Taught in notebook 05, section "7. Try it yourself: the training panel".
    """
    if "google.colab" not in sys.modules or IPYWIDGETS_MAJOR < 8:
        return False
    from google.colab import output
    output.enable_custom_widget_manager()
    return True


def _has_frontend() -> bool:
    """True inside a Jupyter kernel, where a frontend captures what an Output widget shows."""
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _png_output(fig) -> dict:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
                     "text/plain": repr(fig)}}


def show_in(out: widgets.Output, fig) -> None:
    """Show `fig` in `out`, replacing what `out` showed before (the redraw-in-place pattern).

    Without a kernel (plain Python, the unit tests) nothing would capture the display, so
    the rendered PNG goes straight into the Output widget's state instead.

    Taught in notebook 05, section "7. Try it yourself: the training panel".
    """
    if _has_frontend():
        with out:
            clear_output(wait=True)
            display(fig)
    else:
        out.outputs = (_png_output(fig),)


def clear(out: widgets.Output) -> None:
    """Empty an Output widget (with or without a kernel, like show_in).

    Taught in notebook 05, section "7. Try it yourself: the training panel".
    """
    if _has_frontend():
        out.clear_output()
    else:
        out.outputs = ()


def _message(text: str, error: bool = False) -> str:
    text = html.escape(text)
    return f'<span style="color:{_ERROR_COLOUR}"><b>{text}</b></span>' if error else text


# ---------------------------------------------------------------------------
# The training panel (notebook 05)
# ---------------------------------------------------------------------------

VARIANTS = {
    "LatentSegNet (series' model)": "latentsegnet",
    "SegmentationModel (tutorial)": "tutorial",
    "LatentSegNet without attention": "no-attention",
}


def build_model(variant: str = "latentsegnet", num_latents: int = 16, num_heads: int = 4,
                latent_dim: int = 64, num_classes: int = 4) -> torch.nn.Module:
    """The panel's model. variant is a value of VARIANTS:

    "latentsegnet"  u.LatentSegNet(feature_dim=latent_dim, ...), the series' model
    "tutorial"      u.SegmentationModel(latent_dim=latent_dim, ...), the tutorial's model
    "no-attention"  u.LatentSegNet(..., attention=False), the pixel path alone

    Taught in notebook 05, section "7. Try it yourself: the training panel".
    """
    if variant == "latentsegnet":
        return u.LatentSegNet(num_classes=num_classes, feature_dim=latent_dim,
                              num_latents=num_latents, num_heads=num_heads)
    if variant == "tutorial":
        return u.SegmentationModel(num_classes=num_classes, latent_dim=latent_dim,
                                   num_latents=num_latents, num_heads=num_heads)
    if variant == "no-attention":
        return u.LatentSegNet(num_classes=num_classes, feature_dim=latent_dim,
                              num_latents=num_latents, num_heads=num_heads, attention=False)
    raise ValueError(f"variant={variant!r}: use one of {sorted(VARIANTS.values())}.")


def check_settings(variant: str, num_latents: int, num_heads: int, latent_dim: int,
                   lr: float, steps: int, batch_size: int) -> list:
    """The problems that would stop a run with these settings, as sentences ([] = fine).

    Taught in notebook 05, section "7. Try it yourself: the training panel".
    """
    problems = []
    try:
        u.check_heads(latent_dim, num_heads)
    except ValueError as error:
        problems.append(str(error))
    for name, value in (("num_latents", num_latents), ("steps", steps),
                        ("batch_size", batch_size)):
        if value < 1:
            problems.append(f"{name}={value} must be at least 1.")
    if not lr > 0:
        problems.append(f"lr={lr} must be positive, e.g. 3e-3.")
    if variant not in VARIANTS.values():
        problems.append(f"unknown model variant {variant!r}.")
    if not problems:
        # Anything else the model itself refuses; built with the RNG state kept, so that
        # moving a slider never changes what a later seeded cell draws.
        try:
            with torch.random.fork_rng(devices=[]):
                build_model(variant, num_latents, num_heads, latent_dim)
        except (ValueError, RuntimeError) as error:
            problems.append(str(error))
    return problems


class TrainingPanel:
    """Settings, a Train button, a progress bar, a live plot and a prediction panel.

    Widgets (attributes): num_latents, num_heads, latent_dim, lr, steps, batch_size,
    variant, train_button, progress, message, live_out, prediction_out; `widget` is the
    whole panel (a VBox). Callbacks: validate(), on_train_clicked(button), on_step(step,
    history). After a run: history, model, heldout, live_figure, prediction_figure.

    Training is seeded (`seed`), so the same settings give the same curve.

    Taught in notebook 05, section "7. Try it yourself: the training panel".
    """

    def __init__(self, steps: int = 200, batch_size: int = 16, lr: float = 3e-3,
                 num_latents: int = 16, num_heads: int = 4, latent_dim: int = 64,
                 variant: str = "latentsegnet", image_size: int = 64, heldout_size: int = 64,
                 seed: int = 0, redraws: int = 10, evaluations: int = 5, shown_images: int = 3):
        self.image_size, self.heldout_size, self.seed = image_size, heldout_size, seed
        self.redraws, self.evaluations, self.shown_images = redraws, evaluations, shown_images
        self.history: Optional[dict] = None
        self.model: Optional[torch.nn.Module] = None
        self.heldout: Optional[tuple] = None
        self.error: Optional[str] = None
        self.live_figure = None
        self.prediction_figure = None
        self.running = False
        self._make_settings_widgets(steps, batch_size, lr, num_latents, num_heads, latent_dim,
                                    variant)
        self._make_output_widgets(steps)
        self.widget = self._layout()
        self.validate()

    def _make_settings_widgets(self, steps, batch_size, lr, num_latents, num_heads, latent_dim,
                               variant) -> None:
        """The seven settings, each validated on every change."""
        self.num_latents = widgets.IntSlider(value=num_latents, min=1, max=64, step=1,
                                             description="num_latents", style=_WIDE)
        self.num_heads = widgets.Dropdown(options=[1, 2, 3, 4, 8], value=num_heads,
                                          description="num_heads", style=_WIDE,
                                          layout=widgets.Layout(width="160px"))
        self.latent_dim = widgets.IntSlider(value=latent_dim, min=16, max=128, step=16,
                                            description="latent_dim", style=_WIDE)
        # A browser snaps the value to the slider's grid (10 ** -2.52 for 3e-3) and sends
        # it back; settings() uses the value rounded as the readout shows it (3.0e-3).
        self.lr = widgets.FloatLogSlider(value=lr, base=10, min=-4, max=-1, step=0.01,
                                         readout_format=".1e", description="learning rate",
                                         style=_WIDE)
        self.steps = widgets.IntSlider(value=steps, min=1, max=2000, step=1,
                                       description="steps", style=_WIDE)
        self.batch_size = widgets.IntSlider(value=batch_size, min=1, max=64, step=1,
                                            description="batch_size", style=_WIDE)
        self.variant = widgets.Dropdown(options=list(VARIANTS.items()), value=variant,
                                        description="model", style=_WIDE,
                                        layout=widgets.Layout(width="360px"))
        self.settings_widgets = (self.num_latents, self.num_heads, self.latent_dim, self.lr,
                                 self.steps, self.batch_size, self.variant)
        for w in self.settings_widgets:
            w.observe(self.validate, names="value")

    def _make_output_widgets(self, steps: int) -> None:
        """The Train button, the progress bar, the message line and the two figure areas."""
        self.train_button = widgets.Button(description="Train", button_style="primary",
                                           icon="play")
        self.progress = widgets.IntProgress(value=0, min=0, max=steps, description="progress",
                                            style=_WIDE)
        self.message = widgets.HTML(value="")
        self.live_out = widgets.Output()
        self.prediction_out = widgets.Output()
        self.train_button.on_click(self.on_train_clicked)

    def _layout(self) -> widgets.VBox:
        """The panel: settings in rows, then the button, the message and the figures."""
        panel = widgets.VBox([
            widgets.HBox([self.variant, self.num_latents]),
            widgets.HBox([self.num_heads, self.latent_dim]),
            widgets.HBox([self.lr, self.steps, self.batch_size]),
            widgets.HBox([self.train_button, self.progress]),
            self.message, self.live_out, self.prediction_out,
        ])
        panel.controller = self
        for w, name in ((panel, "panel"), (self.message, "message"),
                        (self.steps, "steps"), (self.train_button, "train"),
                        (self.progress, "progress"), (self.live_out, "live-plot"),
                        (self.prediction_out, "predictions")):
            w.add_class(f"latentseg-{name}")          # stable names for the browser test
        return panel

    # -- settings ----------------------------------------------------------
    def settings(self) -> dict:
        """The current settings as keyword arguments of check_settings."""
        return dict(variant=self.variant.value, num_latents=int(self.num_latents.value),
                    num_heads=int(self.num_heads.value), latent_dim=int(self.latent_dim.value),
                    lr=float(f"{self.lr.value:.1e}"), steps=int(self.steps.value),
                    batch_size=int(self.batch_size.value))

    def validate(self, change=None) -> list:
        """Check the settings (called on every change): a clear message and a disabled
        Train button while they cannot work; a summary of the model when they can."""
        problems = check_settings(**self.settings())
        self.train_button.disabled = bool(problems) or self.running
        if problems:
            self.message.value = _message("Cannot train: " + " ".join(problems), error=True)
        elif not self.running:
            s = self.settings()
            with torch.random.fork_rng(devices=[]):
                params = u.count_parameters(build_model(s["variant"], s["num_latents"],
                                                        s["num_heads"], s["latent_dim"]))
            self.message.value = _message(
                f"Ready: {params:,} parameters, {s['steps']} steps of {s['batch_size']} "
                f"images ({self.image_size} px). Press Train.")
        return problems

    # -- training ----------------------------------------------------------
    def on_train_clicked(self, button=None) -> Optional[dict]:
        """Build the model, train it with a live plot, then show predictions.
        Any error ends up as a message in the panel, never as a traceback."""
        if self.running or self.validate():
            return None
        s = self.settings()
        self.running, self.error = True, None
        self.train_button.disabled = True
        for w in self.settings_widgets:
            w.disabled = True
        self.progress.max, self.progress.value = s["steps"], 0
        self.progress.bar_style = ""
        self.history = None
        clear(self.live_out)                     # no plots of an earlier run stay on show
        clear(self.prediction_out)
        try:
            torch.manual_seed(self.seed)
            self.model = build_model(s["variant"], s["num_latents"], s["num_heads"],
                                     s["latent_dim"])
            if self.heldout is None:
                self.heldout = u.make_heldout_set(self.heldout_size, self.image_size)
            self._redraw_every = max(1, s["steps"] // self.redraws)
            self.live_figure = u.plot_history(_empty_history(), title="Training (live)")
            plt.close(self.live_figure)          # redrawn below; never drawn a second time
            self.message.value = _message("Training...")
            self.history = u.train(self.model, steps=s["steps"], batch_size=s["batch_size"],
                                   lr=s["lr"], image_size=self.image_size, seed=self.seed,
                                   heldout=self.heldout,
                                   eval_every=max(1, s["steps"] // self.evaluations),
                                   callback=self.on_step, progress=False)
            self._draw_live(self.history, final=True)
            self._show_predictions()
            h = self.history
            stopped = " (stopped early)" if h["interrupted"] else ""
            self.message.value = _message(
                f"Done{stopped}: {h['steps_done']} steps (batch {s['batch_size']}, lr "
                f"{s['lr']:.2g}) in {h['seconds']:.1f} s on {h['device']}, held-out mIoU "
                f"{h['miou'][-1]:.3f}.")
            self.progress.bar_style = "success"
        except Exception as error:  # noqa: BLE001 - shown in the panel, not as a traceback
            self.error = f"{type(error).__name__}: {error}"
            self.message.value = _message(f"Training failed: {self.error}", error=True)
            self.progress.bar_style = "danger"
        except KeyboardInterrupt:   # the stop button outside u.train's own loop
            self.error = "interrupted"
            self.message.value = _message("Stopped before the run was complete.", error=True)
            self.progress.bar_style = "warning"
        finally:
            self.running = False
            for w in self.settings_widgets:
                w.disabled = False
            self.train_button.disabled = bool(check_settings(**self.settings()))
        return self.history

    def on_step(self, step: int, history: dict) -> None:
        """u.train's callback: move the progress bar, redraw the live plot every few steps."""
        self.progress.value = step
        if step % self._redraw_every == 0 and step < self.progress.max:
            self._draw_live(history)

    def _draw_live(self, history: dict, final: bool = False) -> None:
        title = "Training: done" if final else f"Training: step {history['steps_done']}"
        u.plot_history(history, title=title, fig=self.live_figure)
        show_in(self.live_out, self.live_figure)

    def _show_predictions(self) -> None:
        images, labels = self.heldout
        n = self.shown_images
        predictions = u.predict(self.model, images[:n])
        self.prediction_figure = u.plot_predictions(
            images[:n], labels[:n], predictions, max_images=n,
            title=f"Held-out predictions (mIoU over {len(images)} images: "
                  f"{self.history['miou'][-1]:.2f})")
        plt.close(self.prediction_figure)
        show_in(self.prediction_out, self.prediction_figure)


def _empty_history() -> dict:
    return {"step": [], "loss": [], "eval_step": [], "miou": [], "steps_done": 0}


def training_panel(**options) -> widgets.VBox:
    """The training panel of notebook 05 (see TrainingPanel for the options).
    Returns the VBox to display; its `.controller` is the TrainingPanel.

    Taught in notebook 05, section "7. Try it yourself: the training panel".
    """
    enable_colab_widgets()
    return TrainingPanel(**options).widget


# ---------------------------------------------------------------------------
# The expert browser (notebook 06)
# ---------------------------------------------------------------------------

VIEWS = ("latent -> pixels heatmap", "pixel -> expert weight", "pixel -> expert argmax map")


class ExpertBrowser:
    """Browse samples, experts (latents) and heads of a trained model's attention.

    Widgets (attributes): sample, expert, head, view, out; `widget` is the whole browser.
    Callback: redraw(change=None). The figure (`figure`) is created once and redrawn.

    Views, for the chosen sample, head ("mean" = the average over heads) and expert k:
      latent -> pixels heatmap     where expert k reads the image (its weights over pixels)
      pixel -> expert weight       how much each pixel reads expert k
      pixel -> expert argmax map   which expert each pixel reads most (k outlined)

    Taught in notebook 06, section "9. Explore it yourself".
    """

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor):
        if images.dim() != 4 or labels.dim() != 3 or len(images) != len(labels) \
                or len(images) == 0:
            raise ValueError(f"expert_browser needs images [B, C, H, W] and labels [B, H, W] "
                             f"with B >= 1; got {tuple(images.shape)} and {tuple(labels.shape)}.")
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits, attention = model(images.to(device), return_attention=True)
        model.train(was_training)
        if attention.get("latent") is None or attention.get("pixel") is None:
            raise ValueError("this model has no attention to browse (built with "
                             "attention=False?); use a model with latent attention.")
        self.images, self.labels = images.cpu(), labels.cpu()
        self.predictions = logits.argmax(1).cpu()
        self.latent_attention = attention["latent"].cpu()   # [B, heads, K, N]
        self.pixel_attention = attention["pixel"].cpu()     # [B, heads, N, K]
        B, heads, K, N = self.latent_attention.shape
        H, W = images.shape[-2:]
        self.grid = (H // 4, W // 4)
        if self.grid[0] * self.grid[1] != N:
            raise ValueError(f"attention has {N} tokens, not the {self.grid} grid of a "
                             f"{H}x{W} image at stride 4.")
        self.num_classes = getattr(model, "num_classes", 4)

        self.sample = widgets.IntSlider(value=0, min=0, max=B - 1, description="sample",
                                        style=_WIDE)
        self.expert = widgets.IntSlider(value=0, min=0, max=K - 1, description="expert",
                                        style=_WIDE)
        self.head = widgets.Dropdown(options=[("mean", -1)] + [(f"head {h}", h)
                                                               for h in range(heads)],
                                     value=-1, description="head", style=_WIDE)
        self.view = widgets.Dropdown(options=list(VIEWS), value=VIEWS[0], description="view",
                                     style=_WIDE, layout=widgets.Layout(width="320px"))
        self.out = widgets.Output()
        self.figure, _ = plt.subplots(1, 4, figsize=(10, 2.9))
        plt.close(self.figure)                  # redrawn in place; never drawn twice
        u.class_legend(self.figure, self.num_classes)
        self._laid_out = False
        for w in (self.sample, self.expert, self.head, self.view):
            w.observe(self.redraw, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.sample, self.expert]),
                                    widgets.HBox([self.head, self.view]), self.out])
        self.widget.controller = self
        self.widget.add_class("latentseg-expert-browser")
        self.redraw()

    def _weights(self, attention: torch.Tensor) -> torch.Tensor:
        b, h = self.sample.value, self.head.value
        return attention[b].mean(0) if h < 0 else attention[b, h]

    def redraw(self, change=None) -> None:
        """Redraw the figure for the current sample, expert, head and view."""
        b, k = self.sample.value, self.expert.value
        K = self.latent_attention.shape[2]
        head_name = "mean over heads" if self.head.value < 0 else f"head {self.head.value}"
        h, w = self.grid
        H, W = self.images.shape[-2:]
        extent = (-0.5, W - 0.5, H - 0.5, -0.5)
        image_ax, truth_ax, pred_ax, view_ax = self.figure.axes[:4]
        for ax in (image_ax, truth_ax, pred_ax, view_ax):
            ax.clear()
        u.show_image(image_ax, self.images[b])
        u.show_labels(truth_ax, self.labels[b], self.num_classes)
        u.show_labels(pred_ax, self.predictions[b], self.num_classes)
        image_ax.set_title(f"sample {b}", fontsize=9)
        truth_ax.set_title("truth", fontsize=9)
        pred_ax.set_title("prediction", fontsize=9)
        gray = self.images[b].clamp(0, 1).mean(0).numpy()
        view_ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
        if self.view.value == VIEWS[0]:
            m = self._weights(self.latent_attention)[k].reshape(h, w)          # [h, w]
            view_ax.imshow(m.numpy(), cmap="magma", alpha=0.75, extent=extent,
                           interpolation="nearest")
            title = f"expert {k} reads (max {float(m.max()):.3f})"
        elif self.view.value == VIEWS[1]:
            m = self._weights(self.pixel_attention)[:, k].reshape(h, w)        # [h, w]
            view_ax.imshow(m.numpy(), cmap="viridis", vmin=0, vmax=1, alpha=0.8,
                           extent=extent, interpolation="nearest")
            title = f"pixels reading expert {k} (mean {float(m.mean()):.2f})"
        else:
            winner = self._weights(self.pixel_attention).argmax(-1).reshape(h, w)  # [h, w]
            view_ax.imshow(winner.numpy(), cmap="tab20", vmin=0, vmax=max(K - 1, 1),
                           alpha=0.8, extent=extent, interpolation="nearest")
            mine = (winner == k).float().numpy()
            if 0 < mine.sum() < mine.size:
                xs = (torch.arange(w) + 0.5) * W / w - 0.5
                ys = (torch.arange(h) + 0.5) * H / h - 0.5
                view_ax.contour(xs.numpy(), ys.numpy(), mine, levels=[0.5], colors="white",
                                linewidths=1.5)
            title = f"expert {k} wins {mine.mean():.0%} of pixels"
        view_ax.set_xticks([]), view_ax.set_yticks([])
        view_ax.set_title(title, fontsize=9)
        self.figure.suptitle(f"{self.view.value}, {head_name}", fontsize=10)
        if not self._laid_out:            # the layout does not change between redraws
            self.figure.tight_layout(rect=(0, 0.08, 1, 0.98))
            self._laid_out = True
        show_in(self.out, self.figure)


def expert_browser(model: torch.nn.Module, images: torch.Tensor,
                   labels: torch.Tensor) -> widgets.VBox:
    """Notebook 06's browser of what each expert and head looks at.

    model: a SegmentationModel or LatentSegNet with attention; images [B, 3, H, W] and
    labels [B, H, W] (H, W multiples of 4). Returns the VBox to display; its `.controller`
    is the ExpertBrowser.

    Taught in notebook 06, section "9. Explore it yourself".
    """
    enable_colab_widgets()
    return ExpertBrowser(model, images, labels).widget


# ---------------------------------------------------------------------------
# The latent masks (notebook 08)
# ---------------------------------------------------------------------------

class LatentMasks:
    """Pick a latent of a mask head (u.MaskLatentSegNet) and see its mask over a few images.

    Widgets (attributes): latent (a slider), out; `widget` is the whole browser. Callback:
    redraw(change=None). The figure (`figure`) is created once and redrawn: one panel per
    image (at most max_images), the latent's mask (sigmoid, 0 to 1) over the image in grey,
    titled with the latent's most likely answer in that image (a class or "no object") and
    its probability. `probabilities` [B, K, C + 1] and `masks` [B, K, H, W] hold what is shown.

    Taught in notebook 08, section "6. Explore it yourself: each latent's mask".
    """

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, max_images: int = 6):
        if not hasattr(model, "predict_masks"):
            raise ValueError(f"latent_masks needs a mask head with predict_masks, such as "
                             f"u.MaskLatentSegNet; got {type(model).__name__}.")
        if images.dim() != 4 or len(images) == 0:
            raise ValueError(f"latent_masks needs images [B, C, H, W] with B >= 1; got "
                             f"{tuple(images.shape)}.")
        images = images[:max_images]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        with torch.no_grad():
            class_logits, mask_logits = model.predict_masks(images.to(device))
        model.train(was_training)
        self.images = images.cpu()
        self.probabilities = class_logits.softmax(-1).cpu()      # [B, K, C + 1]
        self.masks = mask_logits.sigmoid().cpu()                  # [B, K, H, W]
        B, K = self.masks.shape[:2]
        num_classes = self.probabilities.shape[-1] - 1
        names = (list(u.CLASS_NAMES) if num_classes == len(u.CLASS_NAMES)
                 else [f"class {c}" for c in range(num_classes)])
        self.answer_names = names + ["no object"]

        self.latent = widgets.IntSlider(value=0, min=0, max=K - 1, description="latent",
                                        style=_WIDE)
        self.out = widgets.Output()
        self.figure, axes = plt.subplots(1, B + 1, figsize=(1.9 * B + 0.7, 2.5),
                                         gridspec_kw={"width_ratios": [1] * B + [0.07]})
        plt.close(self.figure)                  # redrawn in place; never drawn twice
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize
        self.figure.colorbar(ScalarMappable(Normalize(0, 1), cmap="magma"), cax=axes[-1],
                             label="mask")
        self._laid_out = False
        self.latent.observe(self.redraw, names="value")
        self.widget = widgets.VBox([self.latent, self.out])
        self.widget.controller = self
        self.widget.add_class("latentseg-latent-masks")
        self.redraw()

    def titles(self) -> list:
        """The panel titles for the current latent: its most likely answer and probability."""
        k = self.latent.value
        best = self.probabilities[:, k].argmax(-1)               # [B]
        return [f"{self.answer_names[int(c)]} {float(self.probabilities[b, k, c]):.2f}"
                for b, c in enumerate(best)]

    def redraw(self, change=None) -> None:
        """Redraw the figure for the current latent."""
        k = self.latent.value
        B = len(self.images)
        for b, (ax, title) in enumerate(zip(self.figure.axes[:B], self.titles())):
            ax.clear()
            ax.imshow(self.images[b].clamp(0, 1).mean(0).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.imshow(self.masks[b, k].numpy(), cmap="magma", vmin=0, vmax=1, alpha=0.8,
                      interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(title, fontsize=9)
        self.figure.suptitle(f"latent {k}: its mask over each image; above each, its most likely "
                             "answer there and its probability", fontsize=10)
        if not self._laid_out:            # the layout does not change between redraws
            self.figure.tight_layout(rect=(0, 0, 1, 0.95))
            self._laid_out = True
        show_in(self.out, self.figure)


def latent_masks(model: torch.nn.Module, images: torch.Tensor) -> widgets.VBox:
    """Notebook 08's browser of a mask head's latents: a slider picks the latent; its mask
    (sigmoid) is drawn over each of the first six images, with its class probability in the
    title.

    model: a mask head with predict_masks (u.MaskLatentSegNet); images [B, 3, H, W].
    Returns the VBox to display; its `.controller` is the LatentMasks.

    Taught in notebook 08, section "6. Explore it yourself: each latent's mask".
    """
    enable_colab_widgets()
    return LatentMasks(model, images).widget
