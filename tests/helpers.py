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
    state.forget()
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


# A generator small enough to train in seconds on tiny adapters.
TINY_GENERATOR = dict(token_size=32, d_model=32, n_layers=1, d_state=4, prototype_dim=16, denoiser_channels=[8, 16, 8],
                      batch_size=2, tokens_per_step=64, learning_rate=3e-3, checkpoint_every=50, sample_steps=25)


def write_tiny_generator_settings(home: Path, **generator) -> None:
    """TINY_GENERATOR settings (with `generator` overrides) as the home's loragen.toml."""
    home.mkdir(parents=True, exist_ok=True)
    settings = dict(TINY_GENERATOR, **generator)
    (home / "loragen.toml").write_text(
        "[generator]\n" + "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in settings.items()) + "\n")


def registry_with_adapters(capsys, tiny_base, tmp_path, home, tasks, **generator) -> list[str]:
    """The tiny base plus one tiny LoRA per entry of `tasks`, and TINY_GENERATOR settings (with `generator`
    overrides) in the home's loragen.toml. Returns the ingested adapter ids in order."""
    from tests.tiny import make_lora

    write_tiny_generator_settings(home, **generator)
    assert run_cli(capsys, "base", "add", "tiny", "--from", tiny_base).code == 0
    ids = []
    for index, task in enumerate(tasks):
        folder = make_lora(tiny_base, tmp_path / f"l{index}", seed=index, r=2)
        result = run_cli(capsys, "ingest", folder, "--base", "tiny", "--task", task, "-d", f"make words {task}case",
                         "--json")
        assert result.code == 0, result.err
        ids.append(result.json()["id"])
    return ids


def one_line_error(result: Result, code: int = 1) -> str:
    """The single line a refused command printed on stderr (no traceback), after checking its exit code."""
    assert result.code == code, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    return lines[0]
