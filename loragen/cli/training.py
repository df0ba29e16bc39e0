"""`loragen finetune`: train LoRA checkpoints on a task (or one LoRA on several tasks) and register them."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import typer

from loragen.cli.context import state
from loragen.cli.render import Column, StepProgress, render, say


def finetune(task: Optional[str] = typer.Option(None, "--task", help="Bundled task name, or a task folder."),
             tasks: Optional[str] = typer.Option(
                 None, "--tasks", help="Comma-separated tasks for ONE multi-task LoRA, or 'seen': every task the "
                                       "split does not hold out."),
             name: Optional[str] = typer.Option(
                 None, "--name", help="Register a multi-task LoRA under this name (default multitask-<hash>)."),
             exclude_held_out: bool = typer.Option(
                 False, "--exclude-held-out", help="With --tasks: refuse held-out tasks (alone: all seen tasks)."),
             base: str = typer.Option(..., "--base", help="NAME or NAME@vN (default newest)."),
             steps: Optional[int] = typer.Option(None, help="Optimizer steps (settings: loragen.toml finetune.steps)."),
             seed: Optional[int] = typer.Option(None, help="Random seed (settings: finetune.seed)."),
             lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (settings: finetune.learning_rate)."),
             batch_size: Optional[int] = typer.Option(None, help="Examples per step (settings: finetune.batch_size)."),
             checkpoints: Optional[int] = typer.Option(None, help="How many last checkpoints to register."),
             checkpoint_every: Optional[int] = typer.Option(None, help="Steps between kept checkpoints."),
             lora_rank: Optional[int] = typer.Option(None, "--rank", "-r", help="LoRA rank (settings: lora.r)."),
             targets: Optional[str] = typer.Option(None, help="Comma-separated target modules (settings: lora.target_modules)."),
             train_limit: int = typer.Option(0, min=0, help="Use only the first N training examples (0: all; with "
                                                             "--tasks: N per task, 0: the smallest task's count)."),
             as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
    """Fine-tune a LoRA on a task (or on several: --tasks); register its last checkpoints (origin=trained).
    Resumes if interrupted."""
    from loragen import workflows

    multitask = tasks is not None or exclude_held_out
    if task is not None and multitask:
        raise typer.BadParameter("give --task for one task or --tasks for a multi-task LoRA, not both")
    if task is None and not multitask:
        raise typer.BadParameter("give --task NAME, or --tasks A,B,… for a multi-task LoRA")
    if name is not None and not multitask:
        raise typer.BadParameter("--name names a multi-task LoRA: use it with --tasks")
    members = None
    if tasks is not None:
        members = [t.strip() for t in tasks.split(",") if t.strip()]
        if members == [workflows.SEEN_TASKS]:
            members = workflows.SEEN_TASKS
        elif len(members) < 2:
            raise typer.BadParameter("--tasks needs at least two tasks (for one task: --task)")
    settings = state.settings
    finetune_config = replace(settings.finetune, **{k: v for k, v in {
        "steps": steps, "seed": seed, "learning_rate": lr, "batch_size": batch_size, "checkpoints": checkpoints,
        "checkpoint_every": checkpoint_every}.items() if v is not None})
    lora_config = replace(settings.lora, **{k: v for k, v in {
        "r": lora_rank, "alpha": 2 * lora_rank if lora_rank else None,
        "target_modules": [t.strip() for t in targets.split(",") if t.strip()] if targets else None}.items()
        if v is not None})
    if multitask:
        _finetune_multitask(members, base, name, exclude_held_out, lora_config, finetune_config, train_limit, as_json)
        return
    task_obj = workflows.find_task(task)
    with StepProgress(f"fine-tuning {task_obj.name}", finetune_config.steps) as bar:
        outcome = workflows.finetune_task(state.registry, task_obj, base, lora_config, finetune_config,
                                          train_limit=train_limit or None, progress=bar.update, notify=say)
    _render_outcome(outcome, {}, as_json, f"{outcome.task} on {outcome.base}")


CHECKPOINT_COLUMNS = [Column("ID", lambda r: r["id"]), Column("STEP", lambda r: r["step"], "right"),
                      Column("LOSS", lambda r: r["loss"], "right"), Column("NEW", lambda r: "yes" if r["new"] else "no")]


def _render_outcome(outcome, extra: dict, as_json: bool, title: str) -> None:
    rows = [{"id": c.id, "step": c.step, "loss": c.loss, "new": c.created} for c in outcome.checkpoints]
    if outcome.resumed_from_step:
        say(f"resumed from step {outcome.resumed_from_step}")
    if as_json:
        render({"task": outcome.task, "base": outcome.base, **extra, "run_dir": str(outcome.run_dir),
                "wall_time_s": outcome.wall_time_s, "train_s": outcome.train_s, "checkpoints": rows}, as_json=True)
        return
    render(rows, as_json=False, columns=CHECKPOINT_COLUMNS,
           summary=f"{title}: {len(rows)} checkpoint(s) registered, trained {outcome.wall_time_s:.1f} s")


def _finetune_multitask(members, base, name, exclude_held_out, lora_config, finetune_config, train_limit,
                        as_json) -> None:
    from loragen import workflows

    # Every member is checked (known, not repeated, not held out) before the base is loaded.
    group = workflows.multitask_members(members, exclude_held_out=exclude_held_out)
    with StepProgress(f"fine-tuning {len(group)} tasks together", finetune_config.steps) as bar:
        outcome = workflows.finetune_multitask(state.registry, group, base, lora_config, finetune_config, name=name,
                                               exclude_held_out=exclude_held_out or members == workflows.SEEN_TASKS,
                                               train_limit_per_task=train_limit or None, progress=bar.update,
                                               notify=say)
    extra = {"members": outcome.members, "examples_per_task": outcome.examples_per_task,
             "held_out_excluded": outcome.held_out_excluded}
    _render_outcome(outcome, extra, as_json, f"{outcome.task} ({len(outcome.members)} tasks, "
                                             f"{outcome.train_examples} examples) on {outcome.base}")
