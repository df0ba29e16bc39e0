"""Resume states are data, never code: a planted pickle or a damaged state.pt in a run folder is refused
in one line that names the file, through the library and through the CLI (exit 1)."""

from __future__ import annotations

import pathlib

import pytest
import torch

from loragen.config import FinetuneConfig, GeneratorSettings, LoraConfig
from loragen.errors import LoragenError
from tests.helpers import TINY_GENERATOR, registry_with_adapters, run_cli


class _RunsCode:
    """Unpickling this creates `marker`: the stand-in for whatever a planted pickle would run."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def plant_pickle(state_path: pathlib.Path, marker: pathlib.Path) -> None:
    state_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 1, "payload": _RunsCode(marker)}, state_path)
    # The plant is real: a plain torch.load runs it.
    torch.load(state_path, weights_only=False)
    assert marker.exists()
    marker.unlink()


def damage(state_path: pathlib.Path, how: str) -> None:
    state_path.parent.mkdir(parents=True, exist_ok=True)
    if how == "truncated":
        torch.save({"step": 3, "model": {"w": torch.ones(64)}}, state_path)
        whole = state_path.read_bytes()
        state_path.write_bytes(whole[: len(whole) // 2])
    elif how == "garbage":
        state_path.write_bytes(b"not a torch file at all\n")
    elif how == "empty":
        state_path.write_bytes(b"")
    elif how == "not-a-state":
        torch.save([1, 2, 3], state_path)  # loads safely, but is no run's state


DAMAGE = ["truncated", "garbage", "empty", "not-a-state"]


def _generator_run(tiny_base, tmp_path):
    from loragen.generator.training import STATE_FILE, train_generator
    from tests.test_generator import _training_set

    data = _training_set(tiny_base, tmp_path)
    run_dir = tmp_path / "run"
    return run_dir / STATE_FILE, lambda: train_generator(data, GeneratorSettings(**dict(TINY_GENERATOR, steps=2)),
                                                         run_dir)


def _finetune_run(tiny_base, tmp_path):
    from transformers import AutoModelForCausalLM

    from loragen.finetune import STATE_FILE, finetune
    from tests.tiny import make_tokenizer

    examples = [(f"Word: {w}\nUpper:", f" {w.upper()}") for w in ("cat", "dog")]
    run_dir = tmp_path / "ft"
    config = FinetuneConfig(steps=2, batch_size=2, checkpoints=1, checkpoint_every=1)
    return run_dir / STATE_FILE, lambda: finetune(AutoModelForCausalLM.from_pretrained(tiny_base), make_tokenizer(),
                                                  examples, LoraConfig(r=2, alpha=4), config, run_dir)


RUNS = {"generator": _generator_run, "finetune": _finetune_run}


@pytest.mark.parametrize("run", RUNS)
def test_a_planted_pickle_is_refused_and_never_run(tiny_base, tmp_path, run):
    state_path, resume = RUNS[run](tiny_base, tmp_path)
    marker = tmp_path / "pwned"
    plant_pickle(state_path, marker)
    with pytest.raises(LoragenError) as refused:
        resume()
    message = str(refused.value)
    assert str(state_path) in message and "could run code" in message and f"rm {state_path}" in message
    assert "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("run", RUNS)
def test_a_damaged_resume_state_is_a_clear_error(tiny_base, tmp_path, run, how):
    state_path, resume = RUNS[run](tiny_base, tmp_path)
    damage(state_path, how)
    with pytest.raises(LoragenError) as refused:
        resume()
    message = str(refused.value)
    assert message.startswith(f"{state_path}: ") and f"rm {state_path}" in message and "\n" not in message


@pytest.mark.parametrize("run", RUNS)
def test_its_own_state_still_resumes(tiny_base, tmp_path, run):
    """weights_only=True reads everything a run saves: optimizer, RNG and data-order states."""
    state_path, resume = RUNS[run](tiny_base, tmp_path)
    resume()
    assert state_path.is_file()
    again = resume()
    resumed_from = again.resumed_from_step if run == "finetune" else again.training["resumed_from_step"]
    assert resumed_from == 2


FAST_FINETUNE = ["--steps", "2", "--checkpoints", "1", "--checkpoint-every", "1", "--batch-size", "2",
                 "--train-limit", "4"]


def test_cli_finetune_refuses_a_planted_or_damaged_state(capsys, tiny_base, tmp_path):
    assert run_cli(capsys, "base", "add", "tiny", "--from", tiny_base).code == 0
    first = run_cli(capsys, "finetune", "--task", "element_symbol", "--base", "tiny", *FAST_FINETUNE, "--json")
    assert first.code == 0, first.err
    state_path = pathlib.Path(first.json()["run_dir"]) / "state.pt"
    marker = tmp_path / "pwned"
    plant_pickle(state_path, marker)
    refused = run_cli(capsys, "finetune", "--task", "element_symbol", "--base", "tiny", *FAST_FINETUNE)
    assert refused.code == 1
    error = refused.err.strip().splitlines()[-1]
    assert error.startswith(f"loragen: error: {state_path}: refused") and not marker.exists()
    damage(state_path, "truncated")
    broken = run_cli(capsys, "finetune", "--task", "element_symbol", "--base", "tiny", *FAST_FINETUNE)
    assert broken.code == 1 and f"loragen: error: {state_path}: damaged resume state" in broken.err


def test_cli_train_refuses_a_planted_state(capsys, tiny_base, tmp_path, isolated_home):
    registry_with_adapters(capsys, tiny_base, tmp_path, isolated_home, ["upper", "lower"], steps=2)
    first = run_cli(capsys, "train", "--json")
    assert first.code == 0, first.err
    state_path = pathlib.Path(first.json()["run_dir"]) / "state.pt"
    marker = tmp_path / "pwned"
    plant_pickle(state_path, marker)
    refused = run_cli(capsys, "train")
    assert refused.code == 1
    [line] = refused.err.strip().splitlines()
    assert line.startswith(f"loragen: error: {state_path}: refused") and not marker.exists()
