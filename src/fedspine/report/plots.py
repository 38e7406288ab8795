"""Plots people would rather look at than read: accuracy vs simulated time, per-tier configs."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedspine.report.record import read_rounds, read_summary  # noqa: E402
from fedspine.report.summary import tier_budget_table  # noqa: E402

ACCURACY_PLOT = "accuracy_vs_time.png"
CONFIG_PLOT = "device_configs.png"
BUDGET_PLOT = "budget_by_tier.png"  # budget mode only


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def accuracy_curve(rows: list[dict]) -> tuple[list[float], list[float]]:
    points = [(r["sim_time_s"], r["accuracy"]) for r in rows if r.get("accuracy") is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_accuracy(ax, runs: dict[str, list[dict]], target: float | None = None) -> None:
    for label, rows in runs.items():
        times, accs = accuracy_curve(rows)
        ax.plot(times, accs, marker="o", markersize=3, label=label)
    if target:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def tier_means(rows: list[dict], key: str) -> dict[str, list[tuple[int, float]]]:
    """Per tier, the mean of `key` over each round's ok participants."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        by_tier: dict[str, list[float]] = defaultdict(list)
        for p in row["participants"]:
            if p["ok"]:
                by_tier[p["tier"]].append(float(p[key]))
        for tier, values in by_tier.items():
            series[tier].append((row["round"], sum(values) / len(values)))
    return dict(series)


def plot_tier_configs(axes, rows: list[dict]) -> None:
    for ax, key, label in zip(
        axes, ("prune_ratio", "lora_rank"), ("sparsity", "LoRA rank"), strict=False
    ):
        for tier, points in sorted(tier_means(rows, key).items()):
            ax.plot(
                [p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=tier
            )
        ax.set_xlabel("round")
        ax.set_ylabel(f"mean chosen {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)


def plot_run(run_dir: Path) -> None:
    rows = read_rounds(run_dir)
    summary = read_summary(run_dir)
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_accuracy(ax, {summary["method"]: rows}, summary.get("target_accuracy"))
    ax.set_title(f"{summary['method']} on {summary['dataset']} ({summary['num_devices']} devices)")
    _save(fig, run_dir / ACCURACY_PLOT)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    plot_tier_configs(axes, rows)
    fig.suptitle(f"{summary['method']}: per-tier configuration chosen each round")
    _save(fig, run_dir / CONFIG_PLOT)
    if any("budget_ms" in d for d in summary.get("devices", [])):
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        plot_budget_by_tier(axes, summary["devices"])
        fig.suptitle(f"{summary['method']}: each device pruned to its own inference budget")
        _save(fig, run_dir / BUDGET_PLOT)


def plot_budget_by_tier(axes, devices: list[dict]) -> None:
    table = tier_budget_table(devices)
    tiers = list(table)
    for ax, key, label in zip(
        axes,
        ("sparsity", "latency_ms", "accuracy"),
        ("mean final sparsity", "modelled request latency (ms)", "mean final accuracy"),
        strict=True,
    ):
        ax.bar(tiers, [table[t][key] for t in tiers], color="tab:blue")
        if key == "latency_ms":
            budget = table[tiers[0]]["budget_ms"]
            ax.axhline(budget, color="tab:red", linestyle="--", label=f"budget {budget:.2f} ms")
            ax.legend(fontsize=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
