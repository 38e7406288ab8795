"""Flower ClientApp: translates a train message into one device round and back.

The device is `node_config["partition-id"]`; its data partition and simulated hardware profile
follow from the run config carried in the message, so the same app works in simulation and on
SuperNodes. The base model is loaded once per process (`load_resources` caches it).
"""

from __future__ import annotations

import json
import os
import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedspine import protocol as P
from fedspine.device_round import DevicePlan, run_device_round
from fedspine.fleet.clock import conditions_at
from fedspine.fleet.probe import simulate_probe
from fedspine.pruning import KeptIndices, ModelScores
from fedspine.pruning.fleet_importance import scores_to_tensors, tensors_to_scores
from fedspine.resources import load_resources
from fedspine.runner import quiet_logs

app = ClientApp()
SCORES = "importance_ema"  # node-local state: the device's smoothed group importance


def _threads() -> None:
    """One torch thread per simulated client: two clients share two cores without thrashing.

    Also keeps library chatter (weight-loading bars, deprecation notes) out of the worker log.
    """
    torch.set_num_threads(int(os.environ.get("FEDSPINE_CLIENT_THREADS", "1")))
    quiet_logs(("transformers", "datasets"))


@app.query()
def describe(msg: Message, context: Context) -> Message:
    """Registration: the device says who it is and its hardware class (as a real one would)."""
    _threads()
    res = load_resources(str(msg.content[P.PLAN][P.CONFIG_JSON]))
    device = res.fleet[int(context.node_config["partition-id"])]
    meta = ConfigRecord({P.DEVICE_ID: device.device_id, P.TIER: device.tier})
    if P.PROBE in msg.content:  # time one step and a transfer (simulated: the device's clock)
        step_flops = float(msg.content[P.PROBE][P.STEP_FLOPS])
        conditions = conditions_at(device, res.fleet_spec, 1)
        probe = simulate_probe(step_flops, conditions, device.latency_s)
        meta[P.PROBE_STEP_S] = probe.step_s
        meta[P.PROBE_BANDWIDTH] = probe.bandwidth_Bps
        meta[P.PROBE_LATENCY] = probe.latency_s
    return Message(content=RecordDict({P.DEVICE_META: meta}), reply_to=msg)


def _load_scores(context: Context) -> ModelScores | None:
    """The device's smoothed importance from earlier rounds (node state)."""
    if SCORES not in context.state:
        return None
    return tensors_to_scores(context.state[SCORES].to_torch_state_dict())


def _store_scores(context: Context, scores: ModelScores | None) -> None:
    if scores is not None:
        context.state[SCORES] = ArrayRecord(torch_state_dict=scores_to_tensors(scores))


def _fleet_prior(msg: Message) -> ModelScores | None:
    """The server's pooled importance, when it shares one (pruning.share_importance)."""
    if P.IMPORTANCE not in msg.content:
        return None
    return tensors_to_scores(msg.content[P.IMPORTANCE].to_torch_state_dict())


@app.train()
def train(msg: Message, context: Context) -> Message:
    start = time.perf_counter()
    _threads()
    plan_record = msg.content[P.PLAN]
    # 1. Resources of this run (cached per process) and this device's identity.
    res = load_resources(str(plan_record[P.CONFIG_JSON]))
    device = res.fleet[int(context.node_config["partition-id"])]
    # 2. The plan, the device's kept-index map and the down-linked LoRA.
    kept = KeptIndices.from_dict(json.loads(str(plan_record[P.KEPT_JSON])))
    plan = DevicePlan(
        int(plan_record[P.ROUND]),
        int(plan_record[P.LORA_RANK]),
        float(plan_record[P.TARGET_SPARSITY]),
        bool(plan_record[P.PRUNE_ONE_SHOT]),
        bool(plan_record[P.RANK_SELF_PRUNE]),
        int(plan_record[P.LOCAL_STEPS]),
    )
    factors = P.tensors_to_factors(msg.content[P.LORA].to_torch_state_dict())
    head = msg.content[P.HEAD].to_torch_state_dict()
    # 3. Train and prune locally, costed on the simulated clock.
    result = run_device_round(
        res,
        device,
        plan,
        kept,
        factors,
        head,
        prior_scores=_load_scores(context),
        fleet_prior=_fleet_prior(msg),
    )
    _store_scores(context, result.scores)
    # 4. Reply: LoRA in the device's own coordinates and rank, its kept map and its report.
    metrics = {
        **result.metrics,
        P.OK: int(result.ok),
        P.HANDLER_WALL_S: time.perf_counter() - start,
    }
    meta = {
        P.DEVICE_ID: device.device_id,
        P.TIER: device.tier,
        P.ERROR: result.error,
        P.KEPT_JSON: json.dumps(result.kept.to_dict()) if result.kept else "",
    }
    content = RecordDict(
        {
            P.LORA: ArrayRecord(torch_state_dict=P.factors_to_tensors(result.factors)),
            P.HEAD: ArrayRecord(torch_state_dict=result.head),
            P.REPORT: MetricRecord({k: float(v) for k, v in metrics.items()}),
            P.DEVICE_META: ConfigRecord(meta),
        }
    )
    if result.scored:  # this round's importance EMA, for the server's fleet prior
        content[P.IMPORTANCE] = ArrayRecord(torch_state_dict=scores_to_tensors(result.scores))
    return Message(content=content, reply_to=msg)
