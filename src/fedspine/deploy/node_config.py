"""A SuperNode's own settings (`flower-supernode --node-config "key=value ..."`), typed.

The one home of the node config keys: the client app reads them through `NodeSettings`,
`deploy-local` writes them with `to_node_config`, and docs/deployment.md lists them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedspine.errors import ConfigError

PARTITION_ID = "partition-id"  # the device id, 0 .. fleet.num_devices-1, unique per node
DATA_PATH = "data-path"  # the device's own data file (fleet uses data.device_local)
TEXT_COLUMN = "text-column"  # classify: its text column (default: the run's data.text_column)
LABEL_COLUMN = "label-column"  # classify: its label column (default: data.label_column)
INSTRUCTION_COLUMN = "instruction-column"  # generate: request column (default: the run's)
CONTEXT_COLUMN = "context-column"  # generate: optional passage column
RESPONSE_COLUMN = "response-column"  # generate: reference answer column
CATEGORY_COLUMN = "category-column"  # generate: optional category column
MEMORY_BUDGET_MB = "memory-budget-mb"  # measured clock: training may use this much (MB)
SLOWDOWN = "slowdown"  # >= 1: the device sleeps (slowdown - 1) x its measured compute time
STATE_DIR = "state-dir"  # where the device keeps its importance EMA across restarts
TIER = "tier"  # the hardware class it announces (default: its simulated profile's)

_COLUMNS = {
    TEXT_COLUMN: "text_column",
    LABEL_COLUMN: "label_column",
    INSTRUCTION_COLUMN: "instruction_column",
    CONTEXT_COLUMN: "context_column",
    RESPONSE_COLUMN: "response_column",
    CATEGORY_COLUMN: "category_column",
}


@dataclass(frozen=True)
class NodeSettings:
    """What a node says of itself; a column left out means the run config's column name."""

    partition_id: int
    data_path: str = ""
    columns: tuple[tuple[str, str], ...] = ()  # (DataSection field, column name) overrides
    memory_budget_mb: float = 0.0  # 0 = what the machine has free when a round starts
    slowdown: float = 1.0
    state_dir: str = ""
    tier: str = ""

    def column(self, field_name: str, default: str) -> str:
        return dict(self.columns).get(field_name, default)


def _number(raw: Mapping[str, Any], key: str, default: float, low: float) -> float:
    value = raw.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < low:
        raise ConfigError(f"node config {key}={value!r} must be a number >= {low:g}")
    return number


def node_settings(raw: Mapping[str, Any]) -> NodeSettings:
    """Parse a SuperNode's node config; a bad value is a one-line ConfigError naming the key."""
    if PARTITION_ID not in raw:
        raise ConfigError(
            f'node config needs {PARTITION_ID}: start the SuperNode with --node-config "'
            f'{PARTITION_ID}=K" (K = the device id, unique per SuperNode)'
        )
    partition = _number(raw, PARTITION_ID, 0, 0)
    if not partition.is_integer():
        raise ConfigError(f"node config {PARTITION_ID} must be an integer >= 0")
    columns = tuple((name, str(raw[key])) for key, name in _COLUMNS.items() if key in raw)
    return NodeSettings(
        partition_id=int(partition),
        data_path=str(raw.get(DATA_PATH, "")),
        columns=columns,
        memory_budget_mb=_number(raw, MEMORY_BUDGET_MB, 0.0, 0.0),
        slowdown=_number(raw, SLOWDOWN, 1.0, 1.0),
        state_dir=str(raw.get(STATE_DIR, "")),
        tier=str(raw.get(TIER, "")),
    )


def to_node_config(settings: NodeSettings) -> str:
    """The `--node-config` argument that `node_settings` reads back (values are quoted)."""
    pairs: dict[str, Any] = {PARTITION_ID: settings.partition_id}
    if settings.data_path:
        pairs[DATA_PATH] = f'"{settings.data_path}"'
    names = {name: key for key, name in _COLUMNS.items()}
    for name, column in settings.columns:
        pairs[names[name]] = f'"{column}"'
    if settings.memory_budget_mb:
        pairs[MEMORY_BUDGET_MB] = settings.memory_budget_mb
    if settings.slowdown != 1.0:
        pairs[SLOWDOWN] = settings.slowdown
    if settings.state_dir:
        pairs[STATE_DIR] = f'"{settings.state_dir}"'
    if settings.tier:
        pairs[TIER] = f'"{settings.tier}"'
    return " ".join(f"{key}={value}" for key, value in pairs.items())
