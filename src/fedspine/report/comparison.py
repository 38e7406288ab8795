"""The comparison of several runs: shared target, per-method figures, JSON, Markdown and a plot.

Every method is judged against the same bar (a share of the best final accuracy among the
compared methods), so time-to-target and speedups are comparable across rows. Everything here
is a pure function of the runs' rounds.jsonl and summary.json, except the writers at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedspine.report.record import write_json_atomic, write_text_atomic
from fedspine.report.summary import (
    SMOOTHING_WINDOW,
    accuracy_at_time,
    time_to_smoothed_target,
    time_to_target,
)

COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"
COMPARISON_PNG = "comparison.png"
DEFAULT_TARGET_SHARE = 0.95
REFERENCE_METHOD = "fedspine"
TIME_TO_TARGET_DEFINITION = (
    "time_to_target_s: simulated time of the first round whose per-round accuracy reaches the "
    "shared target (target_share x the best final accuracy among the compared methods, on the "
    "whole test set once compare has re-scored every method); "
    "speedup_of_fedspine: a method's time_to_target_s / fedspine's; time_to_smoothed_target_s "
    f"and smoothed_speedup_of_fedspine: the same with the mean of the last {SMOOTHING_WINDOW} "
    "per-round accuracies in place of one round's (less sensitive to one lucky round)."
)
COMMON_TIME_DEFINITION = (
    "accuracy_at_common_time: per-round accuracy of the last round each method finished by "
    "common_time_s, the simulated length of the shortest run (with a fixed number of rounds a "
    "method with shorter rounds stops earlier; this compares the curves at one time)."
)


FULL_TEST_DEFINITION = (
    "final acc: every device's final model on the same eval.final_eval_examples test examples "
    "(the run's own figure, cheap but about 3 points of sampling error at 64 examples); final "
    "acc, whole test set: the final models of evenly spaced devices (final_full_test.devices) on "
    "the whole held-out test set, measured by compare once every method has run."
)


def _basis(comparison: dict) -> str:
    if comparison.get("target_basis") == "final_accuracy_full_test":
        return "final accuracy on the whole test set"
    return "final accuracy"


def budget_line(time_budget_s: float) -> str:
    """How long the methods trained: a fixed number of rounds, or to one simulated time."""
    if time_budget_s > 0:
        return (
            f"Time budget: every method trained at least run.rounds rounds and then on until "
            f"the simulated clock reached {time_budget_s:g} s (a round that starts before the "
            "budget finishes), so methods with shorter rounds ran more of them."
        )
    return "Fixed rounds: every method ran run.rounds rounds (no time budget)."


def shared_target(final_accuracies: Iterable[float | None], share: float) -> float | None:
    """`share` x the best final accuracy among the methods (None when no method has one)."""
    known = [a for a in final_accuracies if a is not None]
    return share * max(known) if known else None


def speedup_of_reference(time_s: float | None, reference_time_s: float | None) -> float | None:
    """How many times longer a method needs than the reference (None if either never got there)."""
    if time_s is None or reference_time_s is None or reference_time_s <= 0:
        return None
    return time_s / reference_time_s


def peak_train_memory_by_tier(rows: list[dict]) -> dict[str, float]:
    """Per tier, the largest training memory any participant that actually trained needed.

    Devices refused for exceeding their budget report the memory they would have needed; they
    never trained, so only `ok` participants count.
    """
    peaks: dict[str, float] = {}
    for row in rows:
        for part in row["participants"]:
            memory = part.get("train_memory_mb")
            if part.get("ok") and memory is not None:
                peaks[part["tier"]] = max(peaks.get(part["tier"], 0.0), float(memory))
    return dict(sorted(peaks.items()))


def median_sparsity_device(devices: list[dict]) -> dict:
    """The device whose final sparsity is the run's (lower) median: a real device, not a mean."""
    ordered = sorted(devices, key=lambda d: (d["prune_ratio"], d["id"]))
    return ordered[(len(ordered) - 1) // 2]


def method_entry(
    run_dir: Path,
    summary: dict,
    rows: list[dict],
    target: float | None,
    latency: dict | None = None,
    full_test: dict | None = None,
) -> dict[str, Any]:
    """One method's row: its summary figures, re-scored against the shared target."""
    latency = latency or {}
    full_test = full_test or {}
    smoothed = None if target is None else time_to_smoothed_target(rows, target)
    return {
        "method": summary["method"],
        "final_accuracy": summary["final_accuracy"],
        "final_accuracy_full_test": full_test.get("accuracy"),
        "final_full_test": full_test or None,  # {"accuracy", "devices", "examples"}
        "global_accuracy": summary.get("global_accuracy"),
        "accuracy_spread": summary["accuracy_spread"],
        "mean_sparsity": summary["mean_sparsity"],
        "time_to_target_s": None if target is None else time_to_target(rows, target),
        "speedup_of_fedspine": None,  # filled once every row's time is known
        "time_to_smoothed_target_s": smoothed,
        "smoothed_speedup_of_fedspine": None,
        "accuracy_at_common_time": None,  # filled once every run's length is known
        "comm_bytes": summary["comm_bytes"],
        "peak_train_memory_mb_by_tier": peak_train_memory_by_tier(rows),
        "inference_latency_ratio": latency.get("ratio"),
        "inference_latency": latency or None,
        "sim_time_s": summary["sim_time_s"],
        "wall_time_s": summary["wall_time_s"],
        "rounds": summary["rounds"],
        "failed_device_rounds": summary.get("failed_device_rounds"),
        "run_dir": str(run_dir),
    }


def build_comparison(
    runs: dict[str, tuple[Path, dict, list[dict]]],
    target_share: float = DEFAULT_TARGET_SHARE,
    latencies: dict[str, dict] | None = None,
    pending: Iterable[str] = (),
    time_budget_s: float = 0.0,
    full_test: dict[str, dict] | None = None,
) -> dict[str, Any]:
    """comparison.json's content from `{method: (run_dir, summary, rounds)}`, in that order.

    The bar comes from the finals re-scored on the whole test set when every method has one
    (`full_test`, measured once all methods ran), else from the runs' own final_accuracy.
    """
    latencies, full_test = latencies or {}, full_test or {}
    rescored = bool(runs) and all(m in full_test for m in runs)
    finals = (
        (full_test[m]["accuracy"] for m in runs)
        if rescored
        else (s["final_accuracy"] for _, s, _ in runs.values())
    )
    target = shared_target(finals, target_share)
    entries = [
        method_entry(run_dir, summary, rows, target, latencies.get(method), full_test.get(method))
        for method, (run_dir, summary, rows) in runs.items()
    ]
    common_time = min((s["sim_time_s"] for _, s, _ in runs.values()), default=None)
    for entry, (_, _, rows) in zip(entries, runs.values(), strict=True):
        entry["accuracy_at_common_time"] = accuracy_at_time(rows, common_time)
    by_method = {e["method"]: e for e in entries}
    reference = by_method.get(REFERENCE_METHOD, {})
    for entry in entries:
        if reference:
            for speedup, time_key in (
                ("speedup_of_fedspine", "time_to_target_s"),
                ("smoothed_speedup_of_fedspine", "time_to_smoothed_target_s"),
            ):
                entry[speedup] = speedup_of_reference(entry[time_key], reference[time_key])
    first = next(iter(runs.values()), None)
    pending = list(pending)
    return {
        "target_accuracy": target,
        "target_share": target_share,
        "target_basis": "final_accuracy_full_test" if rescored else "final_accuracy",
        "complete": not pending,
        "pending_methods": pending,
        "time_budget_s": time_budget_s,
        "accuracy_definition": first[1].get("accuracy_definition") if first else None,
        "time_to_target_definition": TIME_TO_TARGET_DEFINITION,
        "common_time_s": common_time,
        "common_time_definition": COMMON_TIME_DEFINITION,
        "methods": entries,
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, fmt: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, fmt)


def _speedup(value: float | None) -> str:
    return _num(value, ".2f") + ("x" if value else "")


def _memory(by_tier: dict[str, float]) -> str:
    return ", ".join(f"{tier} {mb:.0f}" for tier, mb in by_tier.items()) or "n/a"


MD_COLUMNS = (
    "method",
    "final acc",
    "final acc, whole test set",
    "global acc",
    "spread",
    "mean sparsity",
    "time to target (s)",
    "fedspine speedup",
    f"time to target, {SMOOTHING_WINDOW}-round mean (s)",
    f"fedspine speedup ({SMOOTHING_WINDOW}-round mean)",
    "acc at common time",
    "rounds",
    "sim time (s)",
    "comm (MiB)",
    "peak train MiB by tier",
    "inference latency (x unpruned)",
)


def markdown_row(entry: dict, latency_missing: str) -> str:
    cells = (
        entry["method"],
        _pct(entry["final_accuracy"]),
        _pct(entry.get("final_accuracy_full_test")),
        _pct(entry.get("global_accuracy")),
        _pct(entry["accuracy_spread"]),
        _pct(entry["mean_sparsity"]),
        _num(entry["time_to_target_s"], ".0f", "not reached"),
        _speedup(entry["speedup_of_fedspine"]),
        _num(entry.get("time_to_smoothed_target_s"), ".0f", "not reached"),
        _speedup(entry.get("smoothed_speedup_of_fedspine")),
        _pct(entry.get("accuracy_at_common_time")),
        str(entry["rounds"]),
        _num(entry["sim_time_s"], ".1f"),
        f"{entry['comm_bytes'] / 2**20:.1f}",
        _memory(entry["peak_train_memory_mb_by_tier"]),
        _num(entry["inference_latency_ratio"], ".3f", latency_missing),
    )
    return "| " + " | ".join(cells) + " |"


def format_markdown(comparison: dict) -> str:
    """comparison.md: one row per method, then the target and how accuracy is defined."""
    latency_missing = "n/a" if comparison["complete"] else "pending"
    lines = [
        "# Method comparison",
        "",
        "| " + " | ".join(MD_COLUMNS) + " |",
        "|" + "|".join("---" for _ in MD_COLUMNS) + "|",
        *(markdown_row(e, latency_missing) for e in comparison["methods"]),
        "",
        f"Target accuracy: {_pct(comparison['target_accuracy'])} "
        f"(= {comparison['target_share']:g} x the best {_basis(comparison)} among these "
        "methods; the same bar for every method).",
        "",
        FULL_TEST_DEFINITION,
        "",
        budget_line(comparison.get("time_budget_s", 0.0)),
        "",
        TIME_TO_TARGET_DEFINITION,
        "",
        f"Common time: {_num(comparison.get('common_time_s'), '.1f')} s simulated. "
        + COMMON_TIME_DEFINITION,
        "",
        f"Accuracy: {comparison['accuracy_definition']}",
    ]
    if comparison.get("latency_setup"):
        setup = comparison["latency_setup"]
        lines += [
            "",
            "Inference latency: CPU forward of the median-sparsity device's pruned base (LoRA is "
            "merged at deployment) over the unpruned base, timed side by side in one process, "
            f"median of {setup['repeats']} after {setup['warmup']} warm-up, batch "
            f"{setup['batch']}, seq_len {setup['seq_len']}, torch threads {setup['threads']}; "
            "an unpruned structure is 1.0 exactly (not timed).",
        ]
    if comparison["pending_methods"]:
        lines += ["", f"Partial: still to run: {', '.join(comparison['pending_methods'])}."]
    return "\n".join(lines) + "\n"


def plot_comparison(path: Path, rounds_by_method: dict[str, list[dict]], target: float | None):
    """Accuracy vs simulated time for every method; fedspine's per-tier choices beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedspine.report.plots import plot_accuracy, plot_tier_configs

    reference = rounds_by_method.get(REFERENCE_METHOD)
    panels = 3 if reference else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    plot_accuracy(axes[0][0], rounds_by_method, target)
    axes[0][0].set_title("accuracy vs simulated time (shared target dashed)")
    if reference:
        plot_tier_configs(axes[0][1:], reference)
        axes[0][1].set_title(f"{REFERENCE_METHOD}: per-tier sparsity chosen each round")
        axes[0][2].set_title(f"{REFERENCE_METHOD}: per-tier LoRA rank chosen each round")
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def write_comparison(out: Path, comparison: dict, rounds_by_method: dict[str, list[dict]]) -> None:
    """comparison.json, .md and .png into `out`, each replaced atomically."""
    write_json_atomic(out / COMPARISON_JSON, comparison)
    write_text_atomic(out / COMPARISON_MD, format_markdown(comparison))
    plot_comparison(out / COMPARISON_PNG, rounds_by_method, comparison["target_accuracy"])
