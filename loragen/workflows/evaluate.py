"""Score adapters and bases with lm-eval: one loaded base, zero-shot and with each adapter attached in turn.

`score_on_base` is the one loop every scorer goes through (`eval`, generate's and refresh's choice on validation,
refresh's before/after, and the benchmarks); `evaluate_targets` adds what the CLI needs: checks before any
model loads, grouping by base version, and keeping the scores in the registry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from loragen.errors import LoragenError
from loragen.evaluation import Score
from loragen.registry.store import Registry
from loragen.workflows.bases import BaseLoader, Notify, bundled_task, find_task, member_tasks

if TYPE_CHECKING:
    from loragen.tasks.suite import Task


def score_on_base(model, tokenizer, tasks: Sequence[Task], adapters: Iterable[Path | str | None], *,
                  split: str = "test", limit: int | None = None, batch_size: int = 16,
                  shown_examples: Mapping[str, Sequence[tuple[str, str]]] | None = None) -> Iterator[list[Score]]:
    """For each entry of `adapters` in order, its scores on `tasks` (one Score per task, in their order): a PEFT
    folder is attached to the loaded base for its turn; None scores the base alone (zero-shot).

    Yields one entry's scores at a time, so a caller can record each before the next is scored (a run stopped
    half-way keeps what it did); `list(...)` for all at once. `limit` None or 0 scores every example.
    `shown_examples` (per task name, (prompt, answer) pairs) puts those examples before every prompt: in-context
    learning, the baseline of a user with a few examples and no adapter.
    """
    from loragen.evaluation import attached, evaluate

    for folder in adapters:
        if folder is None:
            scores = evaluate(model, tokenizer, tasks, split=split, limit=limit, batch_size=batch_size,
                              shown_examples=shown_examples)
        else:
            with attached(model, Path(folder)) as peft_model:
                scores = evaluate(peft_model, tokenizer, tasks, split=split, limit=limit, batch_size=batch_size,
                                  shown_examples=shown_examples)
        yield scores


def validation_scores(model, tokenizer, task: Task, folders: Sequence[Path], limit: int) -> list[Score]:
    """Each adapter folder's score on the task's validation split (the first `limit` examples), on one loaded base:
    what generate and refresh choose a candidate by."""
    return [score for [score] in score_on_base(model, tokenizer, [task], folders, split="validation", limit=limit)]


VALIDATION_LOSS = "neg_validation_loss"


def validation_losses(model, tokenizer, task: Task, folders: Sequence[Path], limit: int) -> list[Score]:
    """Each adapter folder's mean next-token loss on the answers of the task's first `limit` validation examples,
    negated so that higher is better, as a metric's: one teacher-forced forward pass per adapter where
    validation_scores generates every answer through lm-eval (`refresh --select-by loss`: about 3x cheaper on the
    ladder's far version, and a proxy for the metric, not the metric)."""
    from loragen.adapters import WEIGHTS_NAME, load_weights, read_adapter_folder
    from loragen.generator.refine import example_batch
    from loragen.generator.task_loss import base_loss

    pairs = task.examples("validation")[:limit]
    if not pairs:
        raise LoragenError(f"task {task.name!r} has no validation examples to choose by")
    batch = example_batch(tokenizer, pairs)
    losses = []
    for folder in folders:
        shape = read_adapter_folder(Path(folder))
        loss = base_loss(model, batch, load_weights(Path(folder) / WEIGHTS_NAME), shape.alpha / shape.rank)
        losses.append(Score(task=task.name, metric=VALIDATION_LOSS, value=-loss, stderr=None,
                            num_examples=len(pairs), split="validation"))
    return losses


@dataclass
class EvalTarget:
    """What to score: an adapter on its own base version, or (no adapter) a base version zero-shot.

    `tasks` (names, task folders or Tasks) default to the adapter's own task (a multi-task adapter's members), or
    for a base the bundled tasks that have adapters on it.
    """

    adapter: str | None = None
    base: str | None = None
    tasks: Sequence[str | Task] | None = None


@dataclass
class TargetScore(Score):
    """A score with what was scored: an adapter (on its own base) or the base zero-shot."""

    adapter: str | None      # the adapter's id; None for the base zero-shot
    base: str                # NAME@vN it ran on

    @property
    def target(self) -> str:
        return self.adapter or "zero-shot"


def _tasks_with_adapters(registry: Registry, label: str) -> list[str]:
    """The bundled tasks that have an adapter on this base version: what a zero-shot run is compared with."""
    names = sorted({view["task"] for view in registry.list_adapters(base_ref=label)})
    bundled = [bundled_task(name) for name in names]
    return [task.name for task in bundled if task is not None]  # a task of the user's own has no bundled test split


def evaluate_targets(registry: Registry, targets: Sequence[EvalTarget], *, split: str = "test",
                     limit: int | None = None, batch_size: int = 16, record: bool = True,
                     details: dict[str, Any] | None = None, loader: BaseLoader | None = None,
                     notify: Notify | None = None) -> list[TargetScore]:
    """Score each target with lm-eval and keep the scores in the registry (unless record=False).

    Options, adapters, bases and tasks are all checked before the first model is loaded; the work is grouped by
    base version so each base is loaded once. `limit` None or 0 scores every example; `details` are stored with
    each score beside the lm-eval and loragen versions.
    """
    from importlib.metadata import version as package_version

    from loragen import __version__
    from loragen.evaluation import check_eval_options

    check_eval_options(split, limit, batch_size)
    if not targets:
        raise LoragenError("nothing to evaluate: give adapter ids or a base version")
    jobs: dict[str, list[tuple[str | None, list[Task]]]] = {}
    for target in targets:
        if target.adapter and target.base:
            raise LoragenError("an evaluation target is an adapter (on its own base) or a base, not both")
        if target.tasks is not None and not list(target.tasks):  # None means the defaults; an empty list is a mistake
            raise LoragenError("the task list is empty: name at least one task, or leave tasks out for the defaults")
        if target.adapter:
            view = registry.get_adapter(target.adapter)
            # A multi-task adapter's own task is its group name; what it was trained for are its member tasks.
            label, adapter = view["base"], view["id"]
            default_tasks = list(member_tasks(view) or [view["task"]])
        elif target.base:
            label, adapter = registry.version(target.base).label, None
            default_tasks = _tasks_with_adapters(registry, label)
            if not target.tasks and not default_tasks:
                raise LoragenError(f"no adapter on {label} names a bundled task to score zero-shot: give --tasks "
                                   "(`loragen list suite` lists them)")
        else:
            raise LoragenError("an evaluation target needs an adapter id or a base version")
        tasks = [find_task(t) for t in (target.tasks or default_tasks)]
        if not tasks:
            raise LoragenError("no tasks to evaluate")
        jobs.setdefault(label, []).append((adapter, tasks))

    stored = {"lm_eval": package_version("lm_eval"), "loragen": __version__, "limit": limit, **(details or {})}
    loader = loader or BaseLoader(registry)
    results = []
    for label, work in jobs.items():
        model, tokenizer, _ = loader.get(label, notify)
        for adapter, tasks in work:  # each target has tasks of its own: scored one at a time
            if notify:
                notify(f"evaluating {adapter or 'zero-shot'} on {', '.join(t.name for t in tasks)} …")
            folder = registry.adapter_folder(adapter) if adapter else None
            [scores] = score_on_base(model, tokenizer, tasks, [folder], split=split, limit=limit,
                                     batch_size=batch_size)
            if record:
                registry.record_scores(label, adapter, scores, stored)
            results += [TargetScore(**asdict(score), adapter=adapter, base=label) for score in scores]
    return results


def evaluate_adapters(registry: Registry, adapters: Sequence[str], *, tasks: Sequence[str | Task] | None = None,
                      **options: Any) -> list[TargetScore]:
    """Score adapters on their own base version (on their own task unless `tasks`); options as evaluate_targets."""
    return evaluate_targets(registry, [EvalTarget(adapter=ref, tasks=tasks) for ref in adapters], **options)


def evaluate_base(registry: Registry, base_ref: str, *, tasks: Sequence[str | Task] | None = None,
                  **options: Any) -> list[TargetScore]:
    """Score a base version zero-shot (on the bundled tasks with adapters on it unless `tasks`); options as
    evaluate_targets."""
    return evaluate_targets(registry, [EvalTarget(base=base_ref, tasks=tasks)], **options)
