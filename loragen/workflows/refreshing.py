"""Refresh: a base moved on to a new version; give each of its tasks an adapter there, never worse on validation
than carrying the old one over unchanged."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from loragen.config import ADAPT_LEARNING_RATE, ADAPT_SHOTS, ADAPT_STEPS, REFRESH_SAMPLES, SELECT_LIMIT, GeneratorSettings
from loragen.errors import LoragenError
from loragen.registry.models import Origin
from loragen.registry.store import Registry
from loragen.workflows.bases import BaseLoader, base_condition, bundled_task, member_tasks, text_encoder
from loragen.workflows.evaluate import score_on_base, validation_losses, validation_scores
from loragen.workflows.generation import (
    CARRIED_OVER,
    Candidate,
    Drawn,
    choose,
    draw,
    load_generator,
    position_of,
    register_drawn,
    sample_state_dict,
)

ADAPTED = "adapted"
# How a validated refresh scores its candidates on the validation split: the task's metric (lm-eval generates
# each answer) or the loss on the answers (one forward pass a candidate; a proxy; on the far ladder version about
# 6.7 s a candidate against 19 s, 50 examples: BENCHMARKS.md, issue 21).
SELECT_BY = ("metric", "loss")
NOT_ASKED = "not asked (--no-validate)"  # a refresh's chosen_by when validation was turned off


@dataclass(frozen=True)
class AdaptRequest:
    """`refresh --adapt`: after the candidates are scored, the best one is adapted to the new version on `shots` of
    the task's training examples, `steps` gradient steps through the new base's loss: its blend (a generated
    sample of a library generator) by refinement, and its LoRA by a warm-started fine-tune. The adapted ones are
    scored like every candidate and validation picks among all."""

    shots: int = ADAPT_SHOTS
    steps: int = ADAPT_STEPS
    learning_rate: float = ADAPT_LEARNING_RATE   # the warm fine-tune's
    held_back: int = 16                          # examples the blend refinement checks itself on
    # The blend refinement steps through a LoRA of the whole library's rank: on the far ladder version it took
    # about 3x the warm fine-tune's seconds and never won validation (BENCHMARKS.md, issue 21). False skips it.
    refine_blend: bool = True

    def __post_init__(self) -> None:
        for name in ("shots", "steps", "held_back"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LoragenError(f"--adapt {name} must be a whole number of at least 1 (got {value!r})")
        if not self.learning_rate > 0:
            raise LoragenError(f"the adaptation's learning rate must be above 0 (got {self.learning_rate!r})")
        if not isinstance(self.refine_blend, bool):
            raise LoragenError(f"refine_blend must be true or false (got {self.refine_blend!r})")


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
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every candidate's record (Candidate.record)
    shift_skipped: str | None = None  # why no shifted candidate was drawn, when validating with shift on
    winner: int | None = None      # the index in `candidates` of the one registered (0: the carried-over adapter)
    adapt_seconds: float | None = None  # with --adapt: the adaptations' time (the draw's is `seconds`)
    adapt_skipped: str | None = None    # why --adapt made no (or no warm fine-tuned) candidate for this task
    blend_refinement: dict[str, Any] | None = None  # --adapt's blend refinement, kept or not (Refinement.record)
    scores: dict[str, float] = field(default_factory=dict)   # with --eval: old_on_new / zero_shot / refreshed
    estimate_s: float | None = None  # dry run: what earlier refreshes of this base took per task (estimate_refresh)
    generator_note: str | None = None  # why the generator's candidates are likely weak for a refresh (generator_note)


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
            # What refresh registers: a generated or carried-over adapter, or a warm fine-tune (--adapt).
            existing = [a for a in adapters if a["task"] == task and a["base"] == label
                        and (a["origin"] in ("generated", "carried_over") or "refresh" in (a["provenance"] or {}))]
            done_as = (existing[-1]["origin"].replace("_", " ") if existing and existing[-1]["origin"] != "trained"
                       else ADAPTED)
            action = (f"skip: {existing[-1]['id']} already {done_as} for {label}"
                      if existing else "generate")
            items.append(RefreshItem(task=task, base=label, replaces=predecessor["id"], replaces_base=predecessor["base"],
                                     action=action, id=existing[-1]["id"] if existing else None))
    return items


def estimate_refresh(registry: Registry, items: Sequence[RefreshItem], *, adapt: AdaptRequest | None,
                     select_by: str = "metric", validate: bool = True) -> list[RefreshItem]:
    """Fill in each item's `estimate_s`: the median time per task of the earlier refreshes of its base (any version)
    run the same way, as their provenance recorded it; None where there is none. "The same way" is the recipe
    that sets the time (`_same_recipe`): a fast `--adapt --no-refine-blend --steps 5` took a third of a full
    `--adapt` on the far ladder version, and a refresh without validation a fraction of either."""
    import statistics

    recorded: dict[str, list[float]] = {}
    for adapter in registry.list_adapters():
        record = (adapter["provenance"] or {}).get("refresh") or {}
        if record.get("seconds") is not None and _same_recipe(record, adapt, select_by, validate):
            recorded.setdefault(adapter["base"].split("@")[0], []).append(record["seconds"])
    for item in items:
        if item.action == "generate" and (earlier := recorded.get(item.base.split("@")[0])):
            item.estimate_s = round(statistics.median(earlier), 1)
    return list(items)


def _same_recipe(record: dict, adapt: AdaptRequest | None, select_by: str, validate: bool) -> bool:
    """Whether a refresh's provenance record ran the way asked. A task without validation data ran the same under
    any validating recipe (nothing was scored or adapted); a validated one must match how candidates were chosen
    and every adaptation setting, an older record's missing settings read at their defaults (refine_blend came
    later, and was on)."""
    if record.get("chosen_by") == NOT_ASKED:
        return not validate
    if not validate:
        return False
    if record.get("chosen_by") != "validation":
        return True
    recorded_adapt = record.get("adapt")
    if (recorded_adapt is None) != (adapt is None):
        return False
    if adapt is not None and {**asdict(AdaptRequest()), **recorded_adapt} != asdict(adapt):
        return False
    return (record.get("validation") or {}).get("by", "metric") == select_by


def generator_note(generator) -> str | None:
    """Why a loaded generator's refresh candidates are likely weak, or None. A library generator trained with
    leave_out = "task" never weights a task's own adapters, so for a task the registry has (every refreshed one)
    it draws other tasks' blends: on the ladder's near version they scored far below carrying over, where
    leave_out = "version" matched it (BENCHMARKS.md, issue 21). Validation still keeps the refresh safe."""
    settings = (getattr(generator.checkpoint, "training", None) or {}).get("settings") or {}
    if (getattr(generator.checkpoint, "representation", "raw") != "library" or settings.get("leave_out", "task") != "task"
            or not settings.get("leave_one_out")):
        return None
    return (f"generator {generator.uid[:12]} was trained with leave_out = \"task\" (for tasks the registry lacks): its "
            "candidates here are other tasks' blends; for refreshing, train one with [generator] leave_out = \"version\"")


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
            shift: bool = True, select_limit: int = SELECT_LIMIT, evaluate_limit: int | None = None, run_eval: bool = False,
            adapt: AdaptRequest | None = None, select_by: str = "metric",
            progress: Callable[[int, int], None] | None = None) -> list[RefreshItem]:
    """Give each task an adapter for the newest base version; idempotent (done tasks are skipped).

    With `validate` and a task that has validation data (a bundled task), the candidates are the predecessor
    carried over unchanged and `samples` generated adapters; the best on the new version's validation split
    wins, a tie going to the carried-over one (the known quantity; see `choose`). With `shift`, one more
    candidate: the carried-over adapter moved by the change the generator predicts between the two versions
    (generator.shift, drawn with the first sample's seed). A carried-over winner is registered as the
    new version's adapter (origin carried_over, `replaces` lineage); either way the provenance lists every
    candidate's score. Without validation data, or with validate=False, one generated sample is registered.
    With `adapt` (validation needed), the best scored candidate is then adapted to the new version on the task's
    training examples (AdaptRequest), and the adapted candidates join the choice; a warm fine-tune that wins is
    registered as trained, with the refresh record in its provenance. A killed run resumes: the draws repeat from
    their seeds, the warm fine-tune continues from its last saved step, and a registered task is skipped.
    """
    if adapt is not None and not validate:
        raise LoragenError("--adapt picks among candidates on validation data: it cannot be used with --no-validate")
    if samples < 1:  # checked here too: a task without validation data draws one sample whatever `samples` says
        raise LoragenError(f"samples must be at least 1 (got {samples})")
    if select_limit < 1:
        raise LoragenError(f"the selection limit must be at least 1 validation example (got {select_limit})")
    if select_by not in SELECT_BY:
        raise LoragenError(f"candidates are selected by {' or '.join(SELECT_BY)} (got {select_by!r})")
    items = plan_refresh(registry, base=base, tasks=tasks)
    todo = [item for item in items if item.action == "generate"]
    generator = load_generator(registry) if todo else None  # once, not once per task
    note = generator_note(generator) if generator else None
    loader = BaseLoader(registry)
    for index, item in enumerate(sorted(todo, key=lambda i: i.base)):  # grouped by base: one load each
        began = time.perf_counter()
        item.generator_note = note
        validation = _refresh_validation(item.task) if validate else None
        item.chosen_by = ("validation" if validation is not None
                          else "no validation data" if validate else NOT_ASKED)
        drawn = draw(registry, settings, task=item.task, base_ref=item.base, seed=seed,
                     samples=samples if validation is not None else 1, loaded=generator)
        if validation is not None and shift:
            item.shift_skipped = _add_shifted_candidate(registry, settings, drawn, item)
        item.seconds = round(drawn.seconds, 3)
        if validation is None:
            registered = register_drawn(registry, drawn, drawn.candidates[0], item.replaces,
                                        {"refresh": {"chosen_by": item.chosen_by, "adapt": None,
                                                     "seconds": round(time.perf_counter() - began, 1)}})
            item.action, item.id = "generated", registered.id
        else:
            _refresh_by_validation(registry, loader, item, drawn, validation, select_limit, began, adapt, seed,
                                   settings.refine_learning_rate, select_by)
        if progress:
            progress(index + 1, len(todo))
    if run_eval:
        _evaluate_refresh(registry, [item for item in items if item.id], evaluate_limit, loader)
    return items


def _add_shifted_candidate(registry: Registry, settings: GeneratorSettings, drawn: Drawn, item: RefreshItem
                           ) -> str | None:
    """Add the shifted candidate (draw_shifted, with the first sample's seed) to the drawn ones; returns why not
    when it cannot be made."""
    began = time.perf_counter()
    try:
        shifted = draw_shifted(registry, settings, drawn, item.replaces, item.replaces_base)
    except LoragenError as error:
        return str(error)
    drawn.add(Candidate(seed=drawn.candidates[0].seed, kind="shifted"), shifted)
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
    task = bundled_task(task_name)
    if task is None or not task.declares_split("validation") or not task.records("validation"):
        return None
    return task


def _refresh_by_validation(registry: Registry, loader: BaseLoader, item: RefreshItem, drawn: Drawn, validation,
                           limit: int, began: float, adapt: AdaptRequest | None = None, seed: int = 0,
                           blend_learning_rate: float = 0.0, select_by: str = "metric") -> None:
    """Score the carried-over predecessor and the drawn candidates on the new version (then, with `adapt`, the
    best one adapted), register the one `choose` picks, and fill in the item (action, id, candidates, winner).
    `began`: when the task's refresh started (perf_counter), for the seconds its record keeps."""
    scored_by = validation_losses if select_by == "loss" else validation_scores
    model, tokenizer, _ = loader.get(item.base)
    carried_folder = registry.adapter_folder(item.replaces)
    carried = Candidate(kind=CARRIED_OVER, adapter=item.replaces, from_base=item.replaces_base)
    candidates = [carried, *drawn.candidates]
    scores = scored_by(model, tokenizer, validation, [carried_folder, *drawn.folders(registry)], limit)
    for candidate, score in zip(candidates, scores):
        candidate.score, candidate.metric = score.value, score.metric
    if adapt is not None:
        adapting = time.perf_counter()
        adapted = _adapted_candidates(registry, model, tokenizer, item, drawn, candidates, adapt, seed,
                                      blend_learning_rate)
        item.adapt_seconds = round(time.perf_counter() - adapting, 3)
        if adapted:
            scores = scored_by(model, tokenizer, validation, drawn.folders(registry)[-len(adapted):], limit)
            for candidate, score in zip(adapted, scores):
                candidate.score, candidate.metric = score.value, score.metric
            candidates += adapted
    chosen = choose(candidates)
    item.candidates, item.winner = [c.record() for c in candidates], position_of(chosen, candidates)
    record = {"refresh": {"chosen_by": "validation", "winner": chosen.kind, "candidates": item.candidates,
                          "validation": {"task": validation.name, "split": "validation", "limit": limit,
                                         "by": select_by},
                          "adapt": None if adapt is None else asdict(adapt),
                          # the task's whole time, so a dry run can estimate the next refresh (estimate_refresh)
                          "seconds": round(time.perf_counter() - began, 1)}}
    if any(c.kind == "shifted" for c in drawn.candidates):  # what the shifted candidate was moved from
        record["refresh"]["shifted_from"] = {"adapter": item.replaces, "base": item.replaces_base}
    elif item.shift_skipped:
        record["refresh"]["shift_skipped"] = item.shift_skipped
    if item.adapt_skipped:
        record["refresh"]["adapt_skipped"] = item.adapt_skipped
    if item.blend_refinement:  # also when it was not kept, so no candidate records it
        record["refresh"]["blend_refinement"] = item.blend_refinement
    if chosen is not carried:
        warm = chosen.kind == ADAPTED and chosen.adapted["how"] == "warm_finetune"
        registered = register_drawn(registry, drawn, chosen, item.replaces, record,
                                    origin=Origin.trained if warm else Origin.generated)
        item.action, item.id = (ADAPTED if chosen.kind == ADAPTED else "generated"), registered.id
        return
    old = registry.adapter_files(item.replaces)[2]
    # What drew the generated candidates it beat (generator, condition, sampler), so the comparison can be redone.
    drew = {key: drawn.provenance[key] for key in ("generator", "generator_step", "condition", "method", "steps", "eta")}
    registered = registry.ingest(carried_folder, item.base, item.task, [], origin=Origin.carried_over,
                                 replaces=item.replaces,
                                 provenance={"carried_over_from": old["uid"], "from_base": item.replaces_base,
                                             "base": item.base, "candidates_drawn_by": drew, **record})
    item.action, item.id = "carried over", registered.id


def _adapted_candidates(registry: Registry, model, tokenizer, item: RefreshItem, drawn: Drawn,
                        scored: list[Candidate], adapt: AdaptRequest, seed: int, blend_learning_rate: float
                        ) -> list[Candidate]:
    """The best scored candidate adapted to the new version on the task's training examples, added to `drawn`
    (unscored) and returned: the best generated sample's blend refined (a library generator's, unless
    `adapt.refine_blend` is False; kept only when its held-back examples' loss went down, as `generate --examples`),
    and the best candidate's LoRA fine-tuned for `adapt.steps` steps from its exact weights."""
    from loragen.generator.refine import examples_digest, refine_blend

    try:
        shots, held_back = adaptation_examples(item.task, adapt, seed)
    except LoragenError as error:  # this task is refreshed without adaptation; the others still are
        item.adapt_skipped = str(error)
        return []
    examples = {"shots": len(shots), "examples_sha256": examples_digest(shots), "steps": adapt.steps}
    made: list[Candidate] = []

    generated = [c for c in scored if c.kind == "generated"]
    if adapt.refine_blend and drawn.coefficients is not None and generated:
        start = choose(generated)
        index = position_of(start, drawn.candidates)
        outcome = refine_blend(model, tokenizer, drawn.generator.library, drawn.coefficients[index], shots, held_back,
                               steps=adapt.steps, learning_rate=blend_learning_rate)
        item.blend_refinement = {"from": position_of(start, scored), **outcome.record()}
        if outcome.kept == "refined":
            from loragen.generator.sampling import export_blend

            candidate = Candidate(seed=start.seed, kind=ADAPTED, adapted={
                "how": "blend", "from": position_of(start, scored), **examples, **outcome.record()})
            drawn.add(candidate, export_blend(drawn.generator, outcome.coefficients))
            made.append(candidate)

    start = choose(scored)
    start_weights = _weights_of(registry, drawn, start, item)
    try:
        lora = _lora_of(registry, drawn, start, item)
    except LoragenError as error:
        item.adapt_skipped = str(error)
        return made
    candidate = Candidate(seed=start.seed, kind=ADAPTED, adapted={
        "how": "warm_finetune", "from": position_of(start, scored), **examples,
        "learning_rate": adapt.learning_rate})
    weights, seconds, run_dir = _warm_finetune(registry, model, tokenizer, item, start_weights, lora, shots, adapt,
                                               seed)
    candidate.adapted.update(seconds=round(seconds, 3), run=run_dir.name)  # the run folder under <home>/runs
    drawn.add(candidate, weights)
    made.append(candidate)
    return made


def _weights_of(registry: Registry, drawn: Drawn, candidate: Candidate, item: RefreshItem) -> dict:
    from loragen.adapters import load_weights

    if candidate.kind == CARRIED_OVER:
        return load_weights(registry.adapter_folder(item.replaces) / "adapter_model.safetensors")
    return drawn.state_dict_of(candidate)


def adaptation_examples(task_name: str, adapt: AdaptRequest, seed: int) -> tuple[list, list]:
    """The (shots, held back) `refresh --adapt` fits a task on: a seeded draw from its bundled training split
    (bench_refresh's baselines take the same). A task with no more than `adapt.shots` examples is refused in one
    line: nothing would be left to hold back."""
    from loragen.generator.refine import split_examples

    task = bundled_task(task_name)
    pairs = task.examples("train") if task is not None and task.declares_split("train") else []
    if len(pairs) <= adapt.shots:
        raise LoragenError(f"{len(pairs)} training example(s): --shots {adapt.shots} needs more, to hold some back")
    return split_examples(pairs, adapt.shots, adapt.held_back, seed)


def adapt_finetune_config(adapt: AdaptRequest, shots: int, seed: int):
    """The fine-tune of `adapt.steps` steps on `shots` examples that --adapt's warm start runs (and bench_refresh's
    baselines at the same budget): one checkpoint, at the end."""
    from loragen.config import FinetuneConfig

    return FinetuneConfig(steps=adapt.steps, batch_size=min(8, shots), learning_rate=adapt.learning_rate,
                          checkpoints=1, checkpoint_every=adapt.steps, seed=seed)


def _lora_of(registry: Registry, drawn: Drawn, candidate: Candidate, item: RefreshItem):
    """The LoRA shape of a candidate: the carried-over adapter's own, or the generator's."""
    from loragen.config import LoraConfig
    from loragen.finetune import lora_config_of_folder

    if candidate.kind == CARRIED_OVER:
        return lora_config_of_folder(registry.adapter_folder(item.replaces), item.replaces)
    lora = drawn.generator.checkpoint.lora
    return LoraConfig(r=lora["r"], alpha=lora["lora_alpha"], target_modules=sorted(lora["target_modules"]))


def _warm_finetune(registry: Registry, model, tokenizer, item: RefreshItem, start: dict, lora, shots, adapt: AdaptRequest,
                   seed: int) -> tuple[dict, float, Path]:
    """`adapt.steps` LoRA steps on `shots` from `start`'s exact weights, in a resumable run folder of the home
    named by everything that decides its result; returns the final weights, the seconds trained and the folder."""
    import hashlib
    import json

    from loragen.adapters import load_weights, state_dict_digest
    from loragen.finetune import finetune
    from loragen.generator.refine import examples_digest

    config = adapt_finetune_config(adapt, len(shots), seed)
    key = [state_dict_digest(start), asdict(config), asdict(lora), examples_digest(shots),
           registry.version(item.base).weights_digest]
    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    run_dir = registry.home / "runs" / f"{item.task}__{item.base.replace('@', '_')}__adapt__{fingerprint}"
    result = finetune(model, tokenizer, shots, lora, config, run_dir, start_from=start)
    return load_weights(result.checkpoints[-1].path / "adapter_model.safetensors"), result.total_train_s, run_dir


def _evaluate_refresh(registry: Registry, items: Sequence[RefreshItem], limit: int | None, loader: BaseLoader) -> None:
    """Before/after on the new version: zero-shot, the old adapter carried over, and the refreshed adapter."""
    for item in sorted(items, key=lambda i: i.base):
        task = bundled_task(item.task)
        if task is None:
            continue  # no bundled data to score it on
        model, tokenizer, _ = loader.get(item.base)
        folders = [None, registry.adapter_folder(item.replaces), registry.adapter_folder(item.id)]
        [zero], [old_on_new], [refreshed] = score_on_base(model, tokenizer, [task], folders, limit=limit)
        item.scores.update(zero_shot=zero.value, old_on_new=old_on_new.value, refreshed=refreshed.value)
        registry.record_scores(item.base, None, [zero], {"refresh": True, "limit": limit})
        # Stored under the refreshed adapter only: the old one belongs to another version.
        registry.record_scores(item.base, item.id, [refreshed], {"refresh": True, "limit": limit})
