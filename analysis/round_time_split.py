"""Where simulated round time goes: the straggler's compute vs network seconds, per run.

A synchronous round lasts as long as its slowest participant. This replays each finished run's
fleet from its config.toml (the clock is a pure function of seed, device and round), splits
every participant's recorded time into network (its bytes over that round's bandwidth, plus
per-message latency) and compute (the rest), and prints per run the mean straggler time and
its split, with the same split over all participants by tier. It shows what a method's
savings come from: fewer FLOPs (pruning) or fewer bytes (rank, pruned widths).

    python analysis/round_time_split.py runs/<compare>/fedspine runs/<compare>/fedlora ...
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from fedspine.config import config_from_dict, read_toml
from fedspine.fleet.clock import comm_time_s, conditions_at
from fedspine.fleet.profiles import DeviceProfile, FleetSpec, make_fleet
from fedspine.resources import fleet_spec_from


def split_time(
    part: dict, profile: DeviceProfile, spec: FleetSpec, round_num: int
) -> tuple[float, float]:
    """(compute s, network s) of one participant's recorded round time."""
    conditions = conditions_at(profile, spec, round_num)
    network = comm_time_s(part["bytes_up"], part["bytes_down"], conditions, spec.latency_s)
    return max(0.0, part["time_s"] - network), network


def run_split(run_dir: Path) -> dict:
    """Mean straggler (compute, network) and per-tier means over all trained participants."""
    config = config_from_dict(read_toml(run_dir / "config.toml"))
    spec = fleet_spec_from(config.fleet, config.run.seed)
    fleet = {p.device_id: p for p in make_fleet(spec)}
    lines = (run_dir / "rounds.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    stragglers: list[tuple[float, float]] = []
    by_tier: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        trained = [p for p in row["participants"] if p.get("ok")]
        if not trained:
            continue
        splits = [split_time(p, fleet[p["device"]], spec, row["round"]) for p in trained]
        for part, split in zip(trained, splits, strict=True):
            by_tier[part["tier"]].append(split)
        stragglers.append(max(splits, key=sum))
    return {
        "method": config.run.method,
        "rounds": len(stragglers),
        "straggler": tuple(statistics.fmean(s[i] for s in stragglers) for i in (0, 1)),
        "tiers": {
            tier: tuple(statistics.fmean(s[i] for s in splits) for i in (0, 1))
            for tier, splits in sorted(by_tier.items())
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    args = parser.parse_args()
    print(
        f"{'method':<20} {'rounds':>6} {'straggler s':>11} {'compute':>8} {'network':>8} "
        f"{'net share':>9}   per tier: compute + network (all participants)"
    )
    for run_dir in args.run_dirs:
        split = run_split(run_dir)
        compute, network = split["straggler"]
        tiers = "  ".join(f"{t} {c:.2f}+{n:.2f}" for t, (c, n) in split["tiers"].items())
        print(
            f"{split['method']:<20} {split['rounds']:>6} {compute + network:>11.2f} "
            f"{compute:>8.2f} {network:>8.2f} {network / (compute + network):>9.0%}   {tiers}"
        )


if __name__ == "__main__":
    main()
