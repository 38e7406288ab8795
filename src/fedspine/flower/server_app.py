"""Flower ServerApp: a `GridChannel` between the Flower-free run driver and Flower's Grid.

The run's loop is `fedspine.server.run.run_federation`: each round the server core plans,
the channel turns its down-links into Messages, `grid.send_and_receive` delivers them, and
the replies go back to the core as typed uplinks (or crashes). `make_server_app` builds an
app bound to a resolved config and run directory (in-process simulation from the CLI and the
tests); the module-level `app` serves `flwr run .`, reading its settings from
`[tool.flwr.app.config]` / `--run-config`.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Mapping
from logging import ERROR, INFO, WARN
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedspine.config import Config, config_to_dict, load_config, read_toml
from fedspine.errors import ConfigError, FedspineError
from fedspine.fleet.probe import measured_probe
from fedspine.flower import records
from fedspine.logs import QUIET_LOGGERS, quiet_logs
from fedspine.protocol import (
    DeviceCrash,
    Downlink,
    NoReply,
    ProbeRequest,
    Registration,
    ReplyStatus,
)
from fedspine.report.progress import RunProgress
from fedspine.report.record import DEVICE_STATE_DIR
from fedspine.resources import load_resources, with_agreed_labels
from fedspine.run_dir import (
    RunDirectory,
    abandon_run,
    check_out_dir,
    finish_run,
    new_run_dir,
    run_dir_path,
)
from fedspine.server.core import Reply
from fedspine.server.run import run_federation

NODE_WAIT_S = 120.0
POLL_S = 0.1  # how often replies are pulled (send_and_receive's own poll is 3 s)
# Registration queries go out this many at a time: Flower's link state scans every stored
# message for each node it serves, so 8,000 queries at once cost 8,000 x 8,000 checks.
REGISTRATION_BATCH = 256


class EngineStopped(RuntimeError):
    """The simulation engine ended while the server waited for replies."""


DEPLOYMENT_CLOCK = "fleet.clock=measured"  # `flwr run`'s default; a run-config override wins


def wait_for_nodes(grid: Grid, count: int) -> list[int]:
    deadline = time.monotonic() + NODE_WAIT_S
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count or time.monotonic() > deadline:
            return nodes
        time.sleep(0.2)


class GridChannel:
    """The run driver's `DeviceChannel` over a Flower Grid: typed messages in and out.

    Devices are addressed by the device id they announce at registration, not by Flower's
    node id (random per SuperNode start): a resumed run, on a fresh simulation engine or
    after SuperNodes reconnect, finds each device's record again.
    """

    def __init__(
        self,
        grid: Grid,
        config: Config,
        wall_deadline: bool = False,
        device_state_dir: Path | None = None,
        engine_stopped: threading.Event | None = None,
    ) -> None:
        """`wall_deadline`: run.round_deadline_s is also a wall-clock timeout on each round's
        send_and_receive (the Deployment Engine: real devices can hang; in-process simulation
        keeps the deadline on the simulated clock only). `device_state_dir`: the storage of
        simulated devices (inside the run directory, so it survives a resume).
        `engine_stopped`: set by the in-process simulation once its engine has returned or
        crashed; a reply can no longer come, so a wait for one ends (else the process hangs).
        One event per run, so a finished run never stops a later one's waits."""
        self.state_dir = str(device_state_dir) if device_state_dir is not None else ""
        self.grid, self.num_devices = grid, config.fleet.num_devices
        self.config_json = json.dumps(config_to_dict(config), sort_keys=True)
        deadline = config.run.round_deadline_s
        self.timeout = deadline if wall_deadline and deadline > 0 else None
        self.nodes: dict[int, int] = {}  # device id -> Flower node id
        self.measured = config.fleet.clock == "measured"
        self.engine_stopped = engine_stopped

    def register(self, request: ProbeRequest) -> dict[int, Registration]:
        """The first call waits for the fleet and registers every node; later calls register
        only nodes that connected since (devices joining mid-run, or a restarted SuperNode
        taking its device back)."""
        if self.nodes:
            known = set(self.nodes.values())
            nodes = [n for n in sorted(self.grid.get_node_ids()) if n not in known]
        else:
            nodes = wait_for_nodes(self.grid, self.num_devices)
        if not nodes:
            return {}
        content = records.encode_query(self.config_json, request)
        messages = [
            Message(content=content, message_type="query", dst_node_id=node) for node in nodes
        ]
        connected = set(self.grid.get_node_ids())
        registrations = {}
        first = not self.nodes
        replies = [
            reply
            for start in range(0, len(messages), REGISTRATION_BATCH)
            for reply in exchange(
                self.grid, messages[start : start + REGISTRATION_BATCH], None, self.engine_stopped
            )
        ]
        for reply, node, elapsed in replies:
            if reply.has_error() and first:
                raise RuntimeError(f"device registration failed: {reply.error.reason}")
            if reply.has_error():  # mid-run: it stays unregistered and is asked again later
                log(WARN, "fedspine: node %d did not register: %s", node, reply.error.reason)
                continue
            registration = with_measured_link(records.decode_registration(reply.content), elapsed)
            earlier = self.nodes.get(registration.device_id, node)
            if earlier != node and earlier in connected:
                raise ConfigError(
                    f"two SuperNodes announce device {registration.device_id}; give each "
                    "SuperNode its own partition-id"
                )
            self.nodes[registration.device_id] = node
            registrations[registration.device_id] = registration
        return registrations

    def present(self, round_num: int) -> set[int]:
        """Registered devices whose SuperNode is connected now."""
        connected = set(self.grid.get_node_ids())
        return {device for device, node in self.nodes.items() if node in connected}

    def train(self, downlinks: dict[int, Downlink]) -> dict[int, Reply]:
        messages = [
            Message(
                content=records.encode_downlink(self.config_json, downlink, self.state_dir),
                message_type="train",
                dst_node_id=self.nodes[device],
            )
            for device, downlink in downlinks.items()
        ]
        devices = {node: device for device, node in self.nodes.items()}
        replies: dict[int, Reply] = {}
        for reply, node, elapsed in exchange(
            self.grid, messages, self.timeout, self.engine_stopped
        ):
            device = devices[node]
            if reply.has_error():
                replies[device] = DeviceCrash(str(reply.error.reason))
                continue
            uplink = records.decode_uplink(reply.content)
            if self.measured:  # the round's time is what really elapsed for this device
                uplink = dataclasses.replace(
                    uplink, report=dataclasses.replace(uplink.report, time_s=elapsed)
                )
            replies[device] = uplink
        for node in downlinks.keys() - replies.keys():  # nothing before the timeout
            reason = f"no reply within the {self.timeout:g} s wall-clock deadline"
            replies[node] = NoReply(ReplyStatus.LATE, reason, waited_s=self.timeout or 0.0)
        return replies


def exchange(
    grid: Grid,
    messages: list[Message],
    timeout: float | None = None,
    engine_stopped: threading.Event | None = None,
) -> list[tuple[Message, int, float]]:
    """`grid.send_and_receive` that also says, per reply, the node it was sent to and the
    seconds from sending to its arrival (the measured clock's round time; polled every
    POLL_S). The node comes from the message replied to: an error the SuperLink answers in
    place of an offline node names the SuperLink as its sender, not the node."""
    sent = time.monotonic()
    ids = list(grid.push_messages(messages))
    node_of = dict(zip(ids, (m.metadata.dst_node_id for m in messages), strict=True))
    waiting = set(ids)
    replies: list[tuple[Message, int, float]] = []
    while waiting and (timeout is None or time.monotonic() - sent < timeout):
        if engine_stopped is not None and engine_stopped.is_set():
            raise EngineStopped(f"the simulation engine stopped with {len(waiting)} replies due")
        for reply in grid.pull_messages(waiting):
            replied_to = reply.metadata.reply_to_message_id
            replies.append((reply, node_of[replied_to], time.monotonic() - sent))
            waiting.discard(replied_to)
        if waiting:
            time.sleep(POLL_S)
    return replies


def with_measured_link(registration: Registration, round_trip_s: float) -> Registration:
    """A measured probe's registration with the link speed its send-to-reply time shows."""
    if registration.probe_handler_s is None or registration.probe_step_s is None:
        return registration
    probe = measured_probe(
        registration.probe_step_s,
        registration.probe_transfer_bytes or 0,
        round_trip_s,
        registration.probe_handler_s,
    )
    return dataclasses.replace(
        registration, probe_bandwidth_Bps=probe.bandwidth_Bps, probe_latency_s=probe.latency_s
    )


class LogProgress:
    """Progress as log lines of the ServerApp (what `flwr run --stream` and deploy-local show)."""

    def phase(self, text: str) -> None:
        log(INFO, "fedspine: %s", text)

    def start_rounds(self, total: int, done: int = 0) -> None:
        log(INFO, "fedspine: training up to %d rounds", total)

    def round_done(self, row: dict) -> None:
        accuracy = row.get("accuracy")
        log(
            INFO,
            "fedspine: round %d done in %.1f s: %s, accuracy %s",
            row["round"],
            row["round_wall_s"],
            ", ".join(f"{n} {status}" for status, n in row["outcomes"].items() if n),
            "-" if accuracy is None else f"{accuracy:.3f}",
        )


def make_server_app(
    config: Config,
    run_dir: RunDirectory,
    outcome: dict[str, Any],
    progress: RunProgress | None = None,
    resume: bool = False,
    engine_stopped: threading.Event | None = None,
) -> ServerApp:
    """A ServerApp that runs the federation and leaves the summary (or the error) in `outcome`.
    `engine_stopped`: see GridChannel."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            state_dir = run_dir.path.absolute() / DEVICE_STATE_DIR  # workers have other cwds
            channel = GridChannel(
                grid, config, device_state_dir=state_dir, engine_stopped=engine_stopped
            )
            outcome["summary"] = run_federation(channel, config, run_dir, progress, resume)
        except BaseException as err:  # re-raised by simulate() after the simulation stops
            outcome["error"] = err

    return app


def config_from_run_config(run_config: Mapping[str, Any]) -> tuple[Config, Path]:
    """The resolved config and absolute run directory from `flwr run`'s run config.

    The clock defaults to `fleet.clock = "measured"` (real devices). `overrides` holds
    `--set` style `section.key=value` pairs separated by ';'. A relative `out` is resolved in
    the ServerApp's working directory (the SuperLink's, not the caller's of `flwr run`), so
    the absolute path is logged.
    """
    overrides = [s.strip() for s in str(run_config.get("overrides", "")).split(";") if s.strip()]
    config_file = str(run_config.get("config-file", "")).strip()
    path = Path(config_file).expanduser() if config_file else None
    # the clock is measured here unless the config file or an override names one
    named = any(o.replace(" ", "").startswith("fleet.clock=") for o in overrides)
    if not named and not (path is not None and "clock" in read_toml(path).get("fleet", {})):
        overrides.insert(0, DEPLOYMENT_CLOCK)
    config = load_config(
        str(run_config.get("preset", "default")),
        path,
        overrides + [f"run.method={run_config.get('method', 'fedspine')}"],
    )
    out = str(run_config.get("out", "")).strip()
    return config, run_dir_path(config, Path(out).expanduser() if out else None).absolute()


def check_fleet_size(grid: Grid, num_devices: int) -> None:
    """Each SuperNode is one simulated device: their number must be fleet.num_devices."""
    nodes = wait_for_nodes(grid, num_devices)
    if len(nodes) != num_devices:
        raise ConfigError(
            f"fleet.num_devices is {num_devices} but {len(nodes)} SuperNodes are connected; "
            f"start {num_devices} SuperNodes (simulation: --federation-config "
            f'"num-supernodes={num_devices}") or pass overrides="fleet.num_devices={len(nodes)}"'
        )


def prepare_run(grid: Grid, run_config: Mapping[str, Any]) -> tuple[Config, Path]:
    """Every check that can fail on bad input, before a run directory exists."""
    config, out = config_from_run_config(run_config)
    config = with_agreed_labels(config)
    check_out_dir(out)
    load_resources(json.dumps(config_to_dict(config), sort_keys=True))
    check_fleet_size(grid, config.fleet.num_devices)
    return config, out


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for `flwr run .`: settings come from the app's run config.

    A user error is logged as one `fedspine error:` line and re-raised so the run is marked
    failed; a run that fails midway keeps its finished rounds in `<out>.partial/`.
    """
    quiet_logs(tuple(name for name in QUIET_LOGGERS if name != "flwr"))  # keep Flower's log
    try:
        config, out = prepare_run(grid, context.run_config)
    except FedspineError as err:
        log(ERROR, "fedspine error: %s", err)
        raise
    log(
        INFO,
        "fedspine: %s on %d devices, writing %s",
        config.run.method,
        config.fleet.num_devices,
        out,
    )
    run_dir = new_run_dir(config, out)
    try:
        channel = GridChannel(grid, config, wall_deadline=True)
        summary = run_federation(channel, config, run_dir, LogProgress())
    except BaseException:
        kept = abandon_run(run_dir)
        log(
            ERROR,
            "fedspine: run failed; %s",
            f"finished rounds kept in {kept}" if kept else "no round had finished, nothing kept",
        )
        raise
    published = finish_run(config, run_dir, summary)
    log(
        INFO,
        "fedspine: done, final accuracy %s, run directory %s",
        summary.get("final_accuracy"),
        published,
    )
