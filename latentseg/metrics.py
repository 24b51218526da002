"""latentseg.metrics: the scores. confusion_matrix, per_class_iou, mean_iou,
pixel_accuracy (notebook 04), and the information measures of the experts' specialisation
(mutual_information, entropy, specialisation; notebook 06).
"""
from __future__ import annotations


import torch

from latentseg.checks import check_labels

__all__ = ["confusion_matrix", "per_class_iou", "mean_iou", "pixel_accuracy",
           "mutual_information", "entropy", "specialisation"]


def confusion_matrix(prediction: torch.Tensor, target: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """Counts [num_classes, num_classes]: row = true class, column = predicted class.

    prediction and target are label maps of the same shape (any shape, e.g. [B, H, W]).

    Taught in notebook 06, section "2. How good is it, and where does it go wrong?".
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(prediction.shape)} differs from target shape "
                         f"{tuple(target.shape)}; pass label maps (argmax over classes), not logits.")
    check_labels(target, num_classes)
    check_labels(prediction, num_classes)
    index = target.reshape(-1).long() * num_classes + prediction.reshape(-1).long()
    return torch.bincount(index.cpu(), minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class_iou(confusion: torch.Tensor) -> torch.Tensor:
    """IoU of each class from a confusion matrix: TP / (TP + FP + FN), [num_classes].

    A class absent from both prediction and truth has no IoU: its entry is NaN.

    Taught in notebook 04, section "3. The data needs spatial context".
    """
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(prediction: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean IoU over the classes present in prediction or truth (NaN classes skipped).

    Taught in notebook 01, section "3. Why stride 4?".
    """
    iou = per_class_iou(confusion_matrix(prediction, target, num_classes))
    return float(iou[~iou.isnan()].mean()) if (~iou.isnan()).any() else float("nan")


def pixel_accuracy(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of pixels whose predicted class equals the true class.

    Taught in notebook 01, section "3. Why stride 4?".
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(prediction.shape)} differs from target shape "
                         f"{tuple(target.shape)}.")
    return float((prediction == target).double().mean())


def mutual_information(a: torch.Tensor, b: torch.Tensor, num_a: int, num_b: int) -> float:
    """I(A; B) in nats from paired samples of two discrete variables (integer tensors of one
    shape, values in [0, num_a) and [0, num_b)).

    Taught in notebook 06, section "6. Do the experts specialise? Measured".
    """
    if a.shape != b.shape:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must be paired samples "
                         "of one shape.")
    a, b = a.flatten().long().cpu(), b.flatten().long().cpu()
    joint = torch.bincount(a * num_b + b, minlength=num_a * num_b)
    joint = joint.reshape(num_a, num_b).double() / max(1, a.numel())
    independent = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    seen = joint > 0
    return float((joint[seen] * (joint[seen] / independent[seen]).log()).sum())


def entropy(a: torch.Tensor, num_a: int) -> float:
    """H(A) in nats from samples of a discrete variable.

    Taught in notebook 06, section "6. Do the experts specialise? Measured".
    """
    p = torch.bincount(a.flatten().long().cpu(), minlength=num_a).double() / max(1, a.numel())
    return float(-(p[p > 0] * p[p > 0].log()).sum())


def specialisation(classes: torch.Tensor, owner: torch.Tensor, num_classes: int,
                   num_owners: int) -> dict:
    """How much a pixel's (or token's) owner, the expert or latent it reads most, tells about
    its true class: I(owner; class) / H(class), 0 when it tells nothing, 1 when it tells all.
    Three questions: "all classes", "object or background" (class 0 is background) and
    "which shape" (over the object pixels only). classes and owner: integer maps of one shape.

    Taught in notebook 06, section "6. Do the experts specialise? Measured".
    """
    objects = classes > 0
    shape = classes[objects] - 1

    def share(a, b, num_a):
        h = entropy(a, num_a)
        return mutual_information(a, b, num_a, num_owners) / h if h > 0 else float("nan")

    return {"all classes": share(classes, owner, num_classes),
            "object or background": share(objects.long(), owner, 2),
            "which shape": share(shape, owner[objects], num_classes - 1)}
