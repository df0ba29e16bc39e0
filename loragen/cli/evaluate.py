"""`loragen eval`: lm-eval-harness on adapters or on a base zero-shot; results kept in the registry."""

from __future__ import annotations

from collections import defaultdict
from typing import Optional

import typer

from loragen.cli.context import state
from loragen.cli.render import Column, render, say


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
]
SCORE_COLUMNS = [
    Column("TARGET", lambda r: r["target"]),
    Column("BASE", lambda r: r["base"]),
    Column("TASK", lambda r: r["task"]),
    Column("METRIC", lambda r: r["metric"]),
    Column("SCORE", lambda r: f"{r['value']:.3f}", "right"),
    Column("N", lambda r: r["examples"], "right"),
]


def eval_cmd(adapters: list[str] = typer.Argument(None, help="Adapter ids to evaluate (default: their own task)."),
             base: Optional[str] = typer.Option(None, "--base", help="Evaluate this base version zero-shot."),
             tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated task names or folders."),
             limit: Optional[int] = typer.Option(None, "--limit", help="Examples per task (settings: eval.limit; 0 = all)."),
             split: str = typer.Option("test", "--split", help="test or validation."),
             batch_size: Optional[int] = typer.Option(None, "--batch-size", help="lm-eval batch size (settings: eval.batch_size)."),
             compare: bool = typer.Option(False, "--compare", help="Show stored results: zero-shot vs trained vs generated."),
             as_json: bool = typer.Option(False, "--json", help="JSON output.")) -> None:
    """Evaluate adapters (or a base zero-shot) with lm-eval-harness and keep the results."""
    registry = state.registry
    if compare:
        rows = registry.comparison(split=split)
        render(rows, as_json=as_json, columns=COMPARE_COLUMNS, key="task",
               summary=f"{len(rows)} task/base pair(s) with results on the {split} split")
        return
    if split not in ("test", "validation"):
        raise typer.BadParameter("--split must be test or validation")
    if not adapters and not base:
        raise typer.BadParameter("give adapter ids, or --base NAME[@vN] for a zero-shot run, or --compare")
    from loragen.cli.training import resolve_task
    from loragen.tasks.suite import list_tasks

    chosen = [resolve_task(t.strip()) for t in tasks.split(",") if t.strip()] if tasks else None
    settings = state.settings.eval
    limit = settings.limit if limit is None else limit
    batch_size = batch_size or settings.batch_size
    # Group the work by base version so each base is loaded once.
    jobs: dict[str, list[tuple[Optional[str], list]]] = defaultdict(list)
    if base:
        with registry.session() as s:
            label = registry.resolve_version(s, base).label
        jobs[label].append((None, chosen or list_tasks()))
    for ref in adapters or []:
        view = registry.get_adapter(ref)
        jobs[view["base"]].append((view["id"], chosen or [resolve_task(view["task"])]))
    from loragen import __version__
    from loragen.evaluation import attached, evaluate

    import lm_eval

    rows = []
    for label, work in jobs.items():
        say(f"loading {label} …")
        model, tokenizer, _ = registry.load_base(label)
        for adapter_id, task_list in work:
            target = adapter_id or "zero-shot"
            say(f"evaluating {target} on {', '.join(t.name for t in task_list)} …")
            if adapter_id:
                with attached(model, registry.adapter_folder(adapter_id)) as peft_model:
                    scores = evaluate(peft_model, tokenizer, task_list, split=split, limit=limit, batch_size=batch_size)
            else:
                scores = evaluate(model, tokenizer, task_list, split=split, limit=limit, batch_size=batch_size)
            registry.record_scores(label, adapter_id, scores, {
                "lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "",
                "loragen": __version__, "limit": limit})
            rows += [{"target": target, "base": label, "task": sc.task, "metric": sc.metric, "value": sc.value,
                      "examples": sc.num_examples, "split": sc.split} for sc in scores]
    render(rows, as_json=as_json, columns=SCORE_COLUMNS, key="target")
