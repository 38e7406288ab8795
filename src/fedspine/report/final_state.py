"""The run's final state: global LoRA + head (safetensors) and every device's kept-index map.

Enough to rebuild and export any device's model later (`fedspine export`) from the shared
base, without storing a model per device. `device_structures.json` holds each distinct
structure once and each device's index into them: 8,000 devices of which 8 a round are pruned
write a few hundred maps, not 8,000 (one full MiniLM map is ~100 KB of JSON).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedspine.errors import ConfigError
from fedspine.global_state import GlobalLora
from fedspine.lora.factors import LoraFactors
from fedspine.protocol import factors_to_tensors, tensors_to_factors

LORA_FILE = "global_lora.safetensors"
DEVICES_FILE = "device_structures.json"
DEVICES_FORMAT = 2  # distinct structures + per-device indices (1: a map per device)
_HEAD_PREFIX = "head::"


def save_final_state(
    run_path: Path,
    factors: dict[str, LoraFactors],
    head: dict[str, torch.Tensor],
    meta: dict,
    devices: list[dict],
    structures: list[dict],
) -> None:
    """`devices`: one entry per device with `structure`, its index into `structures` (kept-map
    dicts, each distinct structure once)."""
    tensors = factors_to_tensors(factors)
    tensors.update({_HEAD_PREFIX + k: v.contiguous() for k, v in head.items()})
    tmp = run_path / f".{LORA_FILE}.tmp"
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    os.replace(tmp, run_path / LORA_FILE)
    tmp = run_path / f".{DEVICES_FILE}.tmp"
    body = {"format": DEVICES_FORMAT, "structures": structures, "devices": devices}
    tmp.write_text(json.dumps(body), encoding="utf-8")
    os.replace(tmp, run_path / DEVICES_FILE)


def load_device_structures(run_path: Path) -> list[dict]:
    """Every device's entry with its `kept` map (shared dicts: devices of one structure hold
    the same object). Reads the earlier format too (a list with a map per device)."""
    data = json.loads((run_path / DEVICES_FILE).read_text(encoding="utf-8"))
    if isinstance(data, list):
        return data
    structures = data["structures"]
    return [entry | {"kept": structures[entry["structure"]]} for entry in data["devices"]]


def load_final_state(run_path: Path):
    """(factors, head, meta, devices) of a finished run, with a clear error if it is not one."""
    if not (run_path / LORA_FILE).is_file() or not (run_path / DEVICES_FILE).is_file():
        raise ConfigError(
            f"{run_path} is not a finished fedspine run directory "
            f"(no {LORA_FILE} / {DEVICES_FILE}); pass the directory `fedspine run` "
            "printed"
        )
    from safetensors import safe_open

    with safe_open(str(run_path / LORA_FILE), "pt") as handle:
        meta = dict(handle.metadata() or {})
    tensors = load_file(str(run_path / LORA_FILE))
    head = {k[len(_HEAD_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_HEAD_PREFIX)}
    factors = tensors_to_factors(
        {k: v for k, v in tensors.items() if not k.startswith(_HEAD_PREFIX)}
    )
    return factors, head, meta, load_device_structures(run_path)


def load_global_lora(run_path: Path):
    """(GlobalLora, devices) of a finished run: what rebuilding any device's model needs."""
    factors, head, meta, devices = load_final_state(run_path)
    global_lora = GlobalLora(
        factors, head, float(meta["scaling"]), int(meta["max_rank"]), meta["aggregation"]
    )
    return global_lora, devices


OWN_B_FILE = "device_own_b.safetensors"  # FedSA-LoRA: every trained device's own LoRA B
_OWN_B_SEP = "::"


def save_own_b(run_path: Path, own_b: dict[int, dict[str, torch.Tensor]]) -> None:
    """FedSA-LoRA's final device models are the global A with each device's own B: keep those
    B (devices that never trained have none) so the models can be rebuilt after the run."""
    tensors = {
        f"{device}{_OWN_B_SEP}{name}": b.contiguous()
        for device, by_name in own_b.items()
        for name, b in by_name.items()
    }
    tmp = run_path / f".{OWN_B_FILE}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, run_path / OWN_B_FILE)


def load_own_b(run_path: Path) -> dict[int, dict[str, torch.Tensor]] | None:
    """The saved own B per device id, or None when the run kept none (not FedSA-LoRA)."""
    if not (run_path / OWN_B_FILE).is_file():
        return None
    result: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(run_path / OWN_B_FILE)).items():
        device, name = key.split(_OWN_B_SEP, 1)
        result.setdefault(int(device), {})[name] = tensor
    return result
