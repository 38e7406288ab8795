"""The measured clock: real elapsed time per device, a really timed probe, honest slowdown,
declared or free memory; `flwr run` defaults to it and the record says which clock ran."""

import threading
import time
from types import SimpleNamespace

import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedspine.config import load_config
from fedspine.errors import ConfigError
from fedspine.fleet.measured import BYTES_PER_MB, memory_budget_bytes, slow_down
from fedspine.fleet.probe import measured_probe
from fedspine.flower import records
from fedspine.flower.server_app import GridChannel, config_from_run_config, with_measured_link
from fedspine.protocol import (
    DeviceCrash,
    DevicePlan,
    DeviceReport,
    Downlink,
    NoReply,
    ProbeRequest,
    Registration,
    ReplyStatus,
    Uplink,
)


def test_probe_link_is_the_transfer_time_beyond_the_handler():
    probe = measured_probe(step_s=0.5, transfer_bytes=1_000_000, round_trip_s=7.0, handler_s=2.0)
    assert probe.bandwidth_Bps == pytest.approx(2_000_000 / 5.0)  # 2 MB moved in 5 s
    assert probe.latency_s == 0.0
    assert probe.duration_s() == pytest.approx(0.5 + 5.0)  # step + the transfer it timed


def test_registration_gets_its_link_from_the_round_trip():
    reg = Registration(3, "tx2", probe_step_s=0.2, probe_handler_s=1.0, probe_transfer_bytes=500)
    assert reg.probe is None  # the device cannot know its link alone
    measured = with_measured_link(reg, round_trip_s=3.0)
    assert measured.probe.bandwidth_Bps == pytest.approx(1000 / 2.0)
    assert measured.probe.transfer_bytes == 500
    simulated = Registration(3, "tx2", 0.2, 1e6, 0.05)
    assert with_measured_link(simulated, 99.0) == simulated  # the simulated probe is kept


def test_slowdown_really_sleeps():
    start = time.perf_counter()
    assert slow_down(0.05, 3.0) == pytest.approx(0.15)
    assert time.perf_counter() - start >= 0.1
    assert slow_down(0.05, 1.0) == pytest.approx(0.05)


def test_memory_budget_is_declared_or_free():
    assert memory_budget_bytes(512.0) == 512 * BYTES_PER_MB
    free = memory_budget_bytes(0.0)
    assert 0 < free < 2**50


class FakeGrid:
    """Replies to node n after delays[n] seconds; records what was pushed."""

    def __init__(self, delays, reply_content, offline=()):
        self.delays, self.reply_content, self.offline = delays, reply_content, set(offline)
        self.pushed = {}
        self.start = None

    def get_node_ids(self):
        return list(self.delays)

    def push_messages(self, messages):
        self.start = time.monotonic()
        ids = []
        for i, msg in enumerate(messages):
            self.pushed[f"m{i}"] = msg.metadata.dst_node_id
            ids.append(f"m{i}")
        return ids

    def pull_messages(self, ids):
        now = time.monotonic() - self.start
        ready = [i for i in ids if now >= self.delays[self.pushed[i]]]
        return [self._reply(i) for i in ready]

    def _reply(self, message_id):
        node = self.pushed[message_id]
        if node in self.offline:  # the SuperLink answers for an offline node, as itself
            error = SimpleNamespace(code=5, reason="node unavailable")
            metadata = SimpleNamespace(src_node_id=0, reply_to_message_id=message_id)
            return SimpleNamespace(has_error=lambda: True, error=error, metadata=metadata)
        metadata = SimpleNamespace(src_node_id=node, reply_to_message_id=message_id)
        content = self.reply_content(node) if callable(self.reply_content) else self.reply_content
        return SimpleNamespace(has_error=lambda: False, content=content, metadata=metadata)


@pytest.fixture
def task_identity():
    """Messages can be built outside a Flower runtime once a run id is set."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def fake_run(clock, delays, offline=()):
    config = load_config("smoke", overrides=[f"fleet.clock={clock}", "fleet.num_devices=2"])
    report = DeviceReport(ok=False, error="over budget", time_s=123.0)
    grid = FakeGrid(delays, records.encode_uplink(Uplink(report)), offline)
    channel = GridChannel(grid, config)
    channel.nodes = {0: 11, 1: 22}
    plan = DevicePlan(round_num=1, lora_rank=2)
    return channel, {d: Downlink(plan, None, {}, {}) for d in (0, 1)}


def test_exchange_times_each_reply_from_sending(task_identity):
    channel, downlinks = fake_run("measured", {11: 0.05, 22: 0.4})
    replies = channel.train(downlinks)
    assert replies[0].report.time_s == pytest.approx(0.05, abs=0.15)
    assert replies[1].report.time_s == pytest.approx(0.4, abs=0.15)
    assert replies[1].report.time_s > replies[0].report.time_s


def test_an_offline_nodes_error_reply_is_its_devices_crash(task_identity):
    channel, downlinks = fake_run("measured", {11: 0.0, 22: 0.0}, offline={22})
    replies = channel.train(downlinks)
    assert isinstance(replies[0], Uplink)
    assert isinstance(replies[1], DeviceCrash) and "unavailable" in replies[1].reason


def test_a_restarted_supernode_takes_its_device_back(task_identity):
    """Node ids change when a SuperNode restarts: the device is found again under the new id,
    unless the old one is still connected (then two nodes claim one device: an error)."""
    device_of = {11: 0, 22: 1, 33: 1}
    config = load_config("smoke", overrides=["fleet.num_devices=2"])

    def registration(node):
        return records.encode_registration(Registration(device_of[node], "tx2"))

    grid = FakeGrid({11: 0.0, 22: 0.0}, registration)
    channel = GridChannel(grid, config)
    assert set(channel.register(ProbeRequest())) == {0, 1}
    grid.delays = {11: 0.0, 33: 0.0}  # node 22 went away, its device came back as node 33
    assert set(channel.register(ProbeRequest(round_num=3))) == {1}
    assert channel.nodes == {0: 11, 1: 33}
    assert channel.present(3) == {0, 1}
    device_of[44] = 0
    grid.delays = {11: 0.0, 33: 0.0, 44: 0.0}  # a second node claims device 0, still online
    with pytest.raises(ConfigError, match="two SuperNodes announce device 0"):
        channel.register(ProbeRequest(round_num=4))


def test_simulated_clock_keeps_the_devices_time(task_identity):
    channel, downlinks = fake_run("simulated", {11: 0.0, 22: 0.0})
    assert {r.report.time_s for r in channel.train(downlinks).values()} == {123.0}


def test_a_reply_past_the_wall_deadline_is_late(task_identity):
    channel, downlinks = fake_run("measured", {11: 0.0, 22: 5.0})
    channel.timeout = 0.3
    start = time.monotonic()
    replies = channel.train(downlinks)
    assert time.monotonic() - start < 1.5
    assert isinstance(replies[0], Uplink)
    assert isinstance(replies[1], NoReply) and replies[1].status is ReplyStatus.LATE


def test_flwr_run_defaults_to_the_measured_clock(tmp_path):
    config, _ = config_from_run_config({"preset": "smoke", "out": str(tmp_path / "r")})
    assert config.fleet.clock == "measured"
    chosen, _ = config_from_run_config(
        {"preset": "smoke", "overrides": "fleet.clock=simulated", "out": str(tmp_path / "r")}
    )
    assert chosen.fleet.clock == "simulated"
    toml = tmp_path / "c.toml"
    toml.write_text('[fleet]\nclock = "simulated"\n')
    from_file, _ = config_from_run_config({"preset": "smoke", "config-file": str(toml)})
    assert from_file.fleet.clock == "simulated"
    assert load_config("smoke").fleet.clock == "simulated"  # fedspine run's default


def test_a_server_waiting_on_a_stopped_engine_ends_instead_of_hanging(task_identity):
    """The simulation engine crashed (e.g. a Ray node that timed out at startup): no reply can
    come, so the server thread must end, or the process never exits."""
    from fedspine.flower import server_app

    channel, downlinks = fake_run("simulated", {11: 1e9, 22: 1e9})  # never replies
    channel.engine_stopped = threading.Event()
    channel.engine_stopped.set()
    started = time.monotonic()
    with pytest.raises(server_app.EngineStopped, match="2 replies due"):
        channel.train(downlinks)
    assert time.monotonic() - started < 1.0
