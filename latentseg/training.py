"""latentseg.training: training and evaluation, and checkpoints. get_device, predict,
evaluate, train (notebook 05's recipe: AdamW, warm-up and cosine decay, a seeded stream of
batches), and checkpoint_path, save_checkpoint and load_checkpoint (weights plus the config
that rebuilds the model; a LatentSegNet checkpoint from before its switches moved to
LatentSegNetAblation still loads when they were the final model's).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
import tempfile
import time
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from latentseg.ablation import AblationOptions, LatentSegNetAblation
from latentseg.baselines import PixelClassifier
from latentseg.checks import check_labels, check_positive
from latentseg.data import as_generator, make_shapes_batch
from latentseg.mask_head import MaskLatentSegNet
from latentseg.metrics import confusion_matrix, per_class_iou, pixel_accuracy
from latentseg.model import LatentSegNet
from latentseg.tutorial import SegmentationModel

__all__ = ["get_device", "predict", "evaluate", "train", "CHECKPOINT_DIR_VARIABLE",
           "checkpoint_path", "save_checkpoint", "load_checkpoint"]


def get_device() -> torch.device:
    """CUDA if present, then Apple's MPS, then the CPU.

    Taught in notebook 01, section "1. A real sample".
    """
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Predicted label maps [B, H, W] for images [B, C, H, W], in eval mode, batched.

    Taught in notebook 04, section "3. The data needs spatial context".
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(images[i:i + batch_size].to(device)).argmax(1).cpu()
           for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 64) -> dict:
    """Held-out scores: {"miou", "pixel_accuracy", "per_class_iou" [C], "confusion" [C, C]}.

    Taught in notebook 04, section "3. The data needs spatial context".
    """
    num_classes = model.num_classes
    check_labels(labels, num_classes)
    prediction = predict(model, images, batch_size)
    confusion = confusion_matrix(prediction, labels, num_classes)
    iou = per_class_iou(confusion)
    return {"miou": float(iou[~iou.isnan()].mean()),
            "pixel_accuracy": pixel_accuracy(prediction, labels),
            "per_class_iou": iou, "confusion": confusion}


def _check_training_settings(steps: int, batch_size: int, eval_every: int, lr: float,
                             schedule: str) -> None:
    check_positive(steps=steps, batch_size=batch_size, eval_every=eval_every)
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr={lr} must be a positive finite number, e.g. 3e-3.")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule={schedule!r}: use 'cosine' or 'constant'.")


def _evaluate_into(history: dict, model: nn.Module, heldout: Optional[tuple], step: int) -> None:
    """Score the held-out set (if any) and append the step and its mIoU to the history."""
    if heldout is not None:
        history["eval_step"].append(step)
        history["miou"].append(evaluate(model, *heldout)["miou"])


def _lr_schedule(optimizer, steps: int, schedule: str):
    """"cosine": a linear warm-up over the first 5% of the steps, then cosine decay to 0;
    "constant": the base learning rate throughout."""
    warmup = max(1, steps // 20)

    def lr_factor(step: int) -> float:
        if schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def _training_step(model: nn.Module, optimizer, scheduler, images: torch.Tensor,
                   labels: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
    """One optimiser step on one batch; the model's own training_loss if it has one (given
    any extra targets the data returned, such as instance maps), else cross-entropy.
    Returns the loss (before the step)."""
    if hasattr(model, "training_loss"):
        loss = model.training_loss(images, labels, *extra)
    else:
        loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss


def train(model: nn.Module, steps: int = 600, batch_size: int = 16, lr: float = 3e-3,
          image_size: int = 64, seed: int = 0, data: Callable = make_shapes_batch,
          heldout: Optional[tuple] = None, eval_every: int = 100, schedule: str = "cosine",
          weight_decay: float = 1e-4, callback: Optional[Callable] = None,
          device: "torch.device | str | None" = None, progress: bool = True) -> dict:
    """Train `model` in place with AdamW and cross-entropy on fresh batches from `data`.

    data(batch_size, image_size, seed=generator) -> (images [B, C, H, W], labels [B, H, W])
    (and any extra targets, e.g. instance maps, which go to the model's training_loss).
    heldout = (images, labels) is evaluated every `eval_every` steps and at the end.
    schedule: "cosine" (short linear warm-up, then cosine decay to 0) or "constant".
    callback(step, history), if given, is called after every step (for live plots).

    Stop-safe: an interrupt (KeyboardInterrupt, e.g. the notebook's stop button) ends
    training early and still returns the history; the model keeps what it learned.

    Side effects: it calls `torch.manual_seed(seed)`, which resets torch's global generator
    (dropout and any later `torch.rand` in the caller follow from `seed`), and it returns with
    the model in eval mode (call `model.train()` to train it further by hand).

    Returns the history: {"step", "loss" (per step), "eval_step", "miou" (held out),
    "seconds", "steps_done", "interrupted", "device"}.

    Taught in notebook 05, section "1. One budget for every model".
    """
    _check_training_settings(steps, batch_size, eval_every, lr, schedule)
    device = torch.device(device) if device is not None else get_device()
    torch.manual_seed(seed)
    generator = as_generator(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = _lr_schedule(optimizer, steps, schedule)
    history = {"step": [], "loss": [], "eval_step": [], "miou": [], "seconds": 0.0,
               "steps_done": 0, "interrupted": False, "device": str(device)}

    from tqdm.auto import tqdm
    start = time.perf_counter()
    # One refresh a second at most: in Jupyter every refresh is a widget message, and a cell that
    # sends thousands of them can overflow the kernel's output queue (nbval then loses the cell's end).
    bar = tqdm(range(steps), desc="training", disable=not progress, leave=True, mininterval=1.0)
    try:
        for step in bar:
            images, labels, *extra = data(batch_size, image_size, seed=generator)
            if step == 0:
                check_labels(labels, model.num_classes)
            loss = _training_step(model, optimizer, scheduler, images.to(device), labels.to(device),
                                  *(t.to(device) for t in extra))
            history["step"].append(step + 1)
            history["loss"].append(loss.item())
            history["steps_done"] = step + 1
            if (step + 1) % eval_every == 0 or step + 1 == steps:
                _evaluate_into(history, model, heldout, step + 1)
                if history["miou"]:
                    bar.set_postfix(loss=f"{loss.item():.3f}", miou=f"{history['miou'][-1]:.3f}")
            if callback is not None:
                callback(step + 1, history)
    except KeyboardInterrupt:
        history["interrupted"] = True
        if history["steps_done"] and history["eval_step"][-1:] != [history["steps_done"]]:
            _evaluate_into(history, model, heldout, history["steps_done"])
    finally:
        bar.close()
        model.eval()
        history["seconds"] = time.perf_counter() - start
    return history


_MODEL_CLASSES = {cls.__name__: cls for cls in (SegmentationModel, LatentSegNet, LatentSegNetAblation,
                                                 PixelClassifier, MaskLatentSegNet)}
# An option added after checkpoints were written: a config without it had it off.
_ADDED_OPTIONS = {"LatentSegNetAblation": {"colour_tokens": False}}
_CHECKPOINT_FORMAT = "latentseg-checkpoint-1"


CHECKPOINT_DIR_VARIABLE = "LATENTSEG_CHECKPOINT_DIR"


def checkpoint_path(name: str = "latentsegnet.pt") -> str:
    """Where the notebooks keep the checkpoint called `name`: `checkpoints/<name>`, next to the
    notebooks (the notebooks run in their own folder), or `<folder>/<name>` when the environment
    variable LATENTSEG_CHECKPOINT_DIR names a folder. The test suite sets it to a copy of the
    committed checkpoints for each notebook, so a notebook run under test never rewrites a
    committed file and never reads what another notebook retrained.

    Taught in notebook 05, section "5. Save it, load it back".
    """
    if not name or os.path.basename(name) != name:
        raise ValueError(f"checkpoint_path takes a file name such as 'latentsegnet.pt', got "
                         f"{name!r}; to use another folder, set {CHECKPOINT_DIR_VARIABLE}.")
    return os.path.join(os.environ.get(CHECKPOINT_DIR_VARIABLE) or "checkpoints", name)


def _holds(path: str, payload: dict) -> bool:
    """Whether the checkpoint file at `path` already holds exactly `payload`."""
    if not os.path.exists(path):
        return False
    try:
        old = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    if not isinstance(old, dict) or any(old.get(k) != payload[k]
                                        for k in ("format", "model_class", "config", "extra")):
        return False
    a, b = old.get("state_dict", {}), payload["state_dict"]
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                        and torch.equal(a[k], b[k]) for k in a)


def save_checkpoint(path: str, model: nn.Module, extra: Optional[dict] = None) -> None:
    """Write model weights plus the config that rebuilds it, atomically (temp file + rename),
    so an interrupted save never leaves a half-written checkpoint behind. A file that already
    holds exactly this checkpoint (same class, config, tensors and extra) is left untouched, so
    rerunning a seeded notebook does not change a committed file (torch.save's bytes differ
    from run to run even when the tensors do not).

    Taught in notebook 05, section "5. Save it, load it back".
    """
    name = type(model).__name__
    if name not in _MODEL_CLASSES:
        raise ValueError(f"save_checkpoint knows {sorted(_MODEL_CLASSES)}; got {name}.")
    payload = {"format": _CHECKPOINT_FORMAT, "model_class": name, "config": dict(model.config),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "extra": extra or {}}
    if _holds(path, payload):
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _current_config(path: str, name: str, config: dict) -> dict:
    """The saved config as today's class takes it. An option added after a checkpoint was
    written is absent from its config: the model is built as it was then (the option off),
    not with today's default. A LatentSegNet saved while it still had the ablation's switches
    (now LatentSegNetAblation's) loads when they are the final model's values; others raise."""
    config = {**_ADDED_OPTIONS.get(name, {}), **config}
    if name != "LatentSegNet":
        return config
    takes = inspect.signature(LatentSegNet).parameters
    final = dataclasses.asdict(AblationOptions())
    switches = {k: v for k, v in config.items() if k not in takes and k in final}
    if not switches:
        return config
    switches = {**_ADDED_OPTIONS["LatentSegNetAblation"], **switches}
    differ = {k: v for k, v in switches.items() if v != final[k]}
    if differ:
        raise ValueError(
            f"checkpoint {path!r} holds a LatentSegNet saved when it still had the ablation's "
            f"switches, and {differ} differ from the final model's "
            f"{ {k: final[k] for k in differ} }. LatentSegNet is now the final model alone; "
            "that model is u.LatentSegNetAblation with those options (the same parameter "
            "names): build it and load the checkpoint's state_dict, or train again.")
    return {k: v for k, v in config.items() if k not in switches}


def load_checkpoint(path: str, device: "torch.device | str | None" = None):
    """Rebuild a model saved by save_checkpoint; returns (model in eval mode, extra dict).

    Loads with weights_only=True, so no pickled code ever runs. A missing, corrupt or
    mismatched file raises an error that says which and what to do.

    Taught in notebook 05, section "5. Save it, load it back".
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}; train a model and save it first.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"checkpoint {path!r} is corrupt or not a latentseg checkpoint "
                         f"({type(error).__name__}); delete it and train again.") from error
    if not isinstance(payload, dict) or payload.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path!r} is not a latentseg checkpoint (expected format "
                         f"{_CHECKPOINT_FORMAT!r}); delete it and train again.")
    name = payload.get("model_class")
    if name not in _MODEL_CLASSES:
        raise ValueError(f"checkpoint {path!r} holds an unknown model class {name!r}.")
    config = _current_config(path, name, payload["config"])
    try:
        model = _MODEL_CLASSES[name](**config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint {path!r} holds a {name} config this version cannot build "
                         f"({error}); it was written by another version of latentseg_utils: "
                         "delete it and train again.") from error
    expected = model.state_dict()
    wrong_shapes = [f"{key} is {list(value.shape)}, the config gives {list(expected[key].shape)}"
                    for key, value in payload["state_dict"].items()
                    if key in expected and value.shape != expected[key].shape]
    if wrong_shapes:
        raise ValueError(f"checkpoint {path!r} does not match its config {name}("
                         f"{payload['config']}): {'; '.join(wrong_shapes[:3])}"
                         f"{' ...' if len(wrong_shapes) > 3 else ''}. The file was edited or "
                         "written by other code; delete it and train again.")
    result = model.load_state_dict(payload["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"checkpoint {path!r} does not match {name}({payload['config']}): "
                         f"missing {result.missing_keys[:5]}, unexpected "
                         f"{result.unexpected_keys[:5]}; delete it and train again.")
    device = torch.device(device) if device is not None else get_device()
    return model.to(device).eval(), payload.get("extra", {})
