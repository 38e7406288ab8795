"""The server's whole run over a Flower Grid: register, train rounds, finalise, evaluate, record.

Each step is one short function; `run_federation` reads top-down as the run's story.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedspine import protocol as P
from fedspine.config import Config, config_to_dict
from fedspine.evaluation import (
    device_accuracies,
    evaluate_device,
    final_eval_subset,
    full_kept,
    representative,
)
from fedspine.fleet.cost import training_flops
from fedspine.fleet.probe import ProbeResult
from fedspine.flower.strategy import DeviceState, FedspineStrategy
from fedspine.global_state import GlobalLora
from fedspine.lora.peft_io import attach_lora, get_head_state, get_lora_factors
from fedspine.methods.registry import get_method, global_rank
from fedspine.pruning import KeptIndices, build_pruned_model, sparsity_report
from fedspine.report.final_state import save_final_state
from fedspine.report.progress import NullProgress, RunProgress
from fedspine.report.record import RunDirectory
from fedspine.report.summary import build_summary
from fedspine.resources import RunResources, load_resources

NODE_WAIT_S = 120.0


def full_peft_model(res: RunResources, rank: int):
    """The unpruned model with seeded LoRA of `rank` (A random, B zero) and the new head."""
    cfg = res.config
    return attach_lora(
        build_pruned_model(res.base.model, full_kept(res)),
        res.base.adapter,
        rank,
        cfg.model.lora_alpha_per_rank,
        0.0,
        seed=cfg.run.seed,
    )


def initial_global_lora(res: RunResources, rank: int, aggregation: str) -> GlobalLora:
    """Seeded LoRA init (A random, B zero) and the new head, shared by every device."""
    cfg = res.config
    peft_model = full_peft_model(res, rank)
    return GlobalLora(
        get_lora_factors(peft_model),
        get_head_state(peft_model),
        cfg.model.lora_alpha_per_rank,
        rank,
        aggregation,
        cfg.train.server_learning_rate,
    )


def wait_for_nodes(grid: Grid, count: int) -> list[int]:
    deadline = time.monotonic() + NODE_WAIT_S
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count or time.monotonic() > deadline:
            return nodes
        time.sleep(0.2)


def register_devices(
    grid: Grid,
    nodes: list[int],
    config_json: str,
    full: KeptIndices,
    step_flops: float | None = None,
) -> tuple[dict[int, DeviceState], dict[int, ProbeResult]]:
    """Ask every node who it is (device id, announced hardware class) and, with `step_flops`,
    to time one training step of that size and a small transfer (fedspine.fleet.probe)."""
    content = {P.PLAN: ConfigRecord({P.CONFIG_JSON: config_json})}
    if step_flops is not None:
        content[P.PROBE] = ConfigRecord({P.STEP_FLOPS: float(step_flops)})
    messages = [
        Message(content=RecordDict(content), message_type="query", dst_node_id=n) for n in nodes
    ]
    devices, probes = {}, {}
    for reply in grid.send_and_receive(messages):
        if reply.has_error():
            raise RuntimeError(f"device registration failed: {reply.error.reason}")
        meta = reply.content[P.DEVICE_META]
        node = reply.metadata.src_node_id
        devices[node] = DeviceState(node, int(meta[P.DEVICE_ID]), str(meta[P.TIER]), full)
        if P.PROBE_STEP_S in meta:
            probes[node] = ProbeResult(
                float(meta[P.PROBE_STEP_S]),
                float(meta[P.PROBE_BANDWIDTH]),
                float(meta[P.PROBE_LATENCY]),
            )
    return devices, probes


def probe_workload(res: RunResources, global_lora: GlobalLora) -> tuple[float, int]:
    """FLOPs of one local step of the unpruned model and the bytes of a full-rank round trip
    (global LoRA + head, down and up): the typical round a probe is extrapolated to."""
    cfg = res.config
    peft_model = full_peft_model(res, global_lora.max_rank)
    step_flops = training_flops(peft_model, cfg.train.batch_size, cfg.data.max_seq_len)
    tensors = [*global_lora.head.values()]
    tensors += [t for f in global_lora.factors.values() for t in (f.A, f.B)]
    one_way = sum(t.numel() * t.element_size() for t in tensors)
    return step_flops, 2 * one_way


def apply_probes(
    strategy: FedspineStrategy,
    probes: dict[int, ProbeResult],
    step_flops: float,
    round_bytes: int,
) -> float:
    """Hand the probed speeds to the planner; return the simulated seconds the probe cost
    (the server waits for the slowest device)."""
    # Device-id order, not reply order: the first speed seen centres the speed buckets.
    in_order = sorted(probes, key=lambda node: strategy.devices[node].device_id)
    strategy.planner.observe_probe(
        {node: probes[node] for node in in_order}, step_flops, round_bytes
    )
    return max((probe.duration_s() for probe in probes.values()), default=0.0)


def participant_row(outcome: dict) -> dict:
    row = {
        "device": outcome.get("device"),
        "tier": outcome.get("tier"),
        "prune_ratio": outcome.get(P.SPARSITY, 0.0),
        "lora_rank": int(outcome.get(P.USED_RANK, 0)),
        "time_s": outcome.get(P.TIME_S, 0.0),
        "bytes_up": int(outcome.get(P.BYTES_UP, 0)),
        "bytes_down": int(outcome.get(P.BYTES_DOWN, 0)),
        "ok": bool(outcome.get("ok")),
        "loss_before": outcome.get(P.LOSS_BEFORE),
        "loss_after": outcome.get(P.LOSS_AFTER),
        "train_memory_mb": outcome.get(P.TRAIN_MEMORY_MB),
        "train_wall_s": outcome.get(P.TRAIN_WALL_S),
        "handler_wall_s": outcome.get(P.HANDLER_WALL_S),
    }
    if outcome.get("reward"):
        row["reward"] = outcome["reward"]
    if outcome.get("error"):
        row["error"] = outcome["error"]
    return row


def evaluate_round(res: RunResources, strategy: FedspineStrategy, outcomes: list[dict]) -> dict:
    """Accuracy of this round's models: the global model, or representative pruned devices."""
    if not strategy.method.prunes:
        return evaluate_device(res, strategy.global_lora, full_kept(res), res.round_eval)
    by_device = {s.device_id: s for s in strategy.devices.values()}
    ok = {o["device"]: by_device[o["device"]] for o in outcomes if o.get("ok")}
    if not ok:
        return {"accuracy": None, "loss": None}
    picks = representative(
        {d: s.kept for d, s in ok.items()},
        {d: s.sparsity for d, s in ok.items()},
        res.config.eval.round_devices,
    )
    scores = [evaluate_device(res, strategy.global_lora, ok[d].kept, res.round_eval) for d in picks]
    return {
        "accuracy": sum(s["accuracy"] for s in scores) / len(scores),
        "loss": sum(s["loss"] for s in scores) / len(scores),
        "evaluated_devices": picks,
    }


def run_round(
    grid: Grid,
    strategy: FedspineStrategy,
    messages: Iterable[Message],
    round_num: int,
    clock: dict,
    progress: RunProgress,
) -> dict:
    """Send one round, aggregate, evaluate, and return its rounds.jsonl row."""
    start = time.perf_counter()
    replies = grid.send_and_receive(list(messages))
    strategy.aggregate_train(round_num, replies)
    outcomes = strategy.last_round
    if outcomes and all(o.get("crashed") for o in outcomes):
        raise RuntimeError(f"every device crashed in round {round_num}: {outcomes[0]['error']}")
    train_done = time.perf_counter()
    metrics = evaluate_round(strategy.res, strategy, outcomes)
    clock["sim"] += max((o.get(P.TIME_S, 0.0) for o in outcomes), default=0.0)
    clock["wall"] += time.perf_counter() - start
    row = {
        "round": round_num,
        "sim_time_s": clock["sim"],
        "wall_time_s": clock["wall"],
        "accuracy": metrics.get("accuracy"),
        "loss": metrics.get("loss"),
        "round_wall_s": time.perf_counter() - start,
        "eval_wall_s": time.perf_counter() - train_done,
        "participants": [participant_row(o) for o in outcomes],
    }
    if "evaluated_devices" in metrics:
        row["evaluated_devices"] = metrics["evaluated_devices"]
    progress.round_done(row)
    return row


def final_round(grid: Grid, strategy: FedspineStrategy, round_num: int) -> list[Message]:
    """Devices below the final target prune to it (with recovery steps); the paper's 'same
    sparsity' comparison needs every device at the target, rarely-sampled ones included."""
    target = strategy.res.config.pruning.target_sparsity
    by_device = sorted(strategy.devices.items(), key=lambda item: item[1].device_id)
    laggards = [n for n, s in by_device if s.sparsity < target - 1e-6]
    steps = strategy.res.config.pruning.final_recovery_steps  # prune at half, then recover
    return [strategy.train_message(n, round_num, True, grid, local_steps=steps) for n in laggards]


def final_device_scores(res: RunResources, strategy: FedspineStrategy) -> list[dict]:
    """Every device's final model (its structure + the final global LoRA) on the test subset."""
    states = sorted(strategy.devices.values(), key=lambda s: s.device_id)
    accuracies = device_accuracies(
        res, strategy.global_lora, [s.kept for s in states], final_eval_subset(res)
    )
    rows = []
    for state, accuracy in zip(states, accuracies, strict=True):
        report = sparsity_report(state.kept, res.base.model.config)
        rows.append(
            {
                "id": state.device_id,
                "tier": state.tier,
                "prune_ratio": state.sparsity,
                "param_sparsity": report["non_embedding_params_removed"],
                "lora_rank": state.last_rank,
                "params": report["params"],
                "accuracy": accuracy,
                "rounds_participated": state.rounds_seen,
            }
        )
    return rows


def run_federation(
    grid: Grid, config: Config, run_dir: RunDirectory, progress: RunProgress | None = None
) -> dict:
    """The whole run; returns the summary (also written to the run directory)."""
    progress = progress or NullProgress()
    config_json = json.dumps(config_to_dict(config), sort_keys=True)
    started = time.perf_counter()
    progress.phase("loading model and data")
    res = load_resources(config_json)
    method = get_method(config.run.method)
    global_lora = initial_global_lora(res, global_rank(method, config), method.aggregation)
    strategy = FedspineStrategy(
        method, method.make_planner(config, config.fleet.num_devices), global_lora, res, config_json
    )
    progress.phase("registering devices")
    probing = getattr(strategy.planner, "wants_probe", False)
    step_flops, round_bytes = probe_workload(res, global_lora) if probing else (None, 0)
    strategy.devices, probes = register_devices(
        grid,
        wait_for_nodes(grid, config.fleet.num_devices),
        config_json,
        full_kept(res),
        step_flops,
    )
    clock = {"sim": 0.0, "wall": 0.0}
    probe_s = apply_probes(strategy, probes, step_flops, round_bytes) if probing else 0.0
    clock["sim"] = probe_s  # the probe's simulated cost opens the run's clock
    progress.start_rounds(config.run.round_limit + int(method.prunes))
    rows: list[dict] = []

    def train_round(round_num: int, messages: Iterable[Message], **marks: Any) -> None:
        rows.append(run_round(grid, strategy, messages, round_num, clock, progress) | marks)
        run_dir.append_round(rows[-1])

    for round_num in range(1, config.run.rounds + 1):
        marks = {"probe_sim_s": probe_s} if round_num == 1 and probing else {}
        train_round(round_num, strategy.configure_train(round_num, None, None, grid), **marks)
    round_num = config.run.rounds + 1
    if method.prunes:
        final = final_round(grid, strategy, round_num)
        if final:
            train_round(round_num, final, final_round=True)
            round_num += 1
    # Under a time budget every method trains on until the simulated clock reaches it, so
    # methods with shorter rounds get more of them (the paper's time-to-accuracy setting);
    # pruning methods are all at the target by now and keep tuning the pruned models.
    for _ in range(config.run.rounds, config.run.round_limit):
        if clock["sim"] >= config.run.time_budget_s:
            break
        train_round(round_num, strategy.configure_train(round_num, None, None, grid))
        round_num += 1
    progress.phase("evaluating every device's final model")
    devices = final_device_scores(res, strategy)
    global_scores = evaluate_device(res, strategy.global_lora, full_kept(res), res.test)
    save_final_state(
        run_dir.path,
        strategy.global_lora.factors,
        strategy.global_lora.head,
        {
            "max_rank": global_lora.max_rank,
            "aggregation": method.aggregation,
            "scaling": global_lora.scaling,
        },
        [
            {"id": s.device_id, "tier": s.tier, "kept": s.kept.to_dict()}
            for s in sorted(strategy.devices.values(), key=lambda s: s.device_id)
        ],
    )
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return build_summary(
        config, res, rows, devices, global_scores, time.perf_counter() - started, peak_rss_mb
    )
