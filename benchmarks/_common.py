"""Shared helpers for the benchmark scripts: timing, FLOP counting and the machine's own matmul reference rate."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def autocast(dtype: str):
    if dtype == "bf16":
        return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)
    return nullcontext()


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_time(fn, repeats: int, warmup: int = 1) -> tuple[float, float, float]:
    """(median, min, max) seconds of fn() over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def count_flops(fn) -> int:
    """FLOPs of one call of fn (matmuls and friends, as torch's FlopCounterMode counts them)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_rate(dtype: str = "fp32", n: int = 8192, k: int = 512, repeats: int = 15) -> float:
    """The machine's own dense matmul rate (FLOP/s) for an (n x k) @ (k x k) product: the reference for 'achieved
    fraction'. Measured in the same process, so it reflects the same threads and clocks."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        n, k = 16384, 4096
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, k, device=device, dtype=torch_dtype)
    b = torch.randn(k, k, device=device, dtype=torch_dtype)
    med, _, _ = median_time(lambda: a @ b, repeats, warmup=2)
    return 2 * n * k * k / med


def machine_info() -> dict:
    info = dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                threads=torch.get_num_threads(), cpu_count=os.cpu_count())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    if hasattr(os, "getloadavg"):  # other work on the machine skews timings; the fraction is less affected
        info["loadavg_1_5_15min"] = [round(x, 2) for x in os.getloadavg()]
    return info


def keeps_zero_shot(steps: list[int], returns: list[float], zero_shot: float | None, after: int = 1000,
                    fraction: float = 0.8, min_zero_shot: float = 100.0) -> tuple[float | None, bool | None]:
    """Issue 12 section 2's criterion for one fine-tuning run: no evaluation from step `after` on below `fraction`
    of the zero-shot return, where that return is at least `min_zero_shot`. Returns (the lowest of those
    evaluations or None, whether it holds: None where it does not apply: no zero-shot evaluation, a zero-shot
    return below `min_zero_shot`, or no evaluation from `after` on)."""
    later = [r for s, r in zip(steps, returns) if s >= after]
    lowest = min(later) if later else None
    if zero_shot is None or zero_shot < min_zero_shot or lowest is None:
        return lowest, None
    return lowest, lowest >= fraction * zero_shot


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
    print(f"wrote {path}")
