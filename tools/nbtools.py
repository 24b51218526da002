"""What the notebook tools share: where the notebooks are, the setup cell, the Colab badges,
the run time a notebook's title states, and writing a notebook together with its .py pair."""
import os
import re

import jupytext
import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def series_notebooks() -> "list[str]":
    """Paths of the series' notebooks in order (01_..., 02_..., ...)."""
    return sorted(os.path.join(NOTEBOOKS, name) for name in os.listdir(NOTEBOOKS)
                  if re.fullmatch(r"\d\d_\w+\.ipynb", name))


def pair_of(ipynb_path: str) -> str:
    """The jupytext percent-format .py paired with a notebook."""
    return ipynb_path[: -len(".ipynb")] + ".py"


def write_with_pair(nb, ipynb_path: str) -> None:
    """Write the notebook and its .py pair (same cells; the .py holds no outputs)."""
    nbformat.validate(nb)
    nbformat.write(nb, ipynb_path)
    jupytext.write(nb, pair_of(ipynb_path), fmt="py:percent")


def setup_cell_source() -> str:
    """The series' shared first code cell, word for word (no trailing newline)."""
    with open(os.path.join(NOTEBOOKS, ".setup_cell.txt")) as f:
        return f.read().rstrip("\n")


def repository_and_ref() -> "tuple[str, str]":
    """("owner/name", "ref") of the release the setup cell installs the modules from.

    The repository is set in one place, the setup cell's LATENTSEG_PACKAGE; the Colab badges
    open the notebooks from the same repository and ref, so notebook and module match.
    """
    match = re.search(r'"git\+https://github\.com/([^/"]+/[^/@"]+)@([^"]+)"', setup_cell_source())
    if match is None:
        raise ValueError("notebooks/.setup_cell.txt: LATENTSEG_PACKAGE is not of the form "
                         "git+https://github.com/OWNER/NAME@TAG; fix it there, then run "
                         "python tools/sync_setup_cell.py")
    return match.group(1), match.group(2)


def colab_badge(name: str) -> str:
    """Markdown for an Open-in-Colab badge that opens notebooks/<name> of the pinned release."""
    repo, ref = repository_and_ref()
    url = f"https://colab.research.google.com/github/{repo}/blob/{ref}/notebooks/{name}"
    return f"[![Open In Colab]({COLAB_BADGE_IMAGE})]({url})"


def with_colab_badge(markdown: str, name: str) -> str:
    """The notebook's first markdown cell with its badge as the first line (replacing an old one)."""
    lines = markdown.split("\n")
    if lines and lines[0].startswith("[![Open In Colab]"):
        lines = lines[1:]
        while lines and not lines[0].strip():
            lines = lines[1:]
    return colab_badge(name) + "\n\n" + "\n".join(lines)


_NUMBERS = {"a": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
            "seven": 7, "eight": 8, "nine": 9, "ten": 10, "a few": 3}


def stated_run_time(nb) -> float:
    """Seconds that the notebook's title cell states as its run time on a quiet 2-core CPU:
    the first "under N" or "about N" seconds/minutes after "**Run time:**"."""
    title = next(c for c in nb.cells if c.cell_type == "markdown").source
    match = re.search(r"\*\*Run time:\*\*.*?\b(?:under|about|at most)\s+"
                      r"(\d+(?:\.\d+)?|a few|[a-z]+)\s+(seconds?|minutes?)", title, re.S)
    if match is None:
        raise ValueError("the title cell states no run time: write '**Run time:** about N "
                         "seconds (or minutes) on a quiet 2-core CPU'")
    amount, unit = match.groups()
    value = float(amount) if amount[0].isdigit() else _NUMBERS[amount]
    return value * (60 if unit.startswith("minute") else 1)


# ---------------------------------------------------------------------------
# The time guard's yardstick: how fast is this machine, compared with the one that measured
# the notebooks' run times? A fixed PyTorch workload that uses none of the series' code (a
# slower model in the module must not make the yardstick slower too), timed in a fresh Python
# process with the environment's thread settings, as a notebook's kernel runs.
# ---------------------------------------------------------------------------
REFERENCE_FILE = os.path.join(ROOT, "tools", "reference_times.json")
REFERENCE_FILE_VARIABLE = "LATENTSEG_REFERENCE_TIMES"   # another file, for the guard's own test


def reference_workload() -> None:
    """Thirty training steps of a small convolution-and-attention network on random 64x64 images,
    the kind of arithmetic the notebooks do (about a second on a 2-core CPU)."""
    import torch
    import torch.nn as nn

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 64, 64, generator=generator)
    targets = torch.randint(0, 4, (16, 64, 64), generator=generator)
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, padding=1, stride=4), nn.ReLU())
    attention = nn.MultiheadAttention(64, 4, batch_first=True)
    latents = nn.Parameter(torch.randn(1, 16, 64))
    head = nn.Conv2d(64, 4, 1)
    parameters = [*conv.parameters(), *attention.parameters(), latents, *head.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    for _ in range(30):
        features = conv(images)                                        # [16, 64, 16, 16]
        tokens = features.flatten(2).transpose(1, 2)                   # [16, 256, 64]
        read, _ = attention(latents.expand(16, -1, -1), tokens, tokens)
        written, _ = attention(tokens, read, read)
        logits = head((tokens + written).transpose(1, 2).reshape(16, 64, 16, 16))
        logits = nn.functional.interpolate(logits, size=64)
        loss = nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def time_reference_workload(repeats: int = 5) -> float:
    """Fastest of `repeats` timings of `reference_workload` in a fresh Python process, after one
    warm-up run: the fastest is the one least disturbed by whatever else the machine does."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, os.path.abspath(__file__), "--time-workload",
                             str(repeats)], capture_output=True, text=True, check=True, timeout=600)
    return float(result.stdout.strip().splitlines()[-1])


def _time_workload_here(repeats: int) -> float:
    import time

    reference_workload()                   # warm-up: first-call allocations, lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        reference_workload()
        times.append(time.perf_counter() - start)
    return min(times)


def read_reference_times() -> dict:
    """{"workload_seconds": s, "notebooks": {name: seconds}, ...}: what the reference machine
    measured (tools/execute_notebooks.py --record writes it)."""
    import json

    path = os.environ.get(REFERENCE_FILE_VARIABLE) or REFERENCE_FILE
    with open(path) as f:
        return json.load(f)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--time-workload"]:
        print(_time_workload_here(int(sys.argv[2])))
