"""A run's directory and its lifecycle: everything goes to a hidden partial dir first.

On success the partial dir is renamed to the final path in one step, so a reader never sees a
half-written run; an interrupted run leaves `<out>.partial/` with the rounds done so far.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from fedspine.config import Config, config_to_toml, load_config
from fedspine.errors import ConfigError
from fedspine.report.plots import plot_run
from fedspine.report.record import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DEVICE_STATE_DIR,
    ROUNDS_FILE,
    SUMMARY_FILE,
    jsonable,
    write_json_atomic,
    write_text_atomic,
)


class RunDirectory:
    """Owns `<out>.partial/` while the run goes, then publishes it as `<out>/`."""

    def __init__(self, out: Path, reopen: bool = False) -> None:
        """`reopen`: continue the existing `<out>.partial/` of an interrupted run."""
        self.final = out
        check_out_dir(out)
        self.path = partial_path(out)
        if not reopen:
            if self.path.exists():
                shutil.rmtree(self.path)
            self.path.mkdir(parents=True)
        self._rounds = (self.path / ROUNDS_FILE).open("a", encoding="utf-8")

    def rewrite_rounds(self, rows: list[dict[str, Any]]) -> None:
        """Replace rounds.jsonl by `rows` (a resumed run drops rounds after its checkpoint)."""
        self._rounds.close()
        text = "".join(json.dumps(row, default=jsonable) + "\n" for row in rows)
        write_text_atomic(self.path / ROUNDS_FILE, text)
        self._rounds = (self.path / ROUNDS_FILE).open("a", encoding="utf-8")

    def append_round(self, row: dict[str, Any]) -> None:
        self._rounds.write(json.dumps(row, default=jsonable) + "\n")
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


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def default_run_dir(config: Config) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.run.method}"


def run_dir_path(config: Config, out: str | Path | None) -> Path:
    return Path(out) if out else default_run_dir(config)


def check_out_dir(out: Path) -> None:
    """Refuse an --out that would overwrite something, before any model or data is loaded."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a directory path that does not exist yet")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            f"output directory {out} already exists and is not empty; "
            "pass another --out or remove it"
        )


def new_run_dir(config: Config, out: str | Path | None) -> RunDirectory:
    path = run_dir_path(config, out)
    check_out_dir(path)
    try:
        run_dir = RunDirectory(path)
        write_text_atomic(run_dir.file(CONFIG_FILE), config_to_toml(config))
    except OSError as err:
        raise ConfigError(
            f"cannot create the run directory {path}: {err.strerror or err}; pass a writable --out"
        ) from None
    return run_dir


def finish_run(config: Config, run_dir: RunDirectory, summary: dict[str, Any]) -> Path:
    """Write the summary and plots into the partial dir, then publish it in one rename."""
    write_json_atomic(run_dir.file(SUMMARY_FILE), summary)
    plot_run(run_dir.path)
    run_dir.file(CHECKPOINT_FILE).unlink(missing_ok=True)  # a finished run is not resumed
    shutil.rmtree(run_dir.file(DEVICE_STATE_DIR), ignore_errors=True)
    return run_dir.publish()


def resumable_run(path: Path) -> tuple[Path, Config]:
    """The output path and config of the interrupted run at `path` (`<out>` or its
    `<out>.partial/`); a finished, missing or foreign directory is a ConfigError."""
    out = (
        path.with_name(path.name.removesuffix(".partial"))
        if path.name.endswith(".partial")
        else path
    )
    if (out / SUMMARY_FILE).is_file():
        raise ConfigError(f"the run in {out} has finished; there is nothing to resume")
    partial = partial_path(out)
    if not partial.is_dir():
        raise ConfigError(
            f"no interrupted run at {path} (no {partial.name}/ next to it); pass the --out of a "
            "run that was stopped"
        )
    if not (partial / CONFIG_FILE).is_file():
        raise ConfigError(f"{partial} has no {CONFIG_FILE}: not a fedspine run directory")
    config = load_config(config_file=partial / CONFIG_FILE)
    return out, config


def abandon_run(run_dir: RunDirectory) -> Path | None:
    """Close a failed run: keep `<out>.partial/` if a round finished, else remove it."""
    run_dir.abandon()
    rounds = run_dir.file(ROUNDS_FILE)
    if rounds.is_file() and rounds.stat().st_size > 0:
        return run_dir.path
    shutil.rmtree(run_dir.path, ignore_errors=True)
    return None
