"""LoRA adapter <-> token sequence: layout order, metadata, exact round trip, errors."""

import json

import pytest
import torch

from loragen.errors import InvalidAdapter, LoragenError
from loragen.generator.tokenizer import (
    LoraLayout,
    NormStats,
    detokenize,
    parse_key,
    tokenize,
)

PREFIX = "base_model.model.model.layers"


def make_adapter(seed: int = 0, *, num_layers: int = 3, rank: int = 4, hidden: int = 12, kv: int = 6) -> dict:
    """A PEFT-style state dict of a tiny Llama: q/v projections of each layer, rank `rank`."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for layer in range(num_layers):
        for module, out_dim in (("self_attn.q_proj", hidden), ("self_attn.v_proj", kv)):
            base = f"{PREFIX}.{layer}.{module}"
            sd[f"{base}.lora_A.weight"] = torch.randn(rank, hidden, generator=g) * 0.02 + 0.01 * layer
            sd[f"{base}.lora_B.weight"] = torch.randn(out_dim, rank, generator=g) * 0.005 - 0.002
    return sd



def test_parse_key():
    assert parse_key(f"{PREFIX}.3.self_attn.q_proj.lora_A.weight") == (3, "self_attn.q_proj", "lora_A")
    assert parse_key(f"{PREFIX}.12.mlp.down_proj.lora_B.weight") == (12, "mlp.down_proj", "lora_B")
    assert parse_key("base_model.model.transformer.h.5.attn.c_attn.lora_B.weight") == (5, "attn.c_attn", "lora_B")
    assert parse_key("base_model.model.lm_head.lora_A.weight") == (0, "lm_head", "lora_A")


def test_layout_order_is_numeric_then_module_then_a_before_b():
    sd = make_adapter(num_layers=12)
    # insertion order scrambled: the layout must not depend on it
    scrambled = dict(sorted(sd.items(), key=lambda kv: kv[0][::-1]))
    layout = LoraLayout.from_state_dict(scrambled, token_size=8)
    assert layout == LoraLayout.from_state_dict(sd, token_size=8)
    order = [(e.layer, e.module, e.kind) for e in layout.entries]
    assert order[:4] == [
        (0, "self_attn.q_proj", "lora_A"),
        (0, "self_attn.q_proj", "lora_B"),
        (0, "self_attn.v_proj", "lora_A"),
        (0, "self_attn.v_proj", "lora_B"),
    ]
    layers = [e.layer for e in layout.entries]
    assert layers == sorted(layers)  # numeric: 2 before 10
    assert layers[-1] == 11


def test_layout_token_counts_and_metadata():
    sd = make_adapter(num_layers=2, rank=4, hidden=12, kv=6)
    layout = LoraLayout.from_state_dict(sd, token_size=10)
    # q A: 48 -> 5 tokens, q B: 48 -> 5, v A: 48 -> 5, v B: 24 -> 3; per layer 18
    assert layout.token_counts == (5, 5, 5, 3) * 2
    assert layout.num_tokens == 36
    assert layout.num_values == sum(v.numel() for v in sd.values())
    assert layout.num_layers == 2
    assert layout.module_names == [
        "self_attn.q_proj.lora_A",
        "self_attn.q_proj.lora_B",
        "self_attn.v_proj.lora_A",
        "self_attn.v_proj.lora_B",
    ]
    layer_index = layout.layer_index()
    module_index = layout.module_index()
    slice_index = layout.slice_index()
    for meta in (layer_index, module_index, slice_index, layout.matrix_index()):
        assert meta.shape == (36,) and meta.dtype == torch.long
    assert layer_index.tolist() == [0] * 18 + [1] * 18
    assert module_index[:18].tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 3
    assert torch.equal(module_index[:18], module_index[18:])
    assert slice_index[:18].tolist() == [0, 1, 2, 3, 4] * 3 + [0, 1, 2]
    assert layout.max_tokens_per_matrix == 5


def test_layout_dict_round_trip_through_json():
    layout = LoraLayout.from_state_dict(make_adapter(), token_size=7)
    restored = LoraLayout.from_dict(json.loads(json.dumps(layout.to_dict())))
    assert restored == layout
    assert restored.token_offsets == layout.token_offsets
    assert torch.equal(restored.module_index(), layout.module_index())
    assert LoraLayout.from_shapes({k: v.shape for k, v in make_adapter().items()}, 7) == layout


def test_layout_from_dict_rejects_garbage():
    with pytest.raises(LoragenError, match="malformed LoRA layout"):
        LoraLayout.from_dict({"token_size": 8})
    with pytest.raises(LoragenError, match=r"'a' has shape \(0, 3\); expected a non-empty matrix"):
        LoraLayout.from_dict({"token_size": 8, "entries": [{"key": "a", "shape": [0, 3]}]})
    with pytest.raises(LoragenError, match="unsupported LoRA layout format version 99"):
        LoraLayout.from_dict({**LoraLayout.from_state_dict(make_adapter(), 8).to_dict(), "format_version": 99})
    with pytest.raises(LoragenError, match="token_size must be a positive integer, got 0"):
        LoraLayout.from_shapes({"a.lora_A.weight": (2, 2)}, token_size=0)


def test_tokenize_shapes_mask_and_padding():
    sd = make_adapter(num_layers=2)
    layout = LoraLayout.from_state_dict(sd, token_size=10)
    tokens, mask = tokenize(sd, layout, NormStats.identity(layout))
    assert tokens.shape == mask.shape == (layout.num_tokens, 10)
    assert tokens.dtype == torch.float32 and mask.dtype == torch.bool
    assert int(mask.sum()) == layout.num_values
    assert torch.all(tokens[~mask] == 0)
    # q_proj.lora_A (4x12 = 48 values) fills tokens 0..4, the last with 8 real values
    expected = sd[f"{PREFIX}.0.self_attn.q_proj.lora_A.weight"].reshape(-1)
    assert torch.equal(tokens[:5][mask[:5]], expected)
    assert mask[4].tolist() == [True] * 8 + [False] * 2
    # the next matrix starts a fresh token rather than sharing token 4
    assert torch.equal(tokens[5], sd[f"{PREFIX}.0.self_attn.q_proj.lora_B.weight"].reshape(-1)[:10])
    assert torch.equal(mask, layout.value_mask())


def test_round_trip_exact_with_identity_stats():
    sd = make_adapter(seed=3)
    for token_size in (1, 5, 16, 1000):
        layout = LoraLayout.from_state_dict(sd, token_size=token_size)
        stats = NormStats.identity(layout)
        tokens, _ = tokenize(sd, layout, stats)
        back = detokenize(tokens, layout, stats)
        assert list(back) == layout.keys
        for key, value in sd.items():
            assert back[key].shape == value.shape and back[key].dtype == torch.float32
            assert torch.equal(back[key], value), key


def test_round_trip_with_fitted_stats_and_normalization():
    training = [make_adapter(seed=s) for s in range(4)]
    layout = LoraLayout.from_state_dict(training[0], token_size=16)
    stats = NormStats.fit(training, layout)
    key = f"{PREFIX}.2.self_attn.q_proj.lora_A.weight"
    # RPG: mean and std averaged over checkpoints
    expected_mean = sum(sd[key].double().mean().item() for sd in training) / 4
    expected_std = sum(sd[key].double().std(correction=0).item() for sd in training) / 4
    assert stats.mean[key] == pytest.approx(expected_mean, rel=1e-12)
    assert stats.std[key] == pytest.approx(expected_std, rel=1e-12)

    tokens, mask = tokenize(training[1], layout, stats)
    real = tokens[mask]
    assert abs(real.mean().item()) < 0.2 and 0.7 < real.std().item() < 1.3  # z-scored
    back = detokenize(tokens, layout, stats)
    for k, value in training[1].items():
        torch.testing.assert_close(back[k], value, rtol=1e-6, atol=1e-6 * stats.std[k])

    # stats survive JSON
    restored = NormStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert restored == stats


def test_detokenize_ignores_padding_and_keeps_dtype():
    sd = make_adapter()
    layout = LoraLayout.from_state_dict(sd, token_size=10)
    stats = NormStats.fit([sd, make_adapter(seed=1)], layout)
    tokens, mask = tokenize(sd, layout, stats)
    dirty = tokens.clone()
    dirty[~mask] = 1e6
    clean, noisy = detokenize(tokens, layout, stats), detokenize(dirty, layout, stats)
    assert all(torch.equal(clean[k], noisy[k]) for k in clean)
    as_bf16 = detokenize(tokens, layout, stats, dtype=torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in as_bf16.values())


def test_std_floor_for_constant_matrix():
    sd = make_adapter()
    key = f"{PREFIX}.0.self_attn.q_proj.lora_B.weight"
    sd[key] = torch.zeros_like(sd[key])  # an untrained lora_B
    layout = LoraLayout.from_state_dict(sd, token_size=8)
    stats = NormStats.fit([sd], layout, min_std=1e-8)
    assert stats.std[key] == 1e-8
    tokens, _ = tokenize(sd, layout, stats)
    assert torch.isfinite(tokens).all()
    assert torch.equal(detokenize(tokens, layout, stats)[key], sd[key])


def test_mismatched_state_dicts_raise_invalid_adapter():
    sd = make_adapter()
    layout = LoraLayout.from_state_dict(sd, token_size=8)
    stats = NormStats.identity(layout)
    key = f"{PREFIX}.1.self_attn.v_proj.lora_B.weight"

    missing = dict(sd)
    del missing[key]
    with pytest.raises(InvalidAdapter, match="missing"):
        tokenize(missing, layout, stats)

    wrong_shape = dict(sd)
    wrong_shape[key] = torch.zeros(3, 3)
    with pytest.raises(InvalidAdapter, match="shape"):
        tokenize(wrong_shape, layout, stats)

    extra = dict(sd)
    extra[f"{PREFIX}.9.mlp.up_proj.lora_A.weight"] = torch.zeros(4, 12)
    with pytest.raises(InvalidAdapter, match="unexpected"):
        tokenize(extra, layout, stats)
    tokenize(extra, layout, stats, strict=False)  # allowed when asked

    nan = dict(sd)
    nan[key] = torch.full_like(sd[key], float("nan"))
    with pytest.raises(InvalidAdapter, match="NaN"):
        tokenize(nan, layout, stats)
    with pytest.raises(InvalidAdapter, match="NaN or infinite"):
        NormStats.fit([nan], layout)

    with pytest.raises(InvalidAdapter, match=r"has shape \(0, 4\); expected a non-empty matrix"):
        LoraLayout.from_state_dict({"a.lora_A.weight": torch.zeros(0, 4)}, token_size=8)
    with pytest.raises(InvalidAdapter, match="no tensors"):
        LoraLayout.from_state_dict({}, token_size=8)


def test_detokenize_rejects_wrong_token_shape_and_foreign_stats():
    sd = make_adapter()
    layout = LoraLayout.from_state_dict(sd, token_size=8)
    stats = NormStats.identity(layout)
    tokens, _ = tokenize(sd, layout, stats)
    with pytest.raises(LoragenError, match="layout expects"):
        detokenize(tokens[:-1], layout, stats)
    other = LoraLayout.from_state_dict(make_adapter(num_layers=1), token_size=8)
    with pytest.raises(LoragenError, match="stats"):
        tokenize(sd, layout, NormStats.identity(other))
    with pytest.raises(LoragenError, match="zero adapters"):
        NormStats.fit([], layout)
    with pytest.raises(LoragenError, match="std of 'a' is not positive"):
        NormStats.from_dict({"mean": {"a": 0.0}, "std": {"a": 0.0}})


def test_real_peft_adapter_file_round_trips(tiny_adapter):
    from safetensors.torch import load_file

    sd = load_file(tiny_adapter / "adapter_model.safetensors")
    layout = LoraLayout.from_state_dict(sd, token_size=32)
    # a tiny 2-layer Llama with LoRA on q_proj and v_proj, as peft names its keys
    assert layout.num_layers == 2
    assert layout.module_names == [
        "self_attn.q_proj.lora_A",
        "self_attn.q_proj.lora_B",
        "self_attn.v_proj.lora_A",
        "self_attn.v_proj.lora_B",
    ]
    stats = NormStats.fit([sd], layout)
    tokens, _ = tokenize(sd, layout, stats)
    back = detokenize(tokens, layout, stats)
    assert back.keys() == sd.keys()
    for key, value in sd.items():
        torch.testing.assert_close(back[key], value, rtol=1e-6, atol=1e-6 * stats.std[key])
