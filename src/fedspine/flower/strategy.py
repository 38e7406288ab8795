"""A Flower Strategy that runs any fedspine method: plan, down-link, aggregate.

It translates between Flower messages and the method's planner and the global LoRA state. It
sees only what a real server sees: device replies (times, losses, kept maps), never profiles.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedspine import protocol as P
from fedspine.evaluation import rows_cols
from fedspine.global_state import DeviceUpload, GlobalLora, update_norm
from fedspine.methods.base import DeviceView, Method, Planner
from fedspine.pruning import KeptIndices, ModelScores
from fedspine.pruning.fleet_importance import (
    ScoreReport,
    pool_scores,
    scores_to_tensors,
    tensors_to_scores,
)
from fedspine.resources import RunResources


@dataclass
class DeviceState:
    """The server's per-device record: small, no model copy."""

    node_id: int
    device_id: int
    tier: str
    kept: KeptIndices  # starts as the full map; the device's reports shrink it
    sparsity: float = 0.0
    rounds_seen: int = 0
    last_rank: int = 0

    def view(self) -> DeviceView:
        return DeviceView(
            self.node_id,
            self.sparsity,
            self.rounds_seen,
            self.last_rank,
            self.tier,
        )


class FedspineStrategy(Strategy):
    def __init__(
        self,
        method: Method,
        planner: Planner,
        global_lora: GlobalLora,
        res: RunResources,
        config_json: str,
    ) -> None:
        self.method, self.planner, self.global_lora = method, planner, global_lora
        self.res, self.config_json = res, config_json
        self.clients_per_round = res.config.run.clients_per_round
        self.rng = np.random.default_rng(res.config.run.seed + 17)
        self.devices: dict[int, DeviceState] = {}
        self.last_round: list[dict] = []
        self.fleet_scores: ModelScores | None = None  # pooled importance (share_importance)
        self.shares_importance = method.prunes and res.config.pruning.share_importance
        self._score_reports: list[ScoreReport] = []
        self._sent: dict[int, tuple[dict, dict, dict]] = {}  # node -> (factors, rows, cols)

    # -- helpers ----------------------------------------------------------------------------
    def sample(self, round_num: int) -> list[int]:
        """Seeded draw over devices in device-id order: Flower's node ids are random per run,
        so ordering by them would give every method of a compare different participants."""
        nodes = sorted(self.devices, key=lambda n: self.devices[n].device_id)
        count = min(self.clients_per_round, len(nodes))
        picks = self.rng.choice(len(nodes), size=count, replace=False)  # node ids exceed float53
        return [nodes[i] for i in sorted(picks)]  # device-id order: the planner's draws follow it

    def train_message(
        self, node_id: int, round_num: int, final_round: bool, grid: Grid, local_steps: int = 0
    ) -> Message:
        state = self.devices[node_id]
        assignment = self.planner.assign(round_num, state.view(), final_round)
        rows, cols = rows_cols(self.res.base, state.kept)
        factors = self.global_lora.downlink(rows, cols, assignment.lora_rank)
        self._sent[node_id] = (factors, rows, cols)  # masked-svd-residual reads it back
        plan = ConfigRecord(
            {
                P.ROUND: round_num,
                P.CONFIG_JSON: self.config_json,
                P.LORA_RANK: assignment.lora_rank,
                P.TARGET_SPARSITY: assignment.target_sparsity,
                P.RANK_SELF_PRUNE: assignment.rank_self_prune,
                P.PRUNE_ONE_SHOT: assignment.prune_one_shot,
                P.LOCAL_STEPS: local_steps,
                P.KEPT_JSON: json.dumps(state.kept.to_dict()),
            }
        )
        content = RecordDict(
            {
                P.PLAN: plan,
                P.LORA: ArrayRecord(torch_state_dict=P.factors_to_tensors(factors)),
                P.HEAD: ArrayRecord(torch_state_dict=self.global_lora.head),
            }
        )
        if self.shares_importance and self.fleet_scores is not None:
            content[P.IMPORTANCE] = ArrayRecord(
                torch_state_dict=scores_to_tensors(self.fleet_scores)
            )
        return Message(content=content, message_type="train", dst_node_id=node_id)

    # -- Flower Strategy interface ------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return [self.train_message(n, server_round, False, grid) for n in self.sample(server_round)]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        outcomes, uploads = [], []
        for reply in self.in_device_order(replies):
            if reply.has_error():
                outcomes.append(self._crashed(reply))
                continue
            outcome, upload = self._absorb(reply)
            outcomes.append(outcome)
            if upload is not None:
                uploads.append(upload)
        rewards = self.planner.observe(server_round, outcomes)
        for outcome, reward in zip(outcomes, rewards, strict=True):
            if reward:
                outcome["reward"] = reward
        self.global_lora.aggregate(uploads)
        if self.shares_importance:
            self.fleet_scores = pool_scores(
                self.fleet_scores, self._score_reports, self.res.config.pruning.fleet_momentum
            )
        self._score_reports = []
        self.last_round = outcomes
        return None, MetricRecord({"participants": float(len(outcomes))})

    def in_device_order(self, replies: Iterable[Message]) -> list[Message]:
        """Replies sorted by device id: they arrive in whatever order the workers finish, and
        the bandit's updates, the float sums of aggregation and the fleet prior must not
        depend on that, or one seed gives different runs."""
        return sorted(replies, key=lambda m: self.devices[m.metadata.src_node_id].device_id)

    def _crashed(self, reply: Message) -> dict:
        """A device whose ClientApp raised: logged (last line of the error), not aggregated."""
        state = self.devices[reply.metadata.src_node_id]
        lines = [line for line in str(reply.error.reason).splitlines() if line.strip()]
        return {
            "device": state.device_id,
            "tier": state.tier,
            "node_id": state.node_id,
            "ok": False,
            "crashed": True,
            "error": lines[-1] if lines else "unknown error",
        }

    def _absorb(self, reply: Message) -> tuple[dict, DeviceUpload | None]:
        """Update the device's server-side record from its reply; return its log and upload."""
        report = reply.content[P.REPORT]
        meta = reply.content[P.DEVICE_META]
        state = self.devices[reply.metadata.src_node_id]
        ok = bool(report[P.OK])
        outcome = {
            "device": state.device_id,
            "tier": state.tier,
            "node_id": state.node_id,
            "ok": ok,
            **{k: float(v) for k, v in report.items() if k != P.OK},
            "error": str(meta[P.ERROR]),
        }
        state.rounds_seen += 1
        if not ok:
            return outcome, None
        if P.IMPORTANCE in reply.content:  # scored on the structures it had at round start
            scores = tensors_to_scores(reply.content[P.IMPORTANCE].to_torch_state_dict())
            weight = float(report[P.NUM_EXAMPLES])
            self._score_reports.append(ScoreReport(scores, state.kept, weight))
        state.kept = KeptIndices.from_dict(json.loads(str(meta[P.KEPT_JSON])))
        state.sparsity = float(report[P.SPARSITY])
        state.last_rank = int(report[P.USED_RANK])
        rows, cols = rows_cols(self.res.base, state.kept)
        factors = P.tensors_to_factors(reply.content[P.LORA].to_torch_state_dict())
        sent, sent_rows, sent_cols = self._sent.pop(state.node_id, (None, None, None))
        upload = DeviceUpload(
            factors,
            rows,
            cols,
            reply.content[P.HEAD].to_torch_state_dict(),
            int(report[P.NUM_EXAMPLES]),
            received=sent,
            received_rows=sent_rows,
            received_cols=sent_cols,
        )
        outcome["update_norm"] = update_norm(self.global_lora, upload)
        return outcome, upload

    def configure_evaluate(self, server_round, arrays, config, grid) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round, replies) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        return None
