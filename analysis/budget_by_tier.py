"""Per tier, a budget-mode run against a uniform-sparsity run of the same config and seed.

    python analysis/budget_by_tier.py UNIFORM_RUN_DIR BUDGET_RUN_DIR

Prints a markdown table: devices, mean final sparsity, mean final accuracy (each device's own
model on the run's shared eval subset), and for the budget run the mean modelled request
latency against the budget and the share of devices that meet it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def by_tier(run_dir: Path) -> dict[str, list[dict]]:
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    groups: dict[str, list[dict]] = defaultdict(list)
    for device in summary["devices"]:
        groups[device["tier"]].append(device)
    return dict(sorted(groups.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("uniform", type=Path)
    parser.add_argument("budget", type=Path)
    args = parser.parse_args()
    uniform, budget = by_tier(args.uniform), by_tier(args.budget)
    print(
        "| tier | devices | sparsity, uniform | sparsity, budget | accuracy, uniform | "
        "accuracy, budget | difference (points) | latency, budget (ms) | budget (ms) | "
        "meeting the budget |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for tier, devices in budget.items():
        ref = uniform[tier]
        acc_u = statistics.fmean(d["accuracy"] for d in ref)
        acc_b = statistics.fmean(d["accuracy"] for d in devices)
        print(
            f"| {tier} | {len(devices)} | "
            f"{statistics.fmean(d['prune_ratio'] for d in ref):.3f} | "
            f"{statistics.fmean(d['prune_ratio'] for d in devices):.3f} | "
            f"{100 * acc_u:.1f}% | {100 * acc_b:.1f}% | {100 * (acc_b - acc_u):+.1f} | "
            f"{statistics.fmean(d['latency_ms'] for d in devices):.3f} | "
            f"{devices[0]['budget_ms']:.3f} | "
            f"{sum(bool(d['meets_budget']) for d in devices)}/{len(devices)} |"
        )


if __name__ == "__main__":
    main()
