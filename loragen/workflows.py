"""The product's workflows over the registry: load bases, fine-tune and evaluate adapters, train the generator,
generate adapters. The CLI, the main job and the benchmarks all go through these functions.

Each function takes a Registry and plain arguments, returns plain data, and
reports progress only through the callbacks it is given.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

from loragen.config import REFRESH_SAMPLES, FinetuneConfig, GeneratorSettings, LoraConfig
from loragen.errors import LoragenError, quoted
from loragen.evaluation import Score
from loragen.registry.models import Origin
from loragen.registry.store import BaseVersionInfo, Registered, Registry, check_name

if TYPE_CHECKING:
    from loragen.tasks.split import TaskSplit
    from loragen.tasks.suite import Task

Progress = Callable[[int, int, float], None]
Notify = Callable[[str], None]  # one status line for people ("loading smollm2-135m@v1 …")


# ---------------------------------------------------------------- bases and tasks

class LoadedBase(NamedTuple):
    model: Any            # a transformers causal LM, in eval mode
    tokenizer: Any
    version: BaseVersionInfo


def load_base(registry: Registry, ref: str | BaseVersionInfo, dtype: str = "float32") -> LoadedBase:
    """A registered base version loaded from the store (a GGUF file is dequantized to `dtype`)."""
    from loragen.bases import load_model

    version = ref if isinstance(ref, BaseVersionInfo) else registry.version(ref)
    model, tokenizer = load_model(registry.base_folder(version), version.gguf_file, dtype=dtype)
    return LoadedBase(model, tokenizer, version)


class BaseLoader:
    """Hands out loaded bases to a sequence of jobs, loading a version only when it differs from the last one.

    Only the last base is kept (SmolLM2-135M is about 0.5 GB in float32), so callers group their work by base.
    Pass one loader to several workflow calls to share a loaded base between them.
    """

    def __init__(self, registry: Registry):
        self.registry = registry
        self._loaded: LoadedBase | None = None

    def get(self, ref: str, notify: Notify | None = None) -> LoadedBase:
        version = self.registry.version(ref)
        if self._loaded is None or self._loaded.version.id != version.id:
            self._loaded = None  # let the previous base go before the next one is read
            if notify:
                notify(f"loading {version.label} …")
            self._loaded = load_base(self.registry, version)
        return self._loaded


def find_task(spec: str | Task) -> Task:
    """A bundled task by name, or a task folder laid out like the bundled ones (a Task is returned as it is)."""
    from loragen.tasks.suite import Task, get_task, is_folder, load_task_dir

    if isinstance(spec, Task):
        return spec
    if "/" in spec or is_folder(spec):
        return load_task_dir(spec)
    return get_task(spec)



def member_tasks(view: dict[str, Any]) -> list[str] | None:
    """A multi-task adapter's member tasks (from its provenance); None for a single task's adapter."""
    return (view.get("provenance") or {}).get("member_tasks")


def text_encoder(registry: Registry):
    from loragen.generator.conditioning import TextEncoder

    return TextEncoder(cache_path=registry.home / "cache" / "text-embeddings.safetensors")


def base_condition(registry: Registry, label: str):
    """The base-model condition of a version: computed from its weights once, kept in the registry with
    its embedding format, and computed again when the format has changed since."""
    import torch

    from loragen.generator.conditioning import BASE_EMBED_DIM, BASE_EMBED_FORMAT_VERSION, base_embedding_from_model

    cached = registry.cached_base_embedding(label, BASE_EMBED_FORMAT_VERSION)
    if cached is not None and len(cached) == BASE_EMBED_DIM:
        return torch.tensor(cached, dtype=torch.float32)
    model, _, version = load_base(registry, label)
    embedding = base_embedding_from_model(model).float()
    registry.store_base_embedding(version.label, embedding.tolist(), BASE_EMBED_FORMAT_VERSION)
    return embedding


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
    bundled = {task: _bundled_task(task) for task in names}
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
    return kept or split.training_descriptions(_bundled_task(task))


def train(registry: Registry, settings: GeneratorSettings, *, tasks: Sequence[str] | None = None,
          bases: Sequence[str] | None = None, held_out: Sequence[str] = (), split: TaskSplit | None = None,
          progress: Progress | None = None) -> tuple[Registered, dict[str, Any]]:
    """Train a generator on the registry's adapters and register its checkpoint (`split`: see collect_training_set)."""
    import hashlib
    import json

    from loragen.generator.training import META_FILE, WEIGHTS_FILE, train_generator

    data = collect_training_set(registry, tasks, bases, held_out, split)
    if split is not None:
        held_out = sorted(set(held_out) | set(split.held_out_tasks))
    world = join_process_group()
    key = hashlib.sha256(json.dumps([asdict(settings), sorted(a.uid for a in data.adapters), world]).encode()).hexdigest()[:12]
    run_dir = registry.home / "runs" / f"generator-{key}"
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
            final_loss=checkpoint.training["final_loss"])
    summary = {"id": registered.id, "created": registered.created, "adapters": len(data.adapters),
               "tasks": sorted(data.task_descriptions), "bases": sorted(data.base_embeddings),
               "held_out": sorted(held_out), "tokens_per_adapter": checkpoint.layout.num_tokens,
               "values_per_adapter": checkpoint.layout.num_values, "run_dir": str(run_dir), **checkpoint.training}
    summary.pop("settings", None)
    summary["weights_sha256_per_rank"] = digests
    return registered, summary


def join_process_group() -> int:
    """Under torchrun (WORLD_SIZE > 1) join the process group: gloo on CPU, NCCL on GPU. Returns the world size."""
    import os

    import torch
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
    import hashlib

    import torch.distributed as dist

    digest = hashlib.sha256()
    for key in sorted(weights):
        digest.update(key.encode() + weights[key].detach().cpu().contiguous().numpy().tobytes())
    mine = digest.hexdigest()
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    gathered: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return gathered


@dataclass
class LoadedGenerator:
    uid: str
    checkpoint: Any          # GeneratorCheckpoint
    model: Any               # ORALGenerator


def load_generator(registry: Registry, ref: str | None = None) -> LoadedGenerator:
    from loragen.generator.conditioning import BASE_EMBED_FORMAT_VERSION
    from loragen.generator.training import META_FILE, WEIGHTS_FILE, GeneratorCheckpoint

    folder, uid = registry.generator_folder(ref, weights_name=WEIGHTS_FILE, meta_name=META_FILE)
    checkpoint = GeneratorCheckpoint.load(folder)
    if checkpoint.base_embed_format != BASE_EMBED_FORMAT_VERSION:
        raise LoragenError(f"generator {uid[:12]} was trained on base embeddings of format {checkpoint.base_embed_format}, "
                           f"and this loragen computes format {BASE_EMBED_FORMAT_VERSION}: train a new one (loragen train)")
    return LoadedGenerator(uid=uid, checkpoint=checkpoint, model=checkpoint.build_model())


def sample_state_dict(generator: LoadedGenerator, text, base, *, seed: int, method: str, steps: int, eta: float,
                      progress: Callable[[int, int], None] | None = None):
    """One adapter's LoRA tensors from a condition; the same seed gives the same tensors."""
    import torch

    from loragen.generator.model import sample_tokens
    from loragen.generator.tokenizer import detokenize

    checkpoint = generator.checkpoint
    rng = torch.Generator().manual_seed(seed)
    state = None
    if checkpoint.config.num_permutation_states:  # RPG: one training state drawn at random
        state = torch.randint(checkpoint.config.num_permutation_states, (), generator=rng)
    positions = (checkpoint.layout.layer_index(), checkpoint.layout.module_index(), checkpoint.layout.slice_index())
    tokens = sample_tokens(generator.model, checkpoint.schedule, positions, text.float(), base.float(), state,
                           method=method, steps=None if method == "ddpm" else steps, eta=eta, generator=rng,
                           progress=progress)
    residual = detokenize(tokens, checkpoint.layout, checkpoint.stats)
    return {k: v + checkpoint.anchor[k] if checkpoint.anchor else v for k, v in residual.items()}


# Latin letters that Unicode decomposition leaves whole; spelled the way German, Danish, Polish, … write them in ASCII.
_LATIN_LETTERS_TO_ASCII = str.maketrans({
    "ß": "ss", "ẞ": "SS", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "ł": "l", "Ł": "L",
    "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "TH", "ı": "i"})
SLUG_LENGTH = 60


def slug(text: str) -> str:
    """The registry name `generate` gives a free description: its words in ASCII, joined by '-'.

    Accented Latin letters keep their base letter ("Übersetze" -> "ubersetze"). Registry names stay ASCII
    (see store.NAME_PATTERN), so letters with no ASCII spelling (Greek, Cyrillic, CJK, …) cannot be kept;
    then a hash of the whole description is appended ("task-3f2a9c1b"), so two descriptions that differ
    only in those letters still get different names.
    """
    import hashlib
    import unicodedata

    decomposed = unicodedata.normalize("NFKD", text.translate(_LATIN_LETTERS_TO_ASCII))
    folded = "".join(c for c in decomposed if not unicodedata.combining(c))
    name = "-".join(re.findall(r"[a-z0-9]+", folded.lower()))[:SLUG_LENGTH].strip("-")
    letters_lost = any(c.isalnum() and not c.isascii() for c in folded)
    if name and not letters_lost:
        return name
    canonical = " ".join(unicodedata.normalize("NFC", text).lower().split())
    return f"{name or 'task'}-{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


@dataclass
class Candidate:
    seed: int
    score: float | None = None
    metric: str | None = None
    kind: str = "generated"   # or "shifted": refresh's carried-over adapter moved by the generator's predicted change


@dataclass
class GenerateResult:
    id: str
    created: bool
    task: str
    base: str
    condition: str
    seed: int
    generator: str
    seconds: float
    candidates: list[Candidate] = field(default_factory=list)
    validated_on: str | None = None   # the task whose validation split picked among the candidates


MAX_SEED = 2**63 - 1  # torch.Generator's seeds


def generate(registry: Registry, settings: GeneratorSettings, *, task: str, base_ref: str, seed: int = 0,
             samples: int = 1, name: str | None = None, generator_ref: str | None = None,
             select_limit: int = 50, validate_on: str | None = None, replaces: str | None = None,
             loaded: LoadedGenerator | None = None,
             progress: Callable[[int, int], None] | None = None) -> GenerateResult:
    """Generate an adapter for `task` (a registered task name or a free description) on a base version.

    With samples > 1 each candidate is scored with lm-eval on a validation split and the best is
    registered (RPG/ORAL-style selection): `validate_on`'s (a bundled task or a task folder), else that of
    the bundled task the adapter is registered under. Every input is checked before the generator is
    loaded or anything is sampled.
    """
    drawn = draw(registry, settings, task=task, base_ref=base_ref, seed=seed, samples=samples, name=name,
                  generator_ref=generator_ref, loaded=loaded, progress=progress, validate_on=validate_on,
                  select_limit=select_limit)
    validation = drawn.validation
    best = 0
    if validation is not None:
        model, tokenizer, _ = load_base(registry, drawn.version.label)
        scores = _validation_scores(model, tokenizer, validation, drawn.folders(registry), select_limit)
        for candidate, score in zip(drawn.candidates, scores):
            candidate.score, candidate.metric = score.value, score.metric
        best = max(range(len(drawn.candidates)), key=lambda i: (drawn.candidates[i].score, -i))
        drawn.provenance["validation"] = {"task": validation.name, "folder": str(validation.dir),
                                          "split": "validation", "limit": select_limit}
    registered = _register_generated(registry, drawn, best, replaces)
    return GenerateResult(id=registered.id, created=registered.created, task=drawn.task_name,
                          base=drawn.version.label, condition=drawn.condition, seed=drawn.candidates[best].seed,
                          generator=drawn.generator.uid[:12], seconds=drawn.seconds, candidates=drawn.candidates,
                          validated_on=validation.name if validation is not None else None)


@dataclass
class Drawn:
    """Generated candidates for one task on one base version, not yet registered."""

    task_name: str
    version: BaseVersionInfo
    condition: str                  # the description the generator was given
    descriptions: list[str]         # registered with the task when it is new
    generator: LoadedGenerator
    candidates: list[Candidate]
    state_dicts: list[dict]
    seconds: float
    provenance: dict[str, Any]
    new_task: bool                  # the registry has no task of this name yet
    validation: Any = None          # the Task whose validation split picks among several samples, or None
    _tmp: Any = None

    def lora_config(self) -> dict[str, Any]:
        from loragen.adapters import lora_config_dict

        lora = self.generator.checkpoint.lora
        return lora_config_dict(lora["r"], lora["lora_alpha"], lora["target_modules"])

    def folders(self, registry: Registry) -> list[Path]:
        """Each candidate as a PEFT folder in a temporary folder of the home (removed with this object)."""
        from loragen.adapters import write_adapter_folder

        self._tmp = tempfile.TemporaryDirectory(prefix="loragen-candidates-", dir=registry.home)
        return [write_adapter_folder(Path(self._tmp.name) / f"c{i}", sd, self.lora_config())
                for i, sd in enumerate(self.state_dicts)]


def draw(registry: Registry, settings: GeneratorSettings, *, task: str, base_ref: str, seed: int, samples: int,
          name: str | None = None, generator_ref: str | None = None, loaded: LoadedGenerator | None = None,
          progress: Callable[[int, int], None] | None = None, validate_on: str | None = None,
          select_limit: int = 50) -> Drawn:
    """Check the request (the validation set for several samples included) before loading the generator, then
    sample `samples` adapters (seeds seed, seed+1, …)."""
    import time

    spec = " ".join(task.split())
    if not spec:
        raise LoragenError("the task is empty: give a registered task name or a plain-language description")
    if samples < 1:
        raise LoragenError(f"samples must be at least 1 (got {samples})")
    if not 0 <= seed <= MAX_SEED - (samples - 1):
        raise LoragenError(f"seed must be between 0 and {MAX_SEED - (samples - 1)} (got {seed})")
    registered_tasks = {t["name"]: t["descriptions"] for t in registry.list_registered_tasks()}
    known = spec in registered_tasks
    described = _bundled_task(spec)  # the spec names a bundled task
    if name is not None:
        task_name = name
    elif known:
        task_name = spec
    else:
        task_name = described.name if described else slug(spec)
    check_name("task", task_name)
    bundled = described or _bundled_task(task_name)
    validation = _validation_task(bundled, task_name, samples, validate_on, select_limit)
    version = registry.version(base_ref)

    generator = loaded or load_generator(registry, generator_ref)
    condition, descriptions = spec, [spec]
    if known:  # the description the generator learnt the task by
        condition = (generator.checkpoint.task_descriptions.get(spec) or registered_tasks[spec] or [spec])[0]
    elif described:  # a bundled task no adapter was made for yet: described as the suite describes it
        condition, descriptions = described.descriptions[0], described.descriptions
    text = text_encoder(registry).encode([condition])[0]
    base = base_condition(registry, version.label)

    began = time.perf_counter()
    seeds = [seed + i for i in range(samples)]
    state_dicts = [sample_state_dict(generator, text, base, seed=s, method=settings.sample_method,
                                     steps=settings.sample_steps, eta=settings.eta, progress=progress) for s in seeds]
    provenance = {"generator": generator.uid, "generator_step": generator.checkpoint.training["steps"],
                  "condition": condition, "base": version.label, "method": settings.sample_method,
                  "steps": settings.sample_steps if settings.sample_method == "ddim"
                  else generator.checkpoint.schedule.num_train_timesteps, "eta": settings.eta}
    return Drawn(task_name=task_name, version=version, condition=condition,
                  descriptions=descriptions, generator=generator, candidates=[Candidate(seed=s) for s in seeds],
                  state_dicts=state_dicts, seconds=time.perf_counter() - began, provenance=provenance,
                  new_task=task_name not in registered_tasks, validation=validation)


def _register_generated(registry: Registry, drawn: Drawn, best: int, replaces: str | None,
                        extra: dict[str, Any] | None = None) -> Registered:
    from loragen.adapters import write_adapter_folder

    chosen = drawn.candidates[best]
    provenance = {**drawn.provenance, "seed": chosen.seed, "candidates": [c.__dict__ for c in drawn.candidates],
                  "generation_seconds": round(drawn.seconds, 3), **(extra or {})}
    with tempfile.TemporaryDirectory(prefix="loragen-generated-", dir=registry.home) as tmp:
        folder = write_adapter_folder(Path(tmp) / "adapter", drawn.state_dicts[best], drawn.lora_config())
        return registry.ingest(folder, drawn.version.label, drawn.task_name,
                               drawn.descriptions if drawn.new_task else [], origin=Origin.generated,
                               replaces=replaces, provenance=provenance)


def _bundled_task(name: str):
    """The bundled task called `name` (or by its lm-eval name), or None."""
    from loragen.errors import NotFound
    from loragen.tasks.suite import get_task

    try:
        return get_task(name)
    except NotFound:
        return None


def _validation_task(bundled, task_name: str, samples: int, validate_on: str | None, limit: int):
    """The task whose validation split picks the best of `samples` candidates, or None for one sample.

    `validate_on` names a bundled task or a task folder; without it the bundled task the generation is for
    (`bundled`) is used. Decided before any sampling, so a free description with --samples 4 fails at once.
    """
    if samples == 1:
        if validate_on is not None:
            raise LoragenError("--validate-on picks the best of several candidates: use it with --samples 2 or more")
        return None
    if limit < 1:
        raise LoragenError(f"the selection limit must be at least 1 validation example per candidate (got {limit})")
    if validate_on is None:
        if bundled is None:
            raise LoragenError(
                f"--samples {samples} keeps the best candidate on a validation split, and there is no bundled task "
                f"named {quoted(task_name)}: pass --validate-on TASK|FOLDER (a bundled task, or a task folder with "
                "validation.jsonl), or use --samples 1")
        task = bundled
    else:
        task = find_task(validate_on)  # the rule of `finetune --task`: a bundled task or a task folder
    if not task.declares_split("validation"):
        raise LoragenError(f"task {task.name!r} ({task.yaml_path()}) declares no validation split in its "
                           "dataset_kwargs.data_files, so its candidates cannot be compared")
    if not task.records("validation"):
        raise LoragenError(f"task {task.name!r} has an empty validation split ({task.dir / 'validation.jsonl'})")
    return task


def _validation_scores(model, tokenizer, task, folders: Sequence[Path], limit: int) -> list[Score]:
    """Each adapter folder's score on the task's validation split (the first `limit` examples), on one loaded base."""
    from loragen.evaluation import attached, evaluate

    scores = []
    for folder in folders:
        with attached(model, folder) as peft_model:
            [score] = evaluate(peft_model, tokenizer, [task], split="validation", limit=limit)
        scores.append(score)
    return scores


@dataclass
class RefreshItem:
    task: str
    base: str                      # the newest version, which gets the new adapter
    replaces: str | None           # the adapter it succeeds (on an earlier version)
    replaces_base: str | None
    action: str                    # "generate"; then "generated" or "carried over"; or "skip: …"
    id: str | None = None
    seconds: float | None = None
    # How the winner was chosen: "validation" (best of the carried-over adapter and the samples on the task's
    # validation split), or why not: "no validation data", "not asked (--no-validate)".
    chosen_by: str | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every candidate and its validation score
    shift_skipped: str | None = None  # why no shifted candidate was drawn, when validating with shift on
    winner: int | None = None      # the index in `candidates` of the one registered (0: the carried-over adapter)
    scores: dict[str, float] = field(default_factory=dict)   # with --eval: old_on_new / zero_shot / refreshed


def plan_refresh(registry: Registry, *, base: str | None = None, tasks: Sequence[str] | None = None) -> list[RefreshItem]:
    """For the newest version of each base (or of `base`, or the version `base` names as NAME@vN): every task that
    has an adapter on an earlier version."""
    items = []
    for label in _newest_versions(registry, base):
        name, _ = label.split("@")
        versions = {row["name"]: row["version"] for row in registry.list_bases() if row["base"] == name}
        newest = versions[label]
        # A multi-task LoRA's group name is no task the generator can be asked for: such a baseline is retrained.
        adapters = [a for a in registry.list_adapters() if a["base"] in versions and (not tasks or a["task"] in tasks)
                    and not member_tasks(a)]
        for task in sorted({a["task"] for a in adapters}):
            earlier = [a for a in adapters if a["task"] == task and versions[a["base"]] < newest]
            if not earlier:
                continue
            # The adapter to succeed: from the latest earlier version, the newest one made there.
            predecessor = max(earlier, key=lambda a: (versions[a["base"]], a["created_at"]))
            existing = [a for a in adapters if a["task"] == task and a["base"] == label
                        and a["origin"] in ("generated", "carried_over")]
            action = (f"skip: {existing[-1]['id']} already {existing[-1]['origin'].replace('_', ' ')} for {label}"
                      if existing else "generate")
            items.append(RefreshItem(task=task, base=label, replaces=predecessor["id"], replaces_base=predecessor["base"],
                                     action=action, id=existing[-1]["id"] if existing else None))
    return items


def _newest_versions(registry: Registry, base: str | None) -> list[str]:
    rows = registry.list_bases()
    if base and "@" in base:  # one version, e.g. a release between others whose adapters are wanted too
        version = registry.version(base)
        if version.version == 1:
            raise LoragenError(f"{version.label} is the first version: there is nothing earlier to refresh from")
        return [version.label]
    if base:
        return [registry.version(base).label]
    newest: dict[str, dict] = {}
    for row in rows:
        if row["base"] not in newest or row["version"] > newest[row["base"]]["version"]:
            newest[row["base"]] = row
    return sorted(row["name"] for row in newest.values() if row["version"] > 1)


def refresh(registry: Registry, settings: GeneratorSettings, *, base: str | None = None,
            tasks: Sequence[str] | None = None, seed: int = 0, samples: int = REFRESH_SAMPLES, validate: bool = True,
            shift: bool = True, select_limit: int = 50, evaluate_limit: int | None = None, run_eval: bool = False,
            progress: Callable[[int, int], None] | None = None) -> list[RefreshItem]:
    """Give each task an adapter for the newest base version; idempotent (done tasks are skipped).

    With `validate` and a task that has validation data (a bundled task), the candidates are the predecessor
    carried over unchanged and `samples` generated adapters; the best on the new version's validation split
    wins, a tie going to the carried-over one (the known quantity). With `shift`, one more candidate: the
    carried-over adapter moved by the change the generator predicts between the two versions (generator.shift,
    drawn with the first sample's seed). A carried-over winner is registered as the
    new version's adapter (origin carried_over, `replaces` lineage); either way the provenance lists every
    candidate's score. Without validation data, or with validate=False, one generated sample is registered.
    """
    if samples < 1:  # checked here too: a task without validation data draws one sample whatever `samples` says
        raise LoragenError(f"samples must be at least 1 (got {samples})")
    if select_limit < 1:
        raise LoragenError(f"the selection limit must be at least 1 validation example (got {select_limit})")
    items = plan_refresh(registry, base=base, tasks=tasks)
    todo = [item for item in items if item.action == "generate"]
    generator = load_generator(registry) if todo else None  # once, not once per task
    loader = BaseLoader(registry)
    for index, item in enumerate(sorted(todo, key=lambda i: i.base)):  # grouped by base: one load each
        validation = _refresh_validation(item.task) if validate else None
        item.chosen_by = ("validation" if validation is not None
                          else "no validation data" if validate else "not asked (--no-validate)")
        drawn = draw(registry, settings, task=item.task, base_ref=item.base, seed=seed,
                      samples=samples if validation is not None else 1, loaded=generator)
        if validation is not None and shift:
            item.shift_skipped = _add_shifted_candidate(registry, settings, drawn, item)
        item.seconds = round(drawn.seconds, 3)
        if validation is None:
            registered = _register_generated(registry, drawn, 0, item.replaces, {"refresh": {"chosen_by": item.chosen_by}})
            item.action, item.id = "generated", registered.id
        else:
            item.action, item.id, item.candidates, item.winner = _refresh_by_validation(
                registry, loader, item, drawn, validation, select_limit)
        if progress:
            progress(index + 1, len(todo))
    if run_eval:
        _evaluate_refresh(registry, [item for item in items if item.id], evaluate_limit, loader)
    return items


def _add_shifted_candidate(registry: Registry, settings: GeneratorSettings, drawn: Drawn, item: RefreshItem
                           ) -> str | None:
    """Append the shifted candidate (draw_shifted, with the first sample's seed) to the drawn candidates; returns
    why not when it cannot be made."""
    import time

    began = time.perf_counter()
    try:
        shifted = draw_shifted(registry, settings, drawn, item.replaces, item.replaces_base)
    except LoragenError as error:
        return str(error)
    drawn.candidates.append(Candidate(seed=drawn.candidates[0].seed, kind="shifted"))
    drawn.state_dicts.append(shifted)
    drawn.seconds += time.perf_counter() - began
    return None


def draw_shifted(registry: Registry, settings: GeneratorSettings, drawn: Drawn, carried: str, carried_base: str
                 ) -> dict:
    """carried + (drawn's first sample - the same description and seed drawn on `carried_base`): the carried-over
    adapter moved by the change the generator predicts between the two versions (loragen.generator.shift).
    A LoragenError says why not when the carried adapter's LoRA is not the generator's."""
    from loragen.adapters import load_weights, read_adapter_folder
    from loragen.generator.shift import shift_adapter

    folder = registry.adapter_folder(carried)
    lora = drawn.generator.checkpoint.lora
    carried_lora = read_adapter_folder(folder)
    if (carried_lora.rank, carried_lora.alpha) != (lora["r"], lora["lora_alpha"]):
        raise LoragenError(f"{carried} is a rank-{carried_lora.rank} alpha-{carried_lora.alpha:g} LoRA; the generator "
                           f"makes rank {lora['r']} alpha {lora['lora_alpha']:g}")
    text = text_encoder(registry).encode([drawn.condition])[0]
    on_old = sample_state_dict(drawn.generator, text, base_condition(registry, carried_base),
                               seed=drawn.candidates[0].seed, method=settings.sample_method,
                               steps=settings.sample_steps, eta=settings.eta)
    try:
        return shift_adapter(load_weights(folder / "adapter_model.safetensors"), drawn.state_dicts[0], on_old)
    except ValueError as error:
        raise LoragenError(str(error)) from None


def _refresh_validation(task_name: str):
    """The bundled task of that name if it has validation examples to choose by, else None."""
    task = _bundled_task(task_name)
    if task is None or not task.declares_split("validation") or not task.records("validation"):
        return None
    return task


def _refresh_by_validation(registry: Registry, loader: BaseLoader, item: RefreshItem, drawn: Drawn, validation,
                           limit: int) -> tuple[str, str, list[dict[str, Any]], int]:
    """Score the carried-over predecessor and the generated samples on the new version; register the winner."""
    model, tokenizer, _ = loader.get(item.base)
    folders = [registry.adapter_folder(item.replaces)] + drawn.folders(registry)
    scores = _validation_scores(model, tokenizer, validation, folders, limit)
    candidates = [{"kind": "carried_over", "adapter": item.replaces, "from_base": item.replaces_base}]
    candidates += [{"kind": c.kind, "seed": c.seed} for c in drawn.candidates]
    for candidate, score in zip(candidates, scores):
        candidate.update(score=score.value, metric=score.metric)
    for candidate, row in zip(drawn.candidates, candidates[1:]):
        candidate.score, candidate.metric = row["score"], row["metric"]
    best = max(range(len(candidates)), key=lambda i: (candidates[i]["score"], -i))  # ties: the earlier, carried over first
    record = {"refresh": {"chosen_by": "validation", "winner": candidates[best]["kind"], "candidates": candidates,
                          "validation": {"task": validation.name, "split": "validation", "limit": limit}}}
    if any(c.kind == "shifted" for c in drawn.candidates):  # what the shifted candidate was moved from
        record["refresh"]["shifted_from"] = {"adapter": item.replaces, "base": item.replaces_base}
    elif item.shift_skipped:
        record["refresh"]["shift_skipped"] = item.shift_skipped
    if best > 0:
        registered = _register_generated(registry, drawn, best - 1, item.replaces, record)
        return "generated", registered.id, candidates, best
    old = registry.adapter_files(item.replaces)[2]
    # What drew the generated candidates it beat (generator, condition, sampler), so the comparison can be redone.
    drew = {key: drawn.provenance[key] for key in ("generator", "generator_step", "condition", "method", "steps", "eta")}
    registered = registry.ingest(folders[0], item.base, item.task, [], origin=Origin.carried_over,
                                 replaces=item.replaces,
                                 provenance={"carried_over_from": old["uid"], "from_base": item.replaces_base,
                                             "base": item.base, "candidates_drawn_by": drew, **record})
    return "carried over", registered.id, candidates, 0


def _evaluate_refresh(registry: Registry, items: Sequence[RefreshItem], limit: int | None, loader: BaseLoader) -> None:
    """Before/after on the new version: the old adapter carried over, zero-shot, and the refreshed adapter."""
    from loragen.evaluation import attached, evaluate

    for item in sorted(items, key=lambda i: i.base):
        task = _bundled_task(item.task)
        if task is None:
            continue  # no bundled data to score it on
        model, tokenizer, _ = loader.get(item.base)
        [zero] = evaluate(model, tokenizer, [task], limit=limit)
        registry.record_scores(item.base, None, [zero], {"refresh": True, "limit": limit})
        item.scores["zero_shot"] = zero.value
        for key, ref in (("old_on_new", item.replaces), ("refreshed", item.id)):
            with attached(model, registry.adapter_folder(ref)) as peft_model:
                [score] = evaluate(peft_model, tokenizer, [task], limit=limit)
            item.scores[key] = score.value
        # Stored under the refreshed adapter only: the old one belongs to another version.
        registry.record_scores(item.base, item.id, [score], {"refresh": True, "limit": limit})


# ---------------------------------------------------------------- fine-tuning

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
    if group in member_names or _bundled_task(group):
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


# ---------------------------------------------------------------- evaluation

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
    bundled = [_bundled_task(name) for name in names]
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
    from loragen.evaluation import attached, check_eval_options, evaluate

    check_eval_options(split, limit, batch_size)
    if not targets:
        raise LoragenError("nothing to evaluate: give adapter ids or a base version")
    jobs: dict[str, list[tuple[str | None, list[Task]]]] = {}
    for target in targets:
        if target.adapter and target.base:
            raise LoragenError("an evaluation target is an adapter (on its own base) or a base, not both")
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
        for adapter, tasks in work:
            if notify:
                notify(f"evaluating {adapter or 'zero-shot'} on {', '.join(t.name for t in tasks)} …")
            if adapter:
                with attached(model, registry.adapter_folder(adapter)) as peft_model:
                    scores = evaluate(peft_model, tokenizer, tasks, split=split, limit=limit, batch_size=batch_size)
            else:
                scores = evaluate(model, tokenizer, tasks, split=split, limit=limit, batch_size=batch_size)
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
