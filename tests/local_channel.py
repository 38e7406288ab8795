"""A `DeviceChannel` whose devices run in this process, called directly (no Flower): lets a
test drive `run_federation` on a real (tiny) model."""

from __future__ import annotations

from fedspine.device_round import own_budget_target, run_device_round
from fedspine.protocol import Downlink, ProbeRequest, Registration


class LocalChannel:
    """Every device of `res.fleet`, addressed by made-up node ids unrelated to device ids."""

    def __init__(self, res) -> None:
        self.res = res
        self.node_of = {d.device_id: 1000 + 7 * d.device_id for d in res.fleet}
        self.scores: dict[int, object] = {}

    def register(self, request: ProbeRequest) -> dict[int, Registration]:
        fleet = self.res.fleet
        return {
            node: Registration(d, fleet[d].tier, **own_budget_target(self.res, fleet[d]))
            for d, node in self.node_of.items()
        }

    def present(self, round_num: int) -> None:
        return None  # everyone, always

    def train(self, downlinks: dict[int, Downlink]) -> dict:
        device_of = {node: d for d, node in self.node_of.items()}
        replies = {}
        for node, downlink in downlinks.items():
            device = self.res.fleet[device_of[node]]
            result = run_device_round(self.res, device, downlink, self.scores.get(node))
            self.scores[node] = result.carried_scores
            replies[node] = result.uplink
        return replies


# A small real run: 6 devices, 3 a round, 3 rounds of 2 steps, small data (tests of whole runs).
SMALL_RUN = [
    "fleet.num_devices=6",
    "run.clients_per_round=3",
    "run.rounds=3",
    "train.local_steps=2",
    "pruning.final_recovery_steps=2",
    "data.max_train_examples=120",
    "data.max_test_examples=40",
    "data.round_eval_examples=20",
    "eval.final_eval_examples=20",
]
WALL_FIELDS = {"wall_time_s", "round_wall_s", "eval_wall_s", "train_wall_s", "handler_wall_s"}


def without_wall_fields(value):
    """A run record with its wall-clock fields dropped: what must equal between two runs."""
    if isinstance(value, dict):
        return {k: without_wall_fields(v) for k, v in value.items() if k not in WALL_FIELDS}
    if isinstance(value, list):
        return [without_wall_fields(v) for v in value]
    return value
