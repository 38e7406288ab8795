"""State a device keeps between its rounds (its importance EMA; FedSA-LoRA's own B), on the
device's own storage.

A simulated device's storage is a folder of the run directory, so the state survives a
restart of the simulation engine (a resumed run); a SuperNode names its own folder in its
node config (`state-dir`) or keeps the state in memory. Each save is tagged with the round
that produced it and a round loads the newest state from an EARLIER round: a round that was
interrupted and is run again after a resume starts from exactly what it started from the first
time. The newest two saves are kept (at most one round is ever in flight).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedspine.pruning import ModelScores
from fedspine.pruning.fleet_importance import scores_to_tensors, tensors_to_scores

KEEP = 2
OWN_B = "own_b::"
_NAME = re.compile(r"^r(\d{6})\.safetensors$")


class DeviceStateStore:
    """One device's saved state under `root/device-<id>/r<round>.safetensors`: its importance
    EMA and (FedSA-LoRA) its own LoRA B, keyed `own_b::<module>`."""

    def __init__(self, root: Path, device_id: int) -> None:
        self.folder = Path(root) / f"device-{device_id}"

    def _saved(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = ((_NAME.match(p.name), p) for p in self.folder.iterdir())
        return sorted((int(m.group(1)), p) for m, p in found if m)

    def _load(self, round_num: int) -> dict:
        earlier = [p for r, p in self._saved() if r < round_num]
        return load_file(earlier[-1]) if earlier else {}

    def load(self, round_num: int) -> ModelScores | None:
        """The importance EMA saved by the device's latest round before `round_num`, if any."""
        flat = self._load(round_num)
        return tensors_to_scores({k: v for k, v in flat.items() if not k.startswith(OWN_B)})

    def load_own_b(self, round_num: int) -> dict[str, torch.Tensor] | None:
        """FedSA-LoRA: the B saved by the device's latest round before `round_num`, if any."""
        flat = self._load(round_num)
        own = {k[len(OWN_B) :]: v for k, v in flat.items() if k.startswith(OWN_B)}
        return own or None

    def save(
        self,
        round_num: int,
        scores: ModelScores | None,
        own_b: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Save atomically, then drop all but the newest KEEP saves."""
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"r{round_num:06d}.safetensors"
        staging = target.with_name(target.name + ".tmp")
        flat = scores_to_tensors(scores) if scores is not None else {}
        flat |= {OWN_B + name: b for name, b in (own_b or {}).items()}
        save_file({k: v.contiguous() for k, v in flat.items()}, staging)
        os.replace(staging, target)
        for _, path in self._saved()[:-KEEP]:
            path.unlink(missing_ok=True)
