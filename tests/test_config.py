"""Settings precedence: flag/env > ./loragen.toml > <home>/loragen.toml > defaults; strict values."""

from pathlib import Path

import pytest

from loragen.config import GeneratorSettings, Settings, load_settings
from loragen.errors import LoragenError
from tests.helpers import run_cli


def test_defaults_and_precedence(tmp_path, monkeypatch, isolated_home):
    isolated_home.mkdir(parents=True)
    (isolated_home / "loragen.toml").write_text("[lora]\nr = 4\nalpha = 8\n[finetune]\nsteps = 11\n")
    assert load_settings().lora.r == 4 and load_settings().finetune.steps == 11
    (tmp_path / "loragen.toml").write_text("[finetune]\nsteps = 22\n")
    settings = load_settings(cwd=tmp_path)
    assert settings.finetune.steps == 22 and settings.lora.r == 4  # project file wins, user file still read
    assert settings.registry.home_path == isolated_home.resolve()
    assert load_settings(home=str(tmp_path / "flag")).registry.home_path == (tmp_path / "flag").resolve()
    monkeypatch.setenv("LORAGEN_DATABASE_URL", "sqlite:////tmp/elsewhere.db")
    assert load_settings().registry.database_url == "sqlite:////tmp/elsewhere.db"


@pytest.mark.parametrize("text, message", [
    ("[lora]\nr = 0\n", "lora.r must be a positive integer"),
    ("[lora]\nrank = 4\n", "unknown setting 'lora.rank'"),
    ("[lora]\ntarget_modules = [1]\n", "lora.target_modules must be module names"),
    ("[lora]\ndropout = nan\n", r"lora.dropout must be in \[0, 1\)"),
    ("[finetune]\nsteps = 'many'\n", "finetune.steps must be int"),
    ("[finetune]\nlearning_rate = inf\n", "finetune.learning_rate must be a positive number"),
    ("[finetune]\nseed = -1\n", "finetune.seed must be an integer from 0"),
    ("[eval]\nlimit = -5\n", "eval.limit must be >= 0"),
    ("[eval]\nbatch_size = 0\n", "eval.batch_size must be a positive integer"),
    ("[generator]\npermutation_states = 1\n", "generator.permutation_states must be bool"),
    ("[generator]\nsample_method = 'euler'\n", "ddim or ddpm"),
    ("[generator]\nmemory_slots = -1\n", "generator.memory_slots must be >= 0"),
    ("[generator]\ndirect_readout = 'yes'\n", "generator.direct_readout must be bool"),
    ("[generator]\ndenoiser_channels = [8, 'x', 8]\n", "generator.denoiser_channels must be positive integers"),
    ("generator = 3\n", r"\[generator\] must be a table"),
    ("[lora\n", "not valid TOML"),
])
def test_bad_settings_are_refused(tmp_path, text, message):
    (tmp_path / "loragen.toml").write_text(text)
    with pytest.raises(LoragenError, match=message):
        load_settings(cwd=tmp_path)


# Each value passed the old checks and failed deep inside training, after the data was loaded (exit 3).
BAD_GENERATOR_VALUES = [
    ("d_model", "33", "must be even"),
    ("sample_steps", "1001", "at most 1000"),
    ("denoiser_channels", "[8, 16, 24]", "must be a palindrome"),
    ("denoiser_channels", "[8, 16]", "odd length"),
    ("denoiser_channels", "[8, 12, 8]", "multiples of 8"),
    ("prediction_type", "'v'", "sample or epsilon"),
    ("learning_rate", "nan", "positive number"),
    ("eta", "1.5", r"in \[0, 1\]"),
    ("tokens_per_step", "0", "positive integer"),
    ("seed", "-3", "integer from 0"),
]


@pytest.mark.parametrize("name, value, message", BAD_GENERATOR_VALUES, ids=[f"{n}={v}" for n, v, _ in BAD_GENERATOR_VALUES])
def test_cli_train_refuses_a_bad_generator_setting_before_reading_data(capsys, isolated_home, name, value, message):
    """One line naming the setting, exit 1. The registry is empty: had the data been read first, the error
    would have been that there are no adapters to train on."""
    import re

    isolated_home.mkdir(parents=True)
    (isolated_home / "loragen.toml").write_text(f"[generator]\n{name} = {value}\n")
    result = run_cli(capsys, "train")
    assert result.code == 1, result.err
    [line] = result.err.strip().splitlines()
    assert line.startswith(f"loragen: error: generator.{name} ") and re.search(message, line), line


def test_cli_flags_are_checked_as_settings(capsys):
    steps = run_cli(capsys, "generate", "--task", "t", "--base", "b", "--sample-steps", "5000")
    assert steps.code == 1 and "generator.sample_steps must be at most 1000" in steps.err
    rate = run_cli(capsys, "train", "--lr", "nan")
    assert rate.code == 1 and "generator.learning_rate must be a positive number" in rate.err


def test_sample_steps_are_bounded_by_the_schedule_itself():
    from loragen.generator.diffusion import DDPMSchedule

    length = DDPMSchedule(prediction_type=GeneratorSettings().prediction_type).num_train_timesteps
    assert GeneratorSettings(sample_steps=length).sample_steps == length
    with pytest.raises(LoragenError, match="generator.sample_steps"):
        GeneratorSettings(sample_steps=length + 1)
    assert GeneratorSettings(sample_method="ddpm").steps_per_sample == length


def test_the_projects_loragen_toml_restates_only_code_defaults():
    """loragen.toml documents the settings a user is likely to change; its values cannot drift from the code."""
    import tomllib

    project = Path(__file__).resolve().parent.parent / "loragen.toml"
    written = tomllib.loads(project.read_text())
    defaults = Settings()
    assert written, "loragen.toml sets nothing"
    for section, values in written.items():
        for key, value in values.items():
            assert getattr(getattr(defaults, section), key) == value, f"{section}.{key} differs from the code default"
    load_settings(cwd=project.parent)  # and it sets nothing the code does not know


def test_float_setting_accepts_an_integer(tmp_path):
    (tmp_path / "loragen.toml").write_text("[finetune]\nlearning_rate = 1\n")
    assert load_settings(cwd=tmp_path).finetune.learning_rate == 1


def test_generator_settings_are_four_sections_side_by_side():
    """The flat form keeps the keys and order that loragen.toml, run folders' names and checkpoints record."""
    from dataclasses import asdict, fields

    from loragen.config import GENERATOR_SECTIONS, GeneratorSamplingSettings, GeneratorTrainingSettings

    recorded = ["representation", "key_dim", "head_hidden", "token_size", "d_model", "n_layers", "d_state",
                "prototype_dim", "denoiser_channels", "anchor", "permutation_states", "memory_slots", "memory_code_dim",
                "direct_readout", "steps", "batch_size", "tokens_per_step", "learning_rate", "checkpoint_every", "seed",
                "prediction_type", "leave_one_out", "leave_out", "sample_method", "sample_steps", "eta", "refine_steps",
                "refine_learning_rate", "refine_held_back", "task_loss_weight", "task_loss_every",
                "task_examples_per_step", "task_adapters_per_step", "task_descriptions_per_step", "task_loss_timestep"]
    assert list(asdict(GeneratorSettings())) == recorded
    assert [f.name for section in GENERATOR_SECTIONS for f in fields(section)] == recorded  # each key in one section
    settings = GeneratorSettings(steps=5, sample_method="ddpm", task_loss_weight=0.5, d_model=64)
    assert settings.training == GeneratorTrainingSettings(steps=5)
    assert settings.sampling == GeneratorSamplingSettings(sample_method="ddpm")
    assert settings.network.d_model == 64 and settings.task_loss.task_loss_weight == 0.5
    assert settings.sampling.steps_per_sample == settings.steps_per_sample == 1000
    with pytest.raises(LoragenError, match="generator.sample_steps"):
        GeneratorSamplingSettings(sample_steps=0)  # a section checks its own fields
    with pytest.raises(LoragenError, match="generator.d_model must be even"):
        GeneratorSettings(d_model=33)  # and the whole checks every section
