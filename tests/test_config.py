"""Settings precedence: flag/env > ./loragen.toml > <home>/loragen.toml > defaults; strict values."""

import pytest

from loragen.config import load_settings
from loragen.errors import LoragenError


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
    ("[lora]\nr = 0\n", "lora.r and lora.alpha must be positive"),
    ("[lora]\nrank = 4\n", "unknown setting 'rank'"),
    ("[finetune]\nsteps = 'many'\n", "'steps' must be int"),
    ("[generator]\npermutation_states = 1\n", "'permutation_states' must be bool"),
    ("[generator]\nsample_method = 'euler'\n", "ddim or ddpm"),
    ("[generator]\nmemory_slots = -1\n", "generator.memory_slots must be >= 0"),
    ("[generator]\ndirect_readout = 'yes'\n", "'direct_readout' must be bool"),
    ("[lora\n", "not valid TOML"),
])
def test_bad_settings_are_refused(tmp_path, text, message):
    (tmp_path / "loragen.toml").write_text(text)
    with pytest.raises(LoragenError, match=message):
        load_settings(cwd=tmp_path)


def test_float_setting_accepts_an_integer(tmp_path):
    (tmp_path / "loragen.toml").write_text("[finetune]\nlearning_rate = 1\n")
    assert load_settings(cwd=tmp_path).finetune.learning_rate == 1
