"""`fedspine deploy-local`: a real Flower deployment of N devices on this machine.

What a user would do by hand on real boards, in one command: certificates and node keys, each
node's own data file and node config, a SuperLink serving TLS with SuperNode authentication,
the node keys registered with `flwr supernode register`, N SuperNodes (each with its own
torch thread count and optional slowdown or memory budget), and the job through `flwr run`
with the measured clock. Every process it starts is stopped by PID on success, on failure and
on Ctrl-C. `<out>` ends up holding the normal run record; certificates, node data, Flower's
home and the logs stay in `<out>.deploy/`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedspine.config import Config, config_to_toml, validate
from fedspine.deploy.certs import TestPki, make_test_pki
from fedspine.deploy.node_config import NodeSettings, to_node_config
from fedspine.deploy.processes import ProcessGroup, Started, tool
from fedspine.deploy.shards import LABEL, TEXT, Shards, write_shards
from fedspine.errors import ConfigError, FedspineError
from fedspine.run_dir import check_out_dir

CONNECTION = "fedspine-local"  # the flwr CLI's name for our SuperLink
HOST = "127.0.0.1"
START_WAIT_S = 60.0
REGISTER_TRIES = 5


class DeployError(FedspineError):
    """The local deployment did not produce a run record (the message says where to look)."""


@dataclass(frozen=True)
class NodeOptions:
    """What makes one local node differ from the others."""

    slowdown: float = 1.0  # >= 1: compute really takes this many times longer (sleep)
    memory_budget_mb: float = 0.0  # 0 = what the machine has free


@dataclass(frozen=True)
class KillPlan:
    """A fault to inject (the kill/rejoin check): stop node `node` once round `after_round`
    is done, and start it again (same key, same data) once round `restart_after_round` is."""

    node: int
    after_round: int
    restart_after_round: int = 0  # 0 = leave it down


@dataclass
class _Layout:
    """Where everything of one deployment lives."""

    out: Path
    work: Path

    @property
    def home(self) -> Path:  # FLWR_HOME: the CLI's connection config
        return self.work / "flwr-home"

    @property
    def app(self) -> Path:  # the Flower App folder `flwr run` packages
        return self.work / "app"

    @property
    def logs(self) -> Path:
        return self.work / "logs"


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt


def sized_config(config: Config, nodes: int) -> Config:
    """One device per node; at most every node sampled each round."""
    per_round = min(config.run.clients_per_round, nodes)
    run = dataclasses.replace(
        config.run,
        clients_per_round=per_round,
        min_replies=min(config.run.min_replies, per_round),
    )
    sized = dataclasses.replace(
        config, run=run, fleet=dataclasses.replace(config.fleet, num_devices=nodes)
    )
    validate(sized)
    return sized


def deployed_config(config: Config, shards: Shards | None = None) -> Config:
    """The job's config: the measured clock, devices on their own data (the server keeps the
    held-out set), and every node sampled each round unless fewer were asked for."""
    data = config.data
    if shards is not None:
        data = dataclasses.replace(
            data,
            device_local=True,
            dataset=str(shards.server_eval),
            labels=",".join(shards.label_names),
            text_column=TEXT,
            label_column=LABEL,
        )
    return dataclasses.replace(
        config,
        data=data,
        fleet=dataclasses.replace(config.fleet, clock="measured"),
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _env(layout: _Layout) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",  # flower-superexec
        "FLWR_HOME": str(layout.home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_WAIT_POLICY": "PASSIVE",  # spin-waiting threads thrash a shared core
    }


def write_connection(home: Path, port: int, ca_cert: Path) -> None:
    """The flwr CLI's TLS connection to our SuperLink, in `home` (FLWR_HOME)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{HOST}:{port}"\nroot-certificates = "{ca_cert}"\n',
        encoding="utf-8",
    )


def superlink_argv(pki: TestPki, port: int, database: Path) -> list[str]:
    """A SuperLink serving TLS that admits only registered SuperNode keys."""
    return [
        tool("flower-superlink"),
        "--ssl-ca-certfile",
        str(pki.ca_cert),
        "--ssl-certfile",
        str(pki.server_cert),
        "--ssl-keyfile",
        str(pki.server_key),
        "--enable-supernode-auth",
        "--host",
        HOST,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
        "--database",
        str(database),
    ]


def supernode_argv(
    port: int, private_key: Path, node_config: str, ca_cert: Path | None
) -> list[str]:
    """A SuperNode dialling our SuperLink with its key (and, normally, the CA certificate)."""
    trust = ["--root-certificates", str(ca_cert)] if ca_cert is not None else []
    return [
        tool("flower-supernode"),
        *trust,
        "--superlink",
        f"{HOST}:{port}",
        "--port",
        str(_free_port()),
        "--auth-supernode-private-key",
        str(private_key),
        "--node-config",
        node_config,
    ]


def write_app(folder: Path) -> None:
    """A Flower App folder naming fedspine's installed apps (what `flwr run` packages)."""
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(
        "\n".join(
            [
                "[build-system]",
                'requires = ["hatchling"]',
                'build-backend = "hatchling.build"',
                "",
                "[project]",
                'name = "fedspine-deploy"',
                'version = "1.0.0"',
                "dependencies = []",
                "",
                "[tool.flwr.app]",
                'publisher = "fedspine"',
                "",
                "[tool.flwr.app.components]",
                'serverapp = "fedspine.flower.server_app:app"',
                'clientapp = "fedspine.flower.client_app:app"',
                "",
                "[tool.flwr.app.config]",
                'preset = "default"',
                'method = "fedspine"',
                'config-file = ""',
                'overrides = ""',
                'out = ""',
                "",
            ]
        ),
        encoding="utf-8",
    )


def wait_for_port(port: int, started: Started, group: ProcessGroup) -> None:
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        if not group.alive(started):
            raise DeployError(f"the SuperLink exited at start; see {started.log}")
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise DeployError(f"the SuperLink did not open port {port}; see {started.log}")


def register_node(public_key: Path, env: dict[str, str], log: Path) -> None:
    """`flwr supernode register` (retried while the SuperLink finishes starting)."""
    argv = [tool("flwr"), "supernode", "register", str(public_key), CONNECTION]
    for _ in range(REGISTER_TRIES):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        with log.open("a", encoding="utf-8") as out:
            out.write(done.stdout + done.stderr)
        if done.returncode == 0 and "registered successfully" in done.stdout:
            return
        time.sleep(1.0)
    raise DeployError(f"could not register {public_key} with the SuperLink; see {log}")


class LocalDeployment:
    """One deployment's processes; `run` drives it from certificates to the run record."""

    def __init__(
        self,
        config: Config,
        out: Path,
        nodes: list[NodeOptions],
        threads: int = 1,
        say: Callable[[str], None] = print,
        kill: KillPlan | None = None,
    ) -> None:
        if not nodes:
            raise ConfigError("deploy-local needs --nodes >= 1")
        if threads < 1:
            raise ConfigError("--threads must be >= 1")
        if kill is not None and not 0 <= kill.node < len(nodes):
            raise ConfigError(f"--kill-node {kill.node} is not a node (0..{len(nodes) - 1})")
        out = out.expanduser().absolute()
        check_out_dir(out)
        config = sized_config(config, len(nodes))
        self.config, self.nodes, self.threads = config, nodes, threads
        self.say, self.kill = say, kill
        self.layout = _Layout(out, out.with_name(out.name + ".deploy"))
        self.group = ProcessGroup(_env(self.layout))
        self.supernodes: list[Started] = []

    def run(self) -> Path:
        """Deploy, run the job, stop everything; the published run directory. A SIGTERM
        (a CI timeout, `kill`) stops the processes too, like Ctrl-C."""
        previous = signal.signal(signal.SIGTERM, _terminated)
        try:
            return self._run()
        finally:
            signal.signal(signal.SIGTERM, previous)
            survivors = self.group.stop()
            if survivors:
                self.say(f"warning: processes {survivors} did not stop; stop them by PID")
            else:
                self.say(f"stopped all {len(self.group.started)} processes started")

    def _run(self) -> Path:
        layout = self.layout
        if layout.work.exists():  # a previous deploy-local's workspace for this --out
            if not (layout.work / "pki").is_dir():
                raise ConfigError(
                    f"{layout.work} exists and is not a deploy-local workspace; remove it or "
                    "pass another --out"
                )
            shutil.rmtree(layout.work)
        layout.logs.mkdir(parents=True)
        self.say(f"writing node data, certificates and keys to {layout.work}")
        shards = write_shards(self.config, layout.work / "data")
        job = deployed_config(self.config, shards)
        (layout.work / "run.toml").write_text(config_to_toml(job), encoding="utf-8")
        names = [f"node-{i}" for i in range(len(self.nodes))]
        pki = make_test_pki(layout.work / "pki", names, [HOST, "localhost"])
        port = _free_port()
        write_app(layout.app)
        write_connection(layout.home, port, pki.ca_cert)
        link = self._start_superlink(port, pki)
        for keys in pki.nodes:
            register_node(keys.public_key, self.group.env, layout.logs / "register.log")
        self.say(f"SuperLink on {HOST}:{port} (TLS, SuperNode auth); {len(names)} keys registered")
        for index in range(len(self.nodes)):
            self.supernodes.append(self._start_supernode(index, port, pki, shards))
        self._flwr_run(link)
        summary = layout.out / "summary.json"
        if not summary.is_file():
            raise DeployError(
                f"the run did not finish (no {summary}); see {layout.logs / 'flwr-run.log'} "
                f"and {layout.logs / 'superlink.log'}"
            )
        return layout.out

    def _start_superlink(self, port: int, pki: TestPki) -> Started:
        argv = superlink_argv(pki, port, self.layout.work / "superlink.db")
        link = self.group.start("superlink", argv, self.layout.logs / "superlink.log")
        wait_for_port(port, link, self.group)
        return link

    def _start_supernode(self, index: int, port: int, pki: TestPki, shards: Shards) -> Started:
        options = self.nodes[index]
        settings = NodeSettings(
            partition_id=index,
            data_path=str(shards.nodes[index]),
            memory_budget_mb=options.memory_budget_mb,
            slowdown=options.slowdown,
            state_dir=str(self.layout.work / "state" / f"node-{index}"),
        )
        key = pki.nodes[index].private_key
        argv = supernode_argv(port, key, to_node_config(settings), pki.ca_cert)
        log = self.layout.logs / f"supernode-{index}.log"
        return self.group.start(f"supernode-{index}", argv, log, self._thread_env())

    def _flwr_run(self, link: Started) -> None:
        """`flwr run --stream`, its progress lines echoed, the kill plan applied on the way."""
        run_config = (
            f'config-file="{self.layout.work / "run.toml"}" out="{self.layout.out}" '
            f'method="{self.config.run.method}"'
        )
        argv = [tool("flwr"), "run", str(self.layout.app), CONNECTION, "--stream"]
        argv += ["--run-config", run_config]
        log = self.layout.logs / "flwr-run.log"
        runner = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.group.env,
            text=True,
            start_new_session=True,
        )
        self.group.started.append(Started("flwr-run", runner, log))
        shown = ""
        with log.open("w", encoding="utf-8") as out:
            for line in runner.stdout:
                out.write(line)
                out.flush()
                text = line.rstrip().partition("fedspine: ")[2]
                if text and text != shown:  # the stream repeats each ServerApp line
                    self.say(text)
                    self._maybe_inject(text)
                    shown = text
                if not self.group.alive(link):
                    raise DeployError(f"the SuperLink died; see {link.log}")
        runner.wait()

    def _maybe_inject(self, line: str) -> None:
        """The kill plan: after the named round's progress line, stop or restart the node."""
        plan = self.kill
        if plan is None or not line.startswith("round ") or " done in " not in line:
            return
        done = int(line.split()[1])
        node = self.supernodes[plan.node]
        if done == plan.after_round and self.group.alive(node):
            self.group.stop_one(node)
            self.say(f"killed supernode-{plan.node} (PID {node.process.pid}) after round {done}")
        elif done == plan.restart_after_round and not self.group.alive(node):
            again = self.group.start(node.name, node.process.args, node.log, self._thread_env())
            self.supernodes[plan.node] = again
            self.say(f"restarted supernode-{plan.node} (PID {again.process.pid})")

    def _thread_env(self) -> dict[str, str]:
        return {"FEDSPINE_CLIENT_THREADS": str(self.threads), "OMP_NUM_THREADS": str(self.threads)}
