"""`loragen refresh`: a base moved on; give every task an adapter for its newest version, never worse than carrying
the old one over where the task has validation data to tell."""

from __future__ import annotations

from typing import Optional

import typer

from loragen.cli.context import state
from loragen.cli.options import split_names
from loragen.cli.render import Column, StepProgress, render
from loragen.config import ADAPT_LEARNING_RATE, ADAPT_SHOTS, ADAPT_STEPS, REFRESH_SAMPLES, SELECT_LIMIT
from loragen.errors import LoragenError


def _score(item: dict, key: str) -> Optional[str]:
    value = item["scores"].get(key)
    return None if value is None else f"{value:.3f}"


def _candidates(item: dict) -> Optional[str]:
    """'carried 0.620 · 0.580 0.600 · shifted 0.640 · adapted 0.700*': the carried-over score, each generated
    sample's, the shifted candidate's, then the adapted ones' (--adapt); * marks the winner."""
    if not item["candidates"]:
        return None
    cells = [f"{c['score']:.3f}{'*' if i == item['winner'] else ''}" for i, c in enumerate(item["candidates"])]
    kinds = [c["kind"] for c in item["candidates"]]
    generated = [cell for cell, kind in zip(cells, kinds) if kind == "generated"]
    shifted = [cell for cell, kind in zip(cells, kinds) if kind == "shifted"]
    adapted = [cell for cell, kind in zip(cells, kinds) if kind == "adapted"]
    return (f"carried {cells[0]} · {' '.join(generated)}" + (f" · shifted {' '.join(shifted)}" if shifted else "")
            + (f" · adapted {' '.join(adapted)}" if adapted else ""))


def _dry_run_summary(rows: list[dict]) -> str:
    """'2 adapter(s) would be made (dry run), about 1.5 min by earlier refreshes of these bases', or why no time."""
    planned = [r for r in rows if r["action"] == "generate"]
    head = f"{len(planned)} adapter(s) would be made (dry run)"
    estimates = [r["estimate_s"] for r in planned if r["estimate_s"] is not None]
    if not planned:
        return head
    if not estimates:
        return f"{head}; no earlier refresh of these bases, run the same way, to estimate the time from"
    total = sum(estimates) * len(planned) / len(estimates)  # a task without a record counts as the others' mean
    return f"{head}, about {total / 60:.1f} min by earlier refreshes of these bases"


def refresh(base: Optional[str] = typer.Option(None, "--base", help="Only this base (its newest version), or NAME@vN."),
            tasks: Optional[str] = typer.Option(None, "--tasks", help="Only these tasks (comma-separated)."),
            dry_run: bool = typer.Option(
                False, "--dry-run",
                help="Show what would be made and about how long it takes (from earlier refreshes); change nothing."),
            samples: int = typer.Option(
                REFRESH_SAMPLES, "--samples", min=1,
                help="Generated candidates beside the carried-over adapter; the best on validation wins."),
            no_validate: bool = typer.Option(
                False, "--no-validate", help="Register one generated sample without scoring any candidate."),
            no_shift: bool = typer.Option(
                False, "--no-shift",
                help="Leave out the shifted candidate: the carried-over adapter moved by the generator's predicted change."),
            select_limit: int = typer.Option(SELECT_LIMIT, "--select-limit", min=1, help="Validation examples per candidate."),
            select_by: str = typer.Option(
                "metric", "--select-by",
                help="Score candidates by the task's metric (lm-eval generates each answer) or by the loss on the "
                     "validation answers (one forward pass each: about 3x faster, a proxy for the metric)."),
            adapt: bool = typer.Option(
                False, "--adapt",
                help="Adapt the best candidate to the new version on the task's training examples (its blend "
                     "refined, its LoRA fine-tuned from its weights); validation picks among all."),
            shots: int = typer.Option(ADAPT_SHOTS, "--shots", min=1, help="--adapt: training examples to adapt on."),
            adapt_steps: int = typer.Option(ADAPT_STEPS, "--steps", min=1, help="--adapt: gradient steps of each adaptation."),
            adapt_lr: float = typer.Option(ADAPT_LEARNING_RATE, "--adapt-lr", min=0.0,
                                           help="--adapt: the warm fine-tune's learning rate."),
            no_refine_blend: bool = typer.Option(
                False, "--no-refine-blend",
                help="--adapt: skip refining the generated blend (the slower adaptation) and only fine-tune from the "
                     "best candidate's weights."),
            run_eval: bool = typer.Option(False, "--eval", help="Score old-on-new, zero-shot and refreshed with lm-eval."),
            limit: Optional[int] = typer.Option(None, "--limit", help="Examples per task for --eval (settings: eval.limit)."),
            seed: int = typer.Option(0, help="Sampling seed."),
            as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
    """Give every task an adapter for the newest version of each base (with lineage).

    For a task with validation data the candidates are its previous adapter carried over unchanged and
    --samples generated ones, scored on the new version: the best is registered (a tie keeps the carried-over
    one), and every candidate's score goes into its provenance. One more candidate unless --no-shift: the
    carried-over adapter plus the change the generator predicts from the old version to the new one.
    With --adapt, the best of those is then adapted on --shots training examples for --steps steps (a fifth of
    a 48-step fine-tune's steps at the defaults, plus the candidates' validation): a generated blend is refined
    (unless --no-refine-blend), and the best candidate's LoRA is fine-tuned from its weights; the adapted ones
    are scored too, and the best of all is registered.
    """
    from loragen import workflows

    task_list = split_names(tasks, "--tasks")
    if select_by not in workflows.SELECT_BY:  # before --dry-run too
        raise LoragenError(f"--select-by is {' or '.join(workflows.SELECT_BY)} (got {select_by!r})")
    if no_refine_blend and not adapt:
        raise LoragenError("--no-refine-blend changes what --adapt does: add --adapt")
    request = (workflows.AdaptRequest(shots=shots, steps=adapt_steps, learning_rate=adapt_lr,
                                      refine_blend=not no_refine_blend) if adapt else None)
    registry = state.registry
    if dry_run:
        items = workflows.estimate_refresh(registry, workflows.plan_refresh(registry, base=base, tasks=task_list),
                                           adapt=request, select_by=select_by, validate=not no_validate)
    else:
        planned = sum(item.action == "generate" for item in workflows.plan_refresh(registry, base=base, tasks=task_list))
        with StepProgress("refreshing", max(1, planned)) as bar:
            items = workflows.refresh(registry, state.settings.generator, base=base, tasks=task_list, seed=seed,
                                      samples=samples, validate=not no_validate, shift=not no_shift,
                                      select_limit=select_limit, adapt=request, select_by=select_by,
                                      run_eval=run_eval, evaluate_limit=limit if limit is not None else state.settings.eval.limit,
                                      progress=lambda done, total: bar.update(done, total))
    rows = [item.__dict__ for item in items]
    columns = [Column("TASK", lambda r: r["task"]), Column("BASE", lambda r: r["base"]),
               Column("REPLACES", lambda r: f"{r['replaces']} ({r['replaces_base']})"),
               Column("ACTION", lambda r: r["action"]), Column("ID", lambda r: r["id"]),
               Column("SECONDS", lambda r: r["seconds"], "right")]
    if dry_run:
        columns.append(Column("ESTIMATE S", lambda r: r["estimate_s"], "right"))
    else:
        columns += [Column("CHOSEN BY", lambda r: r["chosen_by"]), Column("VALIDATION", _candidates)]
    if adapt and not dry_run:
        columns.append(Column("ADAPT S", lambda r: r["adapt_seconds"], "right"))
    if run_eval and not dry_run:
        columns += [Column("OLD ON NEW", lambda r: _score(r, "old_on_new"), "right"),
                    Column("ZERO-SHOT", lambda r: _score(r, "zero_shot"), "right"),
                    Column("REFRESHED", lambda r: _score(r, "refreshed"), "right")]
    generated = sum(r["action"] == "generated" for r in rows)
    carried = sum(r["action"] == "carried over" for r in rows)
    adapted = sum(r["action"] == "adapted" for r in rows)
    summary = (_dry_run_summary(rows) if dry_run
               else f"{generated} adapter(s) generated, {carried} carried over, "
                    + (f"{adapted} adapted, " if adapt else "")
                    + f"{len(rows) - generated - carried - adapted} already up to date")
    notes = sorted({r["generator_note"] for r in rows if r["generator_note"]})
    render(rows, as_json=as_json, columns=columns, key="task", summary=summary, notes=notes)
