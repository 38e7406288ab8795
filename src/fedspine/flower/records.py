"""The protocol's typed messages as Flower RecordDicts and back: the only Flower encoding.

Record names inside a Message's RecordDict are defined here once; the scalars of a plan, a
report or a registration come from `fedspine.protocol.to_record`, tensors travel as
ArrayRecords.
"""

from __future__ import annotations

import json

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedspine.protocol import (
    DevicePlan,
    DeviceReport,
    Downlink,
    ProbeRequest,
    Registration,
    Uplink,
    factors_to_tensors,
    from_record,
    tensors_to_factors,
    to_record,
)
from fedspine.pruning import KeptIndices, ModelScores
from fedspine.pruning.fleet_importance import scores_to_tensors, tensors_to_scores

RUN = "run"  # ConfigRecord: the run's resolved config (JSON), so any node can load it
PLAN = "plan"  # ConfigRecord: DevicePlan
REPORT = "report"  # ConfigRecord: DeviceReport
REGISTRATION = "registration"  # ConfigRecord: Registration (reply) / ProbeRequest (query)
KEPT = "kept"  # ConfigRecord: the kept-index map as JSON
LORA = "lora"  # ArrayRecord: "<module>::A" and "<module>::B"
HEAD = "head"  # ArrayRecord: the task head's weights
IMPORTANCE = "importance"  # ArrayRecord: group scores (down: fleet prior; up: device EMA)
MERGED = "merged"  # ArrayRecord (down, FLoRA): the merged global delta per module
MERGED_WIRE = "merged_wire"  # ConfigRecord (down, FLoRA): that delta's bytes on the wire
WIRE_BYTES = "bytes"
PROBE_PAYLOAD = "probe_payload"  # ArrayRecord: the measured probe's transfer (zeros), each way

CONFIG_JSON = "config_json"
STATE_DIR = "device_state_dir"  # in RUN: where simulated devices keep their state ("" = none)
KEPT_JSON = "kept_json"


def _arrays(tensors: dict) -> ArrayRecord:
    return ArrayRecord(torch_state_dict=tensors)


def _kept_record(kept: KeptIndices | None) -> ConfigRecord:
    return ConfigRecord({KEPT_JSON: json.dumps(kept.to_dict()) if kept is not None else ""})


def _read_kept(content: RecordDict) -> KeptIndices | None:
    text = str(content[KEPT][KEPT_JSON])
    return KeptIndices.from_dict(json.loads(text)) if text else None


def _read_scores(content: RecordDict) -> ModelScores | None:
    if IMPORTANCE not in content:
        return None
    return tensors_to_scores(content[IMPORTANCE].to_torch_state_dict())


def run_config(content: RecordDict) -> str:
    return str(content[RUN][CONFIG_JSON])


def device_state_dir(content: RecordDict) -> str:
    """The folder a simulated device keeps its state in ("" when the message names none)."""
    return str(content[RUN].get(STATE_DIR, ""))


def _probe_payload(transfer_bytes: int) -> ArrayRecord:
    return _arrays({"zeros": torch.zeros(max(transfer_bytes, 0), dtype=torch.uint8)})


def encode_query(config_json: str, request: ProbeRequest) -> RecordDict:
    content = RecordDict(
        {
            RUN: ConfigRecord({CONFIG_JSON: config_json}),
            REGISTRATION: ConfigRecord(to_record(request)),
        }
    )
    if request.transfer_bytes:
        content[PROBE_PAYLOAD] = _probe_payload(request.transfer_bytes)
    return content


def decode_query(content: RecordDict) -> ProbeRequest:
    return from_record(ProbeRequest, dict(content[REGISTRATION]))


def encode_registration(registration: Registration, transfer_bytes: int = 0) -> RecordDict:
    """The registration, with the measured probe's transfer back when one was asked for."""
    content = RecordDict({REGISTRATION: ConfigRecord(to_record(registration))})
    if transfer_bytes:
        content[PROBE_PAYLOAD] = _probe_payload(transfer_bytes)
    return content


def decode_registration(content: RecordDict) -> Registration:
    return from_record(Registration, dict(content[REGISTRATION]))


def _encode(records: dict[str, ConfigRecord], kept, factors, head, scores) -> RecordDict:
    """A message with these scalar records, the kept map and the tensors both ways share."""
    content = RecordDict(
        {
            **records,
            KEPT: _kept_record(kept),
            LORA: _arrays(factors_to_tensors(factors)),
            HEAD: _arrays(head),
        }
    )
    if scores is not None:
        content[IMPORTANCE] = _arrays(scores_to_tensors(scores))
    return content


def _decode(content: RecordDict) -> tuple:
    """(kept, factors, head, scores) of a down- or up-link message."""
    return (
        _read_kept(content),
        tensors_to_factors(content[LORA].to_torch_state_dict()),
        content[HEAD].to_torch_state_dict(),
        _read_scores(content),
    )


def encode_downlink(config_json: str, downlink: Downlink, state_dir: str = "") -> RecordDict:
    scalars = {
        RUN: ConfigRecord({CONFIG_JSON: config_json, STATE_DIR: state_dir}),
        PLAN: ConfigRecord(to_record(downlink.plan)),
    }
    content = _encode(scalars, downlink.kept, downlink.factors, downlink.head, downlink.fleet_prior)
    if downlink.merged:
        content[MERGED] = _arrays({k: v.contiguous() for k, v in downlink.merged.items()})
        content[MERGED_WIRE] = ConfigRecord({WIRE_BYTES: int(downlink.merged_wire_bytes)})
    return content


def decode_downlink(content: RecordDict) -> Downlink:
    plan = from_record(DevicePlan, dict(content[PLAN]))
    if MERGED not in content:
        return Downlink(plan, *_decode(content))
    merged = content[MERGED].to_torch_state_dict()
    wire = int(content[MERGED_WIRE][WIRE_BYTES])
    return Downlink(plan, *_decode(content), merged=merged, merged_wire_bytes=wire)


def encode_uplink(uplink: Uplink) -> RecordDict:
    scalars = {REPORT: ConfigRecord(to_record(uplink.report))}
    return _encode(scalars, uplink.kept, uplink.factors, uplink.head, uplink.scores)


def decode_uplink(content: RecordDict) -> Uplink:
    return Uplink(from_record(DeviceReport, dict(content[REPORT])), *_decode(content))
