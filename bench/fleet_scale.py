"""Per-round cost and memory of the main job at growing fleet sizes, side by side.

The same participants per round (run.clients_per_round), the same rounds and data; only
fleet.num_devices changes (80, 800, 8,000 by default). A fleet larger than the data shares
partitions (`data.reuse_partitions=true`: device d trains on partition d mod P) and the run
skips the catch-up round (`pruning.catch_up=false`), whose cost is one device round per
laggard, i.e. grows with the fleet by definition. Prints, per size: registration wall time,
the median wall time of the regular rounds, final scoring, peak memory of all processes and
of the largest process of each kind, and the server's bytes per registered device (its
records measured in process with tracemalloc); then the ratios to the smallest fleet.

    python bench/fleet_scale.py [--sizes 80,800,8000] [--rounds 3] [--method fedspine]
        [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_default import PeakMemory, PhaseTimer  # noqa: E402


def server_bytes_per_device(config) -> float:
    """The server's memory per registered device: its records, the planner's state."""
    from fedspine.methods.registry import get_method
    from fedspine.protocol import Registration
    from fedspine.resources import build_resources
    from fedspine.server.run import make_server

    res = build_resources(config)
    server = make_server(res, get_method(config.run.method))
    registrations = {n: Registration(d.device_id, d.tier) for n, d in enumerate(res.fleet)}
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    server.register(registrations)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / len(registrations)


def one_size(size: int, args) -> dict:
    from fedspine.config import load_config
    from fedspine.flower.simulation import simulate

    config = load_config(
        "default",
        overrides=[
            f"run.method={args.method}",
            f"fleet.num_devices={size}",
            f"run.rounds={args.rounds}",
            "data.reuse_partitions=true",
            "pruning.catch_up=false",
            *args.overrides,
        ],
    )
    out = Path(tempfile.mkdtemp(prefix="fedspine-scale-")) / str(size)
    timer = PhaseTimer()
    with PeakMemory() as memory:
        run_dir = simulate(config, out, timer)
    wall = time.perf_counter() - timer.start
    rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").open()]
    marks = dict(timer.marks)
    return {
        "devices": size,
        "wall_time_s": wall,
        "registration_s": marks["rounds"] - marks["registering devices"],
        "round_wall_s_median": statistics.median(r["round_wall_s"] for r in rows[1:] or rows),
        "final_scoring_s": timer.breakdown(wall)["final_scoring_s"],
        "peak_rss_mb_all_processes": memory.peak_bytes / 2**20,
        "peak_pss_mb_all_processes": memory.peak_pss_bytes / 2**20,
        "peak_rss_mb_largest_process_by_kind": {
            k: v / 2**20 for k, v in memory.peak_by_kind.items()
        },
        "server_bytes_per_device": server_bytes_per_device(config),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="80,800,8000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--method", default="fedspine")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    from fedspine.logs import use_offline_env

    use_offline_env()
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        results.append(one_size(size, args))
        print(json.dumps(results[-1]), flush=True)
    first = results[0]
    for row in results[1:]:
        ratios = {
            key: row[key] / first[key]
            for key in ("round_wall_s_median", "peak_rss_mb_all_processes", "registration_s")
        }
        print(f"{row['devices']} vs {first['devices']} devices:", json.dumps(ratios))


if __name__ == "__main__":
    main()
