"""bench/bench_generalization.py end to end on a tiny base: every stage, the summary's keys, and a resumed run
that finds everything done and changes nothing."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from bench.bench_generalization import COLUMNS, FITTED, SEEN_ONLY, make_plan
from bench.harness import bootstrap_ci
from loragen.tasks.split import load_split

ROOT = Path(__file__).resolve().parent.parent


def test_plan_follows_the_split():
    split = load_split()
    plan = make_plan(split)
    assert set(plan.training) == set(split.seen_tasks)
    assert not set(plan.training) & set(split.held_out_tasks)
    assert plan.held_out == split.held_out_tasks and plan.seen_sample == split.seen_eval_sample
    # The corpus fine-tunes the sampled seen tasks first, then the other training tasks, held-out ones last.
    assert plan.corpus[:len(plan.seen_sample)] == plan.seen_sample
    assert set(plan.corpus[-len(plan.held_out):]) == set(plan.held_out)
    small = make_plan(split, training_limit=3, held_out_limit=1, seen_limit=1)
    assert len(small.training) == 3 and small.seen_sample[0] in small.training and len(small.evaluated) == 2


def test_the_committed_corpus_speaks_only_for_its_own_base(tmp_path, monkeypatch, tiny_base):
    from bench.bench_generalization import Bench, build_parser
    from loragen.config import RegistryConfig
    from loragen.registry.store import Registry

    monkeypatch.chdir(ROOT)  # the committed corpus summary is read from the repository's bench/results
    committed = json.loads((ROOT / "bench/results/corpus_scores.json").read_text())["rows"]
    unlearnable = [r["task"] for r in committed if not r["learnable"]]
    assert unlearnable and {r["settings"]["base"] for r in committed} == {"smollm2-135m@v1"}
    home = tmp_path / "home"
    Registry(RegistryConfig(home=str(home))).add_base("tiny", str(tiny_base))
    args = build_parser().parse_args(["--base", "tiny", "--home", str(home), "--work", str(tmp_path / "work"),
                                      "--corpus-out", str(tmp_path / "corpus.json")])
    bench = Bench(args, make_plan(load_split()), load_split())
    # SmolLM2's rows say nothing of the tiny base: its tasks' learnability is unknown until its own corpus runs,
    # and every training task waits for a row, not only those SmolLM2 could learn.
    assert bench.committed_corpus_rows == {} and bench.learnable(unlearnable[0]) is None
    assert set(bench.missing_training_rows({})) == set(bench.plan.training)


def test_corpus_only_needed_fine_tunes_the_learnable_training_tasks_of_its_shard(tmp_path, monkeypatch, tiny_base):
    from bench import bench_corpus
    from bench.bench_generalization import Bench, build_parser
    from loragen.config import RegistryConfig
    from loragen.registry.store import Registry

    monkeypatch.chdir(ROOT)
    committed = {r["task"]: r for r in json.loads((ROOT / "bench/results/corpus_scores.json").read_text())["rows"]}
    home = tmp_path / "home"
    # Named as the committed corpus's base, so its rows speak for this run (its version label is the same).
    Registry(RegistryConfig(home=str(home))).add_base("smollm2-135m", str(tiny_base))
    asked: list[list[str]] = []
    monkeypatch.setattr(bench_corpus, "score_tasks", lambda model, tokenizer, tasks, **_: asked.append(
        [t.name for t in tasks]))
    for options in ([], ["--corpus-only-needed"]):
        args = build_parser().parse_args(["--base", "smollm2-135m", "--home", str(home), "--work", str(tmp_path / "w"),
                                          "--corpus-out", str(tmp_path / "corpus.json"), "--shard", "1/2", *options])
        bench = Bench(args, make_plan(load_split()), load_split())
        monkeypatch.setattr(bench, "base", lambda: (None, None))
        bench.corpus()
    every, needed = asked
    assert every == list(bench.plan.corpus[0::2])
    assert needed == [t for t in every if t in bench.plan.training and committed[t]["learnable"]]
    assert 0 < len(needed) < len(every)


def test_a_bad_shard_or_column_is_refused_before_any_stage_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for option, value in (("--shard", "3/2"), ("--shard", "0/2"), ("--shard", "half"), ("--columns", "bogus")):
        done = subprocess.run([sys.executable, "-m", "bench.bench_generalization", option, value,
                               "--work", str(tmp_path / "work"), "--home", str(tmp_path / "home")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode != 0 and option in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "home").exists()


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_tasks():
    few = bootstrap_ci([0.1, 0.5, 0.9], seed=0)
    many = bootstrap_ci([0.1, 0.5, 0.9] * 20, seed=0)
    assert few[0] < 0.5 < few[1] and many[0] < 0.5 < many[1]
    assert many[1] - many[0] < few[1] - few[0]
    assert bootstrap_ci([0.3], seed=0) is None


def _run(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "bench.bench_generalization", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_every_stage_on_a_tiny_base_then_a_resumed_run_changes_nothing(tmp_path, tiny_base):
    from loragen.config import RegistryConfig
    from loragen.registry.store import Registry

    home, work = tmp_path / "home", tmp_path / "work"
    Registry(RegistryConfig(home=str(home))).add_base("tiny", str(tiny_base))
    summary = work / "generalization.json"
    args = ["--base", "tiny", "--home", str(home), "--work", str(work), "--corpus-out", str(work / "corpus.json"),
            "--corpus-runs", str(work / "runs"), "--ft-steps", "2", "--val-limit", "3", "--multitask-steps", "2",
            "--gen-steps", "4", "--raw-steps", "4", "--gen-batch", "2", "--refine-steps", "2",
            "--task-loss-every", "2", "--task-examples", "2", "--limit", "3",
            "--training-limit", "3", "--held-out-limit", "1", "--seen-limit", "1", "--keep-unlearnable",
            "--threads", "1", "--summary", str(summary)]
    _run(args + ["--stages", "corpus,register"], tmp_path)
    assert not (work / "scores.json").exists()
    # As if the held-out tasks' corpus rows (only the ceiling) were still to run: the other columns need not wait.
    corpus = json.loads((work / "corpus.json").read_text())
    held_out_rows = [row for row in corpus["rows"] if row["held_out"]]
    assert held_out_rows
    (work / "corpus.json").write_text(json.dumps({**corpus, "rows": [r for r in corpus["rows"] if not r["held_out"]]}))
    # Before the generators exist: the baseline columns' adapters are made and can be scored, the generated
    # columns wait.
    _run(args + ["--stages", "multitask,adapters,evaluate", "--columns", "zero_shot,multitask,finetuned"], tmp_path)
    early = json.loads((work / "scores.json").read_text())["rows"]
    assert {row["task"] for row in early if row["column"] == "finetuned"} == {
        row["task"] for row in early} - {row["task"] for row in held_out_rows}
    early = [row for row in early if row["column"] != "finetuned"]
    assert len(early) == 4 and {row["column"] for row in early} == {"zero_shot", "multitask"}
    assert not any("generated" in made for made in json.loads((work / "adapters.json").read_text()).values())
    # A summary is complete when the columns it was asked for are scored, whatever the other columns lack.
    _run(args + ["--stages", "summary", "--columns", "zero_shot,multitask"], tmp_path)
    assert json.loads(summary.read_text())["complete"]
    _run(args + ["--stages", "summary"], tmp_path)
    assert json.loads(summary.read_text())["missing_scores"] > 0
    # The second of two evaluation shards scores only its task (the seen one: held-out tasks come first).
    _run(args + ["--stages", "generators,adapters,evaluate", "--shard", "2/2"], tmp_path)
    rows = json.loads((work / "scores.json").read_text())["rows"]
    assert all(row in rows for row in early)  # training the generators did not unmake the baselines
    assert {row["task"] for row in rows if row not in early} == {row["task"] for row in early} - {
        row["task"] for row in early if row["task"] in load_split().held_out_tasks}
    # Adapter shards split the tasks the same way: the held-out task's generated adapters wait for shard 1.
    made = json.loads((work / "adapters.json").read_text())
    assert {t for t, columns in made.items() if "generated" in columns} == {
        row["task"] for row in early if row["task"] not in load_split().held_out_tasks}
    _run(args, tmp_path)

    result = json.loads(summary.read_text())
    assert result["complete"] and result["missing_scores"] == 0
    assert result["tasks_total"] >= 120 and result["families"] >= 12
    assert result["held_out"]["tasks"] == 1 and result["held_out"]["families_unseen"] == list(load_split().held_out_families)
    for group, columns in (("held_out", [c for c in COLUMNS if c not in SEEN_ONLY]),
                           ("seen", [c for c in COLUMNS if c not in FITTED])):
        for column in columns:
            assert 0.0 <= result[group][column] <= 1.0, (group, column)
    # The per-task rows are the scores the evaluation stage recorded, and each group's column means are their means.
    recorded: dict[str, dict[str, float]] = {}
    for row in json.loads((work / "scores.json").read_text())["rows"]:
        recorded.setdefault(row["task"], {})[row["column"]] = row["value"]
    assert {t: {c: v for c, v in row.items() if c in COLUMNS} for t, row in result["per_task"].items()} == recorded
    for group in ("held_out", "seen"):
        rows = [row for row in result["per_task"].values() if row["split"] == group]
        assert len(rows) == result[group]["tasks"] == 1
        for column in COLUMNS:
            values = [row[column] for row in rows if column in row]
            assert result[group][column] == (pytest.approx(statistics.fmean(values), abs=1e-4) if values else None), (
                group, column)
    assert result["held_out"]["generated_above_zero_shot_of"] == 1
    above = result["held_out"]["above_zero_shot"]
    assert set(above) == set(COLUMNS) - {"zero_shot"} and above["generated"] == result["held_out"]["generated_above_zero_shot"]
    assert summary.with_suffix(".png").stat().st_size > 1000
    generators = json.loads((work / "generators.json").read_text())
    assert generators["generated"]["settings"]["task_loss_weight"] == 1.0
    assert generators["generated_raw"]["settings"]["representation"] == "raw"
    assert {generators[c]["settings"]["leave_one_out"] for c in ("generated_lookup", "generated_mix")} == {0.0, 0.5}
    assert len({made["id"] for made in generators.values()}) == len(generators) == 5
    # The refined and lorahub adapters of the held-out task record their fit: the same shots, kept or not.
    [held_out_task] = [t for t, row in result["per_task"].items() if row["split"] == "held_out"]
    fitted = json.loads((work / "adapters.json").read_text())[held_out_task]
    assert fitted["refined"]["examples_sha256"] == fitted["lorahub"]["examples_sha256"]
    assert fitted["refined"]["kept"] in ("refined", "start") and fitted["refined"]["shots"] == 5
    # No held-out task's adapter, data or description reached a generator or the multi-task LoRA: read from the
    # registered checkpoints themselves, not from what the benchmark asked for.
    from loragen.workflows import load_generator

    split = load_split()
    held_out = set(split.held_out_tasks)
    registry = Registry(RegistryConfig(home=str(home)))
    for made in generators.values():
        checkpoint = load_generator(registry, made["id"]).checkpoint
        assert checkpoint.trained_on and not held_out & {a["task"] for a in checkpoint.trained_on}
        assert not held_out & set(checkpoint.task_descriptions)
        for task, descriptions in checkpoint.task_descriptions.items():
            assert split.held_out_description(task) not in descriptions
    assert not held_out & set(json.loads((work / "multitask.json").read_text())["members"])
    # Every generated adapter records the generator, description and seed that made it.
    manifest = json.loads((work / "adapters.json").read_text())
    [seen_task] = [t for t, row in result["per_task"].items() if row["split"] == "seen"]
    made = manifest[seen_task]["heldout_description"]
    assert made["description"] == load_split().held_out_description(seen_task) and made["seed"] == 0
    assert made["generator"].startswith(generators["generated"]["id"])

    scores_before = (work / "scores.json").read_text()
    adapters_before = (work / "adapters.json").read_text()
    again = _run(args, tmp_path)
    assert "already trained" in again and "already scored" in again
    assert (work / "scores.json").read_text() == scores_before
    assert (work / "adapters.json").read_text() == adapters_before
