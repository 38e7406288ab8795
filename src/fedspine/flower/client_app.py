"""Flower ClientApp: translates a message into one device round (or a registration) and back.

The device is `node_config["partition-id"]`; its data partition and simulated hardware profile
follow from the run config carried in the message, so the same app works in simulation and on
SuperNodes. The base model is loaded once per process (`load_resources` caches it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedspine.device_round import own_budget_target, run_device_round
from fedspine.device_state import DeviceStateStore
from fedspine.errors import ConfigError
from fedspine.fleet.clock import conditions_at
from fedspine.fleet.probe import simulate_probe
from fedspine.flower import records
from fedspine.logs import quiet_logs
from fedspine.memory import release_freed_memory
from fedspine.protocol import Registration
from fedspine.pruning import ModelScores
from fedspine.pruning.fleet_importance import scores_to_tensors, tensors_to_scores
from fedspine.resources import load_resources

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


def _device(msg: Message, context: Context):
    """This run's resources (cached per process) and this node's device profile."""
    res = load_resources(records.run_config(msg.content))
    return res, res.fleet[int(context.node_config["partition-id"])]


@app.query()
def describe(msg: Message, context: Context) -> Message:
    """Registration: the device says who it is and its hardware class (as a real one would)."""
    _threads(msg)
    res, device = _device(msg, context)
    request = records.decode_query(msg.content)
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
    folder = in_run_dir or str(context.node_config.get("state-dir", ""))
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


@app.train()
def train(msg: Message, context: Context) -> Message:
    start = time.perf_counter()
    _threads(msg)
    # 1. Resources of this run and this device's identity; the typed down-link.
    res, device = _device(msg, context)
    downlink = records.decode_downlink(msg.content)
    # 2. Train and prune locally, costed on the simulated clock.
    store = _state_store(msg, context, device.device_id)
    round_num = downlink.plan.round_num
    prior, own_b = _load_state(context, store, round_num)
    result = run_device_round(res, device, downlink, prior_scores=prior, own_b=own_b)
    release_freed_memory()  # the round's model is gone: keep the worker's memory flat
    _store_state(context, store, round_num, result.carried_scores, result.carried_b)
    # 3. Reply: LoRA in the device's own coordinates and rank, its kept map and its report.
    report = dataclasses.replace(result.uplink.report, handler_wall_s=time.perf_counter() - start)
    uplink = dataclasses.replace(result.uplink, report=report)
    return Message(content=records.encode_uplink(uplink), reply_to=msg)
