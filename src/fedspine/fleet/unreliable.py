"""The simulated network's faults and churn, layered over any `DeviceChannel` (simulation only).

A dropped device is never sent its down-link (it is away); a crashed one does its round and
dies before answering, so the server gets nothing and learns only how long it waited. The
server core sees just `NoReply` markers, as it would on real devices; the fault's kind is
kept for the record. Registration is never faulted (a device registers when it is there).

Churn: a device that has not arrived yet is hidden from registration until its arrival round
(it then registers, probe included, as a newcomer would), and a device away in a round is not
among the present devices the server samples from, like a disconnected SuperNode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedspine.fleet.faults import AvailabilitySpec, Fault, FaultSpec, fault_at, is_away
from fedspine.protocol import (
    Downlink,
    NoReply,
    ProbeRequest,
    Registration,
    ReplyStatus,
    Uplink,
)

if TYPE_CHECKING:
    from fedspine.server.run import DeviceChannel, Reply


class UnreliableChannel:
    """A `DeviceChannel` whose devices drop out, crash, leave and join as the specs draw."""

    def __init__(
        self,
        channel: DeviceChannel,
        faults: FaultSpec,
        availability: AvailabilitySpec | None = None,
    ) -> None:
        self.channel, self.spec, self.availability = channel, faults, availability
        self.identity: dict[int, tuple[int, str]] = {}  # device key -> (device id, tier)
        self.waiting: dict[int, Registration] = {}  # connected, not yet arrived
        self.returned: set[int] = set()  # handed to the server already

    def register(self, request: ProbeRequest) -> dict[int, Registration]:
        """Registrations of the devices present by `request.round_num` not returned before."""
        registrations = self.channel.register(request)
        self.identity.update({n: (r.device_id, r.tier) for n, r in registrations.items()})
        self.waiting.update({n: r for n, r in registrations.items() if n not in self.returned})
        arrived = {
            node: reg
            for node, reg in self.waiting.items()
            if self.availability is None
            or self.availability.arrival_of(reg.device_id) <= request.round_num
        }
        for node in arrived:
            del self.waiting[node]
        self.returned.update(arrived)
        return arrived

    def present(self, round_num: int) -> set[int] | None:
        """Devices connected in `round_num` (None: everyone registered)."""
        inner = self.channel.present(round_num)
        if self.availability is None or not self.availability.active:
            return inner
        candidates = inner if inner is not None else set(self.identity)
        return {
            n for n in candidates if not is_away(self.availability, self.identity[n][0], round_num)
        }

    def train(self, downlinks: dict[int, Downlink]) -> dict[int, Reply]:
        fates = {
            node: fault_at(self.spec, *self.identity[node], downlink.plan.round_num)
            for node, downlink in downlinks.items()
        }
        reachable = {n: d for n, d in downlinks.items() if fates[n].fault is not Fault.DROPOUT}
        replies = self.channel.train(reachable) if reachable else {}
        out: dict[int, Reply] = {}
        for node in downlinks:
            fate = fates[node]
            if fate.fault is Fault.DROPOUT:
                out[node] = NoReply(ReplyStatus.DROPPED, "unavailable this round (simulated)")
            elif fate.fault is Fault.CRASH:
                reply = replies.get(node)
                full = reply.report.time_s if isinstance(reply, Uplink) else 0.0
                out[node] = NoReply(
                    ReplyStatus.CRASHED,
                    f"died {fate.crash_at:.0%} into its round (simulated)",
                    waited_s=fate.crash_at * full,
                )
            elif node in replies:
                out[node] = replies[node]
            else:
                out[node] = NoReply(ReplyStatus.DROPPED, "the transport returned no reply")
        return out
