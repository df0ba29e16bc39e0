"""An exported adapter names its base: peft.AutoPeftModelForCausalLM loads base and adapter in one offline call."""

import json
import warnings

import pytest
import torch

from tests.helpers import run_cli

TOKENS = torch.tensor([[1, 10, 11, 12, 13, 14]])


def _loragen_written(tiny_adapter, folder):
    """The adapter's tensors in a folder written the way `generate` writes its adapters."""
    from loragen.adapters import load_weights, lora_config_dict, write_adapter_folder

    return write_adapter_folder(folder, load_weights(tiny_adapter / "adapter_model.safetensors"),
                                lora_config_dict(4, 8, ["q_proj", "v_proj"]))


@pytest.mark.parametrize("made_by", ["peft", "loragen"])
def test_exported_adapter_loads_with_its_base_in_one_call(capsys, tiny_base, tiny_adapter, tmp_path, made_by):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    source = tiny_adapter if made_by == "peft" else _loragen_written(tiny_adapter, tmp_path / "written")
    assert run_cli(capsys, "base", "add", "tiny", "--from", tiny_base).code == 0
    ingested = run_cli(capsys, "ingest", source, "--base", "tiny", "--task", "echo", "--json")
    assert ingested.code == 0, ingested.err
    adapter_id = ingested.json()["id"]
    out_dir = tmp_path / "exported"
    assert run_cli(capsys, "export", adapter_id, out_dir).code == 0

    # The weights leave the registry byte for byte; the config changes only where it names the base.
    assert (out_dir / "adapter_model.safetensors").read_bytes() == (source / "adapter_model.safetensors").read_bytes()
    stored, exported = (json.loads((folder / "adapter_config.json").read_text()) for folder in (source, out_dir))
    base_folder = exported.pop("base_model_name_or_path")
    stored.pop("base_model_name_or_path")
    assert exported == stored
    record = json.loads((out_dir / "loragen.json").read_text())
    assert record["base"] == "tiny@v1" and record["base_folder"] == base_folder and record["id"] == adapter_id
    assert record["task"] == "echo" and record["base_gguf_file"] is None

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        one_call = AutoPeftModelForCausalLM.from_pretrained(str(out_dir))  # HF_HUB_OFFLINE=1 (conftest)
    assert not [w for w in caught if "nexpected" in str(w.message)]  # peft took every config key
    two_calls = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), str(out_dir))
    plain = AutoModelForCausalLM.from_pretrained(tiny_base)
    with torch.no_grad():
        logits = [model.eval()(TOKENS).logits for model in (one_call, two_calls, plain)]
    assert torch.equal(logits[0], logits[1])
    assert not torch.allclose(logits[0], logits[2])  # the adapter is really applied


def test_export_points_at_this_registrys_copy_of_the_base(capsys, tiny_base, tiny_adapter, tmp_path):
    """The base path is this machine's snapshot of the registered version, not where it was added from."""
    import shutil

    from transformers import AutoConfig

    moved_base = tmp_path / "base-elsewhere"
    shutil.copytree(tiny_base, moved_base)
    assert run_cli(capsys, "base", "add", "tiny", "--from", moved_base).code == 0
    adapter_id = run_cli(capsys, "ingest", tiny_adapter, "--base", "tiny", "--task", "echo", "--json").json()["id"]
    shutil.rmtree(moved_base)  # the registry keeps its own copy
    out_dir = tmp_path / "exported"
    assert run_cli(capsys, "export", adapter_id, out_dir).code == 0
    base_folder = json.loads((out_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base_folder.startswith(str(tmp_path / "home"))
    assert AutoConfig.from_pretrained(base_folder).model_type == "llama"
