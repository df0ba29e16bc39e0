"""A GGUF base is dequantized once into a Hugging Face folder beside the snapshots and loaded from there after
(loragen.bases.load_model): the same weights and tokenizer as the GGUF gives, and a damaged, unfinished or
unwritable copy never changes what loads."""

import json

import pytest
import torch

import loragen.bases
from tests.helpers import run_cli
from tests.tiny import make_tiny_llama_gguf


@pytest.fixture
def gguf_registry(capsys, tmp_path, isolated_home):
    from loragen.config import RegistryConfig
    from loragen.registry.store import Registry

    path = make_tiny_llama_gguf(tmp_path / "tiny.gguf")
    assert run_cli(capsys, "base", "add", "tiny", "--from", str(path)).code == 0
    registry = Registry(RegistryConfig(home=str(isolated_home)))
    return registry, registry.version("tiny")


def _loads(monkeypatch):
    """The folders and GGUF names each real load reads, in order."""
    calls = []
    real = loragen.bases._load_model

    def spy(folder, gguf_file, dtype):
        calls.append((folder, gguf_file))
        return real(folder, gguf_file, dtype)

    monkeypatch.setattr(loragen.bases, "_load_model", spy)
    return calls


def _same(first, second) -> None:
    (model_a, tokenizer_a), (model_b, tokenizer_b) = first, second
    a, b = model_a.state_dict(), model_b.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    text = "ab a\nHello, World: 42!"
    assert tokenizer_a(text).input_ids == tokenizer_b(text).input_ids
    assert tokenizer_a.decode(tokenizer_a(text).input_ids) == tokenizer_b.decode(tokenizer_b(text).input_ids)
    assert (tokenizer_a.pad_token, tokenizer_a.eos_token) == (tokenizer_b.pad_token, tokenizer_b.eos_token)


def test_a_gguf_base_is_converted_once_and_loads_the_same_from_the_copy(gguf_registry, monkeypatch):
    from loragen.workflows import load_base

    registry, version = gguf_registry
    calls = _loads(monkeypatch)
    converted = registry.converted_folder(version)
    first = load_base(registry, "tiny")[:2]
    record = json.loads((converted / loragen.bases.CONVERTED_RECORD).read_text())
    assert "model.safetensors" in record["files"] and "config.json" in record["files"]
    second = load_base(registry, "tiny")[:2]
    assert [gguf for _, gguf in calls] == [version.gguf_file, None] and calls[1][0] == converted
    _same(first, second)
    # ... and the same as the GGUF itself, read directly.
    _same(second, loragen.bases.load_model(registry.base_folder(version), version.gguf_file))
    # Another dtype is the float32 copy cast, as the GGUF dequantized to it would be.
    half = load_base(registry, "tiny", dtype="bfloat16").model
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())


@pytest.mark.parametrize("damage", ["flipped byte", "no record", "record of another file"])
def test_a_damaged_or_unfinished_copy_is_made_again_from_the_gguf(gguf_registry, monkeypatch, damage):
    from loragen.workflows import load_base

    registry, version = gguf_registry
    original = load_base(registry, "tiny")[:2]
    converted = registry.converted_folder(version)
    weights = converted / "model.safetensors"
    if damage == "flipped byte":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "no record":  # as a writer killed before its rename never leaves, but a user's copy might
        (converted / loragen.bases.CONVERTED_RECORD).unlink()
    else:
        record = converted / loragen.bases.CONVERTED_RECORD
        record.write_text(json.dumps({"files": {"model.safetensors": "0" * 64}}))
    calls = _loads(monkeypatch)
    again = load_base(registry, "tiny")[:2]
    assert [gguf for _, gguf in calls] == [version.gguf_file]  # from the GGUF, not the damaged copy
    _same(original, again)
    assert loragen.bases.converted_is_whole(converted)  # made again, whole


def test_a_copy_that_cannot_be_written_leaves_the_load_as_it_was(gguf_registry, monkeypatch, tmp_path):
    from loragen.workflows import load_base

    registry, version = gguf_registry

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loragen.bases, "write_converted", full_disk)
    model, tokenizer, _ = load_base(registry, "tiny")
    assert model.config.model_type == "llama" and tokenizer("ab").input_ids
    assert not registry.converted_folder(version).exists()


def test_two_writers_of_one_copy_leave_one_whole_copy(gguf_registry):
    registry, version = gguf_registry
    converted = registry.converted_folder(version)
    model, tokenizer = loragen.bases.load_model(registry.base_folder(version), version.gguf_file)
    loragen.bases.write_converted(model, tokenizer, converted)
    first_record = (converted / loragen.bases.CONVERTED_RECORD).read_text()
    # A second process that finished converting later keeps the first one's copy (a reader may be on it).
    loragen.bases.write_converted(model, tokenizer, converted)
    assert (converted / loragen.bases.CONVERTED_RECORD).read_text() == first_record
    assert loragen.bases.converted_is_whole(converted)
    assert [p.name for p in converted.parent.iterdir()] == [converted.name]  # no staging folder left


def test_the_load_benchmark_measures_a_gguf_base_and_finds_its_copy_the_same(gguf_registry):
    from bench.bench_base_load import measure

    registry, _ = gguf_registry
    result = measure(registry, "tiny")
    assert result["same_weights"] and result["same_tokens"] and result["same_chat_template"] and result["same_logits"]
    assert result["converted_bytes"] > 0 and result["version"] == "tiny@v1"
    assert min(result[k] for k in ("gguf_load_s", "first_load_converting_s", "converted_load_s")) >= 0
