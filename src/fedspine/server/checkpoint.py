"""Exact checkpoints of a run's server half, written atomically after every round.

What a resumed run needs to continue as if never stopped: the global LoRA and head, every
device's record (kept map, sparsity, counters), the planner (bandit trees, speed groups, time
model, its RNG), the sampling RNG, the process-global torch / numpy / random streams, the
pooled fleet importance, and the loop's position (next
round, stage, clocks, the rows written so far, the untuned base's scores). Device-side state
(the importance EMA) lives on the devices (`fedspine.device_state`), and the random streams of
local training, the fleet and the faults are pure functions of (seed, device, round), so
nothing else is needed.

The file is a `torch.save` pickle of our own objects (planners are plain Python): it is read
only from a run directory the user names, never from the network.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedspine.config import Config, config_to_dict
from fedspine.errors import ConfigError
from fedspine.report.record import CHECKPOINT_FILE
from fedspine.server.core import Server

CHECKPOINT_FORMAT = 1  # bump when the content changes; older checkpoints are refused


@dataclass
class RunPosition:
    """Where the run loop stands between two rounds."""

    next_round: int = 1
    final_tries: int = 0  # catch-up rounds trained (CATCH_UP_TRIES once none is needed)
    budget_rounds: int = 0  # rounds trained under the time budget after the planned ones
    sim_s: float = 0.0
    wall_s: float = 0.0  # wall seconds inside rounds, over every process of the run
    elapsed_s: float = 0.0  # wall seconds of the run's earlier processes (for the summary)
    raised_rounds: int = 0
    probe_s: float = 0.0
    rows: list[dict] = field(default_factory=list)
    base_scores: dict | None = None


def server_state(server: Server) -> dict[str, Any]:
    """The server core's mutable state (between rounds nothing is in flight)."""
    lora = server.global_lora
    return {
        "devices": server.devices,
        "planner": server.planner,
        "rng": server.rng.bit_generator.state,
        "fleet_scores": server.fleet_scores,
        "factors": lora.factors,
        "head": lora.head,
        "stack_ranks": lora.stack_ranks,
        # the process-global streams too: the aggregation's randomized SVD draws from torch's
        # (a resumed process has consumed it differently while loading)
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
    }


def restore_server(server: Server, state: dict[str, Any]) -> None:
    server.devices = state["devices"]
    server.planner = state["planner"]
    server.rng.bit_generator.state = state["rng"]
    server.fleet_scores = state["fleet_scores"]
    server.global_lora.factors = state["factors"]
    server.global_lora.head = state["head"]
    server.global_lora.stack_ranks = list(state.get("stack_ranks", []))
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])


def save_checkpoint(run_path: Path, config: Config, server: Server, position: RunPosition) -> int:
    """Write the checkpoint atomically (temp file, fsync, rename); returns its size in bytes."""
    target = run_path / CHECKPOINT_FILE
    staging = target.with_name(target.name + ".tmp")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": config_to_dict(config),
        "server": server_state(server),
        "position": position,
    }
    with staging.open("wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, target)
    return target.stat().st_size


def config_differences(saved: dict, current: dict) -> list[str]:
    """`section.key: saved -> current` for every setting that differs."""
    diffs = []
    for section in sorted(set(saved) | set(current)):
        old, new = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                diffs.append(f"{section}.{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return diffs


def load_checkpoint(run_path: Path, config: Config) -> tuple[dict, RunPosition] | None:
    """The saved server state and position, or None when no round had finished.

    A checkpoint of another format, an unreadable one, or one written under a different config
    is a ConfigError naming the problem.
    """
    path = run_path / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing
        raise ConfigError(
            f"{path} is unreadable ({type(err).__name__}); the run cannot be resumed, "
            "start it again"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else "unknown"
        raise ConfigError(
            f"{path} has checkpoint format {found}, this fedspine writes format "
            f"{CHECKPOINT_FORMAT}; resume it with the version that wrote it or start it again"
        )
    diffs = config_differences(payload["config"], config_to_dict(config))
    if diffs:
        shown = "; ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")
        raise ConfigError(
            f"the config differs from the interrupted run's ({shown}); resume with the run's "
            "own config (drop --preset/--config/--set) or start a new run"
        )
    return payload["server"], payload["position"]
