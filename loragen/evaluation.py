"""Evaluate a base or a base + LoRA on tasks with lm-evaluation-harness, offline, and compare stored results.

The model object is handed to lm-eval's HFLM directly (a PeftModel works), so
one loaded base serves every adapter: attach, evaluate, detach.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from loragen.errors import LoragenError
from loragen.tasks.suite import Task, materialize_yaml

PRIMARY_METRIC = {"exact_match": "exact_match", "multiple_choice": "acc"}
EVAL_SPLITS = ("test", "validation")
# The columns of a comparison: a base zero-shot, then adapters by how they were made.
# "other_task": an adapter registered for another task (a multi-task group scored on a member, say), so a
# group's scores never count as the task's own trained adapter.
COMPARED = ("zero_shot", "trained", "ingested", "generated", "carried_over", "other_task")


@dataclass
class Score:
    task: str
    metric: str
    value: float
    stderr: float | None
    num_examples: int
    split: str


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("lm-eval", "lm_eval", "datasets", "evaluate"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _task_yamls(tasks: Sequence[Task], split: str, out_dir: Path,
                shown_examples: Mapping[str, Sequence[tuple[str, str]]] | None = None) -> Path:
    """Runnable YAMLs whose test split is the one asked for (validation for selecting candidates).

    shown_examples: per task name, (prompt, answer) pairs written before every prompt (lm-eval's task
    `description`), so the base sees the very same examples in its context each time: in-context learning.
    """
    import yaml

    include = materialize_yaml(list(tasks), out_dir)
    shown = {task.eval_name: shown_examples[task.name] for task in tasks if task.name in (shown_examples or {})}
    if split != "test" or shown:
        for path in include.glob("*.yaml"):
            config = yaml.safe_load(path.read_text())
            config["test_split"] = split
            if config["task"] in shown:
                config["description"] = "".join(f"{prompt}{answer}\n\n" for prompt, answer in shown[config["task"]])
            path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return include


def check_eval_options(split: str, limit: int | None, batch_size: int) -> None:
    """Refuse what lm-eval would only fail on after the model is loaded."""
    if split not in EVAL_SPLITS:
        raise LoragenError(f"split must be {' or '.join(EVAL_SPLITS)} (got {split!r})")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise LoragenError(f"limit must be 0 (every example) or a positive number of examples (got {limit!r})")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LoragenError(f"batch size must be a positive number (got {batch_size!r})")


def evaluate(model, tokenizer, tasks: Sequence[Task], *, split: str = "test", limit: int | None = None,
             batch_size: int = 16, shown_examples: Mapping[str, Sequence[tuple[str, str]]] | None = None
             ) -> list[Score]:
    """Run lm-eval on `tasks` and return each task's primary metric (limit None or 0: every example).
    shown_examples: see `_task_yamls` (in-context examples per task name)."""
    check_eval_options(split, limit, batch_size)
    if not tasks:
        raise LoragenError("no tasks to evaluate")
    _offline()
    import lm_eval
    import lm_eval.evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # lm-eval runs `git describe` in the working directory for its metadata, and git's
    # "fatal: not a git repository" lands on our user's terminal; we don't use that field.
    lm_eval.evaluator.get_git_commit_hash = lambda: None

    with tempfile.TemporaryDirectory(prefix="loragen-eval-") as tmp:
        include = _task_yamls(tasks, split, Path(tmp), shown_examples)
        manager = TaskManager(include_path=str(include), include_defaults=False)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        if os.environ.get("TQDM_DISABLE") == "1":  # the CLI sets it unless -v
            # lm-eval passes `disable=` to its request bars itself, so the variable alone never reaches them.
            for request_type in ("generate_until", "loglikelihood", "loglikelihood_rolling"):
                setattr(lm, request_type, functools.partial(getattr(lm, request_type), disable_tqdm=True))
        try:
            output = lm_eval.simple_evaluate(
                model=lm, tasks=[t.eval_name for t in tasks], task_manager=manager,
                limit=limit or None, bootstrap_iters=0, log_samples=False, verbosity="ERROR")
        except (FileNotFoundError, ValueError) as err:
            raise LoragenError(f"lm-eval could not run: {err}") from None
    scores = []
    for task in tasks:
        results = output["results"].get(task.eval_name)
        if results is None:
            raise LoragenError(f"lm-eval returned no result for {task.eval_name}")
        metric = PRIMARY_METRIC[task.kind]
        key = next((k for k in results if k.split(",")[0] == metric), None)
        if key is None:
            raise LoragenError(f"lm-eval result for {task.eval_name} has no {metric} metric")
        stderr = results.get(key.replace(metric, f"{metric}_stderr", 1))
        samples = output.get("n-samples", {}).get(task.eval_name, {})
        scores.append(Score(task=task.name, metric=metric, value=float(results[key]),
                            stderr=float(stderr) if isinstance(stderr, (int, float)) else None,
                            num_examples=int(samples.get("effective", 0)), split=split))
    return scores


@contextmanager
def attached(base_model, adapter_folder: Path) -> Iterator[object]:
    """The base with a LoRA attached for the duration of the block, then the plain base again."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(base_model, str(adapter_folder))
    peft_model.eval()
    try:
        yield peft_model
    finally:
        peft_model.unload()


def comparison(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task and base version: the zero-shot score and each origin's adapters (mean, best and count).

    `results` are stored scores oldest first (Registry.eval_results); for each (task, base, metric, adapter)
    only the latest counts, so re-evaluating an adapter replaces its score instead of adding one.
    """
    latest: dict[tuple, float] = {}
    for result in results:
        kind = result["origin"] or "zero_shot"
        if result["adapter"] and result.get("adapter_task") not in (None, result["task"]):
            kind = "other_task"
        latest[(result["task"], result["base"], result["metric"], result["adapter"] or "", kind)] = result["value"]
    table: dict[tuple, dict[str, Any]] = {}
    for (task, base, metric, _, kind), value in latest.items():
        row = table.setdefault((task, base, metric), {"task": task, "base": base, "metric": metric})
        row.setdefault(kind, []).append(value)
    summary = []
    for row in table.values():
        for kind in COMPARED:
            values = row.pop(kind, [])
            row[kind] = {"mean": sum(values) / len(values), "best": max(values), "n": len(values)} if values else None
        summary.append(row)
    return sorted(summary, key=lambda r: (r["task"], r["base"]))
