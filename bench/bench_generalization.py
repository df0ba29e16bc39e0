"""Issue 11's benchmark: on tasks the generator never saw, does a generated adapter beat the multi-task LoRA?

    python -m bench.bench_generalization                      # every stage, resuming what is done
    python -m bench.bench_generalization --stages corpus      # one stage (or a comma-separated list)

The committed split (loragen/tasks/split.json) decides everything: the generator and the multi-task LoRA train on
the seen tasks only (each seen task without its held-out description), and every held-out task plus the split's
fixed sample of seen tasks is evaluated. Stages, each resumable (its results are written as they come, under
--work, and a finished piece is never recomputed):

  corpus      fine-tune a LoRA for every task (seen first), score it and zero-shot on validation
              (bench_corpus.score_tasks; tasks gaining < 0.05 are marked not learnable; --shard K/N: every N-th
              task, the shards' rows merged into one --corpus-out)
  register    register the learnable seen tasks' adapters in --home (held-out adapters stay in their run folders)
  multitask   one LoRA on the union of the same training tasks (workflows.finetune_multitask)
  generators  two generators through workflows.train with the split: diffusion loss only, and diffusion + task loss
  adapters    every column's adapter for each evaluated task, as PEFT folders (generation time recorded;
              --shard K/N as for evaluate: the shards share adapters.json)
  evaluate    each (task, column) on the test split, --limit examples, one score at a time (--shard K/N: run
              N processes, one per K; they share scores.json)
  summary     means with bootstrap 95% intervals, a PNG, bench/results/generalization.json

Columns: zero_shot; finetuned (the task's own corpus adapter: for a held-out task only the ceiling); multitask;
mean_adapter (mean of all training adapters); nearest_task (the training adapter of the task whose descriptions
are nearest the evaluated description); icl (the base with the task's 5 shots written before every prompt);
the generators' columns (issue 20):
  generated               the default generator (library coordinates, the configured leave_one_out) + task loss
  generated_no_task_loss  the same without the task loss: what `loragen train` makes by default
  generated_lookup        without task loss, never leaving a task out (leave_one_out 0)
  generated_mix           without task loss, leaving the task out of half the rows (leave_one_out 0.5)
  generated_raw           the first design: raw LoRA values as tokens, diffusion loss only
  refined                 `generated`'s blend refined on the task's 5 shots (generate --examples)
  lorahub                 the same fit from uniform weights over the library, without the generator
  random_description      `generated` given a seen task of another family's description
  heldout_description     seen tasks: `generated` from the description it never saw
The 5 shots of a task (refined, lorahub, icl) are the same: a seeded draw from its training split; 16 more of it are
held back to check a refinement. --reuse FILE --reuse-columns a,b takes those columns' per-task scores from an earlier
summary (named in the rows), for columns whose adapters this run would make identically.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bench.bench_corpus import DEFAULT_OUT as CORPUS_OUT
from bench.bench_corpus import DEFAULT_RUNS as CORPUS_RUNS
from bench.bench_corpus import MIN_GAIN
from bench.harness import (
    BASE,
    BUNDLED_BASES,
    StagedBench,
    bootstrap_ci,
    chosen_stages,
    command_line,
    machine,
    mean_or_none,
    open_registry,
    parse_shard,
    run_stages,
    score_columns,
    work_lock,
    write_summary,
)

STAGES = ("corpus", "register", "multitask", "generators", "adapters", "evaluate", "summary")
COLUMNS = ("zero_shot", "finetuned", "multitask", "mean_adapter", "nearest_task", "icl", "generated",
           "generated_no_task_loss", "generated_lookup", "generated_mix", "generated_raw", "refined", "lorahub",
           "random_description", "heldout_description")
GENERATORS = ("generated", "generated_no_task_loss", "generated_lookup", "generated_mix", "generated_raw")
FITTED = ("refined", "lorahub")            # fitted on the task's shots
SEEN_ONLY = ("heldout_description",)
SHOTS, HELD_BACK = 5, 16
MULTITASK_NAME = "multitask-seen"


@dataclass(frozen=True)
class Plan:
    """Which tasks train and which are evaluated, read from the split (cut down only for tests)."""

    training: tuple[str, ...]       # seen tasks whose adapters (if learnable) and data the generator trains on
    held_out: tuple[str, ...]       # evaluated held-out tasks
    seen_sample: tuple[str, ...]    # evaluated seen tasks
    held_out_families: tuple[str, ...]

    @property
    def evaluated(self) -> tuple[str, ...]:
        return self.held_out + self.seen_sample

    @property
    def corpus(self) -> tuple[str, ...]:
        """Every task to fine-tune, in the order that lets later stages start early: the seen sample, the other
        training tasks, then the held-out ones (whose adapters are only the ceiling)."""
        first = list(self.seen_sample) + [t for t in self.training if t not in self.seen_sample]
        return tuple(first + [t for t in self.held_out if t not in first])


def make_plan(split, *, training_limit: int = 0, held_out_limit: int = 0, seen_limit: int = 0,
              training_tasks: tuple[str, ...] = ()) -> Plan:
    """`training_tasks`: a committed subset of the seen tasks to train on (bench/gemma3_training_tasks.json); it
    must hold the evaluated seen sample, so that every evaluated seen task is seen."""
    seen_sample = split.seen_eval_sample[:seen_limit or None]
    training = list(split.seen_tasks)
    if training_tasks:
        unknown = [t for t in training_tasks if t not in training]
        missing = [t for t in seen_sample if t not in training_tasks]
        if unknown or missing:
            raise SystemExit(f"--training-tasks: {unknown[:1] or missing[:1]} is "
                             f"{'not a seen task of the split' if unknown else 'an evaluated seen task left out'}")
        training = [t for t in training if t in training_tasks]
    if training_limit:  # the sampled seen tasks always train (they are "seen"), then the others in name order
        training = list(seen_sample) + [t for t in training if t not in seen_sample]
        training = sorted(training[:max(training_limit, len(seen_sample))])
    return Plan(training=tuple(training), held_out=split.held_out_tasks[:held_out_limit or None],
                seen_sample=tuple(seen_sample), held_out_families=split.held_out_families)


class Bench(StagedBench):
    """One benchmark run: its settings, its registry and its work folder; one method per stage."""

    def __init__(self, args, plan: Plan, split):
        from loragen.config import FinetuneConfig, LoraConfig, load_settings

        super().__init__(Path(args.work))
        self.args, self.plan, self.split = args, plan, split
        self.lora = LoraConfig()
        self.corpus_config = FinetuneConfig(steps=args.ft_steps, batch_size=8, learning_rate=args.ft_lr,
                                            checkpoints=1, checkpoint_every=args.ft_steps, seed=args.seed)
        self.multitask_config = FinetuneConfig(steps=args.multitask_steps, batch_size=8, learning_rate=args.ft_lr,
                                               checkpoints=1, checkpoint_every=args.multitask_steps, seed=args.seed)
        defaults = replace(load_settings().generator, steps=args.gen_steps, seed=args.seed, representation="library",
                           batch_size=args.gen_batch, learning_rate=args.gen_lr, task_loss_weight=0.0,
                           leave_one_out=(load_settings().generator.leave_one_out if args.leave_one_out is None
                                          else args.leave_one_out))
        with_task_loss = (replace(defaults, task_loss_weight=args.task_loss_weight,
                                  task_loss_every=args.task_loss_every, task_examples_per_step=args.task_examples,
                                  task_descriptions_per_step=2, task_adapters_per_step=1)
                          if args.task_loss_weight else defaults)  # --task-loss-weight 0: the same generator
        self.generator_settings = {  # in training order: the task-loss one (slowest) after the seconds-fast ones
            "generated_no_task_loss": defaults,
            "generated_lookup": replace(defaults, leave_one_out=0.0),
            "generated_mix": replace(defaults, leave_one_out=0.5),
            "generated": with_task_loss,
            "generated_raw": replace(load_settings().generator, steps=args.raw_steps, seed=args.seed,
                                     representation="raw", task_loss_weight=0.0, leave_one_out=0.0),
        }
        self._registry = None
        self._base = None

    # ---------------------------------------------------------------- shared pieces

    @property
    def registry(self):
        if self._registry is None:
            self._registry = open_registry(Path(self.args.home), add_bundled=self.args.base in BUNDLED_BASES,
                                           bases=(self.args.base,))
        return self._registry

    @property
    def version(self) -> str:
        return self.registry.version(self.args.base).label

    def base(self):
        """(model, tokenizer), loaded once for every stage that runs the base."""
        if self._base is None:
            from loragen.workflows import load_base

            model, tokenizer, _ = load_base(self.registry, self.args.base)
            self._base = (model, tokenizer)
        return self._base

    def corpus_rows(self) -> dict[str, dict]:
        """The corpus stage's rows for this run's settings, by task."""
        settings = self.corpus_settings()
        rows = json.loads(Path(self.args.corpus_out).read_text())["rows"] if Path(self.args.corpus_out).is_file() else []
        return {r["task"]: r for r in rows if r.get("settings") == settings}

    def corpus_settings(self) -> dict:
        return {"lora": asdict(self.lora), "finetune": asdict(self.corpus_config), "limit": self.args.val_limit or None,
                "split": "validation", "min_gain": MIN_GAIN, "base": self.version}

    def corpus_adapter(self, task: str) -> Path:
        row = self.corpus_rows().get(task)
        if row is None:
            raise SystemExit(f"task {task} has no corpus adapter yet: run --stages corpus first")
        return Path(row["run_dir"]) / "checkpoints" / f"step-{self.corpus_config.steps:06d}"

    def training_tasks(self) -> list[str]:
        """The training tasks whose fine-tuning gained at least MIN_GAIN (all of them with --keep-unlearnable)."""
        rows = self.corpus_rows()
        missing = self.missing_training_rows(rows)
        if missing:
            raise SystemExit(f"{len(missing)} training task(s) have no corpus row yet (first: {missing[0]}): "
                             "run --stages corpus first")
        return [t for t in self.plan.training if t in rows and (self.args.keep_unlearnable or rows[t]["learnable"])]

    # ---------------------------------------------------------------- stages

    def corpus(self) -> None:
        from bench.bench_corpus import score_tasks
        from loragen.tasks.suite import get_task

        index, count = self.shard
        tasks = self.plan.corpus[index - 1::count]  # sharded before filtering, so every shard cuts the same list
        if self.args.corpus_only_needed:
            needed = set(self.missing_training_rows(self.corpus_rows()))
            tasks = tuple(t for t in tasks if t in needed)
        model, tokenizer = self.base()
        score_tasks(model, tokenizer, [get_task(t) for t in tasks],
                    out=Path(self.args.corpus_out),
                    runs=Path(self.args.corpus_runs), lora=self.lora, config=self.corpus_config,
                    limit=self.args.val_limit or None, min_gain=MIN_GAIN,
                    held_out=frozenset(self.split.held_out_tasks), extra={"base": self.version})

    def register(self) -> None:
        """Register the learnable training tasks' corpus adapters (again is a no-op: the registry finds them)."""
        from loragen.registry.models import Origin
        from loragen.tasks.suite import get_task

        rows = self.corpus_rows()
        tasks = self.training_tasks()
        for task in tasks:
            row = rows[task]
            self.registry.ingest(self.corpus_adapter(task), self.version, task, get_task(task).descriptions,
                                 origin=Origin.trained,
                                 provenance={"run": Path(row["run_dir"]).name, "steps": self.corpus_config.steps,
                                             "seed": self.corpus_config.seed, "benchmark": "bench_generalization",
                                             "wall_time_s": row["finetune_s"]})
        print(f"register: {len(tasks)} training adapters of {len(self.plan.training)} training tasks "
              f"({len(self.plan.training) - len(tasks)} not learnable, left out)", flush=True)

    def multitask(self) -> None:
        from loragen.workflows import finetune_multitask

        model, tokenizer = self.base()
        loader = _Preloaded(self.registry, self.version, model, tokenizer)
        outcome = finetune_multitask(self.registry, self.training_tasks(), self.version, self.lora,
                                     self.multitask_config, name=MULTITASK_NAME, exclude_held_out=True, loader=loader,
                                     progress=_every(50, "multitask"))
        self.write("multitask.json", {"id": outcome.checkpoints[-1].id, "members": outcome.members,
                                      "examples_per_task": outcome.examples_per_task, "train_s": outcome.train_s,
                                      "final_loss": outcome.checkpoints[-1].loss})
        print(f"multitask: {outcome.checkpoints[-1].id} on {len(outcome.members)} tasks, {outcome.train_s:.0f} s",
              flush=True)

    def generators(self) -> None:
        from loragen.workflows import train

        done = self.read("generators.json", {})
        tasks = self.training_tasks()
        for column, settings in self.generator_settings.items():
            if column in self.reused_columns or column not in self.chosen_generators:
                continue
            if self.trained_as_now(column, done.get(column), tasks):
                print(f"generators: {column} already trained ({done[column]['id']})", flush=True)
                continue
            began = time.perf_counter()
            registered, summary = train(self.registry, settings, tasks=tasks, bases=[self.version], split=self.split,
                                        progress=_every(100, f"generator {column}"))
            done[column] = {"id": registered.id, "settings": asdict(settings), "tasks": tasks,
                            "adapters": summary["adapters"], "final_loss": summary["final_loss"],
                            "final_task_loss": summary.get("final_task_loss"),
                            "train_s": round(time.perf_counter() - began, 1)}
            self.write("generators.json", done)
            print(f"generators: {column} {registered.id}, final loss {summary['final_loss']:.4f}, "
                  f"{done[column]['train_s']:.0f} s", flush=True)

    def trained_as_now(self, column: str, record: dict | None, tasks: list[str]) -> bool:
        """Whether generators.json's `record` of `column` is the generator this run would train: the same settings
        on the same training tasks (an earlier run's generator is neither reused nor sampled from)."""
        return (column in self.generator_settings and record is not None
                and record["settings"] == asdict(self.generator_settings[column]) and record["tasks"] == tasks)

    def adapters(self) -> None:
        """Write every column's adapter of every evaluated task; adapters.json says where, and how each was made.

        Each column records what it was made from (`made_from`), so a column is made again, and its score dropped,
        only when that changed: a retrained generator leaves the baselines' scores alone. The baseline columns are
        made before the generators exist, so they can be scored while the generators train."""
        import torch

        from loragen.adapters import load_weights, lora_config_dict, write_adapter_folder
        from loragen.generator.training import TrainingAdapter, mean_adapter
        from loragen.tasks.suite import get_task
        from loragen.workflows import base_condition, load_generator, sample_state_dict, text_encoder

        generators_made = self.read("generators.json", {})
        manifest = self.read("adapters.json", {})
        folder = self.work / "adapters"
        tasks = self.training_tasks()
        encoder = text_encoder(self.registry)
        condition = base_condition(self.registry, self.version)
        # A generator trained under other settings (an earlier run's) makes nothing: its columns wait for it.
        generators = {c: load_generator(self.registry, g["id"]) for c, g in generators_made.items()
                      if self.trained_as_now(c, g, tasks)}
        missing_generators = [c for c in self.generator_settings if c not in generators]
        if missing_generators:
            print(f"adapters: generator(s) {', '.join(missing_generators)} not trained under these settings yet: "
                  "their columns wait for --stages generators", flush=True)
        lora = lora_config_dict(self.lora.r, self.lora.alpha, list(self.lora.target_modules))

        shared = manifest.setdefault("_shared", {})
        multitask_id = self.read("multitask.json", {}).get("id")
        if "multitask" not in self.reused_columns:  # a reused column's scores need no adapter
            if multitask_id is None:
                raise SystemExit("the multi-task LoRA is not trained yet: run --stages multitask first")
            if shared.get("multitask", {}).get("id") != multitask_id:
                target = _emptied(folder / "_shared" / "multitask")  # a kill mid-export, or an older multi-task LoRA
                self.registry.export(multitask_id, target)
                shared["multitask"] = {"path": str(target), "id": multitask_id,
                                       "made_from": {"multitask": multitask_id}}
                self.save_made("_shared", shared)
        if "mean_adapter" not in self.reused_columns and shared.get("mean_adapter", {}).get("of") != tasks:
            target = _emptied(folder / "_shared" / "mean_adapter")
            weights = [TrainingAdapter(uid=t, task=t, base=self.version,
                                       state_dict=load_weights(self.corpus_adapter(t) / "adapter_model.safetensors"))
                       for t in tasks]
            write_adapter_folder(target, mean_adapter(weights), lora)
            shared["mean_adapter"] = {"path": str(target), "of": tasks,
                                      "made_from": {"training_tasks": tasks, "corpus": self.corpus_settings()}}
            self.save_made("_shared", shared)
        # What each kind of column is made from; a column whose record names anything else is made again.
        baseline_from = {"training_tasks": tasks, "corpus": self.corpus_settings()}
        generated_from = {c: {"generator": g.uid, "seed": self.args.seed} for c, g in generators.items()}

        # The nearest training task of a description: cosine to the mean of that task's training descriptions.
        task_texts = {t: torch.nn.functional.normalize(encoder.encode(self.split.training_descriptions(get_task(t)))
                                                       .mean(0), dim=0) for t in tasks}
        corpus_rows = self.corpus_rows()
        index, count = self.shard
        for task_name in self.plan.evaluated[index - 1::count]:
            made = manifest.setdefault(task_name, {})
            made.pop("_made_from", None)  # the older, one-fingerprint-per-task layout
            task = get_task(task_name)
            description = self.description(task)
            before = json.dumps(made, sort_keys=True)
            # A held-out task's own fine-tune is only the ceiling: until its corpus row exists the column waits
            # (evaluate says so), and the other columns need not.
            if "finetuned" not in self.reused_columns and task_name in corpus_rows:
                made["finetuned"] = {"path": str(self.corpus_adapter(task_name)), "made_from": baseline_from}
            for column in ("multitask", "mean_adapter"):
                if column not in self.reused_columns:
                    made[column] = shared[column]
            text = encoder.encode([description])[0]
            nearest = max(tasks, key=lambda t: float(task_texts[t] @ text))
            made["nearest_task"] = {"path": str(self.corpus_adapter(nearest)), "task": nearest,
                                    "description": description, "made_from": baseline_from}
            wanted = {column: (column, description) for column in GENERATORS}
            wanted["random_description"] = ("generated", self.random_description(task_name))
            if task_name in self.plan.seen_sample:
                wanted["heldout_description"] = ("generated", self.split.held_out_description(task_name))
            if self.args.fitted == "only":
                wanted = {}
            for column, (generator_column, text_of) in wanted.items():
                if generator_column not in generators:
                    continue
                made_from = {**generated_from[generator_column], "description": text_of}
                if made.get(column, {}).get("made_from") == made_from:
                    continue
                generator = generators[generator_column]
                settings = self.generator_settings[generator_column]
                began = time.perf_counter()
                state_dict = sample_state_dict(generator, encoder.encode([text_of])[0], condition, seed=self.args.seed,
                                               method=settings.sample_method, steps=settings.sample_steps,
                                               eta=settings.eta)
                seconds = time.perf_counter() - began
                target = _emptied(folder / task_name / column)  # a kill before the manifest, or an older adapter
                write_adapter_folder(target, state_dict, lora)
                made[column] = {"path": str(target), "generator": generator.uid, "description": text_of,
                                "seed": self.args.seed, "generate_s": round(seconds, 3), "made_from": made_from}
            if self.args.fitted != "none" and (task_name in self.plan.held_out or self.args.fit_seen):
                self.fitted_adapters(task_name, made, generators, description, encoder, condition, folder, lora)
            if json.dumps(made, sort_keys=True) != before:
                self.save_made(task_name, made)
                print(f"adapters: {task_name} (nearest training task: {nearest})", flush=True)

    def save_made(self, key: str, made: dict) -> None:
        """Write one task's (or `_shared`'s) adapter records into adapters.json, read again under the work folder's
        lock: adapter shards run as separate processes and each owns only its own tasks' entries."""
        with work_lock(self.work):
            manifest = self.read("adapters.json", {})
            manifest[key] = made
            self.write("adapters.json", manifest)

    def shots(self, task_name: str) -> tuple[list, list]:
        """The task's 5 shots and 16 held-back examples: one seeded draw from its training split, the same for
        refined, lorahub and icl."""
        from loragen.generator.refine import split_examples
        from loragen.tasks.suite import get_task

        return split_examples(get_task(task_name).examples("train"), SHOTS, HELD_BACK, seed=self.args.seed)

    def fitted_adapters(self, task_name, made, generators, description, encoder, condition, folder, lora) -> None:
        """refined: `generated`'s blend for the description, fitted on the task's shots; lorahub: the same fit from
        uniform weights over the library, which any library generator holds (they all train on the same adapters),
        so lorahub can be made while `generated` still trains. Each is kept only where the held-back examples' loss
        went down (refine_blend)."""
        from loragen.adapters import write_adapter_folder
        from loragen.generator.refine import examples_digest, refine_blend, uniform_start
        from loragen.generator.sampling import export_blend, sample_coefficients

        settings = self.generator_settings["generated"]
        library_holder = next((g for g in generators.values() if g.library is not None), None)
        shots, held_back = self.shots(task_name)
        for column in FITTED:
            if column not in self.evaluated_columns:  # a minute each: only the fits this run will score
                continue
            generator = generators.get("generated") if column == "refined" else library_holder
            if generator is None:
                continue
            made_by = ({"generator": generator.uid, "description": description} if column == "refined" else
                       {"library": [entry["uid"] for entry in generator.checkpoint.library]})
            made_from = {**made_by, "seed": self.args.seed,
                         "examples": examples_digest([*shots, *held_back]), "steps": self.args.refine_steps,
                         "learning_rate": settings.refine_learning_rate, "start": column}
            if made.get(column, {}).get("made_from") == made_from:
                continue
            if column == "refined":
                start = sample_coefficients(generator, encoder.encode([description])[0], condition,
                                            seed=self.args.seed, method=settings.sample_method,
                                            steps=settings.sample_steps, eta=settings.eta)
            else:
                start = uniform_start(generator.library)
            model, tokenizer = self.base()
            outcome = refine_blend(model, tokenizer, generator.library, start, shots, held_back,
                                   steps=self.args.refine_steps, learning_rate=settings.refine_learning_rate)
            target = _emptied(folder / task_name / column)
            write_adapter_folder(target, export_blend(generator, outcome.coefficients), lora)
            made[column] = {"path": str(target), "refine_s": round(outcome.seconds, 2), **outcome.record(),
                            "made_from": made_from}
            self.save_made(task_name, made)  # a refinement takes a minute: a kill loses at most the one under way
            print(f"adapters: {task_name} {column} kept {outcome.kept} ({outcome.held_back_loss_start:.3f} -> "
                  f"{outcome.held_back_loss_refined:.3f}, {outcome.seconds:.1f} s)", flush=True)

    def evaluate(self) -> None:
        """Score each (task, column) of this process's shard; shards run as separate processes share scores.json,
        each adding its rows under a file lock (two 1-thread processes beat one 2-thread process on this machine)."""
        from loragen.tasks.suite import get_task

        manifest = self.read("adapters.json", {})
        with work_lock(self.work):
            scores = self.read("scores.json", {"settings": self.eval_settings(), "rows": []})
            if scores["settings"] != self.eval_settings():
                raise SystemExit(f"{self.work / 'scores.json'} holds scores of other evaluation settings: move it away")
            # A score counts only for the adapter it was made on: rows of adapters made again since are dropped.
            scores["rows"] = [r for r in scores["rows"] if r["column"] in ("zero_shot", "icl")
                              or r.get("made_from") == _made_from(manifest, r["task"], r["column"])]
            self.write("scores.json", scores)
        done = {(r["task"], r["column"]) for r in scores["rows"]}
        index, count = self.shard
        from loragen.workflows import score_on_base

        waiting: list[str] = []
        model, tokenizer = self.base()
        for task_name in self.plan.evaluated[index - 1::count]:
            adapters = {}  # the columns still to score: None for zero-shot, else the adapter's folder
            for column in self.columns(task_name):
                if (task_name, column) in done or column not in self.evaluated_columns:
                    continue
                if column in self.reused_columns:
                    continue
                if column == "icl":
                    shots, _ = self.shots(task_name)
                    began = time.perf_counter()
                    [[score]] = score_on_base(model, tokenizer, [get_task(task_name)], [None], split="test",
                                              limit=self.args.limit or None, shown_examples={task_name: shots})
                    scores = self.add_score({"task": task_name, "column": "icl", "value": score.value,
                                             "metric": score.metric, "examples": score.num_examples,
                                             "eval_s": round(time.perf_counter() - began, 1), "made_from": None},
                                            scores)
                    continue
                if column != "zero_shot" and column not in manifest.get(task_name, {}):
                    waiting.append(f"{task_name}/{column}")
                    continue
                adapters[column] = None if column == "zero_shot" else manifest[task_name][column]["path"]
            for column, score, seconds in score_columns(model, tokenizer, get_task(task_name), adapters,
                                                        limit=self.args.limit or None):
                row = {"task": task_name, "column": column, "value": score.value, "metric": score.metric,
                       "examples": score.num_examples, "eval_s": round(seconds, 1),
                       "made_from": _made_from(manifest, task_name, column)}
                scores = self.add_score(row, scores)
            print(f"evaluate: {task_name} " + " ".join(
                f"{r['column']}={r['value']:.3f}" for r in scores["rows"] if r["task"] == task_name), flush=True)
        if waiting:
            print(f"evaluate: {len(waiting)} adapter(s) not made yet (first: {waiting[0]}): run --stages adapters "
                  "once the generators are trained, then evaluate again", flush=True)

    @property
    def chosen_generators(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.args.generators.split(",")) if self.args.generators else GENERATORS

    @property
    def reused_columns(self) -> tuple[str, ...]:
        return parse_columns(self.args.reuse_columns) if self.args.reuse_columns else ()

    def reused_scores(self) -> dict[str, dict[str, float]]:
        """--reuse FILE's per-task values of --reuse-columns (an older summary may call generated_raw
        generated_diffusion, its name then)."""
        if not self.reused_columns:
            return {}
        earlier = json.loads(Path(self.args.reuse).read_text())
        renamed = {"generated_raw": "generated_diffusion"}
        out: dict[str, dict[str, float]] = {}
        for task, row in earlier["per_task"].items():
            for column in self.reused_columns:
                value = row.get(column, row.get(renamed.get(column, column)))
                if value is not None:
                    out.setdefault(task, {})[column] = value
        return out

    @property
    def evaluated_columns(self) -> tuple[str, ...]:
        return parse_columns(self.args.columns)

    @property
    def shard(self) -> tuple[int, int]:
        return parse_shard(self.args.shard)

    def summary(self) -> dict:
        from loragen.tasks.suite import get_task, list_tasks

        scores = self.read("scores.json", {"rows": []})
        table: dict[str, dict[str, float]] = {}
        for task, values in self.reused_scores().items():
            table.setdefault(task, {}).update(values)
        for row in scores["rows"]:
            if row["column"] not in self.reused_columns:
                table.setdefault(row["task"], {})[row["column"]] = row["value"]
        manifest = self.read("adapters.json", {})
        generators_made = self.read("generators.json", {})
        corpus = self.corpus_rows()
        all_tasks = list_tasks()
        families = sorted({t.family for t in all_tasks})
        unseen_family = [t for t in self.plan.held_out if get_task(t).family in self.plan.held_out_families]

        def group(tasks: tuple[str, ...] | list[str]) -> dict:
            out = {"tasks": len(tasks), "scored": sum(1 for t in tasks if t in table)}
            for column in COLUMNS:
                values = [table[t][column] for t in tasks if column in table.get(t, {})]
                out[column] = mean_or_none(values)
                out[f"{column}_ci95"] = bootstrap_ci(values, self.args.seed)
                out[f"{column}_n"] = len(values)
            for first, second in (("generated", "multitask"), ("generated", "mean_adapter"), ("refined", "lorahub"),
                                  ("refined", "icl")):
                both = [t for t in tasks if {first, second} <= set(table.get(t, {}))]
                differences = [table[t][first] - table[t][second] for t in both]
                out[f"{first}_minus_{second}"] = mean_or_none(differences)
                out[f"{first}_minus_{second}_ci95"] = bootstrap_ci(differences, self.args.seed)
            above = [t for t in tasks if {"generated", "zero_shot"} <= set(table.get(t, {}))]
            out["generated_above_zero_shot"] = sum(table[t]["generated"] > table[t]["zero_shot"] for t in above)
            out["generated_above_zero_shot_of"] = len(above)
            out["above_zero_shot"] = {  # every column's count, so the generators and baselines compare as one
                column: sum(table[t][column] > table[t]["zero_shot"] for t in tasks
                            if {column, "zero_shot"} <= set(table.get(t, {})))
                for column in COLUMNS if column != "zero_shot"}
            # The seen goal's ratio of means (issue 20), over the tasks both columns scored; beside it the mean of
            # per-task ratios, which tasks with a tiny fine-tuned score swing.
            paired = [t for t in tasks if {"generated", "finetuned"} <= set(table.get(t, {}))]
            finetuned_mean = mean_or_none([table[t]["finetuned"] for t in paired])
            out["generated_over_finetuned"] = (mean_or_none([table[t]["generated"] for t in paired]) / finetuned_mean
                                               if finetuned_mean else None)
            out["generated_over_finetuned_per_task"] = mean_or_none(
                [table[t]["generated"] / table[t]["finetuned"] for t in paired if table[t]["finetuned"] > 0])
            ablation = [t for t in tasks if {"generated", "random_description"} <= set(table.get(t, {}))]
            out["random_description_minus_generated"] = mean_or_none(
                [table[t]["random_description"] - table[t]["generated"] for t in ablation])
            return out

        held_out = group(self.plan.held_out)
        learnable = [t for t in self.plan.held_out if self.learnable(t, corpus)]
        held_out["learnable"] = group(learnable)
        held_out["learnable_tasks"] = learnable
        held_out["generated_above_zero_shot_learnable"] = held_out["learnable"]["generated_above_zero_shot"]
        held_out["tasks_list"] = list(self.plan.held_out)
        held_out["families_unseen"] = list(self.plan.held_out_families)
        held_out["unseen_families"] = group(unseen_family)
        held_out["siblings_in_seen_families"] = group([t for t in self.plan.held_out if t not in unseen_family])
        seen = group(self.plan.seen_sample)
        generation_s = [made[c]["generate_s"] for t, made in manifest.items() if t != "_shared"
                        for c in ("generated", "generated_no_task_loss") if "generate_s" in made.get(c, {})]
        raw_generation_s = [made["generated_raw"]["generate_s"] for t, made in manifest.items()
                            if "generate_s" in made.get("generated_raw", {})]
        refine_s = [made[c]["refine_s"] for t, made in manifest.items() if t != "_shared" for c in FITTED
                    if "refine_s" in made.get(c, {})]
        # Only the columns this run asked for (--columns) can be missing: Gemma's run never asks for nearest_task.
        missing = [[t, c] for t in self.plan.evaluated for c in self.columns(t)
                   if c in self.evaluated_columns and c not in table.get(t, {})]
        summary = {
            "command": command_line(), "machine": machine(),
            "complete": not missing, "missing_scores": len(missing),
            "tasks_total": len(all_tasks), "families": len(families),
            "training_tasks": None if self.missing_training_rows(corpus) else len(self.training_tasks()),
            "held_out": held_out, "seen": seen,
            "generation_s_mean": mean_or_none(generation_s), "generation_s_max": max(generation_s, default=None),
            "generation_raw_s_mean": mean_or_none(raw_generation_s), "refine_s_mean": mean_or_none(refine_s),
            "refine_s_max": max(refine_s, default=None),
            "generator_train_s": generators_made.get("generated", {}).get("train_s"),
            "reused": {"from": self.args.reuse, "columns": list(self.reused_columns)} if self.reused_columns else None,
            "finetune_s_mean": mean_or_none([corpus[t]["finetune_s"] for t in self.plan.corpus if t in corpus]),
            "generators": {c: {k: v for k, v in g.items() if k not in ("tasks",)} for c, g in generators_made.items()},
            "settings": {"eval": self.eval_settings(), "corpus": self.corpus_settings(),
                         "multitask": asdict(self.multitask_config)},
            "per_task": {t: {**table.get(t, {}), "split": "held_out" if t in self.plan.held_out else "seen",
                             "family": get_task(t).family,
                             # the training task nearest_task took its adapter from (the column keeps its score)
                             "nearest_training_task": manifest.get(t, {}).get("nearest_task", {}).get("task")}
                         for t in self.plan.evaluated},
        }
        summary = write_summary(Path(self.args.summary), summary)
        if table:
            _plot(summary, Path(self.args.summary).with_suffix(".png"), self.plan.held_out)
        _print_tables(summary)
        return summary

    # ---------------------------------------------------------------- small helpers

    def columns(self, task: str) -> tuple[str, ...]:
        if task in self.plan.seen_sample:
            return COLUMNS if self.args.fit_seen else tuple(c for c in COLUMNS if c not in FITTED)
        return tuple(c for c in COLUMNS if c not in SEEN_ONLY)

    def missing_training_rows(self, rows: dict[str, dict]) -> list[str]:
        """Training tasks that need a corpus row this run lacks. A task this run did not fine-tune counts as the
        committed corpus summary found it: one it found not learnable needs no adapter (a session may rebuild only
        the learnable tasks' adapters)."""
        return [t for t in self.plan.training if t not in rows
                and (self.args.keep_unlearnable or self.learnable(t, rows) is not False)]

    def learnable(self, task: str, rows: dict[str, dict] | None = None) -> bool | None:
        """Whether fine-tuning gained >= 0.05 on the task's validation split: this run's corpus row (from `rows`
        when the caller has read them), else the committed corpus summary's (a task this run did not fine-tune)."""
        row = (self.corpus_rows() if rows is None else rows).get(task) or self.committed_corpus_rows.get(task)
        return None if row is None else bool(row["learnable"])

    @functools.cached_property
    def committed_corpus_rows(self) -> dict[str, dict]:
        """bench/results/corpus_scores.json's rows by task, read once: only those made as this run's corpus would
        be (its base included: a task SmolLM2 could not learn says nothing of Gemma)."""
        committed = Path("bench/results/corpus_scores.json")
        rows = json.loads(committed.read_text())["rows"] if committed.is_file() else []
        settings = self.corpus_settings()
        return {r["task"]: r for r in rows if r.get("settings") == settings}

    def description(self, task) -> str:
        """The description a user would type: a held-out task's first, a seen task's first training description."""
        if self.split.is_held_out(task):
            return task.descriptions[0]
        return self.split.training_descriptions(task)[0]

    def random_description(self, task_name: str) -> str:
        """A training description of a training task of another family, drawn from the task's name (reproducible)."""
        from loragen.tasks.suite import get_task

        family = get_task(task_name).family
        others = [t for t in self.training_tasks() if get_task(t).family != family]
        rng = random.Random(int(hashlib.sha256(task_name.encode()).hexdigest()[:8], 16) + self.args.seed)
        other = get_task(rng.choice(others))
        return rng.choice(self.split.training_descriptions(other))

    def eval_settings(self) -> dict:
        return {"split": "test", "limit": self.args.limit or None, "base": self.version}


def _made_from(manifest: dict, task: str, column: str):
    """What a column's adapter was made from (None for zero-shot, which has none)."""
    return None if column == "zero_shot" else manifest.get(task, {}).get(column, {}).get("made_from")


def parse_columns(text: str) -> tuple[str, ...]:
    """'all' or a comma-separated list of COLUMNS."""
    if text == "all":
        return COLUMNS
    columns = tuple(c.strip() for c in text.split(",") if c.strip())
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown or not columns:
        raise SystemExit(f"--columns takes 'all' or some of {','.join(COLUMNS)} (got {text!r})")
    return columns


def _emptied(folder: Path) -> Path:
    """`folder`, removed if it exists (writers here refuse a non-empty target)."""
    import shutil

    if folder.exists():
        shutil.rmtree(folder)
    return folder


class _Preloaded:
    """A BaseLoader stand-in that hands out the base this benchmark already loaded."""

    def __init__(self, registry, label, model, tokenizer):
        from loragen.workflows import LoadedBase

        self.label = label
        self.loaded = LoadedBase(model, tokenizer, registry.version(label))

    def get(self, ref, notify=None):
        return self.loaded


def _every(interval: int, label: str):
    def progress(step, total, *rest):
        if step % interval == 0 or step == total:
            extra = f" loss {rest[0]:.4f}" if rest else ""
            print(f"{label}: step {step}/{total}{extra}", flush=True)
    return progress


def _plot(summary: dict, path: Path, held_out: tuple[str, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = (("zero_shot", "zero-shot"), ("multitask", "multi-task LoRA"), ("generated", "generated"),
               ("refined", "refined (5 shots)"))
    tasks = [t for t in held_out if t in summary["per_task"]]
    fig, axis = plt.subplots(figsize=(max(6, 0.45 * len(tasks)), 4))
    width = 0.2
    for i, (column, label) in enumerate(columns):
        scored = [(x, summary["per_task"][t][column]) for x, t in enumerate(tasks) if column in summary["per_task"][t]]
        axis.bar([x + (i - 1.5) * width for x, _ in scored], [v for _, v in scored], width, label=label)
    axis.set_xticks(range(len(tasks)))
    axis.set_xticklabels(tasks, rotation=70, ha="right", fontsize=7)
    axis.set_ylabel("test score")
    axis.set_title("Held-out tasks: zero-shot, multi-task LoRA, generated, refined")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print_tables(summary: dict) -> None:
    for name in ("held_out", "seen"):
        group = summary[name]
        print(f"\n{name} ({group['scored']}/{group['tasks']} tasks scored)")
        for column in COLUMNS:
            ci = group[f"{column}_ci95"]
            mean = group[column]
            print(f"  {column:22s} {'-' if mean is None else f'{mean:.3f}':>6s}  "
                  f"{'' if ci is None else f'[{ci[0]:.3f}, {ci[1]:.3f}]'}  n={group[f'{column}_n']}")
        print(f"  generated > zero-shot on {group['generated_above_zero_shot']}/{group['generated_above_zero_shot_of']}"
              "; every column: " + ", ".join(f"{c} {n}" for c, n in group["above_zero_shot"].items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="all", help=f"comma-separated, in order: {','.join(STAGES)} (default all)")
    parser.add_argument("--home", default="bench/out/generalization/home", help="this benchmark's own registry")
    parser.add_argument("--work", default="bench/out/generalization", help="stage results and generated adapters")
    parser.add_argument("--base", default=BASE, help="base name in --home (tests use a tiny one)")
    parser.add_argument("--corpus-out", default=str(CORPUS_OUT), help="bench_corpus's rows (shared with it)")
    parser.add_argument("--corpus-runs", default=str(CORPUS_RUNS), help="bench_corpus's fine-tuning runs")
    parser.add_argument("--ft-steps", type=int, default=32, help="fine-tuning steps per corpus task")
    parser.add_argument("--ft-lr", type=float, default=5e-3)
    parser.add_argument("--val-limit", type=int, default=50, help="validation examples per corpus score (0: all)")
    parser.add_argument("--multitask-steps", type=int, default=320)
    parser.add_argument("--gen-steps", type=int, default=2500, help="library generators' training steps")
    parser.add_argument("--gen-batch", type=int, default=16, help="library generators' adapters per step")
    parser.add_argument("--gen-lr", type=float, default=3e-3, help="library generators' learning rate")
    parser.add_argument("--raw-steps", type=int, default=800, help="the raw-token generator's training steps")
    parser.add_argument("--leave-one-out", type=float, default=None,
                        help="generated and generated_no_task_loss's leave-one-out share (default: the configured "
                             "generator.leave_one_out; the lookup/mix columns use 0 and 0.5)")
    parser.add_argument("--refine-steps", type=int, default=15, help="refined/lorahub: gradient steps on the shots")
    parser.add_argument("--fit-seen", action="store_true", help="refined/lorahub on the seen sample too")
    parser.add_argument("--fitted", choices=("all", "none", "only"), default="all",
                        help="adapters stage: make refined/lorahub too (all), not (none), or only them (only)")
    parser.add_argument("--generators", default="",
                        help="generators stage: train only these columns' generators, comma-separated (default all)")
    parser.add_argument("--reuse", default="bench/results/generalization-ddca8ab.json",
                        help="an earlier summary to take --reuse-columns' per-task scores from")
    parser.add_argument("--reuse-columns", default="", help="columns whose scores come from --reuse (default none)")
    parser.add_argument("--task-loss-weight", type=float, default=1.0)
    parser.add_argument("--task-loss-every", type=int, default=4)
    parser.add_argument("--task-examples", type=int, default=4, help="examples per task-loss adapter")
    parser.add_argument("--limit", type=int, default=50, help="test examples per evaluation (0: all)")
    parser.add_argument("--keep-unlearnable", action="store_true",
                        help="train on tasks whose fine-tuning gained < 0.05 too")
    parser.add_argument("--corpus-only-needed", action="store_true",
                        help="corpus: fine-tune only the training tasks the generator still needs a row for (those "
                             "the committed corpus summary found learnable), not the held-out ceilings")
    parser.add_argument("--training-limit", type=int, default=0, help="tests: train on this many seen tasks")
    parser.add_argument("--training-tasks", default="",
                        help="a JSON file whose `tasks` are the seen tasks to train on (a committed subset, e.g. "
                             "bench/gemma3_training_tasks.json; default every seen task)")
    parser.add_argument("--held-out-limit", type=int, default=0, help="tests: evaluate this many held-out tasks")
    parser.add_argument("--seen-limit", type=int, default=0, help="tests: evaluate this many sampled seen tasks")
    parser.add_argument("--shard", default="1/1",
                        help="corpus, adapters and evaluate: only every N-th task from the K-th (K/N); N such "
                             "processes share their stage's file")
    parser.add_argument("--columns", default="all",
                        help="evaluate only these columns, comma-separated (zero_shot needs no adapter: it can run early)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when the machine is shared)")
    parser.add_argument("--summary", default="bench/results/generalization.json")
    return parser


def bench_from_args(args) -> Bench:
    """The Bench that parsed arguments describe (bench_architectures builds one per base from its own options)."""
    from loragen.tasks.split import load_split

    split = load_split()
    subset = tuple(json.loads(Path(args.training_tasks).read_text())["tasks"]) if args.training_tasks else ()
    plan = make_plan(split, training_limit=args.training_limit, held_out_limit=args.held_out_limit,
                     seen_limit=args.seen_limit, training_tasks=subset)
    return Bench(args, plan, split)


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    stages = chosen_stages(parser, args.stages, STAGES)
    parse_shard(args.shard)  # a bad --shard or --columns fails before any stage runs
    parse_columns(args.columns)
    if args.reuse_columns:
        parse_columns(args.reuse_columns)

    import torch

    torch.set_num_threads(args.threads)
    run_stages(bench_from_args(args), stages)


if __name__ == "__main__":
    main()
