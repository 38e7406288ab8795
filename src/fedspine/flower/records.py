"""The protocol's typed messages as Flower RecordDicts and back: the only Flower encoding.

Record names inside a Message's RecordDict are defined here once; the scalars of a plan, a
report or a registration come from `fedspine.protocol.to_record`, tensors travel as
ArrayRecords.
"""

from __future__ import annotations

import json

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

CONFIG_JSON = "config_json"
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


def encode_query(config_json: str, request: ProbeRequest) -> RecordDict:
    return RecordDict(
        {
            RUN: ConfigRecord({CONFIG_JSON: config_json}),
            REGISTRATION: ConfigRecord(to_record(request)),
        }
    )


def decode_query(content: RecordDict) -> ProbeRequest:
    return from_record(ProbeRequest, dict(content[REGISTRATION]))


def encode_registration(registration: Registration) -> RecordDict:
    return RecordDict({REGISTRATION: ConfigRecord(to_record(registration))})


def decode_registration(content: RecordDict) -> Registration:
    return from_record(Registration, dict(content[REGISTRATION]))


def encode_downlink(config_json: str, downlink: Downlink) -> RecordDict:
    content = RecordDict(
        {
            RUN: ConfigRecord({CONFIG_JSON: config_json}),
            PLAN: ConfigRecord(to_record(downlink.plan)),
            KEPT: _kept_record(downlink.kept),
            LORA: _arrays(factors_to_tensors(downlink.factors)),
            HEAD: _arrays(downlink.head),
        }
    )
    if downlink.fleet_prior is not None:
        content[IMPORTANCE] = _arrays(scores_to_tensors(downlink.fleet_prior))
    return content


def decode_downlink(content: RecordDict) -> Downlink:
    return Downlink(
        from_record(DevicePlan, dict(content[PLAN])),
        _read_kept(content),
        tensors_to_factors(content[LORA].to_torch_state_dict()),
        content[HEAD].to_torch_state_dict(),
        _read_scores(content),
    )


def encode_uplink(uplink: Uplink) -> RecordDict:
    content = RecordDict(
        {
            REPORT: ConfigRecord(to_record(uplink.report)),
            KEPT: _kept_record(uplink.kept),
            LORA: _arrays(factors_to_tensors(uplink.factors)),
            HEAD: _arrays(uplink.head),
        }
    )
    if uplink.scores is not None:
        content[IMPORTANCE] = _arrays(scores_to_tensors(uplink.scores))
    return content


def decode_uplink(content: RecordDict) -> Uplink:
    return Uplink(
        from_record(DeviceReport, dict(content[REPORT])),
        _read_kept(content),
        tensors_to_factors(content[LORA].to_torch_state_dict()),
        content[HEAD].to_torch_state_dict(),
        _read_scores(content),
    )
