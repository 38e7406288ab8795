"""The measured clock's device half: real memory, real compute time, an honest slowdown.

Under `fleet.clock = "measured"` a device reports what it really spent instead of what its
simulated profile would have: its compute wall time, its peak memory, and its memory budget
(declared in its node config, else what the machine has free). The server measures the rest
(send-to-reply per device). No Flower here.
"""

from __future__ import annotations

import resource
import sys
import time

import psutil
import torch

BYTES_PER_MB = 2**20


def memory_budget_bytes(declared_mb: float) -> float:
    """What training may use: the node's declared budget, else the memory free right now."""
    if declared_mb > 0:
        return declared_mb * BYTES_PER_MB
    return float(psutil.virtual_memory().available)


def peak_memory_mb() -> float:
    """Peak memory of this process so far: the accelerator's peak allocation where training
    ran on CUDA, else the peak resident set (base model and data included)."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / BYTES_PER_MB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (BYTES_PER_MB if sys.platform == "darwin" else 1024)


def slow_down(compute_s: float, factor: float) -> float:
    """An artificially slower device (deploy-local's `--slowdown`): sleep (factor - 1) x the
    compute just measured, so its time really is `factor` x longer; returns the slowed time."""
    if factor > 1.0 and compute_s > 0:
        time.sleep((factor - 1.0) * compute_s)
    return compute_s * max(factor, 1.0)
