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


def test_eval_usage_errors(capsys, tiny_registered):
    assert run_cli(capsys, "eval").code == 2
    assert run_cli(capsys, "eval", "--base", "tiny", "--split", "train").code == 2
