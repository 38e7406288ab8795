"""`flwr run .` on a private simulation SuperLink: the app runs as Flower packages it.

The test starts its own `flower-superlink --simulation` on a free loopback port with a private
FLWR_HOME (never the shared local SuperLink that plain `flwr run` starts and leaves running),
records every process below it while runs go (ServerApp, Ray, actors), and stops all of them
by PID in a `finally`. About 1-2 minutes on 2 busy cores.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from fedspine.deploy.processes import stop_processes

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUN_LIMIT_S = 240.0
TINY = ";".join(
    [
        "fleet.num_devices=2",
        "run.clients_per_round=2",
        "run.rounds=1",
        "train.local_steps=2",
        "data.max_train_examples=200",
        "data.max_test_examples=50",
        "data.round_eval_examples=20",
        "eval.final_eval_examples=20",
    ]
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SimulationSuperLink:
    """A SuperLink in simulation mode that this test owns, with every process it spawns."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # it spawns flower-superexec
            "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "sim"\n\n[superlink.sim]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n',
            encoding="utf-8",
        )
        self.spawned: dict[int, psutil.Process] = {}
        self.log = (home / "superlink.log").open("w", encoding="utf-8")
        command = [str(BIN / "flower-superlink"), "--insecure", "--simulation"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--disable-runtime-dependency-installation"]
        self.proc = subprocess.Popen(
            command, cwd=home, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.spawned[self.proc.pid] = psutil.Process(self.proc.pid)

    def wait_ready(self, limit_s: float = 60.0) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "flower-superlink exited; see superlink.log"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError("flower-superlink did not become ready")

    def track(self) -> None:
        """Remember every current descendant, so a crashed parent cannot orphan it unseen."""
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            self.spawned.setdefault(child.pid, child)

    def flwr_run(self, run_config: str, federation_config: str) -> tuple[int, str]:
        """`flwr run <repo> sim --stream`; returns its exit code and output."""
        log_path = self.home / f"flwr-run-{time.monotonic_ns()}.log"
        command = [str(BIN / "flwr"), "run", str(REPO), "sim", "--stream"]
        command += ["--run-config", run_config, "--federation-config", federation_config]
        with log_path.open("w", encoding="utf-8") as log:
            cli = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
            deadline = time.monotonic() + RUN_LIMIT_S
            try:
                while cli.poll() is None and time.monotonic() < deadline:
                    self.track()
                    time.sleep(0.5)
            finally:
                if cli.poll() is None:
                    cli.kill()
                    cli.wait()
                    pytest.fail(f"flwr run took over {RUN_LIMIT_S:.0f}s")
        return cli.returncode, log_path.read_text(encoding="utf-8")

    def stop(self) -> list[int]:
        """Stop the SuperLink and everything it spawned, by PID; return PIDs still alive."""
        if self.proc.poll() is None:
            self.track()
        survivors = stop_processes([p for p in self.spawned.values() if p.is_running()])
        self.log.close()
        return survivors


@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    link = SimulationSuperLink(tmp_path_factory.mktemp("flwr-home"))
    try:
        link.wait_ready()
        yield link
    finally:
        assert link.stop() == [], "processes survived the SuperLink's shutdown"


def test_flwr_run_writes_a_complete_run_directory(superlink, tmp_path):
    out = tmp_path / "run"
    code, log = superlink.flwr_run(
        f'preset="smoke" method="fedlora" out="{out}" overrides="{TINY}"',
        "num-supernodes=2 client-resources-num-cpus=1",
    )
    assert code == 0, log
    assert "fedspine: done" in log, log
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["method"] == "fedlora" and summary["num_devices"] == 2
    assert 0.0 <= summary["final_accuracy"] <= 1.0
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1]
    assert sorted(p["device"] for p in rounds[0]["participants"]) == [0, 1]
    assert all(p["ok"] for p in rounds[0]["participants"])
    assert not out.with_name("run.partial").exists()


def test_fleet_size_must_match_the_supernodes(superlink, tmp_path):
    """Three SuperNodes for a two-device fleet fail before a run directory is made."""
    out = tmp_path / "run"
    _, log = superlink.flwr_run(
        f'preset="smoke" method="fedlora" out="{out}" overrides="{TINY}"',
        "num-supernodes=3 client-resources-num-cpus=1",
    )
    assert "fedspine error: fleet.num_devices is 2 but 3 SuperNodes are connected" in log, log
    assert 'overrides="fleet.num_devices=3"' in log
    assert "fedspine: done" not in log
    assert not out.exists() and not out.with_name("run.partial").exists()
