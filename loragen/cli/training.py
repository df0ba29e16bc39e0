"""`loragen finetune`: train LoRA checkpoints on a task and register them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

import typer

from loragen.cli.context import state
from loragen.cli.render import Column, StepProgress, render, say


def resolve_task(spec: str):
    """A bundled task by name, or a task folder laid out like the bundled ones."""
    from loragen.tasks.suite import get_task, load_task_dir

    if "/" in spec or Path(spec).is_dir():
        return load_task_dir(spec)
    return get_task(spec)


def finetune(task: str = typer.Option(..., "--task", help="Bundled task name, or a task folder."),
             base: str = typer.Option(..., "--base", help="NAME or NAME@vN (default newest)."),
             steps: Optional[int] = typer.Option(None, help="Optimizer steps (settings: loragen.toml finetune.steps)."),
             seed: Optional[int] = typer.Option(None, help="Random seed (settings: finetune.seed)."),
             lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (settings: finetune.learning_rate)."),
             batch_size: Optional[int] = typer.Option(None, help="Examples per step (settings: finetune.batch_size)."),
             checkpoints: Optional[int] = typer.Option(None, help="How many last checkpoints to register."),
             checkpoint_every: Optional[int] = typer.Option(None, help="Steps between kept checkpoints."),
             rank: Optional[int] = typer.Option(None, "--rank", "-r", help="LoRA rank (settings: lora.r)."),
             targets: Optional[str] = typer.Option(None, help="Comma-separated target modules (settings: lora.target_modules)."),
             train_limit: int = typer.Option(0, help="Use only the first N training examples (0: all)."),
             as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
    """Fine-tune a LoRA on a task; register its last checkpoints (origin=trained). Resumes if interrupted."""
    settings = state.settings
    overrides = {k: v for k, v in {"steps": steps, "seed": seed, "learning_rate": lr, "batch_size": batch_size,
                                   "checkpoints": checkpoints, "checkpoint_every": checkpoint_every}.items()
                 if v is not None}
    ft_config = replace(settings.finetune, **overrides)
    lora_config = replace(settings.lora, **{k: v for k, v in {
        "r": rank, "alpha": 2 * rank if rank else None,
        "target_modules": [t.strip() for t in targets.split(",") if t.strip()] if targets else None}.items()
        if v is not None})
    task_obj = resolve_task(task)
    examples = task_obj.examples("train")
    if train_limit:
        examples = examples[:train_limit]
    registry = state.registry
    with registry.session() as s:
        version = registry.resolve_version(s, base)
    say(f"loading {version.label} …")
    from loragen.finetune import finetune as run_finetune

    model, tokenizer, _ = registry.load_base(version.label)
    fingerprint = hashlib.sha256(json.dumps(
        [asdict(ft_config), asdict(lora_config), len(examples), version.weights_digest], sort_keys=True).encode()).hexdigest()[:10]
    run_dir = registry.home / "runs" / f"{task_obj.name}__{version.label.replace('@', '_')}__seed{ft_config.seed}__{fingerprint}"
    with StepProgress(f"fine-tuning {task_obj.name}", ft_config.steps) as bar:
        result = run_finetune(model, tokenizer, examples, lora_config, ft_config, run_dir, progress=bar.update)
    if result.resumed_from_step:
        say(f"resumed from step {result.resumed_from_step}")
    rows = []
    for checkpoint in result.checkpoints:
        registered = registry.ingest(
            checkpoint.path, version.label, task_obj.name, task_obj.descriptions, origin=_trained(),
            provenance={"run": run_dir.name, "step": checkpoint.step, "steps": ft_config.steps, "seed": ft_config.seed,
                        "learning_rate": ft_config.learning_rate, "batch_size": ft_config.batch_size,
                        "train_examples": len(examples), "loss": checkpoint.loss,
                        "wall_time_s": round(result.wall_time_s, 2)})
        rows.append({"id": registered.id, "step": checkpoint.step, "loss": checkpoint.loss, "new": registered.created})
    if as_json:
        render({"task": task_obj.name, "base": version.label, "run_dir": str(run_dir),
                "wall_time_s": result.wall_time_s, "checkpoints": rows}, as_json=True)
        return
    render(rows, as_json=False, columns=[Column("ID", lambda r: r["id"]), Column("STEP", lambda r: r["step"], "right"),
                                         Column("LOSS", lambda r: r["loss"], "right"),
                                         Column("NEW", lambda r: "yes" if r["new"] else "no")],
           summary=f"{task_obj.name} on {version.label}: {len(rows)} checkpoint(s) registered, "
                   f"trained {result.wall_time_s:.1f} s")


def _trained():
    from loragen.registry.models import Origin

    return Origin.trained
