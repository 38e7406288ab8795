"""A whole run on an existing Ray cluster: a one-node head started here with `ray start`,
reached through `run.ray_address`, stopped by PID afterwards.

The head gets its own temp dir and ports: `ray start` records its address in the temp dir, and
under /tmp/ray every later `ray.init()` on this machine (other runs, other tests) would join it.
Never `ray stop`: it kills every Ray process of the machine, not just this head's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import fedspine
from fedspine.config import load_config
from fedspine.deploy.processes import stop_processes
from fedspine.flower.simulation import simulate
from fedspine.report.record import read_rounds, read_summary
from local_channel import SMALL_RUN, without_wall_fields

pytestmark = pytest.mark.slow

RAY_CLI = Path(sys.executable).with_name("ray")
HEAD_PORTS = (
    "ray-client-server-port",
    "dashboard-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "node-manager-port",
    "object-manager-port",
)
START_TIMEOUT_S = 90
PROCESS_MEASURES = ("checkpoint", "peak_rss_mb", "framework_overhead_share")  # in summary.json


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def head_processes(leader: int, temp_dir: str) -> list[psutil.Process]:
    """Every process of the head: its session (start_new_session) or naming its temp dir."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            mine = os.getsid(proc.pid) == leader or temp_dir in " ".join(proc.info["cmdline"] or ())
        except (ProcessLookupError, PermissionError):
            continue
        if mine:
            found.append(proc)
    return found


def stop_head(head: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM `ray start --block` (it stops what it started), then SIGKILL any leftover."""
    procs = head_processes(head.pid, temp_dir)
    for proc in list(procs):
        with contextlib.suppress(psutil.NoSuchProcess):
            procs += proc.children(recursive=True)
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait()
    _, alive = psutil.wait_procs(procs, timeout=5)
    stop_processes(alive, wait_s=10)  # SIGTERM first, as Ray's own `ray stop` does


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A one-node Ray cluster (2 CPUs) whose workers import this checkout's fedspine."""
    port, temp_dir = free_port(), tempfile.mkdtemp(prefix="fsray-", dir="/tmp")  # short: sockets
    ports = [f"--{name}={free_port()}" for name in HEAD_PORTS]
    src = str(Path(fedspine.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    log = open(Path(temp_dir) / "ray-start.log", "w")  # noqa: SIM115 (closed in finally)
    command = [str(RAY_CLI), "start", "--head", f"--port={port}", "--num-cpus=2", *ports]
    command += ["--disable-usage-stats", "--include-dashboard=false", f"--temp-dir={temp_dir}"]
    head = subprocess.Popen(
        [*command, "--block"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not listening(port):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start failed: {(Path(temp_dir) / 'ray-start.log').read_text()}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        stop_head(head, temp_dir)
        log.close()
        left = head_processes(head.pid, temp_dir)
        assert not left, f"Ray head processes left running: {[p.pid for p in left]}"


def small_config(*extra: str):
    return load_config("smoke", overrides=[*SMALL_RUN, "run.method=fedspine", *extra])


def test_a_run_on_an_existing_cluster_equals_the_local_run(ray_head, tmp_path):
    on_cluster = simulate(small_config(f"run.ray_address={ray_head}"), tmp_path / "cluster")
    summary = read_summary(on_cluster)
    assert summary["method"] == "fedspine" and summary["num_devices"] == 6
    rows = read_rounds(on_cluster)  # 3 rounds, then the final (recovery and scoring) round
    assert [row["round"] for row in rows] == [1, 2, 3, 4] and rows[-1]["final_round"]
    recorded = (on_cluster / "config.toml").read_text()
    assert f'ray_address = "{ray_head}"' in recorded
    local = simulate(small_config(), tmp_path / "local")
    assert without_wall_fields(read_rounds(on_cluster)) == without_wall_fields(read_rounds(local))
    results = [without_wall_fields(read_summary(run)) for run in (on_cluster, local)]
    for summary in results:  # what the process measured about itself, not results
        for key in PROCESS_MEASURES:
            summary.pop(key, None)
    assert results[0] == results[1]
