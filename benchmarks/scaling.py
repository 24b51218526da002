"""Scaling: latent cross-attention against full self-attention over pixel tokens.

Measures forward+backward time and peak memory as the image grows, for three ways of
letting N pixel tokens (width 64, from the tutorial's encoder at stride 4, so an S x S
image gives N = (S/4)^2 tokens) exchange information:

  latent      u.LatentAttention(64, 64, 16, 4): K=16 learned latents (queries) read the
              N tokens (keys, values) with 4 heads. Work and memory ~ K*N.
  written     self-attention written out as the notebooks teach it, 4 heads of width 16:
              q, k, v projections, softmax(q k^T / sqrt(d)) v by hand, output projection.
              Holds the [B, 4, N, N] weight matrix in memory. Work and memory ~ N^2.
  fused       the same self-attention through torch.nn.functional.scaled_dot_product_attention,
              a fused kernel that may never hold the N x N matrix. Work ~ N^2, memory ~ N.

Peak memory is measured, not computed from shapes:
  * CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus
    torch.cuda.memory_allocated() just before the attention runs (inputs already allocated).
  * CPU: each (method, size) runs in a fresh subprocess; its peak resident size
    (resource.getrusage(...).ru_maxrss) after one forward+backward, minus its resident size
    measured just before the attention runs, after the inputs are allocated. Before that
    baseline the subprocess warms the kernels up on a tiny input, returns freed heap memory
    to the OS (glibc malloc_trim) and, where Linux allows it, resets the peak counter
    (/proc/self/clear_refs), so the peak belongs to the attention alone. While memory is
    measured, glibc gives every block of 64 KiB or more its own mmap (mallopt), so the
    resident size follows the live tensors instead of what the heap happened to keep.
Time: the median of --repeats forward+backward passes after one warm-up pass, on
--threads CPU threads (default 1: stable on a shared CPU).

Usage:
  python benchmarks/scaling.py                         # defaults: 64 128 192 256 320 px
  python benchmarks/scaling.py --sizes 64 128 --repeats 3 --out /tmp/results
  python benchmarks/scaling.py --smoke --out /tmp/smoke   # 32 and 64 px, 1 pass (scaling_smoke.*)
Writes OUT/scaling.md (table, targets, machine) and OUT/scaling.png (log-log plots).
Targets are reported as PASS/MISS lines; nothing here asserts on time.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import latentseg_utils as u
from latentseg import benchmarking as bm

HERE = os.path.dirname(os.path.abspath(__file__))

FEATURE_DIM = 64      # token width out of the tutorial's encoder
NUM_HEADS = 4
NUM_LATENTS = 16
STRIDE = 4            # the encoder halves the image twice
DEFAULT_SIZES = (64, 128, 192, 256, 320)
TARGET_SIZE = 256     # the memory target is judged at 256 x 256

METHODS = ("latent", "written", "fused")
LABELS = {
    "latent": "latent cross-attention (K=16)",
    "written": "self-attention, written out",
    "fused": "self-attention, fused SDPA",
}
COLORS = {"latent": "#0072B2", "written": "#D55E00", "fused": "#009E73"}   # Okabe-Ito
MARKERS = {"latent": "o", "written": "s", "fused": "^"}


# ---------------------------------------------------------------------------
# The modules measured
# ---------------------------------------------------------------------------

class SelfAttention(nn.Module):
    """Multi-head self-attention over N tokens: [B, N, dim] -> [B, N, dim].

    fused=False writes the attention out (softmax(q k^T / sqrt(d)) v, the [B, heads, N, N]
    weights held in memory, as the notebooks teach it); fused=True calls PyTorch's
    scaled_dot_product_attention on the same projections.
    """

    def __init__(self, dim: int = FEATURE_DIM, num_heads: int = NUM_HEADS, fused: bool = False):
        super().__init__()
        self.num_heads, self.head_dim, self.fused = num_heads, dim // num_heads, fused
        self.query_proj = nn.Linear(dim, dim)
        self.key_proj = nn.Linear(dim, dim)
        self.value_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:          # [B, N, D] -> [B, h, N, d]
        B, N, _ = x.shape
        return x.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q = self.split_heads(self.query_proj(x))
        k = self.split_heads(self.key_proj(x))
        v = self.split_heads(self.value_proj(x))
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)   # [B, h, N, N]
            weights = scores.softmax(dim=-1)
            out = weights @ v                                            # [B, h, N, d]
        return self.out_proj(out.transpose(1, 2).reshape(B, N, D))


def build(method: str) -> nn.Module:
    if method == "latent":
        return u.LatentAttention(FEATURE_DIM, FEATURE_DIM, NUM_LATENTS, NUM_HEADS)
    return SelfAttention(FEATURE_DIM, NUM_HEADS, fused=(method == "fused"))


def make_tokens(size: int, batch: int, device: torch.device) -> torch.Tensor:
    """Tokens [batch, (size/4)^2, 64] from the tutorial's encoder on a random image."""
    generator = torch.Generator().manual_seed(size)
    images = torch.rand(batch, 3, size, size, generator=generator)
    encoder = u.SimpleEncoder(3, FEATURE_DIM)
    with torch.no_grad():
        features = encoder(images)                                     # [B, 64, S/4, S/4]
    tokens = features.flatten(2).transpose(1, 2).contiguous()          # [B, N, 64]
    assert tokens.shape == (batch, (size // STRIDE) ** 2, FEATURE_DIM), tokens.shape
    return tokens.to(device).requires_grad_(True)


def step(module: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """One forward+backward pass; gradients are dropped first so every pass does the same."""
    module.zero_grad(set_to_none=True)
    tokens.grad = None
    out = module(tokens)
    out.sum().backward()
    return out


def sdpa_kernel_name(module: nn.Module, device: torch.device) -> str:
    """Which backward PyTorch records for SDPA here (flash / efficient / math ...)."""
    x = torch.rand(1, 64, FEATURE_DIM, device=device, requires_grad=True)
    q = module.split_heads(module.query_proj(x))
    out = F.scaled_dot_product_attention(q, q, q)
    return type(out.grad_fn).__name__ if out.grad_fn is not None else "none"


# ---------------------------------------------------------------------------
# Measuring one (method, size)
# ---------------------------------------------------------------------------

def _rss_kib() -> int:
    """Current resident size of this process in KiB (Linux /proc; else ru_maxrss)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return _maxrss_kib()


def _maxrss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak     # bytes on macOS, KiB on Linux


def _libc():
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6")                              # glibc (Linux)
    except OSError:
        return None


def _release_heap() -> None:
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3                          # glibc's mallopt codes


def _mmap_threshold(threshold: int) -> bool:
    """Blocks of at least `threshold` bytes get their own mmap, returned to the OS on free.

    glibc otherwise raises the threshold as blocks are freed (up to 32 MiB) and serves
    mid-sized tensors from a heap it keeps, so whether a new tensor adds to the resident
    size depends on what was freed before: a few MiB of noise on the small methods.
    A fixed 64 KiB threshold while memory is measured makes the peak RSS track the live
    tensors; 32 MiB (where glibc's own threshold ends up) while timing.
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold)
                and libc.mallopt(M_TRIM_THRESHOLD, 2 * threshold))


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")          # resets the peak RSS (VmHWM, ru_maxrss) to now
        return True
    except OSError:
        return False


def measure(method: str, size: int, batch: int, repeats: int, device: torch.device) -> dict:
    """Forward+backward median time (ms) and peak memory (MiB) of one method at one size."""
    fixed = device.type == "cpu" and _mmap_threshold(64 * 1024)
    torch.manual_seed(0)
    module = build(method).to(device)
    tokens = make_tokens(size, batch, device)
    result = {"method": method, "size": size, "N": tokens.shape[1], "batch": batch}
    if method == "fused":
        result["kernel"] = sdpa_kernel_name(module, device)
    # Warm the kernels up on a tiny input, so one-time library set-up is not counted.
    step(module, make_tokens(2 * STRIDE, batch, device))
    module.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        out = step(module, tokens)
        torch.cuda.synchronize()
        peak_bytes = torch.cuda.max_memory_allocated() - baseline
        result["memory_source"] = "torch.cuda.max_memory_allocated"
    else:
        _release_heap()
        reset = _reset_peak_rss()
        baseline_kib = _rss_kib()
        out = step(module, tokens)
        peak_bytes = (_maxrss_kib() - baseline_kib) * 1024
        result["memory_source"] = ("ru_maxrss - baseline RSS in a fresh subprocess"
                                   + ("" if fixed else ", allocator threshold not fixed")
                                   + ("" if reset else ", peak counter not resettable"))
        if fixed:
            _mmap_threshold(32 * 2 ** 20)
    result["peak_mib"] = max(peak_bytes, 0) / 2 ** 20
    del out

    times, cpu_times = [], []
    for i in range(repeats + 1):                   # the first pass is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        step(module, tokens)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    result["ms"] = 1000 * statistics.median(times)
    if device.type == "cpu":
        # CPU time of the process (all its threads): what the pass cost to compute, without
        # the waits for other work on a shared CPU that wall time includes.
        result["cpu_ms"] = 1000 * statistics.median(cpu_times)
    return result


def measure_in_subprocess(method: str, size: int, batch: int, repeats: int,
                          threads: int) -> dict:
    """CPU: a fresh Python process per measurement, so its peak RSS is this run's alone."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", method, str(size),
               "--batch", str(batch), "--repeats", str(repeats), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        if done.returncode < 0:
            reason = f"killed by signal {-done.returncode} (out of memory?)"
        return {"method": method, "size": size, "N": (size // STRIDE) ** 2, "batch": batch,
                "error": reason}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# Report: table, targets, machine, plot
# ---------------------------------------------------------------------------

def slope(results: list, method: str, key: str) -> float | None:
    """Least-squares slope of log(key) against log(N) over the sizes measured."""
    points = [(math.log(r["N"]), math.log(r[key])) for r in results
              if r["method"] == method and "error" not in r and r[key] > 0]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else None


def find(results: list, method: str, size: int) -> dict | None:
    for r in results:
        if r["method"] == method and r["size"] == size and "error" not in r:
            return r
    return None


def time_key(results: list) -> str:
    """The time the targets are judged on: CPU time where every run has it (CPU runs),
    else wall time (CUDA, where the host's CPU time says nothing about the GPU's work)."""
    ok = [r for r in results if "error" not in r]
    return "cpu_ms" if ok and all("cpu_ms" in r for r in ok) else "ms"


TIME_NAMES = {"cpu_ms": "CPU time", "ms": "wall time"}


def targets(results: list) -> list:
    """(PASS/MISS/----/info, text) lines for the issue's targets and their context."""
    lines = []
    key = time_key(results)
    name = TIME_NAMES[key]
    latent = find(results, "latent", TARGET_SIZE)
    written = find(results, "written", TARGET_SIZE)
    fused = find(results, "fused", TARGET_SIZE)
    if latent and written:
        ratio = latent["peak_mib"] / written["peak_mib"]
        lines.append(("PASS" if ratio <= 0.1 else "MISS",
                      f"latent peak memory at {TARGET_SIZE}x{TARGET_SIZE} at most 1/10 of "
                      f"written-out self-attention's: {latent['peak_mib']:.1f} MiB vs "
                      f"{written['peak_mib']:.1f} MiB = 1/{1 / ratio:.0f}"))
    else:
        lines.append(("----", f"memory target needs latent and written-out results at "
                               f"{TARGET_SIZE} px (not measured)"))
    if latent and fused:
        ratio = latent["peak_mib"] / fused["peak_mib"]
        lines.append(("PASS" if ratio <= 0.1 else "MISS",
                      f"latent peak memory at {TARGET_SIZE}x{TARGET_SIZE} at most 1/10 of "
                      f"fused (SDPA) self-attention's: {latent['peak_mib']:.1f} MiB vs "
                      f"{fused['peak_mib']:.1f} MiB = {ratio:.2f}x"))
    if written and fused:
        matrix_mib = written["batch"] * NUM_HEADS * written["N"] ** 2 * 4 / 2 ** 20
        lines.append(("info", f"the fused kernel narrows the memory gap at {TARGET_SIZE} px "
                              f"from {written['peak_mib']:.1f} MiB (written out, "
                              f"{written['peak_mib'] / matrix_mib:.1f}x one {matrix_mib:.0f} MiB "
                              f"[B, heads, N, N] float32 matrix) to {fused['peak_mib']:.1f} MiB, "
                              f"{written['peak_mib'] / fused['peak_mib']:.0f}x less; it is also "
                              f"{written[key] / fused[key]:.1f}x faster ({name})"))
    if latent and written and fused:
        against = [name for name, other in (("written-out", written), ("fused", fused))
                   if latent["peak_mib"] <= 0.1 * other["peak_mib"]]
        holds = (f"holds against {' and '.join(against)} self-attention"
                 + ("" if len(against) == 2 else " only") if against else "holds against neither")
        lines.append(("info", f"so the 1/10 memory claim {holds}; latent attention at "
                              f"{TARGET_SIZE} px is {written[key] / latent[key]:.0f}x faster "
                              f"than written-out and {fused[key] / latent[key]:.0f}x faster "
                              f"than fused self-attention ({name})"))
    expected = {"latent": "~1 (linear)", "written": "~2 (quadratic)",
                "fused": "~2 (quadratic work; memory ~1)"}
    for method in METHODS:
        s = slope(results, method, key)
        wall = slope(results, method, "ms")
        m = slope(results, method, "peak_mib")
        if s is None:
            lines.append(("----", f"{LABELS[method]}: time slope needs two sizes or more"))
            continue
        text = (f"{LABELS[method]}: log-log slope of time vs N = {s:.2f} ({name}"
                + (f"; wall time {wall:.2f}" if key != "ms" else "") + ")"
                + (f", of memory vs N {m:.2f}" if m is not None else ""))
        if method == "latent":                     # the target: time grows linearly with N
            verdict = "PASS" if abs(s - 1.0) <= 0.25 else "MISS"
            lines.append((verdict, f"{text}; target ~1, linear (within 0.25)"))
        else:                                      # the reference, reported against theory
            lines.append(("info", f"{text}; expected {expected[method]}"))
    return lines


def get_device() -> torch.device:
    # CUDA if present; MPS is left out on purpose (no peak-memory counter like CUDA's).
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def header(results: list) -> tuple:
    cpu = any("cpu_ms" in r for r in results)
    return ("method", "size (px)", "N tokens", "fwd+bwd ms") + (("CPU ms",) if cpu else ()) \
        + ("peak MiB",)


def table_rows(results: list) -> list:
    cpu = any("cpu_ms" in r for r in results)
    rows = []
    for r in results:
        head = (LABELS[r["method"]], f"{r['size']}", f"{r['N']}")
        if "error" in r:
            rows.append(head + ("failed",) + (("-",) if cpu else ()) + (r["error"],))
        else:
            rows.append(head + (f"{r['ms']:.2f}",) + ((f"{r['cpu_ms']:.2f}",) if cpu else ())
                        + (f"{r['peak_mib']:.1f}",))
    return rows


def load_text(info: dict) -> str:
    """The run's 1-minute load average at its start, one decimal, or n/a."""
    return "n/a" if info["load"] is None else f"{info['load']:.1f}"


def write_markdown(path: str, results: list, lines: list, info: dict, args, seconds: float):
    """scaling.md: the methods, the table, the targets and the machine (`info`, the run's
    metadata)."""
    kernel = next((r["kernel"] for r in results if r.get("kernel")), "n/a")
    source = next((r["memory_source"] for r in results if r.get("memory_source")), "n/a")
    md = ["# Scaling: latent cross-attention vs full self-attention", "",
          f"Forward+backward over N = (S/4)^2 pixel tokens of width {FEATURE_DIM} (the "
          f"tutorial's encoder at stride 4), batch {args.batch}, {NUM_HEADS} heads. "
          f"Time: median of {args.repeats} passes after one warm-up pass, "
          f"{info['threads']} CPU thread(s): wall time (`fwd+bwd ms`)"
          + (", and on a CPU also the process's CPU time (`CPU ms`), which the slopes and "
             "speed-ups below use because wall time on a shared CPU includes waiting for "
             "other work" if any("cpu_ms" in r for r in results) else "")
          + f". Peak memory: measured "
          f"({source}), the attention's own peak above what was allocated before it ran.", "",
          f"- **latent**: `LatentAttention({FEATURE_DIM}, {FEATURE_DIM}, {NUM_LATENTS}, "
          f"{NUM_HEADS})`, K={NUM_LATENTS} latents read the N tokens",
          "- **written out**: q/k/v projections, `softmax(q k^T / sqrt(d)) v` by hand "
          "(the [B, heads, N, N] weights held in memory), output projection",
          f"- **fused SDPA**: the same projections through "
          f"`torch.nn.functional.scaled_dot_product_attention` (backward recorded: `{kernel}`)",
          ""] + bm.markdown_table(header(results), table_rows(results))
    md += ["", "## Targets", ""] + bm.verdict_lines(lines)
    md += ["", "## Machine", "",
           f"- device: {info['device']}",
           f"- CPU: {info['machine']} (torch threads {info['threads']})",
           f"- torch {info['torch']}, Python {info['python']}, {info['platform']}",
           f"- 1-minute load average when the run started: {load_text(info)} "
           f"(other work on the same CPU slows timings and adds noise; memory is unaffected)",
           f"- command: `{info['command']}`, {seconds:.0f} s wall time",
           "", f"![scaling]({os.path.basename(path)[:-3]}.png)", ""]
    with open(path, "w") as f:
        f.write("\n".join(md))


def write_plot(path: str, results: list, info: dict) -> None:
    """scaling.png: time and peak memory against N tokens, log-log, one line per method."""
    plt = bm.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    judged = time_key(results)
    for ax, key, ylabel, title in (
            (axes[0], judged, f"forward+backward {TIME_NAMES[judged]} (ms)", "Time vs tokens"),
            (axes[1], "peak_mib", "peak memory (MiB)", "Peak memory vs tokens")):
        for method in METHODS:
            if key == "cpu_ms":                    # wall time too, dashed, for comparison
                wall = [(r["N"], r["ms"]) for r in results
                        if r["method"] == method and "error" not in r]
                if wall:
                    ax.plot(*zip(*wall), ls="--", lw=1, alpha=0.6, color=COLORS[method])
            points = [(r["N"], r[key]) for r in results
                      if r["method"] == method and "error" not in r and r[key] > 0]
            if not points:
                continue
            s = slope(results, method, key)
            label = LABELS[method] + (f" (slope {s:.2f})" if s is not None else "")
            ax.plot(*zip(*points), marker=MARKERS[method], color=COLORS[method], label=label)
        if key == "cpu_ms":
            ax.plot([], [], ls="--", lw=1, color="grey", label="dashed: wall time")
        ns = sorted({r["N"] for r in results})
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xticks(ns)
        ax.set_xticklabels([f"{n}\n({int(math.sqrt(n)) * STRIDE}px)" for n in ns], fontsize=8)
        ax.minorticks_off()
        ax.set(xlabel="N pixel tokens (image size)", ylabel=ylabel, title=title)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Latent cross-attention vs full self-attention, log-log "
                 f"({info['device']}, torch {info['torch']})")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def image_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels")
    if value < 8 or value % STRIDE:
        raise argparse.ArgumentTypeError(
            f"{value} must be a multiple of {STRIDE} and at least 8: the encoder has stride "
            f"{STRIDE}, so an S x S image gives (S/{STRIDE})^2 tokens; try {max(8, value // 4 * 4)}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Forward+backward time and peak memory of latent cross-attention vs full "
                    "self-attention (written out and fused) as the image grows.")
    parser.add_argument("--sizes", type=image_size, nargs="+", default=list(DEFAULT_SIZES),
                        metavar="S", help="image sizes in pixels, multiples of 4 "
                        f"(default: {' '.join(map(str, DEFAULT_SIZES))})")
    parser.add_argument("--repeats", type=bm.positive, default=3,
                        help="timed passes per measurement, the median is reported (default: 3)")
    parser.add_argument("--batch", type=bm.positive, default=1, help="images per batch (default: 1)")
    bm.add_common_flags(parser, os.path.join(HERE, "results"), threads=1, merge=False,
                        smoke="a tiny run: 32 and 64 px, 1 pass (writes scaling_smoke.md, .png)")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.repeats = [32, 64], 1
    args.sizes = sorted(set(args.sizes))
    if args.worker and (args.worker[0] not in METHODS or not args.worker[1].isdigit()):
        parser.error(f"argument --worker: expected one of {METHODS} and a size")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:                               # one measurement, in a fresh process
        result = measure(args.worker[0], int(args.worker[1]), args.batch, args.repeats,
                         torch.device("cpu"))
        print(json.dumps(result))
        return 0

    start = time.perf_counter()
    device = get_device()
    info = bm.run_metadata("scaling", argv, device, load=bm.load_average(),
                           command=f"python benchmarks/scaling.py --sizes "
                                   f"{' '.join(map(str, args.sizes))} --repeats {args.repeats} "
                                   f"--batch {args.batch} --threads {args.threads}")
    print(f"device {info['device']}, CPU {info['machine']} (torch threads {info['threads']}), "
          f"torch {info['torch']}, load average {load_text(info)}")
    print(f"sizes {args.sizes} px, batch {args.batch}, median of {args.repeats} passes, "
          f"{torch.get_num_threads()} thread(s)")
    results = []
    for size in args.sizes:
        for method in METHODS:
            if device.type == "cuda":
                try:
                    r = measure(method, size, args.batch, args.repeats, device)
                except torch.cuda.OutOfMemoryError:
                    r = {"method": method, "size": size, "N": (size // STRIDE) ** 2,
                         "batch": args.batch, "error": "CUDA out of memory"}
                    torch.cuda.empty_cache()
            else:
                r = measure_in_subprocess(method, size, args.batch, args.repeats, args.threads)
            results.append(r)
            done = (r["error"] if "error" in r
                    else f"{r['ms']:.2f} ms, {r['peak_mib']:.1f} MiB")
            print(f"  measured {LABELS[method]:<30} {size:>4} px: {done}", flush=True)
    seconds = time.perf_counter() - start

    print()
    bm.print_table(header(results), table_rows(results))
    print()
    lines = targets(results)
    for verdict, text in lines:
        print(f"{verdict:<4}  {text}")
    stem = bm.results_stem(args, "scaling")
    md_path, png_path = stem + ".md", stem + ".png"
    write_markdown(md_path, results, lines, info, args, seconds)
    write_plot(png_path, results, info)
    print(f"\nwrote {md_path} and {png_path} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
