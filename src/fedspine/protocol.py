"""Names of message records and metric keys, defined once and shared by server and client.

Also the (de)serialisation of LoRA factors to flat tensor dicts, so Flower's ArrayRecord
carries them and the byte count of a message is the real payload size.
"""

from __future__ import annotations

import torch

from fedspine.lora.aggregation import LoraFactors

# Record names inside a Message's RecordDict.
LORA = "lora"  # ArrayRecord: "<module>::A" and "<module>::B"
HEAD = "head"  # ArrayRecord: the task head's weights
PLAN = "plan"  # ConfigRecord: what the server asks of the device this round
REPORT = "report"  # MetricRecord: what the device reports back
DEVICE_META = "device"  # ConfigRecord: device identity and kept-index map (JSON)
IMPORTANCE = "importance"  # ArrayRecord: group scores (down: fleet prior; up: device EMA)
PROBE = "probe"  # ConfigRecord at registration: the step FLOPs a device must time

# Keys of PLAN.
ROUND = "round"
CONFIG_JSON = "config_json"
LORA_RANK = "lora_rank"
TARGET_SPARSITY = "target_sparsity"  # sparsity the device must reach by the end of the round
FINAL_SPARSITY = "final_sparsity"  # the device's final target (caps every round's target)
PRUNE_ONE_SHOT = "prune_one_shot"  # prune to target before training (prune-then-tune)
RANK_SELF_PRUNE = "rank_self_prune"  # HetLoRA: drop trailing LoRA components after training
LOCAL_STEPS = "local_steps"
KEPT_JSON = "kept_json"  # the device's kept-index map, "" = unpruned

# Keys of REPORT.
OK = "ok"
NUM_EXAMPLES = "num_examples"  # the device's local dataset size (its aggregation weight)
LOSS_BEFORE = "loss_before"
LOSS_AFTER = "loss_after"
TIME_S = "time_s"
BYTES_UP = "bytes_up"
BYTES_DOWN = "bytes_down"
TRAIN_FLOPS = "train_flops"
TRAIN_MEMORY_MB = "train_memory_mb"
TRAIN_WALL_S = "train_wall_s"
HANDLER_WALL_S = "handler_wall_s"
SPARSITY = "sparsity"  # share of prunable heads/channels removed
USED_RANK = "lora_rank"

# Keys of DEVICE_META.
DEVICE_ID = "device_id"
STEP_FLOPS = "step_flops"
PROBE_STEP_S = "probe_step_s"  # registration probe replies (fedspine.fleet.probe)
PROBE_BANDWIDTH = "probe_bandwidth_Bps"
PROBE_LATENCY = "probe_latency_s"
TIER = "tier"
ERROR = "error"

_SEP = "::"


def factors_to_tensors(factors: dict[str, LoraFactors]) -> dict[str, torch.Tensor]:
    flat = {}
    for name, pair in factors.items():
        flat[f"{name}{_SEP}A"] = pair.A.contiguous()
        flat[f"{name}{_SEP}B"] = pair.B.contiguous()
    return flat


def tensors_to_factors(flat: dict[str, torch.Tensor]) -> dict[str, LoraFactors]:
    names = {key.rsplit(_SEP, 1)[0] for key in flat}
    return {n: LoraFactors(A=flat[f"{n}{_SEP}A"], B=flat[f"{n}{_SEP}B"]) for n in sorted(names)}


def payload_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())
