"""`loragen refresh`: a base moved on; regenerate every task's adapter for its newest version."""

from __future__ import annotations

from typing import Optional

import typer

from loragen.cli.context import state
from loragen.cli.render import Column, StepProgress, render


def _score(item: dict, key: str) -> Optional[str]:
    value = item["scores"].get(key)
    return None if value is None else f"{value:.3f}"


def refresh(base: Optional[str] = typer.Option(None, "--base", help="Only this base (its newest version)."),
            tasks: Optional[str] = typer.Option(None, "--tasks", help="Only these tasks (comma-separated)."),
            dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be generated; change nothing."),
            run_eval: bool = typer.Option(False, "--eval", help="Score old-on-new, zero-shot and regenerated with lm-eval."),
            limit: Optional[int] = typer.Option(None, "--limit", help="Examples per task for --eval (settings: eval.limit)."),
            seed: int = typer.Option(0, help="Sampling seed."),
            as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
    """Generate, for the newest version of each base, an adapter for every task it had before (with lineage)."""
    from loragen import workflows

    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    registry = state.registry
    if dry_run:
        items = workflows.plan_refresh(registry, base=base, tasks=task_list)
    else:
        planned = sum(item.action == "generate" for item in workflows.plan_refresh(registry, base=base, tasks=task_list))
        with StepProgress("regenerating", max(1, planned)) as bar:
            items = workflows.refresh(registry, state.settings.generator, base=base, tasks=task_list, seed=seed,
                                      run_eval=run_eval, evaluate_limit=limit if limit is not None else state.settings.eval.limit,
                                      progress=lambda done, total: bar.update(done, total))
    rows = [item.__dict__ for item in items]
    columns = [Column("TASK", lambda r: r["task"]), Column("BASE", lambda r: r["base"]),
               Column("REPLACES", lambda r: f"{r['replaces']} ({r['replaces_base']})"),
               Column("ACTION", lambda r: r["action"]), Column("ID", lambda r: r["id"]),
               Column("SECONDS", lambda r: r["seconds"], "right")]
    if run_eval and not dry_run:
        columns += [Column("OLD ON NEW", lambda r: _score(r, "old_on_new"), "right"),
                    Column("ZERO-SHOT", lambda r: _score(r, "zero_shot"), "right"),
                    Column("REGENERATED", lambda r: _score(r, "regenerated"), "right")]
    done = sum(r["action"] == "generated" for r in rows)
    summary = (f"{sum(r['action'] == 'generate' for r in rows)} adapter(s) would be generated (dry run)" if dry_run
               else f"{done} adapter(s) generated, {len(rows) - done} already up to date")
    render(rows, as_json=as_json, columns=columns, key="task", summary=summary)
