"""The processes a local deployment starts, and stopping every one of them by PID.

A SuperLink and each SuperNode spawn helpers of their own (flower-superexec, ServerApp and
ClientApp processes). `ProcessGroup.stop` terminates each started process together with the
descendants it has at that moment, by PID, waits, and kills what is left; it never looks
processes up by name, so nothing else on the machine is touched.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil

STOP_WAIT_S = 10.0


@dataclass
class Started:
    name: str
    process: subprocess.Popen
    log: Path


@dataclass
class ProcessGroup:
    env: dict[str, str]
    started: list[Started] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> Started:
        """Start `argv` with its output in `log`, in its own session (a Ctrl-C in the
        terminal reaches only us; we stop it)."""
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**self.env, **(env or {})},
                start_new_session=True,
            )
        item = Started(name, process, log)
        self.started.append(item)
        return item

    def alive(self, item: Started) -> bool:
        return item.process.poll() is None

    def stop_one(self, item: Started) -> None:
        """Stop one started process and its descendants, by PID."""
        _stop([_tree(item.process.pid)])
        item.process.poll()

    def stop(self) -> list[int]:
        """Stop everything started, newest first; returns the PIDs that would not die."""
        trees = [_tree(item.process.pid) for item in reversed(self.started)]
        survivors = _stop(trees)
        for item in self.started:
            item.process.poll()
        return survivors


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _stop(trees: list[list[psutil.Process]]) -> list[int]:
    return stop_processes([p for tree in trees for p in tree])


def stop_processes(processes: list[psutil.Process], wait_s: float = STOP_WAIT_S) -> list[int]:
    """SIGTERM each, SIGKILL what is still alive after `wait_s`; the PIDs that survived both."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=wait_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    _, alive = psutil.wait_procs(alive, timeout=wait_s)
    return [p.pid for p in alive]


def tool(name: str) -> str:
    """A Flower executable next to this Python (the venv's bin), else from PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name
