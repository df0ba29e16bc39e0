"""Issue 22's benchmark: one generator across two real architectures (SmolLM2-135M and Gemma 3 270M), against a
generator per base, on each base's seen sample and the split's held-out tasks.

Each base's own columns come from its bench_generalization run (zero_shot, finetuned, multitask, mean_adapter,
generated as generated_per_base, refined); BASE_RUNS holds their options. SmolLM2's is the committed split run
(bench/results/generalization.json); Gemma's trains on a committed subset of 40 seen tasks
(bench/gemma3_training_tasks.json: how it was chosen is written there) and runs first:

    python -m bench.bench_generalization --base gemma3-270m --home bench/out/architectures/home \\
        --work bench/out/architectures/gemma3-270m --corpus-out bench/out/architectures/gemma3-270m/corpus.json \\
        --corpus-runs bench/out/architectures/gemma3-270m/runs --training-tasks bench/gemma3_training_tasks.json \\
        --gen-steps 1500 --generators generated --columns zero_shot,finetuned,multitask,mean_adapter,generated,refined \\
        --summary bench/results/generalization-gemma3.json --threads 1
    python -m bench.bench_architectures                       # then every stage here, resuming what is done

(On 2 cores the corpus stage goes twice as fast as two processes: the same command with `--stages corpus --shard
1/2` and `--shard 2/2`, then the command above for the rest.) SmolLM2's run needs only its learnable training
tasks' corpus adapters here, which its committed corpus summary names:

    python -m bench.bench_generalization --stages corpus --corpus-only-needed --gen-steps 1500 --shard K/2 --threads 1

(56 fine-tunes, 38 minutes as two processes on this machine; they reproduce the committed rows' scores exactly.)

Stages, each resumable (results under --work):

  register   every base's learnable training adapters registered in the shared --home (from its corpus runs)
  joint      one generator (workflows.train, the split honoured) on both bases' adapters: a library per base shape,
             conditioned on each base's embedding; the same settings as the per-base `generated` generators
  adapters   generated_joint for every evaluated task of every base (its own base condition), and the ablation
             generated_joint_wrong_base on every evaluated task of the second base: the first base's embedding as
             the condition (the library still follows the shapes: a condition cannot change them). The seen sample
             counts most here: on held-out tasks Gemma's generated adapters score as zero-shot whatever they hold
  evaluate   those columns on the test split (--shard K/N: N processes share scores.json)
  summary    per base, the seen sample's and the held-out tasks' means with bootstrap 95% intervals, paired
             differences joint - per-base, a PNG, bench/results/architectures.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import time
from pathlib import Path

from bench.harness import (
    BASE,
    GEMMA_BASE,
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

STAGES = ("register", "joint", "adapters", "evaluate", "summary")
# Each base's bench_generalization run (its options as on its command line; its summary holds its own columns).
BASE_RUNS = {
    BASE: "--base smollm2-135m --home bench/out/generalization/home --work bench/out/generalization --gen-steps 1500 "
          "--summary bench/results/generalization.json",
    GEMMA_BASE: "--base gemma3-270m --home bench/out/architectures/home --work bench/out/architectures/gemma3-270m "
                "--corpus-out bench/out/architectures/gemma3-270m/corpus.json "
                "--corpus-runs bench/out/architectures/gemma3-270m/runs --training-tasks bench/gemma3_training_tasks.json "
                "--gen-steps 1500 --generators generated "
                "--columns zero_shot,finetuned,multitask,mean_adapter,generated,refined "
                "--summary bench/results/generalization-gemma3.json",
}
# Columns read from each base's own run (its name there -> here), and the ones made here.
PER_BASE_COLUMNS = {"zero_shot": "zero_shot", "finetuned": "finetuned", "multitask": "multitask",
                    "mean_adapter": "mean_adapter", "generated": "generated_per_base", "refined": "refined"}
JOINT_COLUMNS = ("generated_joint", "generated_joint_wrong_base")
COLUMNS = tuple(PER_BASE_COLUMNS.values()) + JOINT_COLUMNS


class Bench(StagedBench):
    def __init__(self, args):
        from bench import bench_generalization

        super().__init__(Path(args.work))
        self.args = args
        runs = json.loads(Path(args.base_runs).read_text()) if args.base_runs else BASE_RUNS
        self.bases = list(runs)
        parser = bench_generalization.build_parser()
        # One bench_generalization Bench per base, for its plan, training tasks, descriptions and settings.
        self.runs = {base: bench_generalization.bench_from_args(
            parser.parse_args([*shlex.split(options), "--threads", str(args.threads), "--seed", str(args.seed)]))
            for base, options in runs.items()}
        self.registry = open_registry(Path(args.home), add_bundled=set(self.bases) <= {BASE, GEMMA_BASE},
                                      bases=tuple(self.bases))
        for run in self.runs.values():  # every base's adapters and generators live in the shared home here
            run._registry = self.registry

    def version(self, base: str) -> str:
        return self.registry.version(base).label

    # ---------------------------------------------------------------- stages

    def register(self) -> None:
        """Each base's learnable training adapters in the shared home (ingest finds ones already there)."""
        for run in self.runs.values():
            run.register()  # its corpus adapters, registered in the shared home (its own run's may be another)

    def joint(self) -> None:
        from dataclasses import asdict

        from loragen.workflows import train

        tasks = sorted({t for run in self.runs.values() for t in run.training_tasks()})
        bases = [self.version(base) for base in self.bases]
        settings = self.runs[self.bases[0]].generator_settings["generated"]
        wanted = {"settings": asdict(settings), "tasks": tasks, "bases": bases}
        done = self.read("joint.json", {})
        if {k: done.get(k) for k in wanted} == wanted:
            print(f"joint: already trained ({done['id']})", flush=True)
            return
        began = time.perf_counter()
        registered, summary = train(self.registry, settings, tasks=tasks, bases=bases,
                                    split=self.runs[self.bases[0]].split)
        self.write("joint.json", {**wanted, "id": registered.id, "adapters": summary["adapters"],
                                  "families": summary.get("families"), "final_loss": summary["final_loss"],
                                  "train_s": round(time.perf_counter() - began, 1)})
        print(f"joint: {registered.id} on {summary['adapters']} adapters of {len(bases)} bases, "
              f"{time.perf_counter() - began:.0f} s", flush=True)

    def adapters(self) -> None:
        from loragen.adapters import lora_config_dict, write_adapter_folder
        from loragen.tasks.suite import get_task
        from loragen.workflows import base_condition, fitted_generator, load_generator, sample_state_dict, text_encoder

        joint = self.read("joint.json", {})
        if "id" not in joint:
            raise SystemExit("the joint generator is not trained yet: run --stages joint first")
        loaded = load_generator(self.registry, joint["id"])
        encoder = text_encoder(self.registry)
        first = self.bases[0]
        index, count = parse_shard(self.args.shard)
        for base, run in self.runs.items():
            version = self.registry.version(base)
            generator = fitted_generator(loaded, version)
            settings = run.generator_settings["generated"]
            lora = lora_config_dict(run.lora.r, run.lora.alpha, list(run.lora.target_modules))
            conditions = {"generated_joint": base_condition(self.registry, version.label)}
            if base != first:
                conditions["generated_joint_wrong_base"] = base_condition(self.registry, self.version(first))
            for task_name in run.plan.evaluated[index - 1::count]:
                description = run.description(get_task(task_name))
                made = self.read("adapters.json", {}).get(base, {}).get(task_name, {})
                for column, condition in conditions.items():
                    made_from = {"generator": joint["id"], "description": description, "seed": self.args.seed}
                    if made.get(column, {}).get("made_from") == made_from:
                        continue
                    began = time.perf_counter()
                    state_dict = sample_state_dict(generator, encoder.encode([description])[0], condition,
                                                   seed=self.args.seed, method=settings.sample_method,
                                                   steps=settings.sample_steps, eta=settings.eta)
                    target = self.work / "adapters" / base / task_name / column
                    write_adapter_folder(target, state_dict, lora)
                    made[column] = {"path": str(target), "made_from": made_from,
                                    "generate_s": round(time.perf_counter() - began, 3)}
                with work_lock(self.work):  # adapter shards each own their tasks' entries
                    manifest = self.read("adapters.json", {})
                    manifest.setdefault(base, {})[task_name] = made
                    self.write("adapters.json", manifest)
            print(f"adapters: {base} done", flush=True)

    def evaluate(self) -> None:
        from loragen.tasks.suite import get_task
        from loragen.workflows import load_base

        manifest = self.read("adapters.json", {})
        settings = {"split": "test", "limit": self.args.limit or None}
        with work_lock(self.work):
            scores = self.read("scores.json", {"settings": settings, "rows": []})
            if scores["settings"] != settings:
                raise SystemExit(f"{self.work / 'scores.json'} holds scores of other settings: move it away")
            # A score counts only for the adapter it was made on.
            scores["rows"] = [r for r in scores["rows"] if r["made_from"] == manifest.get(r["base"], {}).get(
                r["task"], {}).get(r["column"], {}).get("made_from")]
            self.write("scores.json", scores)
        done = {(r["base"], r["task"], r["column"]) for r in scores["rows"]}
        index, count = parse_shard(self.args.shard)
        for base, run in self.runs.items():
            todo = {task: {column: made["path"] for column, made in manifest.get(base, {}).get(task, {}).items()
                           if (base, task, column) not in done}
                    for task in run.plan.evaluated[index - 1::count]}
            if not any(todo.values()):
                continue
            model, tokenizer, _ = load_base(self.registry, base)
            for task, adapters in todo.items():
                for column, score, seconds in score_columns(model, tokenizer, get_task(task), adapters,
                                                            limit=self.args.limit or None):
                    scores = self.add_score({"base": base, "task": task, "column": column, "value": score.value,
                                             "eval_s": round(seconds, 1),
                                             "made_from": manifest[base][task][column]["made_from"]}, scores)
                print(f"evaluate: {base} {task} " + " ".join(
                    f"{r['column']}={r['value']:.3f}" for r in scores["rows"] if r["base"] == base and r["task"] == task),
                      flush=True)
            del model

    def summary(self) -> dict:
        scores = self.read("scores.json", {"rows": []})
        per_base = {}
        for base, run in self.runs.items():
            table: dict[str, dict[str, float]] = {}
            own = Path(run.args.summary)
            for task, row in (json.loads(own.read_text())["per_task"] if own.is_file() else {}).items():
                table[task] = {ours: row[theirs] for theirs, ours in PER_BASE_COLUMNS.items() if theirs in row}
            for row in scores["rows"]:
                if row["base"] == base:
                    table.setdefault(row["task"], {})[row["column"]] = row["value"]
            per_base[base] = {"version": self.version(base), "summary_of_its_own_run": str(own),
                              "training_tasks": len(run.training_tasks()) if not run.missing_training_rows(
                                  run.corpus_rows()) else None,
                              "seen": self.group(run.plan.seen_sample, table),
                              "held_out": self.group(run.plan.held_out, table),
                              "per_task": {t: table.get(t, {}) for t in run.plan.evaluated}}
        joint = self.read("joint.json", {})
        summary = write_summary(Path(self.args.summary), {
            "command": command_line(), "date": datetime.date.today().isoformat(), "machine": machine(),
            "base_runs": {base: run.args.summary for base, run in self.runs.items()},
            "joint_generator": {k: v for k, v in joint.items() if k != "tasks"}, "bases": per_base})
        if any(group["tasks"] for b in per_base.values() for group in (b["seen"], b["held_out"])):
            _plot(summary, Path(self.args.summary).with_suffix(".png"))
        for base, result in per_base.items():
            for name in ("seen", "held_out"):
                group = result[name]
                print(f"{base} {name} ({group['tasks']} tasks): " + ", ".join(
                    f"{c} {group[c]:.3f}" for c in COLUMNS if group[c] is not None), flush=True)
        return summary

    def group(self, tasks, table: dict[str, dict[str, float]]) -> dict:
        out = {"tasks": len(tasks)}
        for column in COLUMNS:
            values = [table[t][column] for t in tasks if column in table.get(t, {})]
            out[column] = mean_or_none(values)
            out[f"{column}_ci95"] = bootstrap_ci(values, self.args.seed)
            out[f"{column}_n"] = len(values)
        for first, second in (("generated_joint", "generated_per_base"), ("generated_joint", "multitask"),
                              ("generated_joint", "mean_adapter"), ("generated_per_base", "multitask"),
                              ("generated_per_base", "mean_adapter"), ("generated_joint_wrong_base", "generated_joint")):
            both = [t for t in tasks if {first, second} <= set(table.get(t, {}))]
            differences = [table[t][first] - table[t][second] for t in both]
            out[f"{first}_minus_{second}"] = mean_or_none(differences)
            out[f"{first}_minus_{second}_ci95"] = bootstrap_ci(differences, self.args.seed)
        paired = [t for t in tasks if {"generated_joint", "generated_per_base"} <= set(table.get(t, {}))]
        per_base = mean_or_none([table[t]["generated_per_base"] for t in paired])
        out["joint_over_per_base"] = (mean_or_none([table[t]["generated_joint"] for t in paired]) / per_base
                                      if per_base else None)
        return out


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bases = list(summary["bases"])
    figure, axes = plt.subplots(1, 2 * len(bases), figsize=(5 * len(bases) * 2, 4), squeeze=False)
    for column_index, (base, name) in enumerate((b, n) for b in bases for n in ("seen", "held_out")):
        axis = axes[0][column_index]
        group = summary["bases"][base][name]
        shown = [c for c in COLUMNS if group[c] is not None]
        axis.bar(range(len(shown)), [group[c] for c in shown], color="#4c72b0")
        for x, column in enumerate(shown):
            if group[f"{column}_ci95"]:
                low, high = group[f"{column}_ci95"]
                axis.plot([x, x], [low, high], color="black", linewidth=1)
        axis.set_xticks(range(len(shown)), shown, rotation=60, ha="right", fontsize=7)
        axis.set_ylim(0, 1)
        axis.set_title(f"{base}: {name} ({group['tasks']} tasks)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="all", help=f"comma-separated, in order: {','.join(STAGES)} (default all)")
    parser.add_argument("--home", default="bench/out/architectures/home", help="the registry shared by both bases")
    parser.add_argument("--work", default="bench/out/architectures", help="stage results and generated adapters")
    parser.add_argument("--base-runs", default="",
                        help="tests: a JSON file {base: its bench_generalization options} (default BASE_RUNS)")
    parser.add_argument("--limit", type=int, default=50, help="test examples per evaluation (0: all)")
    parser.add_argument("--shard", default="1/1", help="adapters and evaluate: every N-th task from the K-th (K/N)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when the machine is shared)")
    parser.add_argument("--summary", default="bench/results/architectures.json")
    args = parser.parse_args()
    stages = chosen_stages(parser, args.stages, STAGES)
    parse_shard(args.shard)

    import torch

    torch.set_num_threads(args.threads)
    run_stages(Bench(args), stages)


if __name__ == "__main__":
    main()
