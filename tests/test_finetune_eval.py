"""finetune -> registered checkpoints -> lm-eval, end to end offline on a tiny model and real task files."""

import shutil

import pytest
import torch

from loragen.config import FinetuneConfig, LoraConfig
from loragen.finetune import checkpoint_steps, finetune
from tests.helpers import run_cli
from tests.tiny import make_tokenizer

FAST = ["--steps", "6", "--checkpoints", "2", "--checkpoint-every", "2", "--batch-size", "4", "--train-limit", "16"]


@pytest.fixture
def tiny_registered(capsys, tiny_base):
    assert run_cli(capsys, "base", "add", "tiny", "--from", tiny_base).code == 0


def test_finetune_registers_checkpoints_then_eval_and_compare(capsys, tiny_registered):
    result = run_cli(capsys, "finetune", "--task", "element_symbol", "--base", "tiny", *FAST, "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert [c["step"] for c in report["checkpoints"]] == [4, 6]
    adapters = run_cli(capsys, "list", "--origin", "trained", "--json").json()
    assert len(adapters) == 2 and {a["task"] for a in adapters} == {"element_symbol"}
    assert adapters[0]["provenance"]["seed"] == 0 and adapters[0]["provenance"]["step"] in (4, 6)
    task_row = run_cli(capsys, "list", "tasks", "--json").json()[0]
    assert len(task_row["descriptions"]) >= 5  # the suite's descriptions came along

    again = run_cli(capsys, "finetune", "--task", "element_symbol", "--base", "tiny", *FAST, "--json").json()
    assert [c["new"] for c in again["checkpoints"]] == [False, False]  # finished run: nothing retrained or duplicated

    evaluated = run_cli(capsys, "eval", report["checkpoints"][1]["id"], "--limit", "3", "--batch-size", "4", "--json")
    assert evaluated.code == 0, evaluated.err
    [score] = evaluated.json()
    assert score["task"] == "element_symbol" and score["metric"] == "exact_match" and 0 <= score["value"] <= 1
    assert score["examples"] == 3

    zero = run_cli(capsys, "eval", "--base", "tiny", "--tasks", "element_symbol,country_region", "--limit", "3",
                   "--batch-size", "4", "--json")
    assert zero.code == 0, zero.err
    assert {(s["task"], s["metric"]) for s in zero.json()} == {("element_symbol", "exact_match"), ("country_region", "acc")}
    assert "Running generate_until" not in zero.err and "Running loglikelihood" not in zero.err  # lm-eval's bars

    compare = run_cli(capsys, "eval", "--compare", "--json").json()
    row = [r for r in compare if r["task"] == "element_symbol"][0]
    assert row["base"] == "tiny@v1" and row["zero_shot"]["n"] == 1 and row["trained"]["n"] == 1
    table = run_cli(capsys, "eval", "--compare")
    assert "ZERO-SHOT" in table.out and "element_symbol" in table.out


def test_interrupted_finetune_resumes_to_the_same_weights(tmp_path, tiny_base):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    tokenizer = make_tokenizer()
    examples = [(f"Word: {w}\nUpper:", f" {w.upper()}") for w in ("cat", "dog", "sun", "sky", "red", "big")]
    config = FinetuneConfig(steps=6, batch_size=6, checkpoints=2, checkpoint_every=2, learning_rate=3e-2)
    lora = LoraConfig(r=2, alpha=4)

    straight = finetune(AutoModelForCausalLM.from_pretrained(tiny_base), tokenizer, examples, lora, config, tmp_path / "a")

    class Killed(Exception):
        pass

    def die_at_step_5(step, total, loss):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        finetune(AutoModelForCausalLM.from_pretrained(tiny_base), tokenizer, examples, lora, config, tmp_path / "b",
                 progress=die_at_step_5)
    resumed = finetune(AutoModelForCausalLM.from_pretrained(tiny_base), tokenizer, examples, lora, config, tmp_path / "b")
    assert resumed.resumed_from_step == 4
    assert [c.step for c in resumed.checkpoints] == checkpoint_steps(config) == [4, 6]
    for a, b in zip(straight.checkpoints, resumed.checkpoints):
        wa, wb = load_file(str(a.path / "adapter_model.safetensors")), load_file(str(b.path / "adapter_model.safetensors"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert straight.losses[-1] < straight.losses[0]
    # The run's training time counts both calls, not only the one that finished it.
    assert resumed.total_train_s > resumed.wall_time_s > 0 and straight.total_train_s == straight.wall_time_s


def test_finetune_errors_are_one_line(capsys, tiny_registered):
    unknown = run_cli(capsys, "finetune", "--task", "no_such_task", "--base", "tiny")
    assert unknown.code == 1 and "unknown task 'no_such_task'" in unknown.err
    bad_target = run_cli(capsys, "finetune", "--task", "element_symbol", "--base", "tiny", "--targets", "nope_proj", *FAST)
    assert bad_target.code == 1 and "nope_proj" in bad_target.err and len(bad_target.err.strip().splitlines()) == 2


def test_eval_task_with_missing_data_file_is_a_clear_error(capsys, tiny_registered, tmp_path):
    from loragen.tasks.suite import get_task

    folder = tmp_path / "broken_task"
    shutil.copytree(get_task("element_symbol").dir, folder)
    (folder / "test.jsonl").unlink()
    result = run_cli(capsys, "eval", "--base", "tiny", "--tasks", str(folder), "--limit", "2")
    assert result.code == 1
    assert "test.jsonl" in result.err and "not found" in result.err
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) <= 3


def _no_model_loads(monkeypatch):
    """Make loading any base model fail the test: the refusals below must come before it."""
    import loragen.bases

    def refuse(*args, **kwargs):
        raise AssertionError("a base model was loaded")

    monkeypatch.setattr(loragen.bases, "load_model", refuse)


@pytest.mark.parametrize("args, message", [
    ((), "give adapter ids"),
    (("--base", "tiny", "--split", "train"), "--split must be test or validation"),
    (("--compare", "--split", "other"), "--split must be test or validation"),
    (("--base", "tiny", "--limit", "-5"), "--limit"),
    (("--base", "tiny", "--batch-size", "0"), "--batch-size"),
    (("--base", "tiny", "--batch-size", "-2"), "--batch-size"),
])
def test_eval_usage_errors_come_before_any_work(capsys, tiny_registered, monkeypatch, args, message):
    _no_model_loads(monkeypatch)
    result = run_cli(capsys, "eval", *args)
    assert result.code == 2 and message in result.err, result.err
    assert run_cli(capsys, "eval", "--compare", "--json").json() == []  # nothing was evaluated or recorded


def test_finetune_train_limit_must_not_be_negative(capsys, tiny_registered, monkeypatch):
    _no_model_loads(monkeypatch)
    result = run_cli(capsys, "finetune", "--task", "element_symbol", "--base", "tiny", "--train-limit", "-1")
    assert result.code == 2 and "--train-limit" in result.err


@pytest.mark.parametrize("options, message", [
    ({"limit": -5}, "limit must be 0"),
    ({"batch_size": 0}, "batch size must be a positive number"),
    ({"split": "train"}, "split must be test or validation"),
])
def test_evaluate_targets_refuses_bad_options_before_loading(tiny_registered, monkeypatch, options, message):
    from loragen.cli.context import state
    from loragen.errors import LoragenError
    from loragen.workflows import EvalTarget, evaluate_targets

    _no_model_loads(monkeypatch)
    with pytest.raises(LoragenError, match=message):
        evaluate_targets(state.registry, [EvalTarget(base="tiny", tasks=["element_symbol"])], **options)


def test_unknown_adapter_or_task_is_refused_before_loading(capsys, tiny_registered, monkeypatch):
    _no_model_loads(monkeypatch)
    unknown_task = run_cli(capsys, "eval", "--base", "tiny", "--tasks", "no_such_task")
    assert unknown_task.code == 1 and "no_such_task" in unknown_task.err
    unknown_adapter = run_cli(capsys, "eval", "abcdef12")
    assert unknown_adapter.code == 1 and "no adapter with id 'abcdef12'" in unknown_adapter.err


def test_zero_shot_without_tasks_scores_the_tasks_adapters_were_made_for(capsys, tiny_registered, tiny_adapter,
                                                                        monkeypatch):
    """With ~120 bundled tasks, `eval --base` alone must not mean all of them: it means the tasks that have
    adapters on that base, and with none it asks for --tasks before loading anything."""
    from loragen.cli.context import state
    from loragen.workflows.evaluate import _tasks_with_adapters

    _no_model_loads(monkeypatch)
    nothing = run_cli(capsys, "eval", "--base", "tiny")
    assert nothing.code == 1 and "give --tasks" in nothing.err and nothing.err.count("\n") == 1
    for task in ("element_symbol", "my_own_task"):
        assert run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", task).code == 0
    assert _tasks_with_adapters(state.registry, "tiny@v1") == ["element_symbol"]


def test_cli_and_library_share_one_run_and_each_base_loads_once(capsys, tiny_registered, monkeypatch):
    """A fine-tuning started from the library (as the benchmarks do) is the CLI's run: nothing trains twice.
    An evaluation of a base and two of its adapters loads that base once."""
    from loragen import workflows
    from loragen.cli.context import state
    from loragen.config import FinetuneConfig, LoraConfig

    # FAST's settings, with the defaults of the settings the CLI reads (tests run from an empty folder).
    config = FinetuneConfig(steps=6, checkpoints=2, checkpoint_every=2, batch_size=4)
    outcome = workflows.finetune_task(state.registry, "element_symbol", "tiny", LoraConfig(), config, train_limit=16)
    assert [c.step for c in outcome.checkpoints] == [4, 6] and all(c.created for c in outcome.checkpoints)
    assert outcome.run_dir.parent == state.registry.home / "runs" and outcome.run_dir.name.startswith(
        "element_symbol__tiny_v1__seed0__")
    assert outcome.train_s > 0 and len(outcome.losses) == 6

    again = run_cli(capsys, "finetune", "--task", "element_symbol", "--base", "tiny", *FAST, "--json").json()
    assert again["run_dir"] == str(outcome.run_dir) and again["wall_time_s"] == 0
    assert [c["id"] for c in again["checkpoints"]] == [c.id for c in outcome.checkpoints]
    assert [c["new"] for c in again["checkpoints"]] == [False, False]

    loads = []
    real_load_base = workflows.load_base
    monkeypatch.setattr(workflows.bases, "load_base", lambda *a, **k: loads.append(a[1]) or real_load_base(*a, **k))
    scores = workflows.evaluate_targets(state.registry, [
        workflows.EvalTarget(adapter=outcome.checkpoints[0].id), workflows.EvalTarget(base="tiny@v1", tasks=["antonyms"]),
        workflows.EvalTarget(adapter=outcome.checkpoints[1].id)], limit=2, batch_size=4)
    assert len(loads) == 1
    assert [(s.target, s.task) for s in scores] == [(outcome.checkpoints[0].id, "element_symbol"),
                                                   ("zero-shot", "antonyms"),
                                                   (outcome.checkpoints[1].id, "element_symbol")]
    compare = run_cli(capsys, "eval", "--compare", "--json").json()
    assert {(r["task"], bool(r["zero_shot"]), (r["trained"] or {}).get("n")) for r in compare} == {
        ("antonyms", True, None), ("element_symbol", False, 2)}


def test_bench_runs_of_the_old_layout_are_adopted(capsys, tiny_registered, tmp_path):
    """A fine-tuning run that an earlier benchmark kept under runs/bench-<task>-<base>-s<seed>-n<steps> is renamed
    to the workflow's folder for the same settings, and finetune_task then reuses it instead of training again."""
    from bench.harness import adopt_legacy_runs
    from loragen import workflows
    from loragen.cli.context import state
    from loragen.config import FinetuneConfig, LoraConfig
    from loragen.finetune import finetune
    from loragen.tasks.suite import get_task

    registry = state.registry
    config, lora = FinetuneConfig(steps=4, checkpoints=1, checkpoint_every=2, batch_size=4), LoraConfig(r=2, alpha=4)
    model, tokenizer, _ = workflows.load_base(registry, "tiny")
    examples = get_task("element_symbol").examples("train")
    legacy = registry.home / "runs" / "bench-element_symbol-tiny_v1-s0-n4"
    finetune(model, tokenizer, examples, lora, config, legacy)
    other_settings = registry.home / "runs" / "bench-element_symbol-tiny_v1-s0-n2"
    finetune(model, tokenizer, examples, lora, FinetuneConfig(steps=2, checkpoints=1, checkpoint_every=2), other_settings)

    moved = adopt_legacy_runs(registry)
    target = workflows.finetune_run_dir(registry, "element_symbol", registry.version("tiny"), lora, config, len(examples))
    assert (legacy.name, target.name) in moved and len(moved) == 2 and not legacy.exists()
    outcome = workflows.finetune_task(registry, "element_symbol", "tiny", lora, config)
    assert outcome.run_dir == target and outcome.resumed_from_step == 4 and outcome.wall_time_s == 0
    assert adopt_legacy_runs(registry) == []  # idempotent
