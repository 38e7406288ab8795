"""Registration probe: a device's speed measured before its first round [our choice].

With 80 devices and 8 a round, most devices are picked once or twice a run, so a bandit that
learns a device's speed only from its finished rounds proposes nearly every arm from the
fleet-wide tree, blind to whether the device is a straggler. At registration the server
therefore asks each device to time one local training step of the full model and a small
transfer (what Oort-style systems profile); from those it estimates the device's effective
speed over a typical round, on the same scale as a finished round's FLOPs / seconds, and the
bandit can place it in a speed group before it ever trains.

The probe is not free: a device spends its step and transfer, and the server waits for the
slowest one, which the run's simulated clock is charged with. Pure functions; no Flower.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedspine.fleet.clock import RoundConditions, compute_time_s

PROBE_BYTES = 64 * 1024  # each way: enough to time a transfer, cheap on a 1 MB/s link


@dataclass(frozen=True)
class ProbeResult:
    """What a device measured: one training step, its link's throughput and latency, and the
    payload each way it measured them with."""

    step_s: float
    bandwidth_Bps: float
    latency_s: float
    transfer_bytes: int = PROBE_BYTES

    def duration_s(self) -> float:
        """Wall time the probe itself took: the step plus a transfer each way."""
        return self.step_s + 2 * self.transfer_bytes / self.bandwidth_Bps + 2 * self.latency_s


def simulate_probe(step_flops: float, cond: RoundConditions, latency_s: float) -> ProbeResult:
    """The simulated device's measurement under its first round's conditions."""
    return ProbeResult(compute_time_s(step_flops, cond), cond.bandwidth_Bps, latency_s)


def measured_probe(
    step_s: float, transfer_bytes: int, round_trip_s: float, handler_s: float
) -> ProbeResult:
    """A real device's probe (measured clock): its timed step, and a link whose time for
    `transfer_bytes` each way is what the server's send-to-reply time shows beyond the
    device's handler. One transfer cannot split latency from bandwidth, so its whole cost is
    counted as bandwidth (latency 0): with the transfer sized like a round's payload, the
    estimate of a round's transfer time is what this transfer took."""
    transfer_s = max(round_trip_s - handler_s, 1e-3)
    return ProbeResult(step_s, 2 * transfer_bytes / transfer_s, 0.0, transfer_bytes)


def estimated_round_speed(
    probe: ProbeResult, step_flops: float, local_steps: int, round_bytes: int
) -> float:
    """FLOPs per second the device would show over a typical round (its FLOPs over its
    compute + transfer + latency time): the bandit's effective speed, before any round."""
    if probe.step_s <= 0 or probe.bandwidth_Bps <= 0 or local_steps < 1:
        raise ValueError(f"probe needs positive times and local_steps >= 1, got {probe}")
    flops = step_flops * local_steps
    seconds = probe.step_s * local_steps + round_bytes / probe.bandwidth_Bps + 2 * probe.latency_s
    return flops / seconds
