"""A real run killed with SIGKILL mid-round and resumed ends exactly like the uninterrupted run.

Each case runs the smoke preset twice on the real model (Ray, two workers): once straight
through, once killed (the CLI and every process it started) a few seconds into its third
round and continued with `fedspine run --resume`. Both rounds.jsonl must agree in everything
but wall-clock fields, and the summaries in their figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from local_channel import without_wall_fields

FEDSPINE = [sys.executable, "-m", "fedspine.cli"]
SETTINGS = ["--preset", "smoke", "--set", "run.rounds=3"]
FIGURES = ("final_accuracy", "global_accuracy", "sim_time_s", "mean_sparsity", "comm_bytes")
LIMIT_S = 600


def _rounds(run_dir: Path) -> list[dict]:
    lines = (run_dir / "rounds.jsonl").read_text(encoding="utf-8").splitlines()
    return [without_wall_fields(json.loads(line)) for line in lines]


def _kill_tree(proc: subprocess.Popen, seen: dict[int, psutil.Process]) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(proc.pid).children(recursive=True):
            seen.setdefault(child.pid, child)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in seen.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.wait()
    psutil.wait_procs(list(seen.values()), timeout=10)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FEDSPINE, *args], cwd=cwd, capture_output=True, text=True, timeout=LIMIT_S
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fedspine", "fedlora"])
def test_a_killed_run_resumes_to_the_uninterrupted_result(method, tmp_path):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    done = _run(["run", *SETTINGS, "--method", method, "--out", str(straight)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    command = [*FEDSPINE, "run", *SETTINGS, "--method", method, "--out", str(cut)]
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    rounds = cut.with_name("cut.partial") / "rounds.jsonl"
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + LIMIT_S
    try:
        while not (rounds.is_file() and len(rounds.read_text().splitlines()) >= 2):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run did not reach round 2 in time"
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(proc.pid).children(recursive=True):
                    seen.setdefault(child.pid, child)
            time.sleep(0.2)
        time.sleep(3.0)  # into round 3
    finally:
        _kill_tree(proc, seen)
    assert not cut.exists()
    resumed = _run(["run", "--resume", str(cut)], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _rounds(cut) == _rounds(straight)
    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((cut / "summary.json").read_text())
    assert {k: a[k] for k in FIGURES} == {k: b[k] for k in FIGURES}
    assert b["checkpoint"]["resumed"] and not a["checkpoint"]["resumed"]
    assert not (cut / "checkpoint.pt").exists()
