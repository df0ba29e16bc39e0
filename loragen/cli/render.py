"""One way to print results: a rich table for people, JSON for scripts, ids only with -q."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rich.console import Console
from rich.table import Table

# Tables keep their natural width when piped to a file; in a terminal they fit the window.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True)


@dataclass
class Column:
    header: str
    value: Callable[[dict[str, Any]], Any]
    justify: str = "left"


def render(rows: Sequence[dict[str, Any]] | dict[str, Any], *, as_json: bool, quiet: bool = False,
           columns: Sequence[Column] = (), key: str = "id", summary: str | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    if isinstance(rows, dict):
        rows = [rows]
    if quiet:
        for row in rows:
            sys.stdout.write(f"{row[key]}\n")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column.header, justify=column.justify)
    for row in rows:
        table.add_row(*(_cell(column.value(row)) for column in columns))
    out.print(table)
    if summary:
        out.print(summary, style="dim")


def render_fields(record: dict[str, Any], *, as_json: bool) -> None:
    """A single object as 'key: value' lines (or JSON)."""
    if as_json:
        sys.stdout.write(json.dumps(record, indent=2, default=str) + "\n")
        return
    width = max(len(k) for k in record)
    for key, value in record.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
        out.print(f"[bold]{key.ljust(width)}[/bold]  {value}", highlight=False)


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(n)


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def say(message: str) -> None:
    """A status line for people, on stderr so stdout stays clean for --json and -q."""
    err.print(message, highlight=False)


class StepProgress:
    """A progress bar on stderr for long loops; silent when stderr is not a terminal."""

    def __init__(self, description: str, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.enabled = err.is_terminal
        self.description = description
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=err,
                                 disable=not self.enabled)
        self.task_id = self.progress.add_task(description, total=total, status="")

    def __enter__(self) -> "StepProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, done: int, total: int, loss: float | None = None) -> None:
        status = f"loss {loss:.4f}" if loss is not None else ""
        self.progress.update(self.task_id, completed=done, total=total, status=status)
