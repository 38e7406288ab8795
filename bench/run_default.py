"""Wall time, peak memory and framework overhead of one `fedspine run` (default preset).

Peak memory is sampled every 0.5 s over this process and all its children (the Ray workers
that run the simulated clients), so it is the whole job's resident memory, not only the
server's. Two sums: RSS (each process's resident pages, so a shared library's pages count once
per process that maps them: torch's are in every worker) and PSS (each shared page divided
among the processes sharing it, so the sum is the physical memory the job holds).
Framework overhead is the share of round wall time spent outside local training and evaluation
(summary.json's `framework_overhead_share`; goal <= 5%, must <= 10%).

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
    """Samples the summed RSS and PSS of this process tree in a background thread, and each
    kind of process's own peak RSS (this process, the Ray workers running clients, Ray's own
    services)."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s, self.peak_bytes, self.peak_pss_bytes = interval_s, 0, 0
        self.peak_by_kind: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def kind(proc: psutil.Process, me: psutil.Process) -> str:
        if proc.pid == me.pid:
            return "server"
        try:
            name = " ".join(proc.cmdline())
        except psutil.Error:
            return "other"
        if "default_worker.py" in name or "setup_worker.py" in name or "ray::" in name:
            return "ray_worker"
        return "ray_services"

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total, total_pss, by_kind = 0, 0, {}
            for proc in [me, *me.children(recursive=True)]:
                try:
                    rss = proc.memory_info().rss
                    pss = getattr(proc.memory_full_info(), "pss", rss)  # Linux: smaps_rollup
                except psutil.Error:
                    continue
                total, total_pss = total + rss, total_pss + pss
                kind = self.kind(proc, me)
                by_kind[kind] = max(by_kind.get(kind, 0), rss)  # the largest of that kind
            self.peak_bytes = max(self.peak_bytes, total)
            self.peak_pss_bytes = max(self.peak_pss_bytes, total_pss)
            for kind, rss in by_kind.items():
                self.peak_by_kind[kind] = max(self.peak_by_kind.get(kind, 0), rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class PhaseTimer:
    """A RunProgress that stamps each phase and round, so the bench can say where time goes."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.marks: list[tuple[str, float]] = []

    def _mark(self, name: str) -> None:
        self.marks.append((name, time.perf_counter() - self.start))

    def phase(self, text: str) -> None:
        self._mark(text)

    def start_rounds(self, total: int, done: int = 0) -> None:
        self._mark("rounds")

    def round_done(self, row: dict) -> None:
        self._mark(f"round {row['round']}")

    def breakdown(self, wall: float) -> dict[str, float]:
        """Seconds in: startup (Ray, loading, registration, base scoring), the regular rounds,
        the last (catch-up) round and the final scoring of every device."""
        times = dict(self.marks)
        rounds = [t for name, t in self.marks if name.startswith("round ")]
        first = times.get("rounds", rounds[0] if rounds else wall)
        final_eval = next(
            (t for name, t in self.marks if name.startswith("evaluating every device")), wall
        )
        before_last = rounds[-2] if len(rounds) > 1 else first
        return {
            "startup_s": first,
            "regular_rounds_s": before_last - first,
            "last_round_s": (rounds[-1] - before_last) if rounds else 0.0,
            "final_scoring_s": wall - final_eval,
        }


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
    timer = PhaseTimer()
    start = timer.start
    with PeakMemory() as memory:
        run_dir = simulate(config, out, timer)
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
                "peak_pss_mb_all_processes": memory.peak_pss_bytes / 2**20,
                "peak_rss_mb_server": summary["peak_rss_mb"],
                "peak_rss_mb_largest_process_by_kind": {
                    k: v / 2**20 for k, v in memory.peak_by_kind.items()
                },
                "framework_overhead_share": summary["framework_overhead_share"],
                "round_wall_s_total": sum(r["round_wall_s"] for r in rounds),
                "eval_wall_s_total": sum(r["eval_wall_s"] for r in rounds),
                "where_the_time_goes_s": timer.breakdown(wall),
                "final_accuracy": summary["final_accuracy"],
                "sim_time_s": summary["sim_time_s"],
                "run_dir": str(run_dir),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
