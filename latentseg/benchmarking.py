"""What the scripts in benchmarks/ share: their common flags, one schema of run metadata,
`--merge` of results files from parts run side by side, and the writers of their results
(JSON, markdown, PNG) and of a plain-text table. Also `peak_memory_bytes`, the CPU memory
measurement that notebook 02 uses.

A script's results file is its run metadata (`run_metadata`) plus "results", its rows:
`{"command": ..., "date": ..., "machine": ..., ..., "results": [row, ...]}`.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import re
import sys

import torch

MERGE_MUST_MATCH = ("split", "steps")   # what the parts of one grid have in common
PER_SEED = ("miou", "measured")           # a row's lists with one entry per seed


# ---------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------

def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive(text: str) -> int:
    """argparse type: a whole number of at least 1 (else a message that says so)."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def non_negative(text: str) -> int:
    """argparse type: a whole number of 0 or more (else a message that says so)."""
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


class _Seeds(argparse.Action):
    """--seeds: refuses a list that repeats a seed."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(set(values)) != len(values):
            parser.error(f"argument --seeds: {values} repeats a seed")
        setattr(namespace, self.dest, values)


def add_common_flags(parser: argparse.ArgumentParser, results: str, *, steps: int | None = None,
                     threads: int = 0, merge: bool = True, smoke: str | None = None) -> None:
    """Add the benchmarks' common flags to `parser`.

    Always --out (default: `results`, the folder the script writes to) and --threads (torch's
    CPU threads, default `threads`; 0 keeps torch's default). With `steps` (the default number
    of training steps), also --steps and --seeds (default 0 1 2, no repeats); with `merge`,
    --merge JSON [JSON ...]; with `smoke` (its help text), --smoke. Returns nothing.
    """
    shown = os.path.join(*os.path.normpath(results).split(os.sep)[-2:])   # e.g. benchmarks/results
    parser.add_argument("--out", default=results, help=f"folder for the results (default: {shown})")
    parser.add_argument("--threads", type=non_negative, default=threads,
                        help=f"CPU threads for torch (default: {threads}; 0 keeps torch's default, "
                             "one per core; 1 for several runs side by side or a shared CPU)")
    if steps is not None:
        parser.add_argument("--steps", type=positive, default=steps,
                            help=f"training steps per model (default: {steps})")
        parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], action=_Seeds,
                            help="seeds, one training each (default: 0 1 2)")
    if merge:
        parser.add_argument("--merge", nargs="+", metavar="JSON",
                            help="combine the results files of parts run side by side (same "
                                 "split, steps and seeds) into one, instead of training")
    if smoke:
        parser.add_argument("--smoke", action="store_true", help=smoke)


def make_parser(doc: str, results: str, **flags) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first paragraph as description (the rest kept as
    written), and the common flags (`add_common_flags(parser, results, **flags)`)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, results, **flags)
    return parser


def results_stem(args: argparse.Namespace, name: str) -> str:
    """The path, without extension, that a run writes to: OUT/name, or OUT/name_smoke for
    --smoke. Makes the folder OUT."""
    os.makedirs(args.out, exist_ok=True)
    return os.path.join(args.out, name + ("_smoke" if getattr(args, "smoke", False) else ""))


# ---------------------------------------------------------------------------
# Run metadata
# ---------------------------------------------------------------------------

def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` reports."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """The 1-minute load average, or None where the system has none."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def device_name(device: torch.device) -> str:
    """'cpu', 'mps' or 'cuda (the GPU's name)'."""
    device = torch.device(device)
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type


def run_metadata(script: str, argv: "list[str] | None", device, **extra) -> dict:
    """One run's metadata, the same keys for every benchmark.

    Takes the script's name (e.g. "ablation"), its arguments (None: sys.argv[1:]), the torch
    device it trains on, and any keys of its own (`extra`, which may also replace `command`).
    Returns {"command", "date" (local, ISO, seconds), "machine" ("<CPU>, <n> CPUs"), "device",
    "torch", "threads" (torch's CPU threads now), "python", "platform", **extra}.
    """
    argv = sys.argv[1:] if argv is None else argv
    return {"command": " ".join(["python", f"benchmarks/{script}.py", *argv]),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{cpu_name()}, {os.cpu_count()} CPUs", "device": device_name(device),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(), **extra}


def read_results(path: str) -> dict:
    """A results file as a dict in today's schema. Files written before the schema was shared
    are read too: train_budget.json kept its host in a "machine" dict (cpu, cpu_count,
    torch_threads, load, ...), whose keys move to the top level, as `run_metadata` has them;
    where mask_experts.json lacks split, steps or seeds, its rows' common value is taken."""
    with open(path) as f:
        data = json.load(f)
    rows = data.get("results") or [{}]
    for key in ("split", "steps", "seeds"):
        if key not in data and key in rows[0] and all(r.get(key) == rows[0][key] for r in rows):
            data[key] = rows[0][key]
    host = data.get("machine")
    if isinstance(host, dict):
        data = {**data, **{k: v for k, v in host.items() if k not in ("cpu", "cpu_count")},
                "machine": f"{host.get('cpu')}, {host.get('cpu_count')} CPUs",
                "threads": host.get("torch_threads"), "default_threads":
                host.get("torch_default_threads")}
    return data


# ---------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------

def _status_kb(field: str) -> int:
    """A field of /proc/self/status (VmRSS, VmHWM), in kB."""
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+) kB", status.read()).group(1))


def peak_memory_bytes(fn) -> "int | None":
    """Extra resident memory of this process at the peak of one call `fn()`, in bytes, as Linux
    counts it; None where Linux's counters are missing (macOS, Windows).

    It sees every buffer the call allocates, PyTorch's temporary ones included, not only what
    `fn` returns (Python's tracemalloc does not see PyTorch's tensors). How: glibc's
    `malloc_trim(0)` gives freed heap memory back to the system, so the call must map new pages;
    writing 5 to /proc/self/clear_refs resets the peak resident size (VmHWM) to the current one
    (VmRSS); the answer is VmHWM after the call minus VmRSS before it. `fn`'s result is dropped
    before returning. Resident memory is the CPU's; on a GPU use torch.cuda.max_memory_allocated.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)      # give freed memory back: fn() needs new pages
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")                      # reset the peak (VmHWM) to the current size
        before = _status_kb("VmRSS")
    except (OSError, AttributeError):
        return None
    result = fn()
    peak = _status_kb("VmHWM")
    del result
    return (peak - before) * 1024


# ---------------------------------------------------------------------------
# --merge
# ---------------------------------------------------------------------------

def _processes(part: dict) -> int:
    """How many processes produced a results file: 1, or what an earlier merge recorded."""
    found = re.match(r"(\d+) processes", part.get("run", ""))
    return int(found.group(1)) if found else 1


def _join_seeds(rows: "list[dict]") -> dict:
    """One row from the rows of one model on one data set that parts ran with other seeds:
    the per-seed lists (PER_SEED) in seed order, the seconds summed, mean, spread and worst
    recomputed. Two parts holding the same seed of the same row is an error (a ValueError)."""
    pairs = sorted((seed, i, r) for r in rows for i, seed in enumerate(r["seeds"]))
    seeds = [seed for seed, _, _ in pairs]
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"{rows[0]['model']} on {rows[0].get('data')} has seeds {seeds} "
                         "across the parts; each seed of a row may come from one part only")
    joined = dict(rows[0], seeds=seeds, seconds=sum(r.get("seconds", 0.0) for r in rows))
    for key in PER_SEED:
        if key in rows[0]:
            joined[key] = [r[key][i] for _, i, r in pairs]
    from latentseg.experiments import seed_summary
    return {**joined, **seed_summary(joined["miou"])}


def merge_results(paths: "list[str]", order) -> "tuple[dict, list[dict]]":
    """Combine results files of parts run side by side (`--merge`).

    Takes the files' paths and `order`, a function from a row to its sort key. Parts may hold
    other rows (models, data) or other seeds of the same rows (one process per seed);
    the rows of one model on one data set are joined seed by seed. Every part must have
    the first one's split and steps, and every merged row all the seeds of the merge; otherwise
    the error names the problem and the process exits with status 2. Returns (metadata, rows):
    the first part's metadata with the commands joined by " + " (each without its --out
    folder), "seeds" the union of the parts', "run" saying how many parts were merged and
    "models" (where parts record one) the union of theirs; the rows, joined and sorted.
    """
    parts = [read_results(path) for path in paths]
    first = parts[0]
    program = os.path.basename(sys.argv[0])
    for part, path in zip(parts, paths):
        if any(part.get(k) != first.get(k) for k in MERGE_MUST_MATCH):
            print(f"{program}: error: {path} has another split or steps than {paths[0]}; "
                  "merge only runs of one grid", file=sys.stderr)
            raise SystemExit(2)
    groups: dict = {}
    for row in (row for p in parts for row in p["results"]):
        groups.setdefault((row["model"], row.get("data")), []).append(row)
    seeds = sorted({s for p in parts for s in p.get("seeds", [])})
    try:
        rows = [_join_seeds(group) for group in groups.values()]
    except ValueError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        raise SystemExit(2)
    for row in rows:
        if row["seeds"] != seeds:
            print(f"{program}: error: {row['model']} on {row.get('data')} has seeds "
                  f"{row['seeds']}, the merge {seeds}; give every row all the seeds "
                  "(merge only runs of one grid)", file=sys.stderr)
            raise SystemExit(2)
    meta = {k: v for k, v in first.items() if k != "results"}
    # A part's --out is a scratch folder on the machine that ran it: not part of the recipe.
    meta.update(command=" + ".join(re.sub(r" --out \S+", "", p["command"]) for p in parts),
                seeds=seeds,
                run=f"{sum(_processes(p) for p in parts)} processes side by side, merged")
    if any("models" in p for p in parts):
        meta["models"] = {k: v for p in parts for k, v in p.get("models", {}).items()}
    return meta, sorted(rows, key=order)


# ---------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------

def write_json(path: str, meta: dict, rows: list) -> None:
    """Write {**meta, "results": rows} to `path` (indent 1)."""
    with open(path, "w") as f:
        json.dump({**meta, "results": rows}, f, indent=1)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no window)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def write_results(stem: str, meta: dict, rows: list, text: str, figure=None) -> str:
    """Write stem.json (`write_json`), stem.md (`text`) and, given a matplotlib figure,
    stem.png (80 dpi; the figure is closed). Returns `text`."""
    write_json(stem + ".json", meta, rows)
    with open(stem + ".md", "w") as f:
        f.write(text)
    if figure is not None:
        figure.savefig(stem + ".png", dpi=80)
        pyplot().close(figure)
    return text


def verdict_lines(checks) -> "list[str]":
    """Markdown bullets "- **PASS** text" from (verdict, text) pairs; a verdict is a bool
    (True: PASS, False: MISS) or its own word (PASS, MISS, info, ----)."""
    return [f"- **{('PASS' if ok else 'MISS') if isinstance(ok, bool) else ok}** {text}"
            for ok, text in checks]



def unclaimed_breakdown(measured: "list[dict]") -> str:
    """How the objects not claimed once divide, as the mean share of all objects over seeds:
    "merged 16.7%, split 1.8%, ..." for the outcomes of `claim_outcomes` (largest first, none
    left out); "" for results measured before those outcomes were recorded."""
    from latentseg.panoptic import CLAIM_OUTCOMES
    if not measured or any(name not in m for m in measured for name in CLAIM_OUTCOMES[1:]):
        return ""
    shares = {name: sum(m[name] for m in measured) / len(measured) for name in CLAIM_OUTCOMES[1:]}
    return ", ".join(f"{name} {100 * share:.1f}%"
                     for name, share in sorted(shares.items(), key=lambda item: -item[1]))

def markdown_table(header, rows) -> "list[str]":
    """A markdown table's lines from a header and rows of strings; the first column is
    left-aligned, the others right-aligned."""
    return (["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
            + ["| " + " | ".join(row) + " |" for row in rows])


def print_table(header, rows) -> None:
    """Print a header and rows of strings as aligned columns (the first left-aligned, the
    others right-aligned), with a rule under the header."""
    rows = [tuple(header)] + [tuple(row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for j, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))
