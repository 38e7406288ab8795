"""Split a seeded compare's speedups into rounds needed and seconds per round.

Time to the bar = (rounds until the curve first reaches it) x (simulated seconds per round).
Every method draws the same participants at the same round index, so comparing curves by
round index shows how much of a speedup is accuracy per round and how much round length.
Reads the per-seed comparison.json files `fedspine compare --seeds` writes (OUT/seed-<s>/).

    python analysis/round_index_accuracy.py runs/<seeded compare> [--rounds 12]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from fedspine.report.record import read_rounds
from fedspine.report.summary import time_to_target


def first_round_at(rows: list[dict], target: float) -> int | None:
    """1-based index of the round compare's time_to_target stops at (None: never reached)."""
    reached = time_to_target(rows, target)
    if reached is None:
        return None
    return next(i for i, row in enumerate(rows, start=1) if row["sim_time_s"] == reached)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a `fedspine compare --seeds` output directory")
    parser.add_argument("--rounds", type=int, default=12, help="round indices to print")
    args = parser.parse_args()
    seeds = sorted(args.out.glob("seed-*/comparison.json"))
    if not seeds:
        raise SystemExit(f"no seed-*/comparison.json under {args.out}")
    per_method: dict[str, list[tuple[float, list[dict]]]] = {}
    for path in seeds:
        comparison = json.loads(path.read_text())
        for entry in comparison["methods"]:
            rows = read_rounds(Path(entry["run_dir"]))
            per_method.setdefault(entry["method"], []).append((comparison["target_accuracy"], rows))
    print(f"{len(seeds)} seeds; mean accuracy (%) by round index, then seconds per round and")
    print("the round index of the first crossing of each seed's bar")
    head = " ".join(f"{i:>5}" for i in range(1, args.rounds + 1))
    print(f"{'method':<20} {head}   s/round  first crossing (round)")
    for method, runs in per_method.items():
        means = []
        for i in range(args.rounds):
            scores = [
                r[i]["accuracy"] for _, r in runs if len(r) > i and r[i]["accuracy"] is not None
            ]
            means.append(f"{100 * statistics.fmean(scores):>5.1f}" if scores else f"{'-':>5}")
        per_round = statistics.fmean(r[-1]["sim_time_s"] / len(r) for _, r in runs)
        crossings = [first_round_at(r, target) for target, r in runs]
        shown = ",".join("-" if c is None else str(c) for c in crossings)
        print(f"{method:<20} {' '.join(means)}   {per_round:>7.2f}  {shown}")


if __name__ == "__main__":
    main()
