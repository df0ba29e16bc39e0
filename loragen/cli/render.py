"""One way to print results: an aligned table for people, JSON for scripts, ids only with -q.

Tables are plain text, columns two spaces apart, the header bold and the notes dim on a
terminal. rich's Table took about 2 ms a row plus a tenth of a second to import, more than
a `loragen list` may spend in all; rich is still used, imported when needed, for progress bars.
Lists of JSON objects stream one object a line, so `loragen list --json | head` answers at once.

Every value a human table or `show` prints goes through `printable`: a control character stored by an
older loragen (or planted in the database) is shown as an escape such as \\x1b, never sent to the terminal.
A table cell is cut to MAX_CELL_WIDTH columns, so one long description cannot widen every line; --json
keeps every value whole.
"""

from __future__ import annotations

import json
import os
import sys
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

MAX_CELL_WIDTH = 80  # terminal columns a table cell may take; longer ones end in "…"


@dataclass
class Column:
    header: str
    value: Callable[[dict[str, Any]], Any]
    justify: str = "left"


def render(rows: Iterable[dict[str, Any]] | dict[str, Any], *, as_json: bool, quiet: bool = False,
           columns: Sequence[Column] = (), key: str = "id", summary: str | None = None,
           notes: Sequence[str] = ()) -> None:
    """Rows as a table (then `notes` and `summary`, dim), as JSON, or their `key` only (quiet)."""
    if as_json:
        if isinstance(rows, dict):
            sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        else:
            render_json_rows(rows)
        return
    if isinstance(rows, dict):
        rows = [rows]
    if quiet:
        sys.stdout.writelines(f"{row[key]}\n" for row in rows)
        return
    print_table(rows, columns)
    for line in (*notes, *([summary] if summary else [])):
        sys.stdout.write(_styled(line, "2", sys.stdout) + "\n")


def render_json_rows(rows: Iterable[dict[str, Any]]) -> None:
    """A JSON array, one object a line, written as the rows come. The first row is read before
    anything is written, so a query that fails leaves stdout empty rather than half an array."""
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        sys.stdout.write("[]\n")
        return
    sys.stdout.write("[\n  " + json.dumps(first, default=str))
    batch = []
    for row in rows:
        batch.append(",\n  " + json.dumps(row, default=str))
        if len(batch) == 256:  # one write per batch: stdout may be unbuffered (PYTHONUNBUFFERED)
            sys.stdout.write("".join(batch))
            batch.clear()
    sys.stdout.write("".join(batch) + "\n]\n")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> None:
    cells = [[_cell(column.value(row)) for column in columns] for row in rows]
    widths = [max([_width(column.header), *(_width(line[i]) for line in cells)]) for i, column in enumerate(columns)]
    last = len(columns) - 1

    def line(values: Sequence[str]) -> str:
        parts = []
        for i, (value, column) in enumerate(zip(values, columns)):
            pad = " " * (widths[i] - _width(value))
            parts.append(pad + value if column.justify == "right" else value if i == last else value + pad)
        return "  ".join(parts)

    header = line([column.header for column in columns])
    sys.stdout.write(_styled(header, "1", sys.stdout) + "\n")
    sys.stdout.write("".join(line(values) + "\n" for values in cells))


def render_fields(record: dict[str, Any], *, as_json: bool) -> None:
    """A single object as 'key: value' lines (or JSON)."""
    if as_json:
        sys.stdout.write(json.dumps(record, indent=2, default=str) + "\n")
        return
    width = max(len(k) for k in record)
    for key, value in record.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)  # escapes control characters itself
        sys.stdout.write(f"{_styled(printable(key).ljust(width), '1', sys.stdout)}  {printable(str(value))}\n")


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


def printable(text: str) -> str:
    """`text` with each character a terminal would act on (ESC, BEL, a lone surrogate, …) written as its escape."""
    if text.isprintable():  # the common case, in one C loop
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    # A newline or tab in a value must not break the table's lines, nor a long value widen all of them.
    return _cut(printable(" ".join(str(value).split())), MAX_CELL_WIDTH)


def _cut(text: str, width: int) -> str:
    """`text` cut to `width` terminal columns, its last one "…" when anything was cut."""
    if _width(text) <= width:
        return text
    kept, used = [], 0
    for c in text:
        used += _width(c)
        if used > width - 1:
            break
        kept.append(c)
    return "".join(kept) + "…"


def _width(text: str) -> int:
    """Columns a string takes on a terminal (East Asian wide characters take two)."""
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 0 if unicodedata.combining(c) else 1 for c in text)


def _styled(text: str, sgr: str, stream: Any) -> str:
    """Bold ("1") or dim ("2") on a terminal that takes colour; plain text anywhere else."""
    if not stream.isatty() or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return text
    return f"\x1b[{sgr}m{text}\x1b[0m"


def say(message: str) -> None:
    """A status line for people, on stderr so stdout stays clean for --json and -q."""
    sys.stderr.write(message + "\n")


class StepProgress:
    """A progress bar on stderr for long loops; silent when stderr is not a terminal."""

    def __init__(self, description: str, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        self.enabled = console.is_terminal
        self.description = description
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=console,
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
