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
