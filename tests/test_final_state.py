"""device_structures.json: each distinct structure once, every device's map read back."""

from __future__ import annotations

import json

import torch

from fedspine.lora.factors import LoraFactors
from fedspine.report.final_state import (
    DEVICES_FILE,
    load_device_structures,
    load_final_state,
    save_final_state,
)


def _kept(channels: list[int]) -> dict:
    return {"family": "bert", "layers": [{"heads": [0], "kv_heads": [0], "channels": channels}]}


def test_devices_of_one_structure_share_one_stored_map(tmp_path) -> None:
    factors = {"m": LoraFactors(torch.ones(2, 3), torch.zeros(4, 2))}
    structures = [_kept([0, 1, 2]), _kept([1])]
    devices = [{"id": d, "tier": "nx", "structure": int(d == 2)} for d in range(4)]
    save_final_state(tmp_path, factors, {"w": torch.ones(2)}, {"scaling": 1.0}, devices, structures)

    stored = json.loads((tmp_path / DEVICES_FILE).read_text())
    assert len(stored["structures"]) == 2 and len(stored["devices"]) == 4
    _, head, meta, loaded = load_final_state(tmp_path)
    assert [d["kept"]["layers"][0]["channels"] for d in loaded] == [
        [0, 1, 2],
        [0, 1, 2],
        [1],
        [0, 1, 2],
    ]
    assert [d["id"] for d in loaded] == [0, 1, 2, 3]
    assert torch.equal(head["w"], torch.ones(2)) and meta["scaling"] == "1.0"


def test_the_earlier_one_map_per_device_format_still_reads(tmp_path) -> None:
    old = [{"id": 0, "tier": "tx2", "kept": _kept([3])}]
    (tmp_path / DEVICES_FILE).write_text(json.dumps(old))
    assert load_device_structures(tmp_path) == old
