"""Wall time, peak memory and framework overhead of one `fedspine run` (default preset).

Peak memory is sampled every 0.5 s over this process and all its children (the Ray workers
that run the simulated clients), so it is the whole job's resident memory, not only the
server's. Framework overhead is the share of round wall time spent outside local training
and evaluation (summary.json's `framework_overhead_share`; goal <= 5%, must <= 10%).

    python bench/run_default.py [--method fedspine] [--preset default] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import psutil


class PeakMemory:
    """Samples the summed RSS of this process tree in a background thread."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s, self.peak_bytes = interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    continue
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="fedspine")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    from fedspine.logs import use_offline_env

    use_offline_env()  # before Flower, Ray or transformers are imported (as the CLI does)
    from fedspine.config import load_config
    from fedspine.flower.simulation import simulate

    config = load_config(args.preset, overrides=[f"run.method={args.method}", *args.overrides])
    out = Path(tempfile.mkdtemp(prefix="fedspine-bench-")) / args.method
    start = time.perf_counter()
    with PeakMemory() as memory:
        run_dir = simulate(config, out)
    wall = time.perf_counter() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").open()]
    print(
        json.dumps(
            {
                "method": args.method,
                "preset": args.preset,
                "wall_time_s": wall,
                "peak_rss_mb_all_processes": memory.peak_bytes / 2**20,
                "peak_rss_mb_server": summary["peak_rss_mb"],
                "framework_overhead_share": summary["framework_overhead_share"],
                "round_wall_s_total": sum(r["round_wall_s"] for r in rounds),
                "eval_wall_s_total": sum(r["eval_wall_s"] for r in rounds),
                "final_accuracy": summary["final_accuracy"],
                "sim_time_s": summary["sim_time_s"],
                "run_dir": str(run_dir),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
