"""`loragen train` and `loragen generate`: the ORAL generator."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from loragen.cli.context import state
from loragen.cli.options import split_names
from loragen.cli.render import Column, StepProgress, render, say
from loragen.config import SELECT_LIMIT
from loragen.errors import LoragenError


def train(tasks: Optional[str] = typer.Option(None, "--tasks", help="Only these tasks' adapters (comma-separated)."),
          bases: Optional[str] = typer.Option(None, "--bases", help="Only adapters of these base versions."),
          held_out: Optional[str] = typer.Option(None, "--held-out", help="Tasks to leave out (for evaluation)."),
          use_split: bool = typer.Option(False, "--split", help="Honour the bundled held-out split (loragen/tasks/"
                                         "split.json): its held-out tasks and descriptions never reach the generator."),
          steps: Optional[int] = typer.Option(None, help="Training steps (settings: generator.steps)."),
          seed: Optional[int] = typer.Option(None, help="Seed (settings: generator.seed)."),
          lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (settings: generator.learning_rate)."),
          nproc: int = typer.Option(1, "--nproc", help="Data-parallel processes (torchrun; gloo on CPU, NCCL on GPU)."),
          as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
    """Train the generator on the registry's trained/ingested adapters; register its checkpoint. Resumable."""
    import os
    import sys

    from loragen import workflows

    if nproc < 1:
        raise typer.BadParameter("--nproc must be at least 1")
    if nproc > 1 and state.settings.generator.representation == "library":
        raise LoragenError("--nproc trains the raw-token generator data-parallel; a library generator is small and "
                           "trains in one process: drop --nproc, or set generator.representation = \"raw\"")
    chosen_tasks, chosen_bases = split_names(tasks, "--tasks"), split_names(bases, "--bases")
    held_out_tasks = split_names(held_out, "--held-out")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        import subprocess

        from loragen.tasks.suite import check_known_tasks

        # workflows.train refuses a misspelt held-out task in each worker; checked here too so that one line,
        # not one per worker, says so before the workers start.
        check_known_tasks(held_out_tasks or (), [t["name"] for t in state.registry.list_registered_tasks()],
                          "held-out task")

        args = ["train"] + [item for flag, value in (("--tasks", tasks), ("--bases", bases), ("--held-out", held_out),
                                                       ("--steps", steps), ("--seed", seed), ("--lr", lr))
                            if value is not None for item in (flag, str(value))]
        args += (["--split"] if use_split else []) + (["--json"] if as_json else [])
        env = dict(os.environ, LORAGEN_HOME=str(state.settings.registry.home_path))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "loragen", *args]
        raise typer.Exit(subprocess.call(command, env=env))

    overrides = {k: v for k, v in {"steps": steps, "seed": seed, "learning_rate": lr}.items() if v is not None}
    settings = replace(state.settings.generator, **overrides)
    split = None
    if use_split:
        from loragen.tasks.split import load_split

        split = load_split()
    with StepProgress("training generator", settings.steps) as bar:
        registered, summary = workflows.train(state.registry, settings, tasks=chosen_tasks, bases=chosen_bases,
                                              held_out=held_out_tasks or (), split=split, progress=bar.update)
    if summary.get("process_rank"):  # a data-parallel worker: process 0 reports
        return
    if as_json:
        render(summary, as_json=True)
        return
    typer.echo(f"{'registered' if registered.created else 'already registered'} generator {registered.id}: "
               f"{summary['adapters']} adapters, {len(summary['tasks'])} tasks, {len(summary['bases'])} base version(s), "
               + (_library_line(summary) if summary["representation"] == "library"
                  else f"{summary['tokens_per_adapter']} tokens/adapter")
               + f", final loss {summary['final_loss']:.4f}, "
               f"{summary['wall_time_s']:.0f} s")


def _library_line(summary: dict) -> str:
    families = summary.get("families") or []
    if len(families) <= 1:
        return f"a library of {summary['library_size']} adapters over {summary['slots']} slots"
    return "libraries per base shape: " + "; ".join(
        f"{', '.join(f['bases'])}: {f['adapters']} adapters over {f['slots']} slots" for f in families)


def generate(task: str = typer.Option(..., "--task", help="A task name in the registry, or a plain-language description."),
             base: str = typer.Option(..., "--base", help="NAME or NAME@vN (default newest)."),
             seed: int = typer.Option(0, min=0, help="Sampling seed: the same seed gives the same adapter."),
             samples: int = typer.Option(1, min=1, help="Candidates to draw; >1 keeps the best on a validation split "
                                                        "(the task's own if it is bundled, else --validate-on)."),
             validate_on: Optional[str] = typer.Option(
                 None, "--validate-on", metavar="TASK|FOLDER",
                 help="With --samples > 1: pick the best candidate on this bundled task's (or task folder's) "
                      "validation split."),
             name: Optional[str] = typer.Option(None, help="Task name to register under (default: the task or a slug)."),
             generator: Optional[str] = typer.Option(None, "--generator", help="Generator id (default: newest)."),
             method: Optional[str] = typer.Option(None, help="ddim or ddpm (settings: generator.sample_method)."),
             sample_steps: Optional[int] = typer.Option(None, help="DDIM steps (settings: generator.sample_steps)."),
             select_limit: int = typer.Option(SELECT_LIMIT, min=1, help="Validation examples per candidate when --samples > 1."),
             examples: Optional[str] = typer.Option(
                 None, "--examples", metavar="TASK|FOLDER|FILE.jsonl",
                 help="Refine the generated blend on a few examples of the new task (its training split, or a JSONL "
                      "file of task records); kept only if examples held back from the fit do better."),
             shots: int = typer.Option(5, "--shots", min=1, help="With --examples: examples to fit on."),
             refine_steps: Optional[int] = typer.Option(
                 None, "--refine-steps", min=1, help="With --examples: gradient steps (settings: generator.refine_steps)."),
             out: Optional[Path] = typer.Option(None, "--out", help="Also export the adapter to this folder."),
             as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
    """Generate a LoRA adapter from a task description and register it (origin=generated).

    With --examples, the generated blend of library adapters is then fitted to --shots examples of the task through
    the base's own loss (seconds, not a fine-tune's minutes), and kept only if it does better on held-back ones."""
    from contextlib import ExitStack

    from loragen import workflows
    from loragen.registry.store import check_export_target

    overrides = {k: v for k, v in {"sample_method": method, "sample_steps": sample_steps}.items() if v is not None}
    settings = replace(state.settings.generator, **overrides)
    settings.__post_init__()
    refine = None
    if examples is not None:
        refine = workflows.RefineRequest(examples=examples, shots=shots, held_back=settings.refine_held_back,
                                         steps=refine_steps or settings.refine_steps,
                                         learning_rate=settings.refine_learning_rate)
    if out is not None:
        check_export_target(out)  # before sampling, not after registering
    total = samples * settings.steps_per_sample
    with ExitStack() as stack:
        bar: list[StepProgress] = []
        done = [0]

        def tick(step: int, steps: int) -> None:
            if not bar:  # shown once sampling starts, so an early error is the only line
                bar.append(stack.enter_context(StepProgress("generating", total)))
            done[0] += 1
            bar[0].update(done[0], samples * steps)  # the sampler knows the checkpoint's schedule

        result = workflows.generate(state.registry, settings, task=task, base_ref=base, seed=seed, samples=samples,
                                    name=name, generator_ref=generator, select_limit=select_limit,
                                    validate_on=validate_on, refine=refine, progress=tick)
    if out is not None:
        state.registry.export(result.id, out)
    warning = unfamiliar_warning(result.familiarity)
    if warning:
        say(warning)
    if as_json:
        render({**result.__dict__, "candidates": [c.record() for c in result.candidates],
                "exported_to": str(out) if out is not None else None}, as_json=True)
        return
    if samples > 1:
        render([c.record() for c in result.candidates], as_json=False, columns=[
            Column("SEED", lambda r: r["seed"], "right"), Column("METRIC", lambda r: r["metric"]),
            Column("VALIDATION", lambda r: r["score"], "right")])
        say(f"kept seed {result.seed} (best on {result.validated_on}'s validation split)")
    if result.refinement is not None:
        r = result.refinement
        verdict = "kept the refined blend" if r["kept"] == "refined" else "kept the unrefined blend (the fit did worse)"
        say(f"refined on {r['shots']} example(s) in {r['seconds']:.1f} s: held-back loss {r['held_back_loss_start']:.4f}"
            f" -> {r['held_back_loss_refined']:.4f}; {verdict}")
    typer.echo(f"{'generated' if result.created else 'already registered'} {result.id}: {result.task} on {result.base} "
               f"in {result.seconds:.2f} s (generator {result.generator}, seed {result.seed})")
    typer.echo(nearest_tasks_line(result.familiarity))


def nearest_tasks_line(familiarity: dict) -> str:
    """'nearest training tasks: a (0.83), b (0.71), c (0.64)' from the workflows' familiarity record."""
    return "nearest training tasks: " + ", ".join(f"{near['task']} ({near['similarity']:.2f})"
                                                  for near in familiarity["nearest_tasks"])


def unfamiliar_warning(familiarity: dict) -> str | None:
    """One line when the description is below the familiarity threshold for every training task, else None."""
    if familiarity["familiar"]:
        return None
    # Cut, not rounded, to 3 places: a best of 0.4299 must not read as the threshold 0.43 itself.
    best = math.floor(familiarity["nearest_tasks"][0]["similarity"] * 1000) / 1000
    return (f"warning: the description is far from every task the generator was trained on (best similarity "
            f"{best:.3f} < {familiarity['threshold']}); expect a weak adapter: give a few examples (--examples), or "
            "fine-tune one (loragen finetune)")


def generators(as_json: bool = typer.Option(False, "--json", help="JSON output."),
               quiet: bool = typer.Option(False, "-q", "--quiet", help="Ids only.")) -> None:
    """List trained generator checkpoints."""
    rows = state.registry.list_generators()
    render(rows, as_json=as_json, quiet=quiet, columns=[
        Column("ID", lambda r: r["id"]), Column("ADAPTERS", lambda r: r["adapters"], "right"),
        Column("LIBRARY", lambda r: len(r["library"]), "right"),
        Column("TASKS", lambda r: len(r["tasks"]), "right"), Column("BASES", lambda r: ", ".join(r["bases"])),
        Column("HELD OUT", lambda r: ", ".join(r["held_out"]) or None), Column("STEPS", lambda r: r["step"], "right"),
        Column("LOSS", lambda r: r["final_loss"], "right"), Column("CREATED", lambda r: r["created_at"][:19])],
        summary=f"{len(rows)} generator checkpoint(s)")
