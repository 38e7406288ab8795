"""Progress reporting for long runs: a Rich implementation for the CLI, a silent one for tests."""

from __future__ import annotations

from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RunProgress(Protocol):
    def phase(self, text: str) -> None: ...

    def start_rounds(self, total: int, done: int = 0) -> None: ...

    def round_done(self, row: dict) -> None: ...


class NullProgress:
    def phase(self, text: str) -> None:
        return None

    def start_rounds(self, total: int, done: int = 0) -> None:
        return None

    def round_done(self, row: dict) -> None:
        return None


class RichProgress:
    """One bar over rounds; each finished round prints accuracy, simulated and wall time."""

    def __init__(self, label: str, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.label = label
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        self.task = None

    def phase(self, text: str) -> None:
        if self.task is None:
            self.console.print(f"[dim]{self.label}: {text}...[/dim]")
        else:
            self.bar.update(self.task, info=text)

    def start_rounds(self, total: int, done: int = 0) -> None:
        """`done`: rounds a resumed run had already finished."""
        self.bar.start()
        self.task = self.bar.add_task(f"{self.label} rounds", total=total, completed=done, info="")

    def round_done(self, row: dict) -> None:
        acc = row.get("accuracy")
        ok = sum(p["ok"] for p in row["participants"])
        info = (f"acc {acc:.3f} " if acc is not None else "") + (
            f"sim {row['sim_time_s']:.0f}s  {ok}/{len(row['participants'])} devices ok"
        )
        self.bar.update(self.task, advance=1, info=info)

    def close(self) -> None:
        if self.task is not None:
            self.bar.stop()
