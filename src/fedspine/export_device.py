"""`fedspine export`: one device's final model (its pruned structure + merged global LoRA;
FLoRA: the merged global delta; FedSA-LoRA: the global A with the device's own B)."""

from __future__ import annotations

from pathlib import Path

from fedspine.config import config_from_dict, read_toml
from fedspine.errors import ConfigError
from fedspine.evaluation import device_model
from fedspine.models.loading import load_causal_lm, load_classifier
from fedspine.pruning import KeptIndices, export_pruned
from fedspine.report.final_state import load_global_lora, load_own_b
from fedspine.report.record import CONFIG_FILE, read_summary


def export_device(run_dir: Path, device_id: int, out: Path) -> Path:
    """Rebuild device `device_id` of a finished run from the shared base and save it."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir} has no {CONFIG_FILE}: pass a finished run directory")
    config = config_from_dict(read_toml(run_dir / CONFIG_FILE))
    global_lora, devices = load_global_lora(run_dir)
    by_id = {d["id"]: d for d in devices}
    if device_id not in by_id:
        raise ConfigError(f"device {device_id} is not in this run; ids are 0..{len(devices) - 1}")
    if config.data.task == "generate":
        base = load_causal_lm(config.model.source, config.run.seed)
    else:
        num_labels = int(read_summary(run_dir)["num_labels"])
        base = load_classifier(config.model.source, num_labels, config.run.seed)
    kept = KeptIndices.from_dict(by_id[device_id]["kept"])
    saved_b = load_own_b(run_dir)  # FedSA-LoRA: the device's own B (None: another method)
    model = device_model(base, global_lora, kept, saved_b.get(device_id) if saved_b else None)
    entry = by_id[device_id]
    pruned_for = None
    if "budget_ms" in entry:  # budget mode: the budget the device pruned itself to meet
        pruned_for = {
            "latency_budget_ms": entry["budget_ms"],
            "memory_budget_mb": config.pruning.memory_budget_mb,
            "request": {"batch": 1, "tokens": config.data.max_seq_len},
            "target_sparsity": entry["target_sparsity"],
        }
    return export_pruned(model, kept, out, tokenizer=base.tokenizer, pruned_for=pruned_for)
