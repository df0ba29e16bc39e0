"""Fine-tune LoRAs on a task, or on the union of several (multi-task), through the registry: one resumable run
folder per request, its kept checkpoints registered (origin=trained)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from loragen.config import FinetuneConfig, LoraConfig
from loragen.errors import LoragenError, quoted
from loragen.registry.models import Origin
from loragen.registry.store import BaseVersionInfo, Registry, check_name
from loragen.workflows.bases import BaseLoader, Notify, Progress, bundled_task, find_task, member_tasks

if TYPE_CHECKING:
    from loragen.tasks.suite import Task


@dataclass
class RegisteredCheckpoint:
    id: str
    step: int
    loss: float
    created: bool        # False when an earlier call had registered it already


@dataclass
class FinetuneOutcome:
    task: str
    base: str                                  # NAME@vN
    run_dir: Path
    checkpoints: list[RegisteredCheckpoint]    # by step; the last is the run's final adapter
    train_examples: int
    wall_time_s: float                         # trained in this call (0 when the run had finished before)
    train_s: float                             # the whole run's training time, over every call that trained it
    resumed_from_step: int
    losses: list[float]                        # one per step


def finetune_run_dir(registry: Registry, task_name: str, version: BaseVersionInfo, lora: LoraConfig,
                     config: FinetuneConfig, num_examples: int, members: list | None = None) -> Path:
    """`<home>/runs/<task>__<NAME_vN>__seed<seed>__<fingerprint>`: one folder per task, base weights, settings and
    training-set size, so the same fine-tuning asked twice (from the CLI or a benchmark) resumes or reuses one run.
    A multi-task run passes its sorted [member, examples] pairs, which the fingerprint then covers too."""
    import hashlib
    import json

    key = [asdict(config), asdict(lora), num_examples, version.weights_digest]
    if members is not None:  # only then, so single-task folders keep the names earlier runs were saved under
        key.append(members)
    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return registry.home / "runs" / f"{task_name}__{version.label.replace('@', '_')}__seed{config.seed}__{fingerprint}"


def finetune_task(registry: Registry, task: str | Task, base_ref: str, lora_config: LoraConfig,
                  finetune_config: FinetuneConfig, *, train_limit: int | None = None, progress: Progress | None = None,
                  loader: BaseLoader | None = None, notify: Notify | None = None) -> FinetuneOutcome:
    """Fine-tune a LoRA on a task's training split and register its kept checkpoints (origin=trained).

    `train_limit` keeps only the first N training examples. Resumable: an interrupted run continues from its
    last saved state, and a finished one is not trained again (registering its checkpoints again changes nothing).
    """
    from loragen.finetune import finetune

    if train_limit is not None and (isinstance(train_limit, bool) or train_limit < 1):
        raise LoragenError(f"train limit must be a positive number of examples (got {train_limit!r})")
    task = find_task(task)
    examples = task.examples("train")[:train_limit]
    version = registry.version(base_ref)
    run_dir = finetune_run_dir(registry, task.name, version, lora_config, finetune_config, len(examples))
    base = (loader or BaseLoader(registry)).get(version.label, notify)
    result = finetune(base.model, base.tokenizer, examples, lora_config, finetune_config, run_dir, progress=progress)
    checkpoints = _register_checkpoints(registry, result, version, task.name, task.descriptions, run_dir,
                                        finetune_config, len(examples))
    train_s = result.total_train_s
    if not train_s and checkpoints and not checkpoints[-1].created:
        # A run finished by a loragen that kept no time in its state: the time its registration recorded.
        train_s = registry.get_adapter(checkpoints[-1].id)["provenance"].get("wall_time_s") or 0.0
    return FinetuneOutcome(task=task.name, base=version.label, run_dir=run_dir, checkpoints=checkpoints,
                           train_examples=len(examples), wall_time_s=result.wall_time_s, train_s=train_s,
                           resumed_from_step=result.resumed_from_step, losses=result.losses)


def finetune_unregistered(model, tokenizer, task: str | Task, lora_config: LoraConfig, finetune_config: FinetuneConfig,
                          run_dir: Path, *, train_limit: int | None = None, progress: Progress | None = None) -> Any:
    """Fine-tune a LoRA on a loaded base into `run_dir` and register nothing: for adapters that must never reach
    the registry a generator trains from (a benchmark's held-out tasks and ceilings, a timing run). Resumable like
    finetune_task; returns loragen.finetune's result (its checkpoints' folders, losses and times)."""
    from loragen.finetune import finetune

    examples = find_task(task).examples("train")[:train_limit]
    return finetune(model, tokenizer, examples, lora_config, finetune_config, run_dir, progress=progress)


def _register_checkpoints(registry: Registry, result: Any, version: BaseVersionInfo, task_name: str,
                          descriptions: Sequence[str], run_dir: Path, config: FinetuneConfig, num_examples: int,
                          group_provenance: dict[str, Any] | None = None) -> list[RegisteredCheckpoint]:
    """Register a fine-tuning run's kept checkpoints (origin=trained) with the run's provenance; a multi-task run
    adds its members (`group_provenance`). Registering them again finds each one already there."""
    checkpoints = []
    for checkpoint in result.checkpoints:
        registered = registry.ingest(
            checkpoint.path, version.label, task_name, descriptions, origin=Origin.trained,
            provenance={"run": run_dir.name, **(group_provenance or {}), "step": checkpoint.step,
                        "steps": config.steps, "seed": config.seed, "learning_rate": config.learning_rate,
                        "batch_size": config.batch_size, "train_examples": num_examples,
                        "loss": checkpoint.loss, "wall_time_s": round(result.total_train_s, 2)})
        checkpoints.append(RegisteredCheckpoint(id=registered.id, step=checkpoint.step, loss=checkpoint.loss,
                                                created=registered.created))
    return checkpoints


# ---------------------------------------------------------------- multi-task fine-tuning

SEEN_TASKS = "seen"  # `--tasks seen`: every bundled task the committed split does not hold out


@dataclass
class MultitaskOutcome(FinetuneOutcome):
    """A multi-task run: `task` is the group name its checkpoints are registered under."""

    members: list[str] = field(default_factory=list)                  # sorted member task names
    examples_per_task: dict[str, int] = field(default_factory=dict)   # training examples each member contributed
    held_out_excluded: bool = False


def default_group_name(task_names: Sequence[str]) -> str:
    """`multitask-<8 hex>`: the same member set (in any order) always gets the same name."""
    import hashlib

    return "multitask-" + hashlib.sha256(",".join(sorted(task_names)).encode()).hexdigest()[:8]


def multitask_members(tasks: Sequence[str | Task] | str | None, *, exclude_held_out: bool = False) -> list[Task]:
    """The member tasks of a multi-task fine-tune, sorted by name, checked before any model is loaded.

    `tasks` None or "seen" (with exclude_held_out, or implying it for "seen") means every bundled task the committed
    split does not hold out. With exclude_held_out a named held-out task is refused, never silently dropped.
    """
    from loragen.tasks.split import load_split
    from loragen.tasks.suite import get_task

    if tasks == SEEN_TASKS or (tasks is None and exclude_held_out):
        split = load_split()
        return [get_task(name) for name in split.seen_tasks]
    if tasks is None or isinstance(tasks, str):
        raise LoragenError("give the member tasks as a list of names or folders, or 'seen' for the split's seen tasks")
    members = [find_task(t) for t in tasks]
    names = [t.name for t in members]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise LoragenError(f"task {quoted(repeated[0])} is named twice")
    if len(members) < 2:
        raise LoragenError("a multi-task fine-tune needs at least two tasks (for one task: loragen finetune --task)")
    if exclude_held_out:
        split = load_split()
        held_out = [n for n in sorted(names) if split.is_held_out(n)]
        if held_out:
            raise LoragenError(f"task {quoted(held_out[0])} is held out by the split and may not enter the group "
                               f"({len(held_out)} held out in all)")
    return sorted(members, key=lambda t: t.name)


def finetune_multitask(registry: Registry, tasks: Sequence[str | Task] | str | None, base_ref: str,
                       lora_config: LoraConfig, finetune_config: FinetuneConfig, *, name: str | None = None,
                       exclude_held_out: bool = False, train_limit_per_task: int | None = None,
                       progress: Progress | None = None, loader: BaseLoader | None = None,
                       notify: Notify | None = None) -> MultitaskOutcome:
    """One LoRA fine-tuned on the union of several tasks, its kept checkpoints registered once under a group name.

    The group name defaults to `default_group_name` of the members; `exclude_held_out` (or tasks="seen") builds the
    group from the split's seen tasks and refuses held-out ones. Resumable and reused like `finetune_task`: the run
    folder's fingerprint covers the sorted member list and each member's example count.

    Mixing: each member contributes the same number of examples, its first `train_limit_per_task` (default: the
    smallest member's training-set size, so every task weighs the same), and the union is shuffled by finetune's
    own seeded epoch order. Capping counts, rather than sampling tasks uniformly at every step, keeps the training
    loop and its resumable state exactly those of a single-task run, and shows no example more often than any other.
    A task with fewer examples than an explicit cap gives all it has (proportional below the cap).
    """
    from loragen.finetune import finetune

    if train_limit_per_task is not None and (isinstance(train_limit_per_task, bool) or train_limit_per_task < 1):
        raise LoragenError(f"train limit per task must be a positive number of examples (got {train_limit_per_task!r})")
    members = multitask_members(tasks, exclude_held_out=exclude_held_out)
    held_out_excluded = exclude_held_out or tasks == SEEN_TASKS
    member_names = [t.name for t in members]
    group = name if name is not None else default_group_name(member_names)
    check_name("task", group)
    if group in member_names or bundled_task(group):
        raise LoragenError(f"{quoted(group)} is a single task's name: give the group a name of its own")
    others = [a for a in registry.list_adapters(task=group) if member_tasks(a) != member_names]
    if others:
        raise LoragenError(f"task {quoted(group)} already has adapter {others[0]['id']}, which is not a multi-task "
                           "LoRA of these tasks: give the group another --name")
    version = registry.version(base_ref)

    train_sets = {t.name: t.examples("train") for t in members}
    empty = [n for n, ex in train_sets.items() if not ex]
    if empty:
        raise LoragenError(f"task {quoted(empty[0])} has no training examples")
    per_task = train_limit_per_task or min(len(ex) for ex in train_sets.values())
    counts = {n: min(per_task, len(ex)) for n, ex in train_sets.items()}
    examples = [example for n in member_names for example in train_sets[n][:counts[n]]]

    run_key = [[n, counts[n]] for n in member_names]
    run_dir = finetune_run_dir(registry, default_group_name(member_names), version, lora_config, finetune_config,
                               len(examples), members=run_key)
    base = (loader or BaseLoader(registry)).get(version.label, notify)
    result = finetune(base.model, base.tokenizer, examples, lora_config, finetune_config, run_dir, progress=progress)

    descriptions = [f"A multi-task LoRA trained on the union of {len(members)} tasks: {', '.join(member_names)}."]
    checkpoints = _register_checkpoints(
        registry, result, version, group, descriptions, run_dir, finetune_config, len(examples),
        group_provenance={"member_tasks": member_names, "examples_per_task": counts,
                          "held_out_excluded": held_out_excluded})
    return MultitaskOutcome(task=group, base=version.label, run_dir=run_dir, checkpoints=checkpoints,
                            train_examples=len(examples), wall_time_s=result.wall_time_s, train_s=result.total_train_s,
                            resumed_from_step=result.resumed_from_step, losses=result.losses, members=member_names,
                            examples_per_task=counts, held_out_excluded=held_out_excluded)
