"""The files of a run directory: their names, atomic writes, and reading them back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROUNDS_FILE = "rounds.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.toml"
CHECKPOINT_FILE = "checkpoint.pt"  # the server state after the last finished round (resume)
DEVICE_STATE_DIR = "device-state"  # simulated devices' own storage (survives a resume)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, default=jsonable) + "\n")


def jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    with (run_dir / ROUNDS_FILE).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
