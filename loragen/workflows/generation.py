"""Generate adapters: load a trained generator, draw candidates for a task on a base version, choose one on a
validation split when there are several, and register it (origin=generated)."""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from loragen.config import SELECT_LIMIT, GeneratorSettings
from loragen.errors import LoragenError, quoted
from loragen.inputs import check_text
from loragen.registry.models import Origin
from loragen.registry.store import BaseVersionInfo, Registered, Registry, check_name
from loragen.workflows.bases import base_condition, bundled_task, find_task, load_base, text_encoder
from loragen.workflows.evaluate import validation_scores

if TYPE_CHECKING:
    from loragen.generator.sampling import LoadedGenerator

MAX_SEED = 2**63 - 1  # torch.Generator's seeds


def load_generator(registry: Registry, ref: str | None = None) -> LoadedGenerator:
    """A registered generator, ready to sample: its checkpoint, its network and, for a library generator, its
    library adapters loaded from the registry and checked against the hashes it recorded (one line if one is
    missing or changed)."""
    from loragen.generator.checkpoints import load_checkpoint
    from loragen.generator.conditioning import BASE_EMBED_FORMAT_VERSION
    from loragen.generator.sampling import LoadedGenerator
    from loragen.generator.training import META_FILE, WEIGHTS_FILE

    folder, uid = registry.generator_folder(ref, weights_name=WEIGHTS_FILE, meta_name=META_FILE)
    checkpoint = load_checkpoint(folder)
    if checkpoint.base_embed_format != BASE_EMBED_FORMAT_VERSION:
        raise LoragenError(f"generator {uid[:12]} was trained on base embeddings of format {checkpoint.base_embed_format}, "
                           f"and this loragen computes format {BASE_EMBED_FORMAT_VERSION}: train a new one (loragen train)")
    library, families = None, []
    if getattr(checkpoint, "representation", "raw") == "library":
        families = _registered_families(registry, uid, checkpoint)
        if len(families) == 1:
            library = families[0][0]
    return LoadedGenerator(uid=uid, checkpoint=checkpoint, model=checkpoint.build_model(), library=library,
                           families=families if len(families) > 1 else [])


def _registered_families(registry: Registry, uid: str, checkpoint) -> list[tuple]:
    """A library generator's (Library, columns, slot positions) per family, from the registry's adapters in the
    checkpoint's order. One family: its Library over the whole library, columns and positions None (the
    checkpoint's own)."""
    import torch

    from loragen.adapters import load_weights
    from loragen.generator.blend_training import slot_positions
    from loragen.generator.library import Library

    rows = registry.generator_library(uid)  # refuses a missing or changed adapter in one line
    if [row["uid"] for row in rows] != [entry["uid"] for entry in checkpoint.library]:
        raise LoragenError(f"generator {uid[:12]}: the registry's record of its library does not match its checkpoint; "
                           "train a new generator (loragen train)")
    scale = checkpoint.lora["lora_alpha"] / checkpoint.lora["r"]
    state_dicts = [load_weights(row["weights_path"]) for row in rows]
    members = checkpoint.family_members()
    families = []
    for indices, slots in members:
        library = Library.from_state_dicts([state_dicts[i] for i in indices], [scale] * len(indices))
        if library.slots != slots:
            raise LoragenError(f"generator {uid[:12]}: its library adapters target other modules than it was "
                               "trained on")
        families.append((library, None, None) if len(members) == 1 else
                        (library, torch.tensor(indices), slot_positions(slots, checkpoint.module_types)))
    return families


def fitted_generator(generator: LoadedGenerator, version: BaseVersionInfo) -> LoadedGenerator:
    """The generator as it serves `version`: a library generator's family whose adapters fit the base's modules (one
    family: its only library, checked). A base none fits is refused in one line, before anything is drawn: the base
    condition alone cannot change an adapter's shapes."""
    from dataclasses import replace

    if generator.library is None and not generator.families:
        return generator  # raw tokens: its layout is checked when the adapter is assembled
    families = generator.families or [(generator.library, None, None)]
    for library, columns, positions in families:
        if not library.misfits(version.linear_shapes):
            return replace(generator, library=library, columns=columns, positions=positions, families=[])
    misfits = families[0][0].misfits(version.linear_shapes)
    which = "its library's adapters do not" if len(families) == 1 else f"none of its {len(families)} libraries' adapters"
    raise LoragenError(f"generator {generator.uid[:12]} cannot make adapters for {version.label}: {which} fit that "
                       f"base's modules ({len(misfits)} of {len(families[0][0].slots)}, e.g. {misfits[0]}); train a "
                       f"generator on {version.name}'s adapters (loragen train)")


def sample_state_dict(generator: LoadedGenerator, text, base, **options) -> dict:
    """The generator's draw (loragen.generator.sampling.sample_state_dict: seed, method, steps, eta, progress),
    imported on first use so that importing the workflows loads no torch."""
    from loragen.generator import sampling

    return sampling.sample_state_dict(generator, text, base, **options)


def _familiarity_of(encoder, condition, generator: LoadedGenerator) -> dict[str, Any]:
    """How near the condition's embedding is to the generator's training tasks, as their descriptions in its
    checkpoint embed with the same encoder (loragen.generator.familiarity; the record provenance keeps). The
    encoder's cache holds them already when the generator was trained on this registry."""
    from loragen.config import FAMILIARITY_THRESHOLD
    from loragen.generator.familiarity import familiarity

    known = {task: encoder.encode(texts or [task]) for task, texts in generator.checkpoint.task_descriptions.items()}
    return familiarity(condition, known, FAMILIARITY_THRESHOLD).record()


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


# ---------------------------------------------------------------- few-shot refinement (`generate --examples`)

@dataclass
class RefineRequest:
    """Refine the drawn blend on `shots` examples of `examples` (a bundled task, a task folder, or a JSONL file of
    task records), keeping it only if the loss on up to `held_back` other examples goes down."""

    examples: str
    shots: int
    held_back: int
    steps: int
    learning_rate: float


def read_examples(spec: str) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from a bundled task's or task folder's training split, or from a .jsonl file of records
    in the bundled tasks' format ({"prompt", "target"} or {"prompt", "choices", "label"})."""
    import json

    from loragen.tasks.suite import prompt_and_answer

    path = Path(spec)
    if path.suffix == ".jsonl" and path.is_file():
        pairs = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                pairs.append(prompt_and_answer(json.loads(line)))
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
                raise LoragenError(f"{path}:{number}: not a task record with prompt and target ({err!r})") from None
        if not pairs:
            raise LoragenError(f"{path} holds no examples")
        return pairs
    return find_task(spec).examples("train")


# ---------------------------------------------------------------- candidates and the choice between them

CARRIED_OVER = "carried_over"


@dataclass
class Candidate:
    """One adapter in the running for a task on a base version: a generated sample ("generated"), refresh's
    carried-over adapter moved by the generator's predicted change ("shifted"), or refresh's predecessor itself,
    unchanged ("carried_over"). Its record (every field) goes into the winner's provenance."""

    seed: int | None = None          # the sampling seed; None for the carried-over adapter
    score: float | None = None       # on the validation split, once scored
    metric: str | None = None
    kind: str = "generated"
    adapter: str | None = None       # carried_over: the predecessor's id
    from_base: str | None = None     # carried_over: the version it was made on
    adapted: dict[str, Any] | None = None  # "adapted" (refresh --adapt): how, from which candidate, on what examples

    def record(self) -> dict[str, Any]:
        return asdict(self)


def choose(candidates: Sequence[Candidate]) -> Candidate:
    """The candidate to register: the best score; on a tie the carried-over adapter (the known quantity), else the
    earliest. So the winner never scores below a carried-over candidate, and a score that is not a number never
    wins over one that is. Reads nothing but the scores, kinds and order given."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    unscored = [position for position, candidate in enumerate(candidates) if candidate.score is None]
    if unscored:
        raise ValueError(f"candidate {unscored[0]} has no score: score every candidate before choosing")

    def rank(position: int) -> tuple[float, bool, int]:
        candidate = candidates[position]
        score = -math.inf if math.isnan(candidate.score) else candidate.score
        return score, candidate.kind == CARRIED_OVER, -position

    return candidates[max(range(len(candidates)), key=rank)]


def position_of(candidate: Candidate, candidates: Sequence[Candidate]) -> int:
    """Where this very candidate (not an equal one) is in the list."""
    return next(position for position, other in enumerate(candidates) if other is candidate)


# ---------------------------------------------------------------- generate

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
    refinement: dict[str, Any] | None = None   # what `--examples` did (Refinement.record())
    familiarity: dict[str, Any] = field(default_factory=dict)  # nearest training tasks (_familiarity_of)


def generate(registry: Registry, settings: GeneratorSettings, *, task: str, base_ref: str, seed: int = 0,
             samples: int = 1, name: str | None = None, generator_ref: str | None = None,
             select_limit: int = SELECT_LIMIT, validate_on: str | None = None, replaces: str | None = None,
             loaded: LoadedGenerator | None = None, refine: RefineRequest | None = None,
             progress: Callable[[int, int], None] | None = None) -> GenerateResult:
    """Generate an adapter for `task` (a registered task name or a free description) on a base version.

    With samples > 1 each candidate is scored with lm-eval on a validation split and the best is
    registered (RPG/ORAL-style selection): `validate_on`'s (a bundled task or a task folder), else that of
    the bundled task the adapter is registered under. Every input is checked before the generator is
    loaded or anything is sampled.
    """
    drawn = draw(registry, settings, task=task, base_ref=base_ref, seed=seed, samples=samples, name=name,
                 generator_ref=generator_ref, loaded=loaded, progress=progress, validate_on=validate_on,
                 select_limit=select_limit, refine=refine)
    validation = drawn.validation
    chosen = drawn.candidates[0]
    if validation is not None:
        model, tokenizer, _ = load_base(registry, drawn.version.label)
        scores = validation_scores(model, tokenizer, validation, drawn.folders(registry), select_limit)
        for candidate, score in zip(drawn.candidates, scores):
            candidate.score, candidate.metric = score.value, score.metric
        chosen = choose(drawn.candidates)
        drawn.provenance["validation"] = {"task": validation.name, "folder": str(validation.dir),
                                          "split": "validation", "limit": select_limit}
    registered = register_drawn(registry, drawn, chosen, replaces)
    return GenerateResult(id=registered.id, created=registered.created, task=drawn.task_name,
                          base=drawn.version.label, condition=drawn.condition, seed=chosen.seed,
                          generator=drawn.generator.uid[:12], seconds=drawn.seconds, candidates=drawn.candidates,
                          validated_on=validation.name if validation is not None else None,
                          refinement=drawn.provenance.get("refinement"),
                          familiarity=drawn.provenance["familiarity"])


@dataclass
class Drawn:
    """Generated candidates for one task on one base version, not yet registered."""

    task_name: str
    version: BaseVersionInfo
    condition: str                  # the description the generator was given
    descriptions: list[str]         # registered with the task when it is new
    generator: LoadedGenerator
    candidates: list[Candidate]
    state_dicts: list[dict]         # each candidate's tensors, in the candidates' order
    seconds: float
    provenance: dict[str, Any]
    new_task: bool                  # the registry has no task of this name yet
    validation: Any = None          # the Task whose validation split picks among several samples, or None
    coefficients: list | None = None  # a library generator's: each sample's blend (S, J), in the seeds' order
    _tmp: Any = None
    _folders: list[Path] = field(default_factory=list)  # what folders() wrote, in the candidates' order

    def add(self, candidate: Candidate, state_dict: dict) -> None:
        self.candidates.append(candidate)
        self.state_dicts.append(state_dict)

    def state_dict_of(self, candidate: Candidate) -> dict:
        return self.state_dicts[position_of(candidate, self.candidates)]

    def lora_config(self) -> dict[str, Any]:
        from loragen.adapters import lora_config_dict

        lora = self.generator.checkpoint.lora
        return lora_config_dict(lora["r"], lora["lora_alpha"], lora["target_modules"])

    def folders(self, registry: Registry) -> list[Path]:
        """Each candidate as a PEFT folder in a temporary folder of the home (removed with this object). Each is
        written once: a later call writes only the candidates added since (refresh --adapt's)."""
        from loragen.adapters import write_adapter_folder

        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="loragen-candidates-", dir=registry.home)
        for i in range(len(self._folders), len(self.state_dicts)):
            self._folders.append(write_adapter_folder(Path(self._tmp.name) / f"c{i}", self.state_dicts[i],
                                                      self.lora_config()))
        return list(self._folders)


def draw(registry: Registry, settings: GeneratorSettings, *, task: str, base_ref: str, seed: int, samples: int,
         name: str | None = None, generator_ref: str | None = None, loaded: LoadedGenerator | None = None,
         progress: Callable[[int, int], None] | None = None, validate_on: str | None = None,
         select_limit: int = SELECT_LIMIT, refine: RefineRequest | None = None) -> Drawn:
    """Check the request (the validation set for several samples included) before loading the generator, then
    sample `samples` adapters (seeds seed, seed+1, …)."""
    import time

    check_text("task", task)  # before anything loads: bytes that are not UTF-8 or control characters
    spec = " ".join(task.split())
    if not spec:
        raise LoragenError("the task is empty: give a registered task name or a plain-language description")
    if samples < 1:
        raise LoragenError(f"samples must be at least 1 (got {samples})")
    if not 0 <= seed <= MAX_SEED - (samples - 1):
        raise LoragenError(f"seed must be between 0 and {MAX_SEED - (samples - 1)} (got {seed})")
    registered_tasks = {t["name"]: t["descriptions"] for t in registry.list_registered_tasks()}
    known = spec in registered_tasks
    described = bundled_task(spec)  # the spec names a bundled task
    if name is not None:
        task_name = name
    elif known:
        task_name = spec
    else:
        task_name = described.name if described else slug(spec)
    check_name("task", task_name)
    bundled = described or bundled_task(task_name)
    validation = _validation_task(bundled, task_name, samples, validate_on, select_limit)
    version = registry.version(base_ref)
    refine_pairs = None
    if refine is not None:  # the examples are read and split before the generator loads
        if samples > 1:
            raise LoragenError("--examples refines one draw: use it with --samples 1")
        from loragen.generator.refine import split_examples

        refine_pairs = split_examples(read_examples(refine.examples), refine.shots, refine.held_back, seed)

    generator = fitted_generator(loaded or load_generator(registry, generator_ref), version)
    if refine is not None and generator.library is None:
        raise LoragenError(f"generator {generator.uid[:12]} emits raw weights, not library coefficients: --examples "
                           "needs a library generator (generator.representation = \"library\", loragen train)")
    condition, descriptions = spec, [spec]
    if known:  # the description the generator learnt the task by
        condition = (generator.checkpoint.task_descriptions.get(spec) or registered_tasks[spec] or [spec])[0]
    elif described:  # a bundled task no adapter was made for yet: described as the suite describes it
        condition, descriptions = described.descriptions[0], described.descriptions
    encoder = text_encoder(registry)
    text = encoder.encode([condition])[0]
    familiarity = _familiarity_of(encoder, text, generator)
    base = base_condition(registry, version.label)

    began = time.perf_counter()
    seeds = [seed + i for i in range(samples)]
    refinement = None
    if generator.library is None:
        state_dicts = [sample_state_dict(generator, text, base, seed=s, method=settings.sample_method,
                                         steps=settings.sample_steps, eta=settings.eta, progress=progress)
                       for s in seeds]
    else:
        from loragen.generator.sampling import export_blend, sample_coefficients

        drawn_coefficients = [sample_coefficients(generator, text, base, seed=s, method=settings.sample_method,
                                                  steps=settings.sample_steps, eta=settings.eta, progress=progress)
                              for s in seeds]
        if refine_pairs is not None:
            from loragen.generator.refine import refine_blend

            model, tokenizer, _ = load_base(registry, version.label)
            outcome = refine_blend(model, tokenizer, generator.library, drawn_coefficients[0], *refine_pairs,
                                   steps=refine.steps, learning_rate=refine.learning_rate)
            drawn_coefficients[0] = outcome.coefficients
            refinement = {"examples": refine.examples, **outcome.record()}
        state_dicts = [export_blend(generator, c) for c in drawn_coefficients]
    provenance = {"generator": generator.uid, "generator_step": generator.checkpoint.training["steps"],
                  "condition": condition, "base": version.label, "method": settings.sample_method,
                  "steps": settings.sample_steps if settings.sample_method == "ddim"
                  else generator.checkpoint.schedule.num_train_timesteps, "eta": settings.eta,
                  "representation": "library" if generator.library is not None else "raw",
                  "familiarity": familiarity}
    if refinement is not None:
        provenance["refinement"] = refinement
    return Drawn(task_name=task_name, version=version, condition=condition,
                 descriptions=descriptions, generator=generator, candidates=[Candidate(seed=s) for s in seeds],
                 state_dicts=state_dicts, seconds=time.perf_counter() - began, provenance=provenance,
                 new_task=task_name not in registered_tasks, validation=validation,
                 coefficients=None if generator.library is None else drawn_coefficients)


def register_drawn(registry: Registry, drawn: Drawn, chosen: Candidate, replaces: str | None,
                   extra: dict[str, Any] | None = None, origin: Origin = Origin.generated) -> Registered:
    """Register one of the drawn candidates (origin generated, or trained for refresh's warm fine-tune), every
    candidate's record in its provenance."""
    from loragen.adapters import write_adapter_folder

    provenance = {**drawn.provenance, "seed": chosen.seed, "candidates": [c.record() for c in drawn.candidates],
                  "generation_seconds": round(drawn.seconds, 3), **(extra or {})}
    with tempfile.TemporaryDirectory(prefix="loragen-generated-", dir=registry.home) as tmp:
        folder = write_adapter_folder(Path(tmp) / "adapter", drawn.state_dict_of(chosen), drawn.lora_config())
        return registry.ingest(folder, drawn.version.label, drawn.task_name,
                               drawn.descriptions if drawn.new_task else [], origin=origin,
                               replaces=replaces, provenance=provenance)


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
