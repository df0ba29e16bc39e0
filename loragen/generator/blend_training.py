"""Train the library-coordinates generator; save and load its checkpoints (symmetric, like peft).

The library is the training adapters themselves: entry j is adapter j. Each step takes a batch of training
adapters; for adapter i the clean coefficients x0 are one-hot at i (the adapter, exactly), or, on a
`leave_one_out` share of rows, the best blend of the library without any adapter of i's task (so the generator
learns to compose neighbours, the only thing it can do for a task it never saw: library.best_blend says why that
blend has full strength), or with `leave_out = "version"` without any adapter of i's base version (so it learns
to make a version's adapter from the other versions', the task's own among them: a refresh's question). x0 is noised at a random
timestep, the head predicts it back, and the loss is the relative distance in weight-change space between the
predicted blend and adapter i itself: exact, through the slots' Gram matrices (library.py), no dense delta_W.

Beside it, the task loss (Text-to-LoRA's SFT): the predicted blend is applied to the frozen base
(functional_lora.applied_blend) and the next-token loss on the task's training answers flows back into the
generator. A blend's cost there is one LoRA of rank J r on the targeted layers: about one LoRA training step.

A checkpoint is a folder: `generator.safetensors` (weights, with each library adapter's task text) and
`generator.json` (format loragen-generator/2: the network's shape, the schedule, the LoRA settings it exports, the
library by registry id and weights hash, what it trained on). The library's weights are not copied into it: they
stay registered adapters, and loading checks them against the recorded hashes.

Adapters of bases with other shapes (SmolLM2 and Gemma 3) cannot be blended together: the training set splits into
families (library.shape_families), each its own Library with its own slots. One network serves them all: keys for
every library adapter, and a family's blend reads only its own adapters' columns. A step trains one family's rows.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from loragen import __version__
from loragen.atomic import staged_folder
from loragen.config import GeneratorSettings
from loragen.errors import LoragenError
from loragen.generator.blend_model import BlendGenerator, BlendGeneratorConfig, blend_config_from_settings
from loragen.generator.conditioning import BASE_EMBED_FORMAT_VERSION
from loragen.generator.diffusion import DDPMSchedule
from loragen.generator.functional_lora import applied_blend
from loragen.generator.library import SLOT_LAYER, Library, best_blend, relative_blend_error, shape_families
from loragen.generator.training import (
    STATE_FILE,
    TaskExamples,
    _pick_description,
    _pick_descriptions,
    resume_run,
    save_run,
)

BLEND_FORMAT = "loragen-generator/2"
WEIGHTS_FILE = "generator.safetensors"
META_FILE = "generator.json"


@dataclass
class BlendCheckpoint:
    config: BlendGeneratorConfig
    schedule: DDPMSchedule
    lora: dict[str, Any]                        # r, lora_alpha, target_modules of the adapters it exports
    text_model: str
    library: list[dict[str, str]]               # uid, task, base, weights_sha256 of each library adapter, in order
    slots: list[str]                            # the library's slots, in the order of the coefficients' rows
    module_types: list[str]                     # module leaves, indexed by the slot-module code
    trained_on: list[dict[str, str]]
    task_descriptions: dict[str, list[str]]
    base_embeddings: dict[str, list[float]]
    training: dict[str, Any]
    weights: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    base_embed_format: int = BASE_EMBED_FORMAT_VERSION
    # Trained across bases of other shapes: each family's library adapters (indices into `library`) and slots.
    # None: one family, all of `library` over `slots`.
    families: list[dict[str, list]] | None = None

    representation = "library"

    def build_model(self) -> BlendGenerator:
        model = BlendGenerator(self.config)
        model.load_state_dict(self.weights)
        model.eval()
        return model

    def slot_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        return slot_positions(self.slots, self.module_types)

    def family_members(self) -> list[tuple[list[int], list[str]]]:
        """Each family's (library indices, slots); one family holding the whole library when trained on one."""
        if self.families is None:
            return [(list(range(len(self.library))), list(self.slots))]
        return [(list(family["members"]), list(family["slots"])) for family in self.families]

    def metadata(self) -> dict[str, Any]:
        return {"format": BLEND_FORMAT, "representation": "library", "config": self.config.to_dict(),
                "schedule": self.schedule.to_dict(), "lora": self.lora, "text_model": self.text_model,
                "library": self.library, "slots": self.slots, "module_types": self.module_types,
                "trained_on": self.trained_on, "task_descriptions": self.task_descriptions,
                "base_embeddings": self.base_embeddings, "training": self.training,
                "base_embed_format": self.base_embed_format, **({"families": self.families} if self.families else {})}

    def save(self, folder: Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        with staged_folder(folder, replace=True) as staging:
            save_file({k: v.contiguous() for k, v in self.weights.items()}, str(staging / WEIGHTS_FILE))
            (staging / META_FILE).write_text(json.dumps(self.metadata(), indent=1, sort_keys=True))
        return folder

    @classmethod
    def from_files(cls, folder: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> BlendCheckpoint:
        try:
            return cls(config=BlendGeneratorConfig.from_dict(meta["config"]),
                       schedule=DDPMSchedule.from_dict(meta["schedule"]), lora=meta["lora"],
                       text_model=meta["text_model"], library=meta["library"], slots=meta["slots"],
                       module_types=meta["module_types"], trained_on=meta["trained_on"],
                       task_descriptions=meta["task_descriptions"], base_embeddings=meta["base_embeddings"],
                       training=meta["training"], weights=tensors, base_embed_format=int(meta["base_embed_format"]),
                       families=meta.get("families"))
        except (KeyError, TypeError, ValueError) as err:
            raise LoragenError(f"{folder}: damaged generator checkpoint ({META_FILE}: {err!r})") from None


def slot_positions(slots: list[str], module_types: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(S,) layer and (S,) module-kind codes of the slots: what the generator is conditioned on per token."""
    layers = torch.tensor([int(m.group(1)) if (m := SLOT_LAYER.search(s)) else 0 for s in slots])
    modules = torch.tensor([module_types.index(s.rsplit(".", 1)[-1]) for s in slots])
    return layers, modules


@dataclass
class Family:
    """Adapters that fit one base shape: their library, slot positions and blend targets, all in the family's own
    coordinates (entry k is adapter members[k]); `columns` picks the family's adapters out of the network's keys
    (None: the family is the whole library)."""

    members: list[int]
    library: Library
    positions: tuple[torch.Tensor, torch.Tensor]
    targets: BlendTargets
    columns: torch.Tensor | None


def training_families(data, leave_out: str = "task") -> tuple[list[Family], list[str]]:
    """The training set's families (library.shape_families), each library at the LoRA scale its adapters were
    trained with, and the module kinds their slots use; a composing row masks the adapters sharing its `leave_out`
    (its task, or its base version)."""
    scale = data.lora["lora_alpha"] / data.lora["r"]
    groups = shape_families([a.state_dict for a in data.adapters])
    libraries = [Library.from_state_dicts([data.adapters[i].state_dict for i in group], [scale] * len(group))
                 for group in groups]
    module_types = sorted({m for library in libraries for m in library.slot_modules()})
    families = [Family(members=group, library=library, positions=slot_positions(library.slots, module_types),
                       targets=blend_targets(library, [_leave_out_key(data.adapters[i], leave_out) for i in group]),
                       columns=None if len(groups) == 1 else torch.tensor(group))
                for group, library in zip(groups, libraries)]
    return families, module_types


def _leave_out_key(adapter, leave_out: str) -> str:
    """What a composing row masks: every library adapter with the same key as the row's own."""
    return adapter.task if leave_out == "task" else adapter.base


@dataclass
class BlendTargets:
    """What each training adapter's rows are trained toward: `lookup` is one-hot at the adapter itself;
    `composed` is the nearest full-strength blend (library.best_blend) of the library without the adapters that
    share the adapter's key, its task or its base version (those masked out: `composed_allowed`)."""

    lookup: torch.Tensor             # (N, S, J)
    composed: torch.Tensor           # (N, S, J)
    composed_allowed: torch.Tensor   # (N, J) bools


def blend_targets(library: Library, keys: list[str]) -> BlendTargets:
    """Targets for a library whose entry j has key `keys[j]` (its task, or its base version: what is left out)."""
    size, slots = library.size, len(library.slots)
    lookup = torch.eye(size, dtype=torch.float64)[:, None, :].expand(size, slots, size).contiguous()
    allowed = torch.stack([torch.tensor([other != key for other in keys]) for key in keys])
    composed = torch.zeros(size, slots, size, dtype=torch.float64)
    for index in range(size):
        if allowed[index].any():  # a library of one key has nothing to compose from: the row stays zero
            composed[index] = best_blend(library.grams, lookup[index], allowed[index])
    return BlendTargets(lookup=lookup.float(), composed=composed.float(), composed_allowed=allowed)


class BlendTaskLoss:
    """The task loss for blends: each picked adapter's task, under one of its descriptions, generated (x0 read at a
    sampled timestep, as the diffusion loss sees it) and scored by the base on a batch of the task's examples."""

    def __init__(self, data, settings: GeneratorSettings, families: list[Family]):
        self.source = TaskExamples(data, settings.task_examples_per_step)
        self.data, self.settings = data, settings
        # adapter index -> (its family, its entry in the family's library)
        self.place = {index: (family, entry) for family in families for entry, index in enumerate(family.members)}

    def __call__(self, model: BlendGenerator, schedule: DDPMSchedule, base_rows: torch.Tensor, compose: torch.Tensor,
                 sampler: torch.Generator) -> torch.Tensor:
        picks = [self.source.with_examples[i] for i in torch.randint(
            len(self.source.with_examples), (self.settings.task_adapters_per_step,), generator=sampler).tolist()]
        losses = []
        for row, index in enumerate(picks):
            adapter = self.data.adapters[index]
            family, entry = self.place[index]
            batch = self.source.example_batch(adapter.base, adapter.task, sampler)
            texts = _pick_descriptions(self.data.text_embeddings[adapter.task],
                                       self.settings.task_descriptions_per_step, sampler)
            count = len(texts)
            targets = family.targets
            composes = compose[row] & targets.composed_allowed[entry].any()  # a lone task has nothing to compose
            x0, allowed = row_targets(targets, torch.tensor([entry] * count), composes.expand(count))
            predicted = predict_x0(model, schedule, family.positions, torch.stack(texts), base_rows[[index] * count],
                                   x0, allowed, sampler, columns=family.columns)
            base_model = self.source.base(adapter.base)[0]
            for coefficients in predicted:
                with applied_blend(base_model, family.library, coefficients):
                    losses.append(base_model(**batch).loss)
        return torch.stack(losses).mean()


def row_targets(targets: BlendTargets, picks: torch.Tensor, compose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, J) clean coefficients and (B, J) allowed entries of the picked rows."""
    x0 = torch.where(compose[:, None, None], targets.composed[picks], targets.lookup[picks])
    own_masked = targets.composed_allowed[picks]
    allowed = torch.where(compose[:, None], own_masked, torch.ones_like(own_masked))
    return x0, allowed


def predict_x0(model: BlendGenerator, schedule: DDPMSchedule, positions, text: torch.Tensor, base: torch.Tensor,
               x0: torch.Tensor, allowed: torch.Tensor, sampler: torch.Generator,
               columns: torch.Tensor | None = None) -> torch.Tensor:
    """The head's x0 for clean coefficients `x0` (B, S, J) noised at one random timestep per row; `columns`: the
    family's adapters among the network's keys (None: all of them)."""
    batch, slots, _ = x0.shape
    affinity = model.affinities(*positions, text, base)
    if columns is not None:
        affinity = affinity[:, :, columns]
    t = schedule.sample_timesteps(batch, generator=sampler)
    noise = torch.randn(x0.shape, generator=sampler)
    x_t = schedule.add_noise(x0, noise, t).float() * allowed[:, None, :]
    return model.denoise(x_t, affinity, t[:, None].expand(batch, slots), allowed[:, None, :].expand_as(x_t))


def train_blend_generator(data, settings: GeneratorSettings, run_dir: Path,
                          progress: Callable[[int, int, float], None] | None = None) -> BlendCheckpoint:
    """Train (or resume) a library-coordinates generator on `data` (a TrainingSet); returns its checkpoint, not yet
    registered. Its `library` rows carry each adapter's uid, task and base; the caller adds the weights hashes."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    families, module_types = training_families(data, settings.leave_out)
    tasks = [a.task for a in data.adapters]
    text_dim = next(iter(data.text_embeddings.values())).shape[1]
    base_table = {label: emb.float() for label, emb in data.base_embeddings.items()}
    base_rows = torch.stack([base_table[a.base] for a in data.adapters])
    config = blend_config_from_settings(settings, library_size=len(data.adapters),
                                        num_slots=max(len(f.library.slots) for f in families),
                                        num_module_types=len(module_types), text_dim=text_dim,
                                        base_dim=base_rows.shape[1])
    torch.manual_seed(settings.seed)
    model = BlendGenerator(config)
    model.library_text.copy_(torch.stack([data.text_embeddings[task].float().mean(0) for task in tasks]))
    model.condition.fit_base_scaling(torch.stack(list(base_table.values())))
    schedule = DDPMSchedule(prediction_type="sample")
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    sampler = torch.Generator().manual_seed(settings.seed * 1000)
    train_settings = asdict(settings)
    fingerprint = {"settings": train_settings, "adapters": [a.uid for a in data.adapters], "kind": "library"}
    task_loss = BlendTaskLoss(data, settings, families) if settings.task_loss_weight else None
    # Several families: each step trains one, drawn in proportion to its adapters.
    family_sizes = torch.tensor([float(len(f.members)) for f in families])
    start, losses, task_losses = 0, [], []
    state = resume_run(run_dir, fingerprint, model, optimizer)
    if state is not None:
        sampler.set_state(state["sampler"])
        start, losses, task_losses = state["step"], state["losses"], state.get("task_losses", [])

    model.train()
    began = time.perf_counter()
    for step in range(start + 1, settings.steps + 1):
        warmup = min(1.0, step / max(1, settings.steps // 20))
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate * warmup
        family = families[0] if len(families) == 1 else families[
            int(torch.multinomial(family_sizes, 1, generator=sampler))]
        targets, members = family.targets, torch.tensor(family.members)
        picks = torch.randint(len(family.members), (settings.batch_size,), generator=sampler)  # the family's entries
        can_compose = targets.composed_allowed.any(dim=1)
        compose = (torch.rand(settings.batch_size, generator=sampler) < settings.leave_one_out) & can_compose[picks]
        x0, allowed = row_targets(targets, picks, compose)
        text = torch.stack([_pick_description(data.text_embeddings[tasks[i]], sampler)
                            for i in members[picks].tolist()])
        predicted = predict_x0(model, schedule, family.positions, text, base_rows[members[picks]], x0, allowed,
                               sampler, columns=family.columns)
        loss = relative_blend_error(family.library.grams, predicted, targets.lookup[picks]).mean()
        diffusion = loss.item()
        if task_loss is not None and step % settings.task_loss_every == 0:
            compose_task = torch.rand(settings.task_adapters_per_step, generator=sampler) < settings.leave_one_out
            on_task = task_loss(model, schedule, base_rows, compose_task, sampler)
            task_losses.append([step, on_task.item()])
            loss = loss + settings.task_loss_weight * on_task
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(diffusion)
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            save_run(run_dir / STATE_FILE, fingerprint, step, model, optimizer, sampler, losses, task_losses)
        if progress:
            progress(step, settings.steps, sum(losses[-20:]) / len(losses[-20:]))
    model.eval()
    return BlendCheckpoint(
        config=config, schedule=schedule, lora=data.lora, text_model=data.text_model,
        library=[{"uid": a.uid, "task": a.task, "base": a.base} for a in data.adapters], slots=families[0].library.slots,
        module_types=module_types, trained_on=[{"uid": a.uid, "task": a.task, "base": a.base} for a in data.adapters],
        task_descriptions=data.task_descriptions,
        base_embeddings={label: emb.tolist() for label, emb in data.base_embeddings.items()},
        training={"settings": train_settings, "seed": settings.seed, "steps": settings.steps, "world_size": 1,
                  "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])), "loragen": __version__,
                  "final_task_loss": (sum(v for _, v in task_losses[-10:]) / len(task_losses[-10:])
                                      if task_losses else None),
                  "wall_time_s": round(time.perf_counter() - began, 2), "resumed_from_step": start},
        weights={k: v.detach().clone() for k, v in model.state_dict().items()},
        families=None if len(families) == 1 else [{"members": f.members, "slots": f.library.slots} for f in families])
