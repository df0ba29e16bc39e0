"""Train the generator on registered adapters; save and load its checkpoints (symmetric, like peft).

A checkpoint is a folder: `generator.safetensors` (weights) + `generator.json`
(architecture, token layout, normalisation stats, noise schedule, the LoRA
settings it produces, what it was trained on, seed and step). Everything needed
to generate is in it; nothing is read from the training run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from loragen import __version__
from loragen.atomic import staged_folder, torch_load_state, torch_save_atomic
from loragen.config import GeneratorSettings
from loragen.errors import LoragenError
from loragen.generator.conditioning import BASE_EMBED_FORMAT_VERSION
from loragen.generator.diffusion import DDPMSchedule
from loragen.generator.model import GeneratorConfig, ORALGenerator, generator_config_from_settings
from loragen.generator.sampling import token_positions
from loragen.generator.tokenizer import LoraLayout, NormStats, tokenize

WEIGHTS_FILE = "generator.safetensors"
META_FILE = "generator.json"
STATE_FILE = "state.pt"
STATE_KEYS = ("fingerprint", "step", "model", "optimizer", "sampler", "torch_rng", "losses")
ANCHOR_PREFIX = "anchor::"


@dataclass
class TrainingAdapter:
    """One registered adapter the generator learns from."""

    uid: str
    task: str
    base: str                      # base version label, e.g. smollm2-135m@v1
    state_dict: dict[str, torch.Tensor]


@dataclass
class TrainingSet:
    adapters: list[TrainingAdapter]
    task_descriptions: dict[str, list[str]]
    text_embeddings: dict[str, torch.Tensor]   # task -> (descriptions, text_dim)
    base_embeddings: dict[str, torch.Tensor]   # base label -> (base_dim,)
    lora: dict[str, Any]                       # rank, alpha, target_modules shared by all adapters
    text_model: str
    # For the task loss: each task's (prompt, answer) training examples (bundled tasks only; a task
    # without them trains on the diffusion loss alone), and how to load a base label's (model, tokenizer).
    task_examples: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    load_base: Callable[[str], tuple[Any, Any]] | None = field(default=None, repr=False)


@dataclass
class GeneratorCheckpoint:
    config: GeneratorConfig
    layout: LoraLayout
    stats: NormStats
    schedule: DDPMSchedule
    lora: dict[str, Any]
    text_model: str
    trained_on: list[dict[str, str]]            # uid, task, base of every training adapter
    task_descriptions: dict[str, list[str]]
    base_embeddings: dict[str, list[float]]
    training: dict[str, Any]                    # settings, seed, step, loss, loragen version
    weights: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    # The element-wise mean of the training adapters; tokens encode the residual from it.
    anchor: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    # The base-embedding format it was trained on: a base embedded in another format is another condition.
    base_embed_format: int = BASE_EMBED_FORMAT_VERSION

    def build_model(self) -> ORALGenerator:
        model = ORALGenerator(self.config)
        model.load_state_dict(self.weights)
        model.eval()
        return model

    def metadata(self) -> dict[str, Any]:
        return {
            "format": "loragen-generator/1", "config": self.config.to_dict(), "layout": self.layout.to_dict(),
            "stats": self.stats.to_dict(), "schedule": self.schedule.to_dict(), "lora": self.lora,
            "text_model": self.text_model, "trained_on": self.trained_on,
            "task_descriptions": self.task_descriptions, "base_embeddings": self.base_embeddings,
            "training": self.training, "base_embed_format": self.base_embed_format,
        }

    def save(self, folder: Path) -> Path:
        """Write the folder atomically (a sibling temp folder renamed into place)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        with staged_folder(folder, replace=True) as staging:
            tensors = {k: v.contiguous() for k, v in self.weights.items()}
            tensors.update({ANCHOR_PREFIX + k: v.contiguous() for k, v in self.anchor.items()})
            save_file(tensors, str(staging / WEIGHTS_FILE))
            (staging / META_FILE).write_text(json.dumps(self.metadata(), indent=1, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: Path) -> "GeneratorCheckpoint":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            meta = json.loads((folder / META_FILE).read_text())
            tensors = load_file(str(folder / WEIGHTS_FILE))
        except FileNotFoundError as err:
            raise LoragenError(f"{folder}: not a generator checkpoint ({Path(err.filename).name} missing)") from None
        except (json.JSONDecodeError, SafetensorError) as err:
            raise LoragenError(f"{folder}: damaged generator checkpoint ({err})") from None
        if meta.get("format") != "loragen-generator/1":
            raise LoragenError(f"{folder}: unknown generator checkpoint format {meta.get('format')!r}")
        try:
            return cls(config=GeneratorConfig.from_dict(meta["config"]), layout=LoraLayout.from_dict(meta["layout"]),
                       stats=NormStats.from_dict(meta["stats"]), schedule=DDPMSchedule.from_dict(meta["schedule"]),
                       lora=meta["lora"], text_model=meta["text_model"], trained_on=meta["trained_on"],
                       task_descriptions=meta["task_descriptions"], base_embeddings=meta["base_embeddings"],
                       training=meta["training"],
                       base_embed_format=int(meta.get("base_embed_format", 1)),  # 1: before it was recorded
                       weights={k: v for k, v in tensors.items() if not k.startswith(ANCHOR_PREFIX)},
                       anchor={k[len(ANCHOR_PREFIX):]: v for k, v in tensors.items() if k.startswith(ANCHOR_PREFIX)})
        except (KeyError, TypeError, ValueError) as err:  # a field missing, unknown or out of range
            raise LoragenError(f"{folder}: damaged generator checkpoint ({META_FILE}: {err!r})") from None


def common_layout(adapters: Sequence[TrainingAdapter], token_size: int) -> LoraLayout:
    """All training adapters must share one layout (same base architecture, rank and targets)."""
    if not adapters:
        raise LoragenError("no adapters to train on: fine-tune or ingest some first (loragen finetune --task …)")
    groups: dict[tuple, list[TrainingAdapter]] = {}
    for adapter in adapters:
        signature = tuple(sorted((k, tuple(v.shape)) for k, v in adapter.state_dict.items()))
        groups.setdefault(signature, []).append(adapter)
    if len(groups) > 1:
        described = "; ".join(f"{len(g)} like {g[0].uid[:12]} ({g[0].task} on {g[0].base})" for g in groups.values())
        raise LoragenError(f"the adapters have {len(groups)} different layouts (base architecture, rank or target "
                           f"modules): {described}. Choose one kind with --bases/--tasks")
    return LoraLayout.from_state_dict(adapters[0].state_dict, token_size)


@dataclass
class Prepared:
    """What training reads off a training set: the token layout and scaling, every adapter as tokens, and the
    seeded, untrained generator sized for them."""

    layout: LoraLayout
    anchor: dict[str, torch.Tensor]
    stats: NormStats
    tokens: torch.Tensor                  # (N, L, token_size): each adapter minus the anchor, tokenized
    masks: torch.Tensor                   # (N, L, token_size): 1 where a token holds a real value
    schedule: DDPMSchedule
    positions: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    base_rows: torch.Tensor               # (N, base_dim): each adapter's base condition
    model: ORALGenerator


def prepare_training(data: TrainingSet, settings: GeneratorSettings) -> Prepared:
    layout = common_layout(data.adapters, settings.token_size)
    anchor = mean_adapter(data.adapters) if settings.anchor else {}
    residuals = [subtract(a.state_dict, anchor) for a in data.adapters]
    # Scale by the adapters' own spread, not the residuals': matrices that barely differ
    # between tasks (the shared A) stay near zero instead of being blown up to unit noise.
    stats = NormStats.fit([a.state_dict for a in data.adapters], layout)
    tokenized = [tokenize(r, layout, stats) for r in residuals]
    text_dim = next(iter(data.text_embeddings.values())).shape[1]
    base_dim = next(iter(data.base_embeddings.values())).shape[0]
    config = generator_config_from_settings(settings, layout, text_dim=text_dim, base_dim=base_dim,
                                            num_adapters=len(data.adapters))
    base_table = {label: emb.float() for label, emb in data.base_embeddings.items()}
    torch.manual_seed(settings.seed)
    model = ORALGenerator(config)
    model.condition.fit_base_scaling(torch.stack(list(base_table.values())))
    return Prepared(layout=layout, anchor=anchor, stats=stats, tokens=torch.stack([t for t, _ in tokenized]),
                    masks=torch.stack([m for _, m in tokenized]).float(),
                    schedule=DDPMSchedule(prediction_type=settings.prediction_type), positions=token_positions(layout),
                    base_rows=torch.stack([base_table[a.base] for a in data.adapters]), model=model)


def train_generator(data: TrainingSet, settings: GeneratorSettings, run_dir: Path,
                    progress: Callable[[int, int, float], None] | None = None) -> GeneratorCheckpoint:
    """Train (or resume) a generator on `data`; returns the final checkpoint (not yet registered)."""
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    process_rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    prepared = prepare_training(data, settings)
    layout, anchor, stats, tokens, masks = (prepared.layout, prepared.anchor, prepared.stats, prepared.tokens,
                                            prepared.masks)
    schedule, positions, base_rows, model = prepared.schedule, prepared.positions, prepared.base_rows, prepared.model
    config = model.config
    # Data-parallel: the same initial weights on every rank (seeded in prepare_training), and after each backward every gradient
    # is averaged over the ranks (average_gradients). Not DistributedDataParallel: it averages only what flows
    # through its wrapper's forward, and the task loss runs the model outside that forward.
    optimizer = torch.optim.AdamW(_parameter_groups(model), lr=settings.learning_rate, weight_decay=0.0)
    sampler = torch.Generator().manual_seed(settings.seed * 1000 + process_rank)
    train_settings = asdict(settings)
    fingerprint = {"settings": train_settings, "adapters": [a.uid for a in data.adapters], "world": world}
    start, losses, task_losses = 0, [], []
    task_loss_step = TaskLossStep(data, settings, layout, stats, anchor) if settings.task_loss_weight else None
    state_path = run_dir / STATE_FILE
    state = resume_run(run_dir, fingerprint, model, optimizer)
    if state is not None:
        if world == 1:
            sampler.set_state(state["sampler"])  # bit-identical to an uninterrupted run
        else:
            sampler.manual_seed(settings.seed * 1000 + process_rank + 7919 * state["step"])
        start, losses = state["step"], state["losses"]
        task_losses = state.get("task_losses", [])

    model.train()
    began = time.perf_counter()
    for step in range(start + 1, settings.steps + 1):
        warmup = min(1.0, step / max(1, settings.steps // 20))
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate * warmup * group["lr_scale"]
        picks = torch.randint(len(data.adapters), (settings.batch_size,), generator=sampler)
        text = torch.stack([_pick_description(data.text_embeddings[data.adapters[i].task], sampler) for i in picks.tolist()])
        state_ids = picks if config.num_permutation_states else None
        loss = model(schedule, tokens[picks], masks[picks], positions, text, base_rows[picks], state_ids,
                         settings.tokens_per_step, sampler)
        diffusion = loss.item()
        if task_loss_step is not None and step % settings.task_loss_every == 0:
            on_task = task_loss_step(model, schedule, tokens, base_rows, positions, sampler)
            task_losses.append([step, on_task.item()])
            loss = loss + settings.task_loss_weight * on_task
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if distributed:
            average_gradients(model, world)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(diffusion)
        if process_rank == 0 and (step % settings.checkpoint_every == 0 or step == settings.steps):
            save_run(state_path, fingerprint, step, model, optimizer, sampler, losses, task_losses)
        if progress:
            progress(step, settings.steps, sum(losses[-20:]) / len(losses[-20:]))
    model.eval()
    return GeneratorCheckpoint(
        config=config, layout=layout, stats=stats, schedule=schedule, lora=data.lora, text_model=data.text_model,
        trained_on=[{"uid": a.uid, "task": a.task, "base": a.base} for a in data.adapters],
        task_descriptions=data.task_descriptions,
        base_embeddings={label: emb.tolist() for label, emb in data.base_embeddings.items()},
        training={"settings": train_settings, "seed": settings.seed, "steps": settings.steps, "world_size": world,
                  "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])), "loragen": __version__,
                  "final_task_loss": (sum(v for _, v in task_losses[-10:]) / len(task_losses[-10:])
                                      if task_losses else None),
                  "wall_time_s": round(time.perf_counter() - began, 2), "resumed_from_step": start},
        weights={k: v.detach().clone() for k, v in model.state_dict().items()}, anchor=anchor)


def resume_run(run_dir: Path, fingerprint: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer
               ) -> dict[str, Any] | None:
    """A run folder's saved state, once checked to be this run's (same settings and adapters), with the model,
    the optimizer and torch's RNG restored from it; None when the run starts fresh. The caller restores its own
    sampler and counters from the returned state."""
    state_path = Path(run_dir) / STATE_FILE
    if not state_path.is_file():
        return None
    state = torch_load_state(state_path, STATE_KEYS)
    if state["fingerprint"] != fingerprint:
        raise LoragenError(f"{run_dir} holds a generator run with other settings or adapters; "
                           "remove it or change the seed")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return state


def save_run(state_path: Path, fingerprint: dict, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             sampler: torch.Generator, losses: list, task_losses: list) -> None:
    """What `resume_run` reads, written atomically (a kill mid-write leaves the previous state)."""
    torch_save_atomic({"fingerprint": fingerprint, "step": step, "model": model.state_dict(),
                       "optimizer": optimizer.state_dict(), "sampler": sampler.get_state(),
                       "torch_rng": torch.get_rng_state(), "losses": losses, "task_losses": task_losses}, state_path)


def average_gradients(model: torch.nn.Module, world: int) -> None:
    """Replace each gradient by its mean over the ranks, one all-reduce per parameter. A parameter this step left
    without a gradient on this rank (not used at all, e.g. a permutation state) takes part with zeros so every rank
    makes the same calls; AdamW then still moves it by its momentum, where one process would have skipped it."""
    import torch.distributed as dist

    for parameter in model.parameters():
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad)
        parameter.grad /= world


class TaskExamples:
    """Where a task loss reads its examples: each task's (prompt, answer) training pairs, batched for a base, and
    the bases themselves, loaded once on first use, frozen, and kept for the run. Every random draw comes from the
    caller's sampler, so a resumed run takes the same draws."""

    def __init__(self, data: TrainingSet, examples_per_batch: int):
        self.examples = {task: list(pairs) for task, pairs in data.task_examples.items() if pairs}
        self.with_examples = [i for i, a in enumerate(data.adapters) if a.task in self.examples]
        if not self.with_examples:
            raise LoragenError("generator.task_loss_weight is set, but none of the training tasks has training "
                               "examples (only bundled tasks have them): set it to 0 or train on bundled tasks")
        if data.load_base is None:
            raise LoragenError("generator.task_loss_weight is set, but the training set cannot load its bases")
        self.data, self.examples_per_batch = data, examples_per_batch
        self._bases: dict[str, tuple[Any, Any]] = {}
        self._encoded: dict[tuple[str, str], list] = {}

    def base(self, label: str) -> tuple[Any, Any]:
        if label not in self._bases:
            model, tokenizer = self.data.load_base(label)
            model.eval()
            model.requires_grad_(False)
            self._bases[label] = (model, tokenizer)
        return self._bases[label]

    def example_batch(self, label: str, task: str, sampler: torch.Generator) -> dict[str, torch.Tensor]:
        from loragen.finetune import collate, encode_examples, pad_token_id

        _, tokenizer = self.base(label)
        if (label, task) not in self._encoded:
            self._encoded[label, task] = encode_examples(tokenizer, self.examples[task])
        encoded = self._encoded[label, task]
        picks = torch.randint(len(encoded), (self.examples_per_batch,), generator=sampler).tolist()
        return collate([encoded[i] for i in picks], pad_token_id(tokenizer))


class TaskLossStep:
    """One task-loss term per call: `batch_size` adapters of tasks that have examples, each under
    `task_descriptions_per_step` of its task's descriptions, each generated adapter scored by its
    base on one batch of `task_examples_per_step` of the task's training examples (TaskExamples).
    """

    def __init__(self, data: TrainingSet, settings: GeneratorSettings, layout: LoraLayout, stats: NormStats,
                 anchor: dict[str, torch.Tensor]):
        self.source = TaskExamples(data, settings.task_examples_per_step)
        self.with_examples = self.source.with_examples
        self.data, self.settings, self.layout, self.stats, self.anchor = data, settings, layout, stats, anchor
        self.lora_scale = data.lora["lora_alpha"] / data.lora["r"]

    def __call__(self, model: ORALGenerator, schedule: DDPMSchedule, tokens: torch.Tensor, base_rows: torch.Tensor,
                 positions: tuple[torch.Tensor, torch.Tensor, torch.Tensor], sampler: torch.Generator) -> torch.Tensor:
        from loragen.generator.task_loss import task_loss

        adapters = self.data.adapters
        chosen = [self.with_examples[i] for i in
                  torch.randint(len(self.with_examples), (self.settings.batch_size,), generator=sampler).tolist()]
        rows, texts, bases, batches = [], [], [], []
        for index in chosen:
            adapter = adapters[index]
            batch = self.source.example_batch(adapter.base, adapter.task, sampler)
            for text in _pick_descriptions(self.data.text_embeddings[adapter.task],
                                           self.settings.task_descriptions_per_step, sampler):
                rows.append(index)
                texts.append(text)
                bases.append(self.source.base(adapter.base)[0])
                batches.append(batch)
        rows_t = torch.tensor(rows)
        state_ids = rows_t if model.config.num_permutation_states else None
        return task_loss(model, schedule, self.layout, self.stats, self.anchor, self.lora_scale, positions,
                         torch.stack(texts), base_rows[rows_t], state_ids, bases, batches,
                         timestep=self.settings.task_loss_timestep, clean=tokens[rows_t], generator=sampler)


# The memory's per-token parameters (the full tables, or the factorised memory's codes) see a gradient only
# when their token is drawn for the loss (tokens_per_step of batch x tokens), so they learn at a larger step.
MEMORY_LR_SCALE = 30.0


def _parameter_groups(model: ORALGenerator) -> list[dict[str, Any]]:
    if model.memory is None:
        return [{"params": list(model.parameters()), "lr_scale": 1.0}]
    per_token = model.memory.per_token_parameters()
    others = [p for p in model.parameters() if all(p is not q for q in per_token)]
    return [{"params": others, "lr_scale": 1.0}, {"params": per_token, "lr_scale": MEMORY_LR_SCALE}]


def mean_adapter(adapters: Sequence[TrainingAdapter]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the training adapters.

    LoRA runs started from the same seed share most of their A matrices (random at
    initialisation, little changed by training); tokenizing the residual from this
    mean leaves the generator the part that differs between tasks and versions.
    """
    keys = adapters[0].state_dict.keys()
    return {k: torch.stack([a.state_dict[k].float() for a in adapters]).mean(0) for k in keys}


def subtract(state_dict: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() - anchor[k] if anchor else v.float() for k, v in state_dict.items()}


def _pick_descriptions(embeddings: torch.Tensor, count: int, generator: torch.Generator) -> list[torch.Tensor]:
    """`count` of a task's descriptions, all different while the task has that many."""
    order = []
    while len(order) < count:
        order += torch.randperm(embeddings.shape[0], generator=generator).tolist()
    return [embeddings[i].float() for i in order[:count]]


def _pick_description(embeddings: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each step sees one of the task's descriptions, so every phrasing leads to the task."""
    return embeddings[torch.randint(embeddings.shape[0], (1,), generator=generator).item()].float()


# ---------------------------------------------------------------- data-parallel training under torchrun

def join_process_group() -> int:
    """Under torchrun (WORLD_SIZE > 1) join the process group: gloo on CPU, NCCL on GPU. Returns the world size."""
    import os

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world


def distributed_rank() -> int:
    """This process's rank in the data-parallel group (0 without one); not a LoRA's rank."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def ranks_weight_digests(weights) -> list[str]:
    """sha256 of the weights on every process (one entry without distribution)."""
    import torch.distributed as dist

    from loragen.adapters import state_dict_digest

    mine = state_dict_digest(weights)
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    gathered: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return gathered
