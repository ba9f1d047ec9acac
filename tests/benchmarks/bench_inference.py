"""Inference benchmark: per-study latency, FLOPs and peak memory of the enhancer cascade.

Run on demand, not under pytest::

    python tests/benchmarks/bench_inference.py [--rows small-fast-cpu ...] [--repeats 5]
        [--skip-slow] [--threads 2]

A study is one synthetic rapid scan (40 cm/min): two frames of 1024×256 uint16 counts from
``pacs_node.synth.synthetic_scan_counts``. Each model is built from the registry with random
weights, saved with ``save_checkpoint`` and loaded through the real runtime
(``Enhancer.from_checkpoint``); a study's time is one ``enhance_with_qc`` call (validation,
model, rounding and the QC included), after warm-up calls; the runtime's own
``EnhancementResult.seconds`` (no validation or QC) is shown beside it. Each row runs in its
own child process, so that its peak memory is its own: on the CPU, the rise of the peak resident set
(``VmHWM``, reset just before the first call) over the resident set before it; on CUDA, the
rise of ``torch.cuda.max_memory_allocated`` over the memory held before the first call. The
loaded weights are in neither.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one more call:
convolutions, matrix products and attention (a multiply-add is two FLOPs). Elementwise work
(norms, gates, softmax, GELU, interpolation, quantiles, QC) is not counted. The fraction of
peak divides the FLOPs by the median time and by the device's dense peak: on the CPU,
cores × clock × FP32 FLOPs per cycle (64 with AVX-512, 32 with AVX2 and FMA); on CUDA, a
table of dense bf16 peaks by device name. Rows whose target applies get a verdict on the
median: ``small`` fast on the CPU in at most 1.5 s per study, ``base`` (SAM vit_b) cascade
on an H100 in bf16 in at most 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from enhancer.checkpoint import save_checkpoint
from enhancer.modeling.cascade import CascadeModel
from enhancer.modeling.registry import build_cascade_base, build_cascade_small, cascade_configs
from enhancer.runtime import Enhancer
from pacs_node.synth import synthetic_scan_counts

SEED = 7
STUDY_INDEX = 1
RAPID_SPEED_CM_MIN = 40
PARAM_SEED = 1234
# Zero-initialised parameters (gated residual scales, biases, SPI's last layer) get this
# standard deviation, so that every block changes its input as a trained one would.
FILL_STD = 0.02
RESULT_MARKER = "BENCH_RESULT "
ROW_TIMEOUT_S = 3600.0
BUILDERS: dict[str, Callable[[], CascadeModel]] = {
    "small": build_cascade_small,
    "base": build_cascade_base,
}
MODEL_LABELS = {"small": "small", "base": "base/vit_b"}
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets; the first
# pattern that matches the device name wins.
CUDA_BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"H100.*PCIe", 756.0),
    (r"H100.*(SXM|HBM3)", 989.0),
    (r"H200", 989.0),
    (r"A100", 312.0),
    (r"\bL4\b", 121.0),
)
# Op names that do matrix or convolution work; one of these run without a FLOP formula
# means the count is short, and the notes say so.
HEAVY_OP_PATTERN = re.compile(r"mm\b|mm_|conv|attention|einsum|matmul|\b_?(linear|dot)")


@dataclass(frozen=True)
class Row:
    """One line of the table: a model size, what runs, and where."""

    size: str
    profile: str  # "fast" or "cascade" through the runtime; "prior": the SAM prior alone
    device: str
    slow: bool = False

    @property
    def name(self) -> str:
        return f"{self.size}-{self.profile}-{self.device}"


@dataclass(frozen=True)
class Target:
    seconds: float
    text: str
    device_pattern: str = ""  # the target only applies where the device name matches


@dataclass
class RowResult:
    row: str
    device_name: str = ""
    dtype: str = ""
    seconds: list[float] = field(default_factory=list)
    model_seconds: list[float] = field(default_factory=list)  # without validation and QC
    flops: int = 0
    peak_flops: float | None = None
    peak_bytes: int | None = None
    uncounted_ops: list[str] = field(default_factory=list)
    counted_ops: list[str] = field(default_factory=list)
    error: str | None = None


ROWS = {
    row.name: row
    for row in (
        Row("small", "fast", "cpu"),
        Row("small", "cascade", "cpu"),
        Row("base", "fast", "cpu"),
        Row("base", "cascade", "cpu", slow=True),
        Row("base", "prior", "cpu", slow=True),
        Row("small", "fast", "cuda"),
        Row("small", "cascade", "cuda"),
        Row("base", "fast", "cuda"),
        Row("base", "cascade", "cuda"),
        Row("base", "prior", "cuda"),
    )
}
TARGETS = {
    "small-fast-cpu": Target(1.5, "<= 1.5 s"),
    "base-cascade-cuda": Target(0.050, "<= 50 ms (H100)", device_pattern="H100"),
}


def _sdpa_flops(
    query_shape: Sequence[int],
    key_shape: Sequence[int],
    value_shape: Sequence[int],
    *args: Any,
    out_shape: Sequence[int] | None = None,
    **kwargs: Any,
) -> int:
    """Q·Kᵀ and attention·V of ``scaled_dot_product_attention``; the mask add is elementwise."""
    *batch, queries, head_dim = query_shape
    keys = key_shape[-2]
    value_dim = value_shape[-1]
    return 2 * int(np.prod(batch)) * queries * keys * (head_dim + value_dim)


# FlopCounterMode has formulas for the CUDA attention kernels only: on the CPU,
# scaled_dot_product_attention decomposes into _scaled_dot_product_flash_attention_for_cpu,
# which it would count as zero. The mode counts whichever of these it ends up running, once.
SDPA_FORMULAS = {
    op: _sdpa_flops
    for name in ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu")
    if (op := getattr(torch.ops.aten, name, None)) is not None
}


class _OpRecorder(TorchDispatchMode):
    """Records every op that reaches it (under FlopCounterMode: the ops it ran)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[Any] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.add(func._overloadpacket)
        return func(*args, **(kwargs or {}))


def cpu_peak() -> tuple[float, str]:
    """Dense FP32 peak FLOP/s of the cores this process may use, and how it was reckoned."""
    text = Path("/proc/cpuinfo").read_text()
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.MULTILINE)]
    clock_ghz = max(mhz) / 1000.0 if mhz else 0.0
    flags_line = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    if "avx512f" in flags:
        per_cycle, isa = 64, "AVX-512: 2 FMA units x 16 fp32 lanes x 2"
    elif {"avx2", "fma"} <= flags:
        per_cycle, isa = 32, "AVX2+FMA: 2 FMA units x 8 fp32 lanes x 2"
    else:
        per_cycle, isa = 8, "SSE: no FMA, assumed 8"
    cores = min(len(os.sched_getaffinity(0)), torch.get_num_threads())
    peak = cores * clock_ghz * 1e9 * per_cycle
    how = (
        f"{cores} cores x {clock_ghz:.2f} GHz ('cpu MHz'; boost not counted) x "
        f"{per_cycle} FLOP/cycle ({isa}) = {peak / 1e9:.0f} GFLOP/s fp32"
    )
    return peak, how


def cuda_peak(device_name: str) -> float | None:
    for pattern, tflops in CUDA_BF16_PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return tflops * 1e12
    return None


def fill_parameters(model: CascadeModel, seed: int) -> None:
    """Keep the registry's initialisation but give every all-zero parameter small values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * FILL_STD)


def write_checkpoint(size: str, folder: Path) -> Path:
    torch.manual_seed(PARAM_SEED)
    model = BUILDERS[size]()
    fill_parameters(model, PARAM_SEED)
    path = folder / f"bench-{size}.safetensors"
    save_checkpoint(model, cascade_configs[size], path, name=f"bench-{size}", version="bench")
    return path


def _status_kib(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


@contextmanager
def peak_memory(device: torch.device) -> Iterator[list[int]]:
    """Yields a list that holds, on exit, the peak rise in bytes of memory in use."""
    out: list[int] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield out
        torch.cuda.synchronize(device)
        out.append(torch.cuda.max_memory_allocated(device) - before)
        return
    # Writing 5 to clear_refs resets VmHWM (and ru_maxrss) to the current resident set.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        yield out  # the peak would include loading the model: leave it unknown
        return
    before = _status_kib("VmRSS")
    yield out
    out.append((_status_kib("VmHWM") - before) * 1024)


def run_row(row: Row, checkpoint: Path, repeats: int, warmup: int) -> RowResult:
    """Measure one row in this process (the child)."""
    device = torch.device(row.device)
    runtime_profile = "cascade" if row.profile == "prior" else row.profile
    enhancer = Enhancer.from_checkpoint(checkpoint, device=device, profile=runtime_profile)
    frames = synthetic_scan_counts(SEED, STUDY_INDEX, speed_cm_min=RAPID_SPEED_CM_MIN)
    # As Enhancer does: bf16 (else fp16) autocast on CUDA, plain fp32 on the CPU.
    dtype = torch.float32
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def autocast() -> torch.autocast:
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)

    if row.profile == "prior":
        counts = torch.from_numpy(frames.astype(np.float32)).unsqueeze(1).to(device)
        model = enhancer.model
        vst = model.model_input(counts)

        def call() -> float | None:
            with torch.inference_mode(), autocast():
                model.prior(vst)
            return None
    else:

        def call() -> float | None:
            return enhancer.enhance_with_qc(frames).seconds

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    result = RowResult(row=row.name, dtype=str(dtype).removeprefix("torch."))
    if device.type == "cuda":
        result.device_name = torch.cuda.get_device_name(device)
        result.peak_flops = cuda_peak(result.device_name)
    else:
        result.device_name = "cpu"
        result.peak_flops = cpu_peak()[0]
    with peak_memory(device) as peak:
        for _ in range(warmup):
            call()
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            inner = call()
            sync()
            result.seconds.append(time.perf_counter() - start)
            result.model_seconds.append(result.seconds[-1] if inner is None else inner)
    result.peak_bytes = peak[0] if peak else None
    recorder = _OpRecorder()
    counter = FlopCounterMode(display=False, custom_mapping=SDPA_FORMULAS)
    with recorder, counter:
        call()
        sync()
    result.flops = counter.get_total_flops()
    registry = counter.flop_registry
    result.counted_ops = sorted(str(op) for op in counter.get_flop_counts()["Global"])
    result.uncounted_ops = sorted(
        str(op) for op in recorder.ops if op not in registry and HEAVY_OP_PATTERN.search(str(op))
    )
    return result


def run_child(
    row: Row, checkpoint: Path, repeats: int, warmup: int, threads: int | None
) -> RowResult:
    """Run one row in a fresh interpreter and read back its result."""
    cmd = [sys.executable, __file__, "--row", row.name, "--checkpoint", str(checkpoint)]
    cmd += ["--repeats", str(repeats), "--warmup", str(warmup)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, check=False, timeout=ROW_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return RowResult(row=row.name, error=f"no result after {ROW_TIMEOUT_S:.0f} s")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return RowResult(**json.loads(line.removeprefix(RESULT_MARKER)))
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return RowResult(row=row.name, error=f"exit status {done.returncode}: {tail}")


def allocator_line() -> str:
    """glibc malloc settings and preloads from the environment, which the children inherit.

    They matter: with glibc's defaults every large activation is a fresh mmap, and the page
    faults that zero it can take longer than the convolutions that fill it.
    """
    names = sorted(n for n in os.environ if n.startswith("MALLOC_") or n == "LD_PRELOAD")
    settings = [f"{n}={os.environ[n]}" for n in names]
    if tunables := os.environ.get("GLIBC_TUNABLES"):
        settings.append(f"GLIBC_TUNABLES={tunables}")
    return (
        ", ".join(settings) or "glibc malloc defaults (no MALLOC_*, LD_PRELOAD or GLIBC_TUNABLES)"
    )


def machine_lines(threads: int | None) -> list[str]:
    text = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.MULTILINE)
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"date: {now}",
        f"machine: {len(os.sched_getaffinity(0))} CPUs usable of {os.cpu_count()}, "
        f"{model.group(1).strip() if model else 'unknown CPU'}",
        f"torch: {torch.__version__}, {threads or torch.get_num_threads()} threads, "
        f"oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}",
        f"allocator: {allocator_line()}",
        f"load average (1, 5, 15 min) at start: {load}",
    ]
    if torch.cuda.is_available():
        lines.append(f"cuda: {torch.version.cuda}, {torch.cuda.device_count()} device(s)")
    return lines


def verdict(result: RowResult) -> tuple[str, str]:
    target = TARGETS.get(result.row)
    if target is None:
        return "", "n/a"
    if result.error or not result.seconds:
        return target.text, "n/a"
    if target.device_pattern and not re.search(target.device_pattern, result.device_name):
        return target.text, "n/a"
    met = statistics.median(result.seconds) <= target.seconds
    return target.text, "meets" if met else "misses"


def table(results: Sequence[RowResult]) -> str:
    head = (
        f"{'model':<10}  {'profile':<7}  {'device':<6}  {'dtype':<8}  {'s/study':>8}  "
        f"{'min s':>8}  {'model s':>8}  {'GFLOP':>7}  {'GFLOP/s':>8}  {'% peak':>6}  "
        f"{'peak MiB':>8}  {'target':<15}  verdict"
    )
    lines = [head]
    for r in results:
        row = ROWS[r.row]
        label = MODEL_LABELS[row.size]
        if r.error is not None:
            lines.append(f"{label:<10}  {row.profile:<7}  {row.device:<6}  FAILED: {r.error}")
            continue
        median, fastest = statistics.median(r.seconds), min(r.seconds)
        model = statistics.median(r.model_seconds)
        rate = r.flops / median
        share = f"{100 * rate / r.peak_flops:>6.1f}" if r.peak_flops else f"{'n/a':>6}"
        target, result = verdict(r)
        memory = f"{r.peak_bytes / 2**20:>8.0f}" if r.peak_bytes is not None else f"{'n/a':>8}"
        lines.append(
            f"{label:<10}  {row.profile:<7}  {row.device:<6}  {r.dtype:<8}  {median:>8.3f}  "
            f"{fastest:>8.3f}  {model:>8.3f}  {r.flops / 1e9:>7.1f}  {rate / 1e9:>8.1f}  "
            f"{share}  {memory}  {target or '-':<15}  {result}"
        )
    return "\n".join(lines)


def note_lines(results: Sequence[RowResult], repeats: dict[str, tuple[int, int]]) -> list[str]:
    ok = [r for r in results if r.error is None]
    lines = [
        "s/study: median wall time of one enhance_with_qc call; min s: the fastest; model s: "
        "median of the runtime's own EnhancementResult.seconds (model, transfers and rounding; "
        "no validation or QC); GFLOP/s and % peak use s/study",
        f"CPU peak: {cpu_peak()[1]}",
    ]
    for name in sorted({r.device_name for r in ok if r.device_name != "cpu"}):
        peak = cuda_peak(name)
        lines.append(
            f"CUDA peak: {name}: "
            + (f"{peak / 1e12:.0f} TFLOP/s dense bf16" if peak else "unknown, % peak is n/a")
        )
    counted = sorted({op for r in ok for op in r.counted_ops})
    lines.append(f"FLOPs counted in: {', '.join(counted) or 'nothing'}")
    lines.append(
        "attention: FlopCounterMode has no formula for the CPU's scaled_dot_product_attention "
        "kernel; this script adds one, 2·B·heads·Nq·Nk·(d_qk + d_v)"
    )
    missing = sorted({op for r in ok for op in r.uncounted_ops})
    if missing:
        lines.append(f"NOT counted (matrix or convolution work without a formula): {missing}")
    else:
        lines.append("no matrix, convolution or attention op ran without a FLOP formula")
    lines.append("not counted by design: norms, gates, softmax, GELU, resizing, quantiles, QC")
    lines.append(
        "peak MiB: CPU, the rise of peak RSS over RSS before the first call (allocator caches "
        "included); CUDA, the rise of max_memory_allocated; loaded weights excluded"
    )
    runs = ", ".join(f"{name} {w}+{n}" for name, (w, n) in repeats.items())
    lines.append(f"warm-up + timed calls per row: {runs}")
    lines.append("prior: the SAM prior alone (encoder on the frame grid, box prompt, mask decoder)")
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=sorted(ROWS),
        metavar="ROW",
        help=f"of {', '.join(ROWS)}; default: every CPU row, and the CUDA rows with CUDA",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before them")
    parser.add_argument(
        "--slow-repeats", type=int, default=2, help="timed calls for slow rows (vit_b on CPU)"
    )
    parser.add_argument("--skip-slow", action="store_true", help="drop the vit_b CPU rows")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads; default: as is")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint directory")
    # A child process measures one row and prints its result as JSON.
    parser.add_argument("--row", choices=sorted(ROWS), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.slow_repeats < 1 or args.warmup < 0:
        parser.error("need --repeats >= 1, --slow-repeats >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads} must be at least 1")
    return args


def child_main(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = run_row(ROWS[args.row], args.checkpoint, args.repeats, args.warmup)
    print(RESULT_MARKER + json.dumps(asdict(result)), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.row is not None:
        return child_main(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    names = args.rows or [n for n, r in ROWS.items() if r.device == "cpu" or cuda]
    rows = [ROWS[n] for n in names if not (args.skip_slow and ROWS[n].slow)]
    if not cuda and (skipped := [r.name for r in rows if r.device == "cuda"]):
        print(f"CUDA is not available; skipping {', '.join(skipped)}", flush=True)
        rows = [r for r in rows if r.device != "cuda"]
    header = machine_lines(args.threads)
    results: list[RowResult] = []
    repeats: dict[str, tuple[int, int]] = {}
    folder = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    try:
        checkpoints: dict[str, Path] = {}
        for row in rows:
            if row.size not in checkpoints:
                print(f"building and saving {row.size} ...", flush=True)
                checkpoints[row.size] = write_checkpoint(row.size, folder)
            n = args.slow_repeats if row.slow else args.repeats
            warmup = min(args.warmup, 1) if row.slow else args.warmup
            repeats[row.name] = (warmup, n)
            print(f"{row.name}: {warmup} warm-up + {n} timed ...", flush=True)
            result = run_child(row, checkpoints[row.size], n, warmup, args.threads)
            if result.error is not None:
                print(f"  FAILED: {result.error}", flush=True)
            results.append(result)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print()
    print("\n".join(header))
    print(f"load average (1, 5, 15 min) at end: {load}")
    print()
    print(table(results))
    print()
    print("notes:")
    print("\n".join(f"  {line}" for line in note_lines(results, repeats)))
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
