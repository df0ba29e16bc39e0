"""`loragen eval`: lm-eval-harness on adapters or on a base zero-shot; results kept in the registry."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import typer

from loragen.cli.context import state
from loragen.cli.options import split_names
from loragen.cli.render import Column, render, say

SPLITS = ("test", "validation")


def _fmt(cell) -> str | None:
    if cell is None:
        return None
    return f"{cell['mean']:.3f}" if cell["n"] == 1 else f"{cell['mean']:.3f} (best {cell['best']:.3f}, n={cell['n']})"


COMPARE_COLUMNS = [
    Column("TASK", lambda r: r["task"]),
    Column("BASE", lambda r: r["base"]),
    Column("METRIC", lambda r: r["metric"]),
    Column("ZERO-SHOT", lambda r: _fmt(r["zero_shot"]), "right"),
    Column("TRAINED", lambda r: _fmt(r["trained"]), "right"),
    Column("INGESTED", lambda r: _fmt(r["ingested"]), "right"),
    Column("GENERATED", lambda r: _fmt(r["generated"]), "right"),
    Column("CARRIED OVER", lambda r: _fmt(r["carried_over"]), "right"),  # kept by refresh for a new version
    Column("OTHER TASK'S", lambda r: _fmt(r["other_task"]), "right"),  # e.g. a multi-task group on a member
]
SCORE_COLUMNS = [
    Column("TARGET", lambda r: r["target"]),
    Column("BASE", lambda r: r["base"]),
    Column("TASK", lambda r: r["task"]),
    Column("METRIC", lambda r: r["metric"]),
    Column("SCORE", lambda r: f"{r['value']:.3f}", "right"),
    Column("N", lambda r: r["examples"], "right"),
]


def eval_cmd(adapters: list[str] = typer.Argument(
                 None, help="Adapter ids to evaluate (default tasks: its own, or a multi-task adapter's members)."),
             base: Optional[str] = typer.Option(
                 None, "--base", help="Evaluate this base version zero-shot (default tasks: those with adapters on it)."),
             tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated task names or folders."),
             limit: Optional[int] = typer.Option(None, "--limit", min=0,
                                                 help="Examples per task (settings: eval.limit; 0 = all)."),
             split: str = typer.Option("test", "--split", help="test or validation."),
             batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                                      help="lm-eval batch size (settings: eval.batch_size)."),
             compare: bool = typer.Option(False, "--compare", help="Show stored results: zero-shot vs trained vs generated."),
             as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
    """Evaluate adapters (or a base zero-shot) with lm-eval-harness and keep the results."""
    if split not in SPLITS:
        raise typer.BadParameter(f"--split must be {' or '.join(SPLITS)}")
    registry = state.registry
    if compare:
        from loragen.evaluation import comparison

        rows = comparison(registry.eval_results(split=split))
        render(rows, as_json=as_json, columns=COMPARE_COLUMNS, key="task",
               summary=f"{len(rows)} task/base pair(s) with results on the {split} split")
        return
    if not adapters and not base:
        raise typer.BadParameter("give adapter ids, or --base NAME[@vN] for a zero-shot run, or --compare")
    from loragen import workflows

    settings = replace(state.settings.eval, **{k: v for k, v in {"limit": limit, "batch_size": batch_size}.items()
                                               if v is not None})
    chosen = split_names(tasks, "--tasks")
    targets = ([workflows.EvalTarget(base=base, tasks=chosen)] if base else []) + [
        workflows.EvalTarget(adapter=ref, tasks=chosen) for ref in adapters or []]
    scores = workflows.evaluate_targets(registry, targets, split=split, limit=settings.limit,
                                        batch_size=settings.batch_size, notify=say)
    rows = [{"target": s.target, "base": s.base, "task": s.task, "metric": s.metric, "value": s.value,
             "examples": s.num_examples, "split": s.split} for s in scores]
    render(rows, as_json=as_json, columns=SCORE_COLUMNS, key="target")
