"""Per-tier means of the (sparsity, rank) a planner chose, first half vs second half of a run.

Reads a finished run directory's rounds.jsonl (the final catch-up round is left out: it is not
the planner's choice). Shows whether the bandit treats weak and strong tiers differently.

    python analysis/tier_choices.py runs/<run>
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def tier_means(rows: list[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """{tier: {"first"|"second": (mean sparsity, mean rank, pulls)}}."""
    planned = [r for r in rows if not r.get("final_round")]
    half = len(planned) / 2
    acc: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    for index, row in enumerate(planned):
        part = "first" if index < half else "second"
        for p in row["participants"]:
            if p.get("ok"):
                acc[(p["tier"], part)].append((p["prune_ratio"], p["lora_rank"]))
    out: dict[str, dict[str, tuple[float, float, int]]] = defaultdict(dict)
    for (tier, part), values in acc.items():
        n = len(values)
        out[tier][part] = (sum(v[0] for v in values) / n, sum(v[1] for v in values) / n, n)
    return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    path = args.run_dir / "rounds.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print(f"{'tier':<12} {'half':<7} {'sparsity':>8} {'rank':>5} {'pulls':>5}")
    for tier, parts in sorted(tier_means(rows).items()):
        for part in ("first", "second"):
            if part in parts:
                sparsity, rank, n = parts[part]
                print(f"{tier:<12} {part:<7} {sparsity:8.3f} {rank:5.2f} {n:5d}")


if __name__ == "__main__":
    main()
