"""summary.json: the run's figures, derived from the round rows and the final device scores."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from fedspine.config import Config
from fedspine.fleet.profiles import fleet_to_dict
from fedspine.generative_eval import SCORE_DEFINITION

ACCURACY_DEFINITION = (
    "final_accuracy: mean over all devices of each device's final model (its own pruned "
    "structure + the final global LoRA and head) on a fixed seeded subset of the held-out test "
    "set (eval.final_eval_examples); global_accuracy: the unpruned base + final global LoRA on "
    "the whole held-out test set; per-round accuracy: the global model (unpruned methods) or "
    "the least and most pruned participants of the round (pruning methods) on a fixed seeded "
    "test subset (data.round_eval_examples)."
)


SMOOTHING_WINDOW = 3  # rounds in the trailing mean of time_to_smoothed_target


def time_to_target(rows: list[dict], target: float) -> float | None:
    """Simulated time of the first round whose accuracy reaches `target`."""
    return time_to_smoothed_target(rows, target, window=1)


def time_to_smoothed_target(
    rows: list[dict], target: float, window: int = SMOOTHING_WINDOW
) -> float | None:
    """Simulated time of the first round whose trailing mean accuracy (this round and up to
    `window - 1` rounds before it, rounds without a score skipped) reaches `target`.

    Per-round accuracy swings with the label mix of the round's participants (every method
    draws the same participants, so a lucky round lifts them all at the same round index);
    a first crossing then rewards luck, the trailing mean less so.
    """
    scored = [r for r in rows if r.get("accuracy") is not None]
    for i, row in enumerate(scored):
        recent = scored[max(0, i - window + 1) : i + 1]
        if len(recent) == window and sum(r["accuracy"] for r in recent) / window >= target:
            return row["sim_time_s"]
    return None


def accuracy_at_time(rows: list[dict], time_s: float) -> float | None:
    """Per-round accuracy of the last round finished by simulated time `time_s` (None: none)."""
    reached = [r for r in rows if r.get("accuracy") is not None and r["sim_time_s"] <= time_s]
    return reached[-1]["accuracy"] if reached else None


def framework_overhead_share(rows: list[dict], workers: int) -> dict[str, float | None]:
    """Where round wall time goes, as shares of the summed round wall time.

    `framework`: outside the devices' handlers and the server's evaluation (Flower/Ray
    messaging, serialisation, server planning and aggregation). `device_setup`: inside the
    handlers but outside the optimizer loop (slicing the base, attaching LoRA, the loss probe,
    costing). A device's busy time is spread over the `workers` clients that run at once.
    """
    total = framework = setup = 0.0
    for row in rows:
        parts = [p for p in row["participants"] if p.get("handler_wall_s")]
        parallel = max(1, min(workers, len(parts)))
        handler = sum(p["handler_wall_s"] for p in parts) / parallel
        train = sum(p.get("train_wall_s") or 0.0 for p in parts) / parallel
        total += row["round_wall_s"]
        framework += max(0.0, row["round_wall_s"] - row["eval_wall_s"] - handler)
        setup += max(0.0, handler - train)
    if total <= 0:
        return {"framework": None, "device_setup": None}
    return {"framework": framework / total, "device_setup": setup / total}


def _task_fields(
    config: Config, final: float | None, global_scores: dict, base_scores: dict | None
) -> dict[str, Any]:
    """task, final_score and, for instruction tuning, the base model's score and per-category
    scores (the accuracy fields then hold the primary answer score)."""
    fields: dict[str, Any] = {"task": config.data.task, "final_score": final}
    if config.data.task == "generate":
        fields.update(
            {
                "base_score": base_scores["accuracy"] if base_scores else None,
                "score_definition": SCORE_DEFINITION,
                "per_category": global_scores.get("per_category"),
                "base_per_category": (base_scores or {}).get("per_category"),
            }
        )
    return fields


def build_summary(
    config: Config,
    res,
    rows: list[dict],
    devices: list[dict],
    global_scores: dict,
    wall_time_s: float,
    peak_rss_mb: float,
    base_scores: dict | None = None,
) -> dict[str, Any]:
    """The run's figures. `base_scores`: the untuned base on the same held-out set (generate)."""
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
        "clock": config.fleet.clock,  # simulated, or measured: sim_time_s is real time then
        "wall_time_s": wall_time_s,
        "mean_sparsity": statistics.fmean(d["prune_ratio"] for d in devices),
        "mean_param_sparsity": statistics.fmean(d["param_sparsity"] for d in devices),
        "comm_bytes": comm,
        "failed_device_rounds": sum(not p["ok"] for r in rows for p in r["participants"]),
        "reply_outcomes": reply_outcomes(rows),
        "pruning_target": config.pruning.target,
        "skipped_rounds": sum(bool(r.get("skipped")) for r in rows),
        "peak_rss_mb": peak_rss_mb,
        "framework_overhead_share": framework_overhead_share(rows, config.run.workers),
        # {"framework": outside device handlers and evaluation, "device_setup": handler work
        # outside the optimizer loop}; see framework_overhead_share's docstring
        "accuracy_definition": ACCURACY_DEFINITION,
        **_task_fields(config, final_accuracy, global_scores, base_scores),
        "devices": devices,
        "fleet": fleet_to_dict(res.fleet_spec, res.fleet),
        **_budget_fields(res, devices),
    }


def _budget_fields(res, devices: list[dict]) -> dict[str, Any]:
    """Budget mode: the resolved budget and, per tier, sparsity, latency, accuracy, and the
    share of devices whose deployed model meets it."""
    if res.budget is None or not any("budget_ms" in d for d in devices):
        return {}
    latency_ms, memory_mb = res.budget
    return {
        "inference_budget": {
            "latency_ms": latency_ms,
            "memory_mb": memory_mb,
            "request": {"batch": 1, "tokens": res.config.data.max_seq_len},
        },
        "budget_by_tier": tier_budget_table(devices),
        "devices_meeting_budget": sum(bool(d["meets_budget"]) for d in devices) / len(devices),
    }


def reply_outcomes(rows: list[dict]) -> dict[str, int]:
    """How every participant's round ended, over the run (ok, failed, dropped, crashed, ...)."""
    totals: dict[str, int] = {}
    for row in rows:
        for participant in row["participants"]:
            status = participant.get("status", "ok" if participant["ok"] else "failed")
            totals[status] = totals.get(status, 0) + 1
    return totals


def tier_budget_table(devices: list[dict]) -> dict[str, dict[str, float]]:
    """Per tier: mean final sparsity, accuracy and modelled latency, share meeting the budget."""
    by_tier: dict[str, list[dict]] = defaultdict(list)
    for device in devices:
        by_tier[device["tier"]].append(device)
    return {
        tier: {
            "devices": len(group),
            "sparsity": sum(d["prune_ratio"] for d in group) / len(group),
            "accuracy": sum(d["accuracy"] for d in group) / len(group),
            "latency_ms": sum(d["latency_ms"] or 0.0 for d in group) / len(group),
            "budget_ms": group[0]["budget_ms"],
            "meets_budget": sum(bool(d["meets_budget"]) for d in group) / len(group),
        }
        for tier, group in sorted(by_tier.items())
    }
