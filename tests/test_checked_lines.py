"""The audit of every line that nbval compares in notebooks 05-09 (cells tagged
nbval-check-output). A compared line must hold on any machine and for any training run, so each
one is either

- STRUCTURAL: a fact that no training run changes (shapes, counts, a configuration, equality
  with the module, a toy computation, the data), or
- a verdict about a trained model that the committed multi-seed results (benchmarks/results/,
  three seeds) give the same way on every seed: the test recomputes it seed by seed from the
  results file and requires the printed verdict to be that one.

A new compared line fails here until it is audited; a verdict that some seed contradicts fails
too: print it unchecked and read it in the prose as the copy's number, beside the spread.
"""
import json
import re
from pathlib import Path

import pytest

from notebook_cells import code_cells, is_checked, text_of

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NOTEBOOKS = ["05_training", "06_visualization", "07_beyond", "08_mask_experts", "09_finer_experts"]
STRUCTURAL = "structural"


def rows(name: str) -> list:
    data = json.loads((RESULTS / f"{name}.json").read_text())
    return data["results"] if "results" in data else data["rows"]


def row(name: str, **match) -> dict:
    found = [r for r in rows(name) if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (name, match, len(found))
    return found[0]


def ablation_row(prefix: str) -> dict:
    data = json.loads((RESULTS / "ablation.json").read_text())
    found = [r for r in data["results"] if r["model"].startswith(prefix)]
    assert len(found) == 1, prefix
    return found[0]


# Per-seed verdicts, each from the committed results of the same recipe as the notebook's run.
def final_miou() -> list:            # u.LatentSegNet(), 800 steps, shapes test set
    return row("robustness_test", model="final", data="shapes")["miou"]


def tutorial_miou() -> list:         # the tutorial's model, 300 steps (05's ABLATION_STEPS), and 800
    return ablation_row("0 ")["miou"] + row("robustness_test", model="tutorial", data="shapes")["miou"]


def mean_ablation_cost() -> list:    # mIoU lost when the reading is replaced by its mean
    r = row("robustness_test", model="final", data="shapes")
    return [m - a["mean_ablated_miou"] for m, a in zip(r["miou"], r["measured"])]


def which_shape_share() -> list:     # notebook 06's "which shape" share of the main expert
    return [m["mi_which_shape"] for m in row("mask_experts", model="final", data="shapes")["measured"]]


def mask_head(key: str) -> list:     # the mask head with notebook 08's recipe, shapes test set
    return [m[key] for m in row("mask_experts", model="mask-head", data="shapes")["measured"]]


def components_pq() -> list:         # connected components of LatentSegNet()'s class map
    return [m["components_pq"] for m in row("mask_experts", model="final", data="shapes")["measured"]]


AUDIT = [   # (notebook, the line's start (a regex), STRUCTURAL or per-seed verdicts)
    # 05
    ("05_training", r"tutorial model stalls below 0\.5 mIoU", lambda: [m < 0.5 for m in tutorial_miou()]),
    ("05_training", r"latents unchanged when the pixels are shuffled", STRUCTURAL),
    ("05_training", r"step 1[a-d]: ResidualBlock matches u\.AttentionBlock", STRUCTURAL),
    ("05_training", r"steps? [\w-]+ +\(encoder_depth=\d\): one encoder cell sees", STRUCTURAL),
    ("05_training", r"step 7 is u\.LatentSegNet\(\) with its defaults", STRUCTURAL),
    ("05_training", r"steps 1a-7 are the module's u\.ABLATION_STEPS", STRUCTURAL),
    ("05_training", r"FinalModel matches u\.LatentSegNet\(\) in eval mode", STRUCTURAL),
    ("05_training", r"same (training loss|encoder gradient)", STRUCTURAL),
    ("05_training", r"final model's held-out mIoU at least 0\.90", lambda: [m >= 0.90 for m in final_miou()]),
    ("05_training", r"final model beats the tutorial's by more than 0\.4",
     lambda: [f - t > 0.4 for f in final_miou() for t in tutorial_miou()]),
    ("05_training", r"saved the final model as latentsegnet\.pt", STRUCTURAL),
    ("05_training", r"loaded model gives the same predictions", STRUCTURAL),
    # 06 (analyses the committed checkpoint; the verdicts must hold for any run all the same)
    ("06_visualization", r"LatentSegNet: [\d,]+ parameters, 16 experts", STRUCTURAL),
    ("06_visualization", r"classes: background, circle, square, triangle", STRUCTURAL),
    ("06_visualization", r"held-out mIoU at least 0\.90", lambda: [m >= 0.90 for m in final_miou()]),
    ("06_visualization", r"agrees with the mIoU saved in the checkpoint", STRUCTURAL),
    ("06_visualization", r"(latent|pixel) weights +\(", STRUCTURAL),
    ("06_visualization", r"each (expert|token)'s weights sum to 1", STRUCTURAL),
    ("06_visualization", r"token classes \(", STRUCTURAL),
    ("06_visualization", r"experts tell the three shapes apart \(more than 25% explained\)",
     lambda: [s > 0.25 for s in which_shape_share()]),
    ("06_visualization", r"the mean reading still costs more than 0\.05 mIoU",
     lambda: [c > 0.05 for c in mean_ablation_cost()]),
    ("06_visualization", r"model is LatentSegNet with 16 experts", STRUCTURAL),
    ("06_visualization", r"attention shapes \[B, heads, K, N\]", STRUCTURAL),
    ("06_visualization", r"experts do not separate the shapes", lambda: [s < 0.25 for s in which_shape_share()]),
    ("06_visualization", r"the trained model depends on its attention",
     lambda: [c > 0.05 for c in mean_ablation_cost()]),
    # 07: untrained layers, equalities with nn.MultiheadAttention, formulas and parameter counts
    ("07_beyond", r"(MLA without rotary part|rank of MLA's key projection)", STRUCTURAL),
    ("07_beyond", r"(attention weights, absorb|outputs, absorb|weights are causal)", STRUCTURAL),
    ("07_beyond", r"(token-by-token with the latent cache|cache tensors|numbers cached per token)", STRUCTURAL),
    ("07_beyond", r"(layer +cache/token|tiny |DeepSeek-V2 sizes)", STRUCTURAL),
    # 08: a toy example, equalities with the module, shapes, data; the targets against the seeds
    ("08_mask_experts", r"softmax over the (pixels|latents)", STRUCTURAL),
    ("08_mask_experts", r"(object pixel 0|B's weight on object pixel 0|over the (pixels|latents), a change)", STRUCTURAL),
    ("08_mask_experts", r"(segment (object|background) -> latent|left over, and taught)", STRUCTURAL),
    ("08_mask_experts", r"(Block matches|class logits \(|parameters: [\d,]+ \(u\.LatentSegNet|MaskModel\.)", STRUCTURAL),
    ("08_mask_experts", r"(test set: images|test image 4: segments|segments_of matches)", STRUCTURAL),
    ("08_mask_experts", r"(match matches|the matching is the cheapest)", STRUCTURAL),
    ("08_mask_experts", r"(every image: as many matched|mask_loss matches|training_loss matches)", STRUCTURAL),
    ("08_mask_experts", r"(semantic scores \(|the scores sum over the classes|semantic_scores matches)", STRUCTURAL),
    ("08_mask_experts", r"(instance map \(|predict_instances matches)", STRUCTURAL),
    ("08_mask_experts", r"comparison model is u\.LatentSegNet\(\) with its defaults", STRUCTURAL),
    ("08_mask_experts", r"test class logits \(", STRUCTURAL),
    ("08_mask_experts", r"semantic test mIoU at least LatentSegNet\(\)'s minus 0\.03",
     lambda: [m >= f - 0.03 for m, f in zip(row("mask_experts", model="mask-head", data="shapes")["miou"],
                                            row("mask_experts", model="final", data="shapes")["miou"])]),
    ("08_mask_experts", r"PQ at least 0\.75 and at least the connected components",
     lambda: [p >= max(0.75, c) for p, c in zip(mask_head("pq"), components_pq())]),
    ("08_mask_experts", r"at least 90% of test objects claimed by exactly one latent",
     lambda: [c >= 0.90 for c in mask_head("claimed_once")]),
    ("08_mask_experts", r"(stages predicted with deep supervision|may_read matches the module)", STRUCTURAL),
    ("08_mask_experts", r"(over the latents, latents compete|the toy matching leaves|our block, mask head)", STRUCTURAL),
    ("08_mask_experts", r"(mask head outputs \[B, K, C \+ 1\]|every test object has a verdict)", STRUCTURAL),
    # 09: shapes, equalities with the module, untrained routing counts and formulas
    ("09_finer_experts", r"pixel tokens \(", STRUCTURAL),
    ("09_finer_experts", r"(16 x 64 is u\.LatentSegNet\(\)|WidthBlock\(64, 64, 64\) is u\.AttentionBlock)", STRUCTURAL),
    ("09_finer_experts", r"(layer +experts|conventional |fine-grained, m = 4|DeepSeekMoE, 1 shared|output shape)", STRUCTURAL),
]


def checked_lines(name: str) -> list:
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    return [line for cell in code_cells(nb) if is_checked(cell)
            for line in text_of(cell["outputs"]).splitlines() if line.strip()]


def audit_of(name: str, line: str) -> list:
    return [(pattern, evidence) for notebook, pattern, evidence in AUDIT
            if notebook == name and re.match(pattern, line)]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_compared_line_is_audited(name):
    lines = checked_lines(name)
    assert lines, f"{name}: no compared line found"
    unaudited = [line for line in lines if not audit_of(name, line)]
    assert not unaudited, (f"{name}: compared lines with no entry in this file's AUDIT (add one: "
                           f"structural, or per-seed verdicts from benchmarks/results): {unaudited}")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_verdict_about_a_trained_model_holds_on_every_seed(name):
    for line in checked_lines(name):
        for pattern, evidence in audit_of(name, line):
            if evidence == STRUCTURAL:
                continue
            printed = re.search(r": (True|False)$", line)
            assert printed, f"{name}: a verdict line must end in ': True' or ': False': {line}"
            per_seed = evidence()
            assert len(per_seed) >= 3, f"{name}: fewer than three seeds behind {line!r}"
            assert set(per_seed) == {printed.group(1) == "True"}, \
                (f"{name}: {line!r} is compared, but the committed seeds give {per_seed}: "
                 "print it unchecked and read it in the prose as this copy's number")


def test_every_audit_entry_is_used():
    for notebook, pattern, _ in AUDIT:
        assert any(re.match(pattern, line) for line in checked_lines(notebook)), \
            f"{notebook}: no compared line matches {pattern!r}: remove the entry"


def test_a_verdict_that_one_seed_contradicts_is_caught(monkeypatch):
    """Planted: a line that seed 0 passes and the others fail."""
    entry = ("06_visualization", r"planted verdict", lambda: [True, False, False])
    monkeypatch.setitem(globals(), "AUDIT", AUDIT + [entry])
    monkeypatch.setitem(globals(), "checked_lines", lambda name: ["planted verdict: True"])
    with pytest.raises(AssertionError, match="committed seeds give"):
        test_every_verdict_about_a_trained_model_holds_on_every_seed("06_visualization")
