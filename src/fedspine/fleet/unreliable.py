"""The simulated network's faults, layered over any `DeviceChannel` (simulation only).

A dropped device is never sent its down-link (it is away); a crashed one does its round and
dies before answering, so the server gets nothing and learns only how long it waited. The
server core sees just `NoReply` markers, as it would on real devices; the fault's kind is
kept for the record. Registration is never faulted (a device registers when it is there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedspine.fleet.faults import Fault, FaultSpec, fault_at
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
    """A `DeviceChannel` whose devices drop out and crash as `spec` draws (seeded)."""

    def __init__(self, channel: DeviceChannel, spec: FaultSpec) -> None:
        self.channel, self.spec = channel, spec
        self.identity: dict[int, tuple[int, str]] = {}  # node -> (device id, tier)

    def register(self, request: ProbeRequest) -> dict[int, Registration]:
        registrations = self.channel.register(request)
        self.identity.update({n: (r.device_id, r.tier) for n, r in registrations.items()})
        return registrations

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
