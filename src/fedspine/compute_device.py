"""The torch device a process trains and evaluates on (`train.device`), chosen once per process.

Every process of a run (the driver, which evaluates, and each simulated client) chooses for
itself: on a Ray cluster they may sit on machines with and without GPUs. Ray shows a client a
GPU only when it reserves one (`run.client_gpus` > 0); otherwise it sets CUDA_VISIBLE_DEVICES
empty, so `auto` picks the CPU there.
"""

from __future__ import annotations

import os
import socket

import torch

from fedspine.errors import ConfigError


def compute_device(setting: str) -> torch.device:
    """`cpu`, `cuda` (an error when this process sees no GPU) or `auto` (cuda when it does)."""
    if setting == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if setting == "auto":
        return torch.device("cpu")
    raise ConfigError(
        f"train.device=cuda but torch sees no GPU in this process on {socket.gethostname()} "
        f"({_why_no_gpu()}); set train.device=auto (GPU where there is one) or cpu"
    )


def _why_no_gpu() -> str:
    if torch.version.cuda is None:
        return "this torch is a CPU-only build: install a CUDA build of torch"
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return "CUDA_VISIBLE_DEVICES is empty: Ray hides GPUs from clients with run.client_gpus=0"
    return "no CUDA device is visible"
