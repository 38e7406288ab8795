"""State a device keeps between its rounds (its importance EMA), on the device's own storage.

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

from safetensors.torch import load_file, save_file

from fedspine.pruning import ModelScores
from fedspine.pruning.fleet_importance import scores_to_tensors, tensors_to_scores

KEEP = 2
_NAME = re.compile(r"^r(\d{6})\.safetensors$")


class DeviceStateStore:
    """One device's saved importance EMA under `root/device-<id>/r<round>.safetensors`."""

    def __init__(self, root: Path, device_id: int) -> None:
        self.folder = Path(root) / f"device-{device_id}"

    def _saved(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = ((_NAME.match(p.name), p) for p in self.folder.iterdir())
        return sorted((int(m.group(1)), p) for m, p in found if m)

    def load(self, round_num: int) -> ModelScores | None:
        """The state saved by the device's latest round before `round_num`, if any."""
        earlier = [p for r, p in self._saved() if r < round_num]
        return tensors_to_scores(load_file(earlier[-1])) if earlier else None

    def save(self, round_num: int, scores: ModelScores) -> None:
        """Save atomically, then drop all but the newest KEEP saves."""
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"r{round_num:06d}.safetensors"
        staging = target.with_name(target.name + ".tmp")
        save_file({k: v.contiguous() for k, v in scores_to_tensors(scores).items()}, staging)
        os.replace(staging, target)
        for _, path in self._saved()[:-KEEP]:
            path.unlink(missing_ok=True)
