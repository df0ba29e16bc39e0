"""Train the generator on the registry's adapters and register its checkpoint."""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from loragen.config import GeneratorSettings
from loragen.errors import LoragenError
from loragen.registry.store import Registered, Registry
from loragen.workflows.bases import Progress, base_condition, bundled_task, load_base, member_tasks, text_encoder

if TYPE_CHECKING:
    from loragen.tasks.split import TaskSplit


def collect_training_set(registry: Registry, tasks: Sequence[str] | None = None, bases: Sequence[str] | None = None,
                         held_out: Sequence[str] = (), split: TaskSplit | None = None):
    """Every trained/ingested adapter (minus held-out tasks) with its conditions, ready to tokenize.

    split: a seen/held-out split of the bundled tasks (loragen.tasks.split.load_split()). Its held-out
    tasks are left out like `held_out` (adapters, descriptions and examples), and a seen task's held-out
    description is never among its conditioning texts. Bundled tasks bring their training examples
    (for the task loss); a task of the user's own has none and trains on the diffusion loss alone.
    """
    import json

    from loragen.adapters import load_weights
    from loragen.generator.training import TrainingAdapter, TrainingSet

    excluded = set(held_out) | (set(split.held_out_tasks) if split is not None else set())
    # A multi-task adapter is no one task's adapter: the generator learns task -> adapter from single tasks only.
    views = [v for v in registry.adapters_for_training(tasks=tasks, bases=bases)
             if v["task"] not in excluded and not member_tasks(v)]
    if not views:
        raise LoragenError("no trained or ingested adapters match: fine-tune some first (loragen finetune --task …)")
    encoder = text_encoder(registry)
    names = sorted({v["task"] for v in views})
    descriptions = {task: _training_descriptions(registry, task, split) for task in names}
    bundled = {task: bundled_task(task) for task in names}
    adapters = [TrainingAdapter(uid=v["uid"], task=v["task"], base=v["base"],
                                state_dict=load_weights(v["weights_path"])) for v in views]
    config_path = registry.adapter_files(views[0]["id"])[1]
    lora = json.loads(Path(config_path).read_text())
    return TrainingSet(
        adapters=adapters, task_descriptions=descriptions,
        text_embeddings={task: encoder.encode(texts) for task, texts in descriptions.items()},
        base_embeddings={label: base_condition(registry, label) for label in sorted({v["base"] for v in views})},
        lora={"r": lora["r"], "lora_alpha": lora.get("lora_alpha", lora["r"]),
              "target_modules": sorted(views[0]["target_modules"])},
        text_model=encoder.model_id,
        task_examples={task: task_of.examples("train") for task, task_of in bundled.items()
                       if task_of is not None and (task_of.dir / "train.jsonl").is_file()},
        load_base=lambda label: tuple(load_base(registry, label)[:2]))


def _training_descriptions(registry: Registry, task: str, split: TaskSplit | None) -> list[str]:
    """The registry's descriptions of a task, less the one the split holds out (the suite's others if none is left)."""
    texts = registry.task_descriptions(task) or [task]
    if split is None or task not in split.held_out_descriptions:
        return texts
    kept_out = split.held_out_descriptions[task]
    kept = [text for text in texts if text != kept_out]
    return kept or split.training_descriptions(bundled_task(task))


def train(registry: Registry, settings: GeneratorSettings, *, tasks: Sequence[str] | None = None,
          bases: Sequence[str] | None = None, held_out: Sequence[str] = (), split: TaskSplit | None = None,
          progress: Progress | None = None) -> tuple[Registered, dict[str, Any]]:
    """Train a generator on the registry's adapters and register its checkpoint (`split`: see collect_training_set)."""
    import hashlib
    import json

    from loragen.generator.training import (
        META_FILE,
        WEIGHTS_FILE,
        distributed_rank,
        join_process_group,
        ranks_weight_digests,
        train_generator,
    )
    from loragen.tasks.suite import check_known_tasks

    # A misspelt held-out task would match nothing and leave every task in training without a word.
    check_known_tasks(held_out, [t["name"] for t in registry.list_registered_tasks()], "held-out task")
    data = collect_training_set(registry, tasks, bases, held_out, split)
    if split is not None:
        held_out = sorted(set(held_out) | set(split.held_out_tasks))
    world = join_process_group()
    key = hashlib.sha256(json.dumps([asdict(settings), sorted(a.uid for a in data.adapters), world]).encode()).hexdigest()[:12]
    run_dir = registry.home / "runs" / f"generator-{key}"
    library: list[str] = []
    if settings.representation == "library":
        if world > 1:
            raise LoragenError("a library generator trains in one process (it is small): run loragen train "
                               "without torchrun, or set generator.representation = \"raw\"")
        from loragen.generator.blend_training import train_blend_generator

        checkpoint = train_blend_generator(data, settings, run_dir, progress=progress)
        library = [entry["uid"] for entry in checkpoint.library]
    else:
        checkpoint = train_generator(data, settings, run_dir, progress=progress)
    digests = ranks_weight_digests(checkpoint.weights)
    if len(set(digests)) != 1:
        raise LoragenError(f"data-parallel ranks ended with different weights: {digests}")
    if distributed_rank() != 0:  # process 0 registers; the others only trained
        return Registered(id=digests[0][:12], created=False), {"process_rank": distributed_rank(),
                                                               "weights_sha256": digests[0]}
    with tempfile.TemporaryDirectory(prefix="loragen-generator-", dir=registry.home) as tmp:
        folder = checkpoint.save(Path(tmp) / "checkpoint")
        registered = registry.register_generator(
            folder / WEIGHTS_FILE, folder / META_FILE, step=settings.steps, seed=settings.seed,
            tasks=sorted(data.task_descriptions),
            bases=sorted(data.base_embeddings), held_out=sorted(held_out), num_adapters=len(data.adapters),
            final_loss=checkpoint.training["final_loss"], library=library)
    summary = {"id": registered.id, "created": registered.created, "adapters": len(data.adapters),
               "tasks": sorted(data.task_descriptions), "bases": sorted(data.base_embeddings),
               "held_out": sorted(held_out), "representation": settings.representation,
               "run_dir": str(run_dir), **checkpoint.training}
    if settings.representation == "raw":
        summary.update(tokens_per_adapter=checkpoint.layout.num_tokens, values_per_adapter=checkpoint.layout.num_values)
    else:
        families = checkpoint.family_members()
        summary.update(library_size=len(library), slots=len(checkpoint.slots), families=[
            {"bases": sorted({checkpoint.library[i]["base"] for i in members}), "adapters": len(members),
             "slots": len(slots)} for members, slots in families])
    summary.pop("settings", None)
    summary["weights_sha256_per_rank"] = digests
    return registered, summary


def train_on(data: Any, settings: GeneratorSettings, run_dir: Path, *, progress: Progress | None = None) -> Any:
    """Train a generator on a TrainingSet built by hand (random conditions, toy tasks) into `run_dir`, registering
    nothing: what a benchmark of the method itself needs. Resumable from the run folder; returns the checkpoint."""
    if settings.representation == "library":
        from loragen.generator.blend_training import train_blend_generator

        return train_blend_generator(data, settings, run_dir, progress=progress)
    from loragen.generator.training import train_generator

    return train_generator(data, settings, run_dir, progress=progress)
