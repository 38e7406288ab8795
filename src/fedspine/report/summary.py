"""summary.json: the run's figures, derived from the round rows and the final device scores."""

from __future__ import annotations

import statistics
from typing import Any

from fedspine.config import Config
from fedspine.fleet.profiles import fleet_to_dict

ACCURACY_DEFINITION = (
    "final_accuracy: mean over all devices of each device's final model (its own pruned "
    "structure + the final global LoRA and head) on a fixed seeded subset of the held-out test "
    "set (eval.final_eval_examples); global_accuracy: the unpruned base + final global LoRA on "
    "the whole held-out test set; per-round accuracy: the global model (unpruned methods) or "
    "the least and most pruned participants of the round (pruning methods) on a fixed seeded "
    "test subset (data.round_eval_examples)."
)


def time_to_target(rows: list[dict], target: float) -> float | None:
    """Simulated time of the first round whose accuracy reaches `target`."""
    for row in rows:
        if row.get("accuracy") is not None and row["accuracy"] >= target:
            return row["sim_time_s"]
    return None


def framework_overhead_share(rows: list[dict], workers: int) -> float | None:
    """Share of round wall time spent outside local training and evaluation.

    Local training time per round = the participants' summed training wall time divided by
    the number of clients that run at once (the busiest worker's load, approximately).
    """
    total = overhead = 0.0
    for row in rows:
        train = [p["train_wall_s"] or 0.0 for p in row["participants"] if p.get("train_wall_s")]
        parallel = max(1, min(workers, len(train)))
        busy = sum(train) / parallel + row["eval_wall_s"]
        total += row["round_wall_s"]
        overhead += max(0.0, row["round_wall_s"] - busy)
    return overhead / total if total > 0 else None


def build_summary(
    config: Config,
    res,
    rows: list[dict],
    devices: list[dict],
    global_scores: dict,
    wall_time_s: float,
    peak_rss_mb: float,
) -> dict[str, Any]:
    accuracies = [r["accuracy"] for r in rows if r.get("accuracy") is not None]
    device_acc = [d["accuracy"] for d in devices]
    final_accuracy = statistics.fmean(device_acc) if device_acc else None
    best = max(accuracies + ([final_accuracy] if final_accuracy is not None else []), default=0.0)
    target = config.eval.target_accuracy or 0.95 * best
    comm = sum(p["bytes_up"] + p["bytes_down"] for r in rows for p in r["participants"])
    return {
        "method": config.run.method,
        "model": config.model.source,
        "dataset": config.data.dataset,
        "num_labels": len(res.label_names),
        "num_devices": config.fleet.num_devices,
        "rounds": len(rows),
        "final_accuracy": final_accuracy,
        "accuracy_spread": (max(device_acc) - min(device_acc)) if device_acc else None,
        "accuracy_std": statistics.pstdev(device_acc) if len(device_acc) > 1 else 0.0,
        "global_accuracy": global_scores["accuracy"],
        "best_accuracy": best,
        "target_accuracy": target,
        "time_to_target_s": time_to_target(rows, target),
        "sim_time_s": rows[-1]["sim_time_s"] if rows else 0.0,
        "wall_time_s": wall_time_s,
        "mean_sparsity": statistics.fmean(d["prune_ratio"] for d in devices),
        "mean_param_sparsity": statistics.fmean(d["param_sparsity"] for d in devices),
        "comm_bytes": comm,
        "failed_device_rounds": sum(not p["ok"] for r in rows for p in r["participants"]),
        "peak_rss_mb": peak_rss_mb,
        "framework_overhead_share": framework_overhead_share(rows, config.run.workers),
        "accuracy_definition": ACCURACY_DEFINITION,
        "devices": devices,
        "fleet": fleet_to_dict(res.fleet_spec, res.fleet),
    }
