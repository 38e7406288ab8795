"""Flower ClientApp: translates a message into one device round (or a registration) and back.

The device is its node config's `partition-id` (`fedspine.deploy.node_config`); its simulated
hardware profile follows from the run config carried in the message, and its data from the
same (its partition of the shared pool) or, with `data.device_local`, from the file its node
config names. So the same app works in simulation and on SuperNodes. Under the measured clock
it reports real compute time and peak memory and refuses configurations over its own memory
budget. The base model is loaded once per process (`load_device_resources` caches it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import socket
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedspine.data.device_local import load_device_data
from fedspine.deploy.node_config import NodeSettings, node_settings
from fedspine.device_round import own_budget_target, run_device_round, time_one_step
from fedspine.device_state import DeviceStateStore
from fedspine.errors import ConfigError, DataError
from fedspine.fleet.clock import conditions_at
from fedspine.fleet.measured import memory_budget_bytes, peak_memory_mb, slow_down
from fedspine.fleet.probe import simulate_probe
from fedspine.fleet.profiles import DeviceProfile
from fedspine.flower import records
from fedspine.logs import quiet_logs
from fedspine.memory import release_freed_memory
from fedspine.protocol import DeviceReport, Registration, Uplink
from fedspine.pruning import ModelScores
from fedspine.pruning.fleet_importance import scores_to_tensors, tensors_to_scores
from fedspine.resources import RunResources, load_device_resources
from fedspine.train import TokenisedData

app = ClientApp()
SCORES = "importance_ema"  # node-local state: the device's smoothed group importance
OWN_B = "own_lora_b"  # node-local state: FedSA-LoRA's B, which never leaves the device


def _threads(msg: Message) -> None:
    """One torch thread per CPU the client reserves (run.client_cpus, at least one): two
    one-CPU clients share two cores without thrashing. FEDSPINE_CLIENT_THREADS overrides it.

    Also keeps library chatter (weight-loading bars, deprecation notes) out of the worker log.
    """
    cpus = json.loads(records.run_config(msg.content))["run"].get("client_cpus", 1)
    torch.set_num_threads(int(os.environ.get("FEDSPINE_CLIENT_THREADS", max(1, int(cpus)))))
    quiet_logs(("transformers", "datasets"))


def _device(msg: Message, context: Context) -> tuple[RunResources, DeviceProfile, NodeSettings]:
    """This run's resources (cached per process), this node's device profile and settings."""
    settings = node_settings(context.node_config)
    res = load_device_resources(records.run_config(msg.content))
    if settings.partition_id >= len(res.fleet):
        raise ConfigError(
            f"node config partition-id={settings.partition_id} is out of range: the run has "
            f"fleet.num_devices={len(res.fleet)} (ids 0..{len(res.fleet) - 1})"
        )
    device = res.fleet[settings.partition_id]
    if settings.tier:
        device = dataclasses.replace(device, tier=settings.tier)
    return res, device, settings


def _measured(res: RunResources) -> bool:
    return res.config.fleet.clock == "measured"


@functools.lru_cache(maxsize=2)
def _own_data(config_json: str, settings: NodeSettings) -> TokenisedData:
    """The device's own examples (device-local runs), read once per process."""
    res = load_device_resources(config_json)
    cfg = res.config
    return load_device_data(settings, cfg.data, res.base.tokenizer, cfg.train.batch_size)


def _training_data(msg: Message, res: RunResources, device, settings) -> TokenisedData:
    if res.config.data.device_local:
        return _own_data(records.run_config(msg.content), settings)
    return res.train.subset(res.partitions[device.device_id])


def _measured_registration(msg, res, device, settings, request, start) -> Registration:
    """Registration on the measured clock: a really timed step (slowed like the node's rounds);
    the server turns its send-to-reply time into the link's speed. A device whose data cannot
    be read registers without a probe; its rounds then fail with the reason."""
    budget = own_budget_target(res, device)
    try:
        data = _training_data(msg, res, device, settings)
    except DataError:
        return Registration(device.device_id, device.tier, **budget)
    step_s = slow_down(time_one_step(res, device, data, request.lora_rank), settings.slowdown)
    return Registration(
        device.device_id,
        device.tier,
        probe_step_s=step_s,
        probe_handler_s=time.perf_counter() - start,
        probe_transfer_bytes=request.transfer_bytes,
        **budget,
    )


@app.query()
def describe(msg: Message, context: Context) -> Message:
    """Registration: the device says who it is and its hardware class (as a real one would)."""
    start = time.perf_counter()
    _threads(msg)
    res, device, settings = _device(msg, context)
    request = records.decode_query(msg.content)
    if request.step_flops is not None and _measured(res):
        registration = _measured_registration(msg, res, device, settings, request, start)
        content = records.encode_registration(registration, request.transfer_bytes)
        return Message(content=content, reply_to=msg)
    probe = None
    if request.step_flops is not None:  # time one step and a transfer (simulated clock)
        conditions = conditions_at(device, res.fleet_spec, request.round_num)
        probe = simulate_probe(request.step_flops, conditions, device.latency_s)
    registration = Registration.with_probe(
        device.device_id, device.tier, probe, **own_budget_target(res, device)
    )
    return Message(content=records.encode_registration(registration), reply_to=msg)


def _state_store(msg: Message, context: Context, device_id: int) -> DeviceStateStore | None:
    """The device's own storage: the run's folder in simulation, `state-dir` on a SuperNode."""
    in_run_dir = records.device_state_dir(msg.content)
    if in_run_dir and not Path(in_run_dir).parent.is_dir():
        raise ConfigError(
            f"the run directory {Path(in_run_dir).parent} is not on {socket.gethostname()}, where "
            "this device keeps its state: on a Ray cluster put --out on storage every machine "
            "mounts at the same path (docs/cluster.md)"
        )
    folder = in_run_dir or node_settings(context.node_config).state_dir
    return DeviceStateStore(Path(folder), device_id) if folder else None


def _load_state(context: Context, store: DeviceStateStore | None, round_num: int):
    """(smoothed importance, FedSA-LoRA's own B) from earlier rounds (its storage, else node
    state)."""
    if store is not None:
        return store.load(round_num), store.load_own_b(round_num)
    scores = own_b = None
    if SCORES in context.state:
        scores = tensors_to_scores(context.state[SCORES].to_torch_state_dict())
    if OWN_B in context.state:
        own_b = context.state[OWN_B].to_torch_state_dict()
    return scores, own_b


def _store_state(
    context: Context,
    store: DeviceStateStore | None,
    round_num: int,
    scores: ModelScores | None,
    own_b: dict[str, torch.Tensor] | None,
) -> None:
    if scores is None and own_b is None:
        return
    if store is not None:
        store.save(round_num, scores, own_b)
        return
    if scores is not None:
        context.state[SCORES] = ArrayRecord(torch_state_dict=scores_to_tensors(scores))
    if own_b is not None:
        context.state[OWN_B] = ArrayRecord(torch_state_dict=own_b)


def _measured_report(report: DeviceReport, settings: NodeSettings) -> DeviceReport:
    """The measured clock's fields: compute as it really took (slowed as the node asks) and
    the process's peak memory; `time_s` is replaced by the server's send-to-reply time."""
    if not report.ok or report.train_wall_s is None:
        return report
    compute_s = slow_down(report.train_wall_s, settings.slowdown)
    return dataclasses.replace(report, compute_s=compute_s, train_memory_mb=peak_memory_mb())


@app.train()
def train(msg: Message, context: Context) -> Message:
    start = time.perf_counter()
    _threads(msg)
    # 1. Resources of this run, this device's identity and data; the typed down-link.
    res, device, settings = _device(msg, context)
    downlink = records.decode_downlink(msg.content)
    measured = _measured(res)
    try:
        data = _training_data(msg, res, device, settings)
    except DataError as err:  # this device fails its round; the run goes on
        report = DeviceReport(ok=False, error=f"local data: {err}")
        return Message(content=records.encode_uplink(Uplink(report, downlink.kept)), reply_to=msg)
    # 2. Train and prune locally, costed on the simulated clock (or timed: measured clock).
    store = _state_store(msg, context, device.device_id)
    round_num = downlink.plan.round_num
    prior, own_b = _load_state(context, store, round_num)
    budget = memory_budget_bytes(settings.memory_budget_mb) if measured else None
    result = run_device_round(res, device, downlink, prior, data, budget, own_b=own_b)
    release_freed_memory()  # the round's model is gone: keep the worker's memory flat
    _store_state(context, store, round_num, result.carried_scores, result.carried_b)
    # 3. Reply: LoRA in the device's own coordinates and rank, its kept map and its report.
    report = _measured_report(result.uplink.report, settings) if measured else result.uplink.report
    report = dataclasses.replace(report, handler_wall_s=time.perf_counter() - start)
    uplink = dataclasses.replace(result.uplink, report=report)
    return Message(content=records.encode_uplink(uplink), reply_to=msg)
