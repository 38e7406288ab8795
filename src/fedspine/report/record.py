"""A run's directory, written atomically: everything goes to a hidden partial dir first.

On success the partial dir is renamed to the final path in one step, so a reader never sees a
half-written run; an interrupted run leaves `<out>.partial/` with the rounds done so far.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

ROUNDS_FILE = "rounds.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.toml"


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class RunDirectory:
    """Owns `<out>.partial/` while the run goes, then publishes it as `<out>/`."""

    def __init__(self, out: Path) -> None:
        self.final = out
        if out.exists() and any(out.iterdir()):
            from fedspine.errors import ConfigError

            raise ConfigError(
                f"output directory {out} already exists and is not empty; "
                "pass another --out or remove it"
            )
        self.path = out.with_name(out.name + ".partial")
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        self._rounds = (self.path / ROUNDS_FILE).open("a", encoding="utf-8")

    def append_round(self, row: dict[str, Any]) -> None:
        self._rounds.write(json.dumps(row, default=_jsonable) + "\n")
        self._rounds.flush()

    def file(self, name: str) -> Path:
        return self.path / name

    def publish(self) -> Path:
        self._rounds.close()
        if self.final.exists():
            self.final.rmdir()  # empty, checked at start
        os.replace(self.path, self.final)
        return self.final

    def abandon(self) -> None:
        if not self._rounds.closed:
            self._rounds.close()


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    with (run_dir / ROUNDS_FILE).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
