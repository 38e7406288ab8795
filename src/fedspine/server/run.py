"""One whole run over any transport: register, train rounds, catch up, evaluate, record.

`run_federation` reads top-down as the run's story. It talks to devices only through a
`DeviceChannel` (the Flower ServerApp provides one over its Grid), so it imports no Flower.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fedspine.config import Config, config_to_dict
from fedspine.errors import ConfigError
from fedspine.evaluation import (
    device_accuracies,
    evaluate_device,
    final_eval_subset,
    full_kept,
    representative,
    rows_cols,
    stored_own_b,
)
from fedspine.fleet.cost import training_flops
from fedspine.fleet.faults import availability_spec_from, fault_spec_from
from fedspine.fleet.unreliable import UnreliableChannel
from fedspine.global_state import GlobalLora
from fedspine.lora.peft_io import attach_lora, get_head_state, get_lora_factors
from fedspine.memory import release_freed_memory
from fedspine.methods.registry import MethodSpec, get_method
from fedspine.protocol import (
    Downlink,
    ProbeRequest,
    Registration,
    factors_to_tensors,
    payload_bytes,
)
from fedspine.pruning import build_pruned_model, sparsity_report
from fedspine.pruning.kept import structure_keys
from fedspine.report.final_state import save_final_state, save_own_b
from fedspine.report.progress import NullProgress, RunProgress
from fedspine.report.record import DEVICE_STATE_DIR
from fedspine.report.summary import build_summary
from fedspine.resources import RunResources, load_resources
from fedspine.run_dir import RunDirectory
from fedspine.server.checkpoint import (
    RunPosition,
    load_checkpoint,
    restore_server,
    save_checkpoint,
)
from fedspine.server.core import Reply, RoundOutcome, Server

ABORT_AFTER_RAISED_ROUNDS = 2
CATCH_UP_TRIES = 3  # catch-up rounds at most, for laggards away or failing in the first


class DeviceChannel(Protocol):
    """How the server reaches its devices (Flower's Grid in practice; a fake in tests)."""

    def register(self, request: ProbeRequest) -> dict[int, Registration]:
        """Ask devices who they are (and, with a probe request, to time a step): at the start
        every device present; each later call only those that joined since."""
        ...

    def present(self, round_num: int) -> set[int] | None:
        """The registered devices reachable in `round_num` (None: all of them)."""
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


def full_lora_rank(res: RunResources) -> int:
    """The largest min(out, in) of the LoRA modules: a global LoRA of this rank holds any
    delta exactly (FLoRA's merged delta, `global_rank` 0)."""
    factors = get_lora_factors(full_peft_model(res, 1))
    return max(min(f.B.shape[0], f.A.shape[1]) for f in factors.values())


def initial_global_lora(res: RunResources, method: MethodSpec) -> GlobalLora:
    """Seeded LoRA init (A random, B zero) and the new head, shared by every device."""
    cfg = res.config
    rank = method.global_rank(cfg) or full_lora_rank(res)
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


def probe_request(
    res: RunResources, step_flops: float | None, round_bytes: int, rank: int, round_num: int = 1
) -> ProbeRequest:
    """What registration asks: on the measured clock a real step at the global rank and a
    transfer of half a typical round's bytes each way (see `fleet.probe.measured_probe`)."""
    if step_flops is None or res.config.fleet.clock != "measured":
        return ProbeRequest(step_flops, round_num)
    return ProbeRequest(step_flops, round_num, rank, round_bytes // 2)


def own_b_reader(server: Server, state_root: Path | None) -> Callable[[int], dict | None] | None:
    """FedSA-LoRA: reads a device's own B from its storage for scoring its own model (None for
    every other method). A device that trained but left no B there is an error, not a silent
    zero B: the harness scores only what the device really holds."""
    if not server.global_lora.rule.shares_only_a:
        return None

    def read(device_id: int) -> dict | None:
        own = stored_own_b(state_root, device_id) if state_root is not None else None
        trained = any(r.device_id == device_id and r.rounds_seen for r in server.records())
        if own is None and trained:
            raise ConfigError(
                f"fedsa-lora scores each device's own model, but device {device_id}'s B is "
                f"not in {state_root} (devices must keep their state in the run's folder)"
            )
        return own

    return read


def evaluate_round(
    res: RunResources,
    server: Server,
    outcome: RoundOutcome,
    own_b: Callable[[int], dict | None] | None = None,
) -> dict:
    """Accuracy of this round's models: the global model, or representative devices' own
    models (pruned methods: their structures; FedSA-LoRA: their own B)."""
    if not server.method.prunes and own_b is None:
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
    scores = [
        evaluate_device(res, lora, records[d].kept, res.round_eval, own_b and own_b(d))
        for d in picks
    ]
    return {
        "accuracy": sum(s["accuracy"] for s in scores) / len(scores),
        "loss": sum(s["loss"] for s in scores) / len(scores),
        "evaluated_devices": picks,
    }


class _RoundLoop:
    """Sends rounds, absorbs them, evaluates, appends their rows and checkpoints after each;
    its `position` is everything of the loop a resumed run needs."""

    def __init__(
        self,
        res: RunResources,
        server: Server,
        channel: DeviceChannel,
        run_dir: RunDirectory,
        progress: RunProgress,
        position: RunPosition,
    ) -> None:
        self.res, self.server, self.channel = res, server, channel
        self.run_dir, self.progress = run_dir, progress
        self.position = position
        self.checkpoint_s = 0.0  # wall seconds spent writing checkpoints (this process)
        self.checkpoint_bytes = 0
        self.round_wall_s = 0.0  # wall seconds of the rounds this process trained
        self.started = time.perf_counter()
        self.earlier_s = position.elapsed_s  # wall seconds of the run's earlier processes
        self.step_flops: float | None = None  # the registration probe's workload (probing
        self.round_bytes = 0  # methods), for devices that join mid-run
        self.own_b = own_b_reader(server, run_dir.path / DEVICE_STATE_DIR)
        self.probe_rank = 0

    def train(self, downlinks: dict[int, Downlink], **marks: Any) -> None:
        pos = self.position
        round_num = pos.next_round
        start = time.perf_counter()
        replies = self.channel.train(downlinks)
        outcome = self.server.absorb(round_num, replies)
        # Devices that fail are the setting; every app raising twice running is a bug.
        pos.raised_rounds = pos.raised_rounds + 1 if outcome.all_raised else 0
        if pos.raised_rounds >= ABORT_AFTER_RAISED_ROUNDS:
            first = outcome.participants[0].report.error
            raise RuntimeError(
                f"every device's app raised in {pos.raised_rounds} rounds running "
                f"(round {round_num}): {first}"
            )
        train_done = time.perf_counter()
        metrics = evaluate_round(self.res, self.server, outcome, self.own_b)
        release_freed_memory()  # the scored models are gone: keep the server's memory flat
        pos.sim_s += outcome.time_s
        pos.wall_s += time.perf_counter() - start
        row = {
            "round": round_num,
            "sim_time_s": pos.sim_s,
            "wall_time_s": pos.wall_s,
            "accuracy": metrics.get("accuracy"),
            "loss": metrics.get("loss"),
            "round_wall_s": time.perf_counter() - start,
            "eval_wall_s": time.perf_counter() - train_done,
            "participants": outcome.rows(),
            "outcomes": outcome.status_counts(),
        }
        if self.res.config.fleet.clock == "measured":  # simulated rows stay as they were
            row["clock"] = "measured"
        if outcome.skipped:
            row["skipped"] = True
        if "evaluated_devices" in metrics:
            row["evaluated_devices"] = metrics["evaluated_devices"]
        self.progress.round_done(row)
        pos.rows.append(row | marks)
        pos.next_round += 1
        self.round_wall_s += row["round_wall_s"]
        self.run_dir.append_round(pos.rows[-1])
        self.checkpoint()

    def checkpoint(self) -> None:
        start = time.perf_counter()
        self.position.elapsed_s = self.elapsed_s()
        self.checkpoint_bytes = save_checkpoint(
            self.run_dir.path, self.res.config, self.server, self.position
        )
        self.checkpoint_s += time.perf_counter() - start

    def elapsed_s(self) -> float:
        """Wall seconds of the whole run so far, over every process it ran in."""
        return self.earlier_s + time.perf_counter() - self.started

    def admit(self, round_num: int) -> set[int] | None:
        """Before a round: register devices that joined since (their probe's cost goes on the
        clock) and return the devices present in it."""
        request = probe_request(
            self.res, self.step_flops, self.round_bytes, self.probe_rank, round_num
        )
        newcomers = {
            n: r for n, r in self.channel.register(request).items() if n not in self.server.devices
        }
        if newcomers:
            self.position.sim_s += self.server.register(
                newcomers, self.step_flops, self.round_bytes
            )
        return self.channel.present(round_num)

    def run(self, config: Config) -> None:
        """Every remaining round, from wherever `position` stands."""
        pos, server, run = self.position, self.server, config.run
        while pos.next_round <= run.rounds:  # 2. the planned rounds
            marks = {"probe_sim_s": pos.probe_s} if pos.next_round == 1 and pos.probe_s else {}
            present = self.admit(pos.next_round)
            self.train(server.plan_round(pos.next_round, present), **marks)
        # 3. Catch-up rounds: laggards (rarely sampled, late joiners, failed last time) prune
        # to the final target; retried for those away or failing, at most CATCH_UP_TRIES times.
        while config.pruning.catch_up and pos.final_tries < CATCH_UP_TRIES:
            final = server.plan_final(pos.next_round, self.admit(pos.next_round))
            pos.final_tries = pos.final_tries + 1 if final else CATCH_UP_TRIES
            if final:
                self.train(final, final_round=True)
        # 4. Under a time budget every method trains on until the simulated clock reaches it,
        # so methods with shorter rounds get more of them (the paper's time-to-accuracy
        # setting); pruning methods are all at the target by now and keep tuning the pruned
        # models.
        while pos.budget_rounds < run.round_limit - run.rounds and pos.sim_s < run.time_budget_s:
            pos.budget_rounds += 1
            present = self.admit(pos.next_round)
            self.train(server.plan_round(pos.next_round, present))


def final_device_scores(
    res: RunResources, server: Server, own_b: Callable[[int], dict | None] | None = None
) -> list[dict]:
    """Every device's final model (its structure + the final global LoRA; FedSA-LoRA: + its
    own B) on the test subset."""
    records = server.records()
    accuracies = device_accuracies(
        res,
        server.global_lora,
        [r.kept for r in records],
        final_eval_subset(res),
        [own_b(r.device_id) for r in records] if own_b else None,
    )
    reports: dict[str, dict] = {}  # per distinct structure: building its meta model is slow
    rows = []
    keys = structure_keys([r.kept for r in records])
    for record, accuracy, key in zip(records, accuracies, keys, strict=True):
        if key not in reports:
            reports[key] = sparsity_report(record.kept, res.base.model.config)
        report = reports[key]
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
        if record.budget_ms is not None:  # budget mode: what the device asked and reached
            rows[-1] |= {
                "target_sparsity": record.target,
                "budget_ms": record.budget_ms,
                "latency_ms": record.latency_ms,
                "meets_budget": record.latency_ms is not None
                and record.latency_ms <= record.budget_ms * (1 + 1e-9),
                "weight_mb": report["params"] * 4 / 2**20,
            }
    return rows


def save_server_state(
    run_dir: RunDirectory, server: Server, own_b: Callable[[int], dict | None] | None = None
) -> None:
    """The final global LoRA and every device's structure, for `fedspine export` (FedSA-LoRA:
    and every trained device's own B)."""
    lora = server.global_lora
    if own_b is not None:
        found = {r.device_id: own_b(r.device_id) for r in server.records()}
        save_own_b(run_dir.path, {d: b for d, b in found.items() if b is not None})
    records = server.records()
    keys = structure_keys([r.kept for r in records])
    index: dict[str, int] = {}
    structures: list[dict] = []
    for record, key in zip(records, keys, strict=True):
        if key not in index:
            index[key] = len(structures)
            structures.append(record.kept.to_dict())
    save_final_state(
        run_dir.path,
        lora.factors,
        lora.head,
        {"max_rank": lora.max_rank, "aggregation": lora.aggregation, "scaling": lora.scaling},
        [
            {"id": r.device_id, "tier": r.tier, "structure": index[key]}
            | ({"budget_ms": r.budget_ms, "target_sparsity": r.target} if r.budget_ms else {})
            for r, key in zip(records, keys, strict=True)
        ],
        structures,
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
    resume: bool = False,
) -> dict:
    """The whole run; returns the summary (the caller writes it into the run directory).

    With `resume`, the run continues from the checkpoint in `run_dir` (when a round had
    finished; otherwise it starts over) and ends exactly as the uninterrupted run would.
    """
    progress = progress or NullProgress()
    started = time.perf_counter()
    faults = fault_spec_from(config.fleet, config.run.seed)
    availability = availability_spec_from(config.fleet, config.run.seed, config.run.rounds)
    if faults.active or availability.active:  # the simulated fleet's faults and churn
        channel = UnreliableChannel(channel, faults, availability)
    progress.phase("loading model and data")
    res = load_resources(json.dumps(config_to_dict(config), sort_keys=True))
    method = get_method(config.run.method)
    server = make_server(res, method)
    saved = load_checkpoint(run_dir.path, config) if resume else None
    step_flops, round_bytes = (None, 0)
    if method.probes(config):
        step_flops, round_bytes = probe_workload(res, server.global_lora)
    progress.phase("registering devices")
    if saved is not None:  # devices announce themselves again; their records are restored
        state, position = saved
        restore_server(server, state)
        run_dir.rewrite_rounds(position.rows)
    else:  # 1. Registration (probing methods: each device times one step and a transfer)
        rank = server.global_lora.max_rank
        registrations = channel.register(probe_request(res, step_flops, round_bytes, rank))
        probe_s = server.register(registrations, step_flops, round_bytes)
        position = RunPosition(sim_s=probe_s, probe_s=probe_s)  # the probe opens the clock
        if res.generative:  # the untuned base on the held-out set: what tuning must beat
            progress.phase("scoring the untuned base model")
            position.base_scores = evaluate_device(
                res, server.global_lora, full_kept(res), res.test
            )
    loop = _RoundLoop(res, server, channel, run_dir, progress, position)
    loop.step_flops, loop.round_bytes = step_flops, round_bytes
    loop.probe_rank = server.global_lora.max_rank
    catch_up = method.prunes and config.pruning.catch_up
    progress.start_rounds(config.run.round_limit + int(catch_up), len(position.rows))
    loop.run(config)
    # 5. Every device's final model, the global model, and the state for export.
    progress.phase("evaluating every device's final model")
    devices = final_device_scores(res, server, loop.own_b)
    global_scores = evaluate_device(res, server.global_lora, full_kept(res), res.test)
    release_freed_memory()
    save_server_state(run_dir, server, loop.own_b)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall_s = loop.earlier_s + time.perf_counter() - started
    summary = build_summary(
        config,
        res,
        position.rows,
        devices,
        global_scores,
        wall_s,
        peak_rss_mb,
        position.base_scores,
    )
    summary["checkpoint"] = {
        "bytes": loop.checkpoint_bytes,
        "wall_s": loop.checkpoint_s,
        "share_of_round_wall": loop.checkpoint_s / max(loop.round_wall_s, 1e-9),
        "resumed": saved is not None,
    }
    return summary
