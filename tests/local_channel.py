"""A `DeviceChannel` whose devices run in this process, called directly (no Flower): lets a
test drive `run_federation` on a real (tiny) model."""

from __future__ import annotations

from pathlib import Path

from fedspine.device_round import own_budget_target, run_device_round
from fedspine.device_state import DeviceStateStore
from fedspine.protocol import Downlink, ProbeRequest, Registration


class LocalChannel:
    """Every device of `res.fleet`, addressed by made-up node ids unrelated to device ids.

    Devices keep their state (importance EMA, FedSA-LoRA's own B) in memory, or with
    `state_root` (the run's `device-state` folder) on storage as simulated devices do.
    """

    def __init__(self, res, state_root: Path | None = None) -> None:
        self.res = res
        self.node_of = {d.device_id: 1000 + 7 * d.device_id for d in res.fleet}
        self.scores: dict[int, object] = {}
        self.own_b: dict[int, object] = {}
        self.state_root = state_root
        self.downlinks: list = []  # every down-link and reply, in delivery order (tests
        self.uplinks: list = []  # inspect them)

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
            self.downlinks.append(downlink)
            device = self.res.fleet[device_of[node]]
            round_num = downlink.plan.round_num
            store = DeviceStateStore(self.state_root, device.device_id) if self.state_root else None
            own_b = store.load_own_b(round_num) if store else self.own_b.get(node)
            result = run_device_round(
                self.res, device, downlink, self.scores.get(node), own_b=own_b
            )
            self.scores[node] = result.carried_scores
            self.own_b[node] = result.carried_b
            if store is not None and result.carried_b is not None:
                store.save(round_num, None, result.carried_b)
            replies[node] = result.uplink
            self.uplinks.append(result.uplink)
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
