"""loragen.generator.shift: the low-rank sum against its dense reference, and shift_adapter's algebra."""

import pytest
import torch

from loragen.generator.shift import lora_modules, low_rank_sum, low_rank_sum_reference, shift_adapter


def _lora(seed, out_features=12, in_features=10, rank=3, layers=2):
    rng = torch.Generator().manual_seed(seed)
    state = {}
    for layer in range(layers):
        prefix = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
        state[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_features, generator=rng)
        state[f"{prefix}.lora_B.weight"] = torch.randn(out_features, rank, generator=rng)
    return state


def _products(state):
    return {prefix: state[b].double() @ state[a].double() for prefix, (a, b) in lora_modules(state).items()}


@pytest.mark.parametrize("out_features,in_features", [(40, 30), (5, 30), (40, 4)])
def test_low_rank_sum_matches_the_dense_reference(out_features, in_features):
    rng = torch.Generator().manual_seed(0)
    terms = [(w, torch.randn(out_features, 3, generator=rng), torch.randn(3, in_features, generator=rng))
             for w in (1.0, 0.5, -1.0)]
    fast_b, fast_a = low_rank_sum(terms, 3)
    slow_b, slow_a = low_rank_sum_reference(terms, 3)
    assert fast_b.shape == (out_features, 3) and fast_a.shape == (3, in_features)
    torch.testing.assert_close(fast_b @ fast_a, slow_b @ slow_a)
    # The best rank-3 approximation: its error is the dense sum's singular values past the third.
    dense = sum(w * b.double() @ a.double() for w, b, a in terms)
    tail = torch.linalg.svdvals(dense)[3:]
    torch.testing.assert_close(torch.linalg.matrix_norm(dense - fast_b @ fast_a), tail.square().sum().sqrt())


def test_the_same_prediction_on_both_bases_leaves_the_carried_adapter_unchanged():
    carried, generated = _lora(1), _lora(2)
    shifted = shift_adapter(carried, generated, generated)
    assert set(shifted) == set(carried)
    for prefix, product in _products(shifted).items():
        torch.testing.assert_close(product, _products(carried)[prefix], rtol=1e-5, atol=1e-5)


def test_a_shift_is_the_best_rank_r_approximation_of_carried_plus_new_minus_old():
    carried, new, old = _lora(1), _lora(2), _lora(3)
    shifted = shift_adapter(carried, new, old)
    for prefix, (a_key, b_key) in lora_modules(carried).items():
        terms = [(1.0, carried[b_key], carried[a_key]), (1.0, new[b_key], new[a_key]), (-1.0, old[b_key], old[a_key])]
        b, a = low_rank_sum_reference(terms, 3)
        torch.testing.assert_close(_products(shifted)[prefix], b @ a, rtol=1e-5, atol=1e-5)


def test_dtype_and_shapes_are_the_carried_adapters():
    carried = {k: v.to(torch.bfloat16) for k, v in _lora(1).items()}
    shifted = shift_adapter(carried, _lora(2), _lora(3))
    assert all(shifted[k].dtype == torch.bfloat16 and shifted[k].shape == carried[k].shape for k in carried)


def test_adapters_of_other_modules_or_shapes_are_refused():
    with pytest.raises(ValueError, match="other LoRA tensors"):
        shift_adapter(_lora(1), _lora(2, layers=1), _lora(3))
    with pytest.raises(ValueError, match="shape"):
        shift_adapter(_lora(1), _lora(2), _lora(3, rank=4))
