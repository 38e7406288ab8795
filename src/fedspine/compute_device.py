"""The torch device a process trains and evaluates on (`train.device`), chosen once per process.

Every process of a run (the driver, which evaluates, and each simulated client) chooses for
itself: on a Ray cluster they may sit on machines with and without GPUs. A simulated client (a
Ray actor) has a GPU only when Ray reserved one for it (`run.client_gpus` > 0): Ray is asked
(`ray.get_gpu_ids`), because with fedspine's environment (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0)
Ray leaves every GPU visible to a client that reserved none.
"""

from __future__ import annotations

import os
import socket
import sys

import torch

from fedspine.errors import ConfigError


def compute_device(setting: str) -> torch.device:
    """`cpu`, `cuda` (an error when this process sees no GPU) or `auto` (cuda when it does)."""
    if setting == "cpu":
        return torch.device("cpu")
    reserved = ray_actor_gpus()
    if torch.cuda.is_available() and reserved != []:
        return torch.device("cuda")
    if setting == "auto":
        return torch.device("cpu")
    raise ConfigError(
        f"train.device=cuda but this process on {socket.gethostname()} has no GPU "
        f"({_why_no_gpu(reserved)}); set train.device=auto (GPU where there is one) or cpu"
    )


def ray_actor_gpus() -> list | None:
    """The GPU ids Ray reserved for this process if it is a Ray actor (a simulated client),
    else None. Ray is not imported here: a process that never imported it is no actor."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    if ray.get_runtime_context().get_actor_id() is None:
        return None  # the driver, which sees its machine's GPUs
    return list(ray.get_gpu_ids())


def _why_no_gpu(reserved: list | None) -> str:
    if torch.version.cuda is None:
        return "this torch is a CPU-only build: install a CUDA build of torch"
    if reserved == []:
        return "Ray reserved no GPU for this client: set run.client_gpus, e.g. 0.25"
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return "CUDA_VISIBLE_DEVICES is empty"
    return "torch sees no CUDA device"
