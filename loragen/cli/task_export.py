"""`loragen export-task`: a bundled task (or a task folder) as a folder lm-eval's own CLI runs as it is."""

from __future__ import annotations

from pathlib import Path

import typer

from loragen.cli.render import render


def export_task(task: str = typer.Argument(..., help="Bundled task name (`loragen list suite`), or a task folder."),
                out_dir: Path = typer.Argument(..., help="Folder to write (must not exist or be empty)."),
                as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
    """Write a task's lm-eval YAML and data to a folder that `lm_eval --include_path DIR` runs from any directory."""
    from loragen.tasks.suite import export_task as write_task_folder
    from loragen.tasks.suite import find_task

    found = find_task(task)
    path = write_task_folder(found, out_dir)
    command = (f"HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 lm_eval --model hf --model_args pretrained=MODEL "
               f"--include_path {path} --tasks {found.eval_name}")
    if as_json:
        render({"task": found.name, "lm_eval_task": found.eval_name, "path": str(path), "command": command},
               as_json=True)
        return
    typer.echo(f"exported {found.name} to {path} (lm-eval task {found.eval_name}); run it with:\n  {command}")
