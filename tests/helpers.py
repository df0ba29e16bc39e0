"""Run the CLI in-process and capture what a user would see."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def run_cli(capsys, *args: str) -> Result:
    from loragen.cli import main
    from loragen.cli.context import state

    # Each invocation is a fresh process for the user: forget the previous one's state
    # (and close its database connections, as a process exit would).
    if state._registry is not None:
        state._registry.engine.dispose()
    state._settings = None
    state._registry = None
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 0
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def blob_files(home: Path) -> list[Path]:
    root = home / "blobs" / "sha256"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
