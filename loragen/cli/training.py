"""`loragen finetune`: train LoRA checkpoints on a task and register them."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import typer

from loragen.cli.context import state
from loragen.cli.render import Column, StepProgress, render, say


def finetune(task: str = typer.Option(..., "--task", help="Bundled task name, or a task folder."),
             base: str = typer.Option(..., "--base", help="NAME or NAME@vN (default newest)."),
             steps: Optional[int] = typer.Option(None, help="Optimizer steps (settings: loragen.toml finetune.steps)."),
             seed: Optional[int] = typer.Option(None, help="Random seed (settings: finetune.seed)."),
             lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (settings: finetune.learning_rate)."),
             batch_size: Optional[int] = typer.Option(None, help="Examples per step (settings: finetune.batch_size)."),
             checkpoints: Optional[int] = typer.Option(None, help="How many last checkpoints to register."),
             checkpoint_every: Optional[int] = typer.Option(None, help="Steps between kept checkpoints."),
             lora_rank: Optional[int] = typer.Option(None, "--rank", "-r", help="LoRA rank (settings: lora.r)."),
             targets: Optional[str] = typer.Option(None, help="Comma-separated target modules (settings: lora.target_modules)."),
             train_limit: int = typer.Option(0, min=0, help="Use only the first N training examples (0: all)."),
             as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
    """Fine-tune a LoRA on a task; register its last checkpoints (origin=trained). Resumes if interrupted."""
    from loragen import workflows

    settings = state.settings
    finetune_config = replace(settings.finetune, **{k: v for k, v in {
        "steps": steps, "seed": seed, "learning_rate": lr, "batch_size": batch_size, "checkpoints": checkpoints,
        "checkpoint_every": checkpoint_every}.items() if v is not None})
    lora_config = replace(settings.lora, **{k: v for k, v in {
        "r": lora_rank, "alpha": 2 * lora_rank if lora_rank else None,
        "target_modules": [t.strip() for t in targets.split(",") if t.strip()] if targets else None}.items()
        if v is not None})
    task_obj = workflows.find_task(task)
    with StepProgress(f"fine-tuning {task_obj.name}", finetune_config.steps) as bar:
        outcome = workflows.finetune_task(state.registry, task_obj, base, lora_config, finetune_config,
                                          train_limit=train_limit or None, progress=bar.update, notify=say)
    if outcome.resumed_from_step:
        say(f"resumed from step {outcome.resumed_from_step}")
    rows = [{"id": c.id, "step": c.step, "loss": c.loss, "new": c.created} for c in outcome.checkpoints]
    if as_json:
        render({"task": outcome.task, "base": outcome.base, "run_dir": str(outcome.run_dir),
                "wall_time_s": outcome.wall_time_s, "train_s": outcome.train_s, "checkpoints": rows}, as_json=True)
        return
    render(rows, as_json=False, columns=[Column("ID", lambda r: r["id"]), Column("STEP", lambda r: r["step"], "right"),
                                         Column("LOSS", lambda r: r["loss"], "right"),
                                         Column("NEW", lambda r: "yes" if r["new"] else "no")],
           summary=f"{outcome.task} on {outcome.base}: {len(rows)} checkpoint(s) registered, "
                   f"trained {outcome.wall_time_s:.1f} s")
