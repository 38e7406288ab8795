"""One whole run over any transport: register, train rounds, catch up, evaluate, record.

`run_federation` reads top-down as the run's story. It talks to devices only through a
`DeviceChannel` (the Flower ServerApp provides one over its Grid), so it imports no Flower.
"""

from __future__ import annotations

import json
import resource
import time
from typing import Any, Protocol

from fedspine.config import Config, config_to_dict
from fedspine.evaluation import (
    device_accuracies,
    evaluate_device,
    final_eval_subset,
    full_kept,
    representative,
    rows_cols,
)
from fedspine.fleet.cost import training_flops
from fedspine.fleet.faults import fault_spec_from
from fedspine.fleet.unreliable import UnreliableChannel
from fedspine.global_state import GlobalLora
from fedspine.lora.peft_io import attach_lora, get_head_state, get_lora_factors
from fedspine.methods.registry import MethodSpec, get_method
from fedspine.protocol import (
    Downlink,
    ProbeRequest,
    Registration,
    factors_to_tensors,
    payload_bytes,
)
from fedspine.pruning import build_pruned_model, sparsity_report
from fedspine.report.final_state import save_final_state
from fedspine.report.progress import NullProgress, RunProgress
from fedspine.report.summary import build_summary
from fedspine.resources import RunResources, load_resources
from fedspine.run_dir import RunDirectory
from fedspine.server.core import Reply, RoundOutcome, Server

ABORT_AFTER_RAISED_ROUNDS = 2


class DeviceChannel(Protocol):
    """How the server reaches its devices (Flower's Grid in practice; a fake in tests)."""

    def register(self, request: ProbeRequest) -> dict[int, Registration]:
        """Ask every device who it is (and, with a probe request, to time a step)."""
        ...

    def train(self, downlinks: dict[int, Downlink]) -> dict[int, Reply]:
        """Deliver one round's down-links; for every addressed node its reply, its crash, or
        a `NoReply` saying what the transport knows (nothing arrived by the deadline)."""
        ...


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


def initial_global_lora(res: RunResources, method: MethodSpec) -> GlobalLora:
    """Seeded LoRA init (A random, B zero) and the new head, shared by every device."""
    cfg = res.config
    rank = method.global_rank(cfg)
    peft_model = full_peft_model(res, rank)
    return GlobalLora(
        get_lora_factors(peft_model),
        get_head_state(peft_model),
        cfg.model.lora_alpha_per_rank,
        rank,
        method.aggregation,
        cfg.train.server_learning_rate,
    )


def probe_workload(res: RunResources, global_lora: GlobalLora) -> tuple[float, int]:
    """FLOPs of one local step of the unpruned model and the bytes of a full-rank round trip
    (global LoRA + head, down and up): the typical round a probe is extrapolated to."""
    cfg = res.config
    peft_model = full_peft_model(res, global_lora.max_rank)
    step_flops = training_flops(peft_model, cfg.train.batch_size, cfg.data.max_seq_len)
    one_way = payload_bytes(global_lora.head) + payload_bytes(
        factors_to_tensors(global_lora.factors)
    )
    return step_flops, 2 * one_way


def evaluate_round(res: RunResources, server: Server, outcome: RoundOutcome) -> dict:
    """Accuracy of this round's models: the global model, or representative pruned devices."""
    if not server.method.prunes:
        return evaluate_device(res, server.global_lora, full_kept(res), res.round_eval)
    done = [server.devices[p.node_id] for p in outcome.participants if p.ok]
    records = {record.device_id: record for record in done}
    if not records:
        return {"accuracy": None, "loss": None}
    picks = representative(
        {d: r.kept for d, r in records.items()},
        {d: r.sparsity for d, r in records.items()},
        res.config.eval.round_devices,
    )
    lora = server.global_lora
    scores = [evaluate_device(res, lora, records[d].kept, res.round_eval) for d in picks]
    return {
        "accuracy": sum(s["accuracy"] for s in scores) / len(scores),
        "loss": sum(s["loss"] for s in scores) / len(scores),
        "evaluated_devices": picks,
    }


class _RoundLoop:
    """Sends rounds, absorbs them, evaluates, and appends their rows; owns the run's clocks."""

    def __init__(
        self,
        res: RunResources,
        server: Server,
        channel: DeviceChannel,
        run_dir: RunDirectory,
        progress: RunProgress,
    ) -> None:
        self.res, self.server, self.channel = res, server, channel
        self.run_dir, self.progress = run_dir, progress
        self.sim_s = 0.0
        self.wall_s = 0.0
        self.rows: list[dict] = []
        self.raised_rounds = 0  # consecutive rounds in which every participant's app raised

    def train(self, round_num: int, downlinks: dict[int, Downlink], **marks: Any) -> None:
        start = time.perf_counter()
        replies = self.channel.train(downlinks)
        outcome = self.server.absorb(round_num, replies)
        # Devices that fail are the setting; every app raising twice running is a bug.
        self.raised_rounds = self.raised_rounds + 1 if outcome.all_raised else 0
        if self.raised_rounds >= ABORT_AFTER_RAISED_ROUNDS:
            first = outcome.participants[0].report.error
            raise RuntimeError(
                f"every device's app raised in {self.raised_rounds} rounds running "
                f"(round {round_num}): {first}"
            )
        train_done = time.perf_counter()
        metrics = evaluate_round(self.res, self.server, outcome)
        self.sim_s += outcome.time_s
        self.wall_s += time.perf_counter() - start
        row = {
            "round": round_num,
            "sim_time_s": self.sim_s,
            "wall_time_s": self.wall_s,
            "accuracy": metrics.get("accuracy"),
            "loss": metrics.get("loss"),
            "round_wall_s": time.perf_counter() - start,
            "eval_wall_s": time.perf_counter() - train_done,
            "participants": outcome.rows(),
            "outcomes": outcome.status_counts(),
        }
        if outcome.skipped:
            row["skipped"] = True
        if "evaluated_devices" in metrics:
            row["evaluated_devices"] = metrics["evaluated_devices"]
        self.progress.round_done(row)
        self.rows.append(row | marks)
        self.run_dir.append_round(self.rows[-1])


def final_device_scores(res: RunResources, server: Server) -> list[dict]:
    """Every device's final model (its structure + the final global LoRA) on the test subset."""
    records = server.records()
    accuracies = device_accuracies(
        res, server.global_lora, [r.kept for r in records], final_eval_subset(res)
    )
    rows = []
    for record, accuracy in zip(records, accuracies, strict=True):
        report = sparsity_report(record.kept, res.base.model.config)
        rows.append(
            {
                "id": record.device_id,
                "tier": record.tier,
                "prune_ratio": record.sparsity,
                "param_sparsity": report["non_embedding_params_removed"],
                "lora_rank": record.last_rank,
                "params": report["params"],
                "accuracy": accuracy,
                "rounds_participated": record.rounds_seen,
            }
        )
    return rows


def save_server_state(run_dir: RunDirectory, server: Server) -> None:
    """The final global LoRA and every device's structure, for `fedspine export`."""
    lora = server.global_lora
    save_final_state(
        run_dir.path,
        lora.factors,
        lora.head,
        {"max_rank": lora.max_rank, "aggregation": lora.aggregation, "scaling": lora.scaling},
        [{"id": r.device_id, "tier": r.tier, "kept": r.kept.to_dict()} for r in server.records()],
    )


def make_server(res: RunResources, method: MethodSpec) -> Server:
    return Server(
        method,
        res.config,
        initial_global_lora(res, method),
        lambda kept: rows_cols(res.base, kept),
        full_kept(res),
    )


def run_federation(
    channel: DeviceChannel,
    config: Config,
    run_dir: RunDirectory,
    progress: RunProgress | None = None,
) -> dict:
    """The whole run; returns the summary (the caller writes it into the run directory)."""
    progress = progress or NullProgress()
    started = time.perf_counter()
    faults = fault_spec_from(config.fleet, config.run.seed)
    if faults.active:  # the simulated fleet's dropouts and crashes (fleet.dropout_prob, ...)
        channel = UnreliableChannel(channel, faults)
    progress.phase("loading model and data")
    res = load_resources(json.dumps(config_to_dict(config), sort_keys=True))
    method = get_method(config.run.method)
    server = make_server(res, method)
    # 1. Registration (probing methods: each device times one step and a transfer).
    progress.phase("registering devices")
    probing = method.probes(config)
    step_flops, round_bytes = probe_workload(res, server.global_lora) if probing else (None, 0)
    registrations = channel.register(ProbeRequest(step_flops))
    probe_s = server.register(registrations, step_flops, round_bytes)
    loop = _RoundLoop(res, server, channel, run_dir, progress)
    loop.sim_s = probe_s  # the probe's simulated cost opens the run's clock
    base_scores = None
    if res.generative:  # the untuned base on the held-out set: what tuning must beat
        progress.phase("scoring the untuned base model")
        base_scores = evaluate_device(res, server.global_lora, full_kept(res), res.test)
    progress.start_rounds(config.run.round_limit + int(method.prunes))
    # 2. The planned rounds.
    for round_num in range(1, config.run.rounds + 1):
        marks = {"probe_sim_s": probe_s} if round_num == 1 and probing else {}
        loop.train(round_num, server.plan_round(round_num), **marks)
    # 3. The catch-up round: laggards prune to the final target.
    round_num = config.run.rounds + 1
    final = server.plan_final(round_num)
    if final:
        loop.train(round_num, final, final_round=True)
        round_num += 1
    # 4. Under a time budget every method trains on until the simulated clock reaches it, so
    # methods with shorter rounds get more of them (the paper's time-to-accuracy setting);
    # pruning methods are all at the target by now and keep tuning the pruned models.
    for _ in range(config.run.rounds, config.run.round_limit):
        if loop.sim_s >= config.run.time_budget_s:
            break
        loop.train(round_num, server.plan_round(round_num))
        round_num += 1
    # 5. Every device's final model, the global model, and the state for export.
    progress.phase("evaluating every device's final model")
    devices = final_device_scores(res, server)
    global_scores = evaluate_device(res, server.global_lora, full_kept(res), res.test)
    save_server_state(run_dir, server)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall_s = time.perf_counter() - started
    return build_summary(
        config, res, loop.rows, devices, global_scores, wall_s, peak_rss_mb, base_scores
    )
