"""Library coordinates (loragen/generator/library.py): each fast function against its dense reference, and a
blend exported as a PEFT folder that peft loads."""

import pytest
import torch

from loragen.errors import LoragenError
from loragen.generator.library import (
    LoraFactors,
    blend_dense,
    blend_distance_squared,
    blend_state_dict,
    blend_to_lora,
    gram_matrix,
    inner_product,
    slot_factors,
)


def random_factors(count: int, rank: int = 3, shape=(7, 5), seed: int = 0) -> list[LoraFactors]:
    generator = torch.Generator().manual_seed(seed)
    out_features, in_features = shape
    return [LoraFactors(A=torch.randn(rank, in_features, generator=generator, dtype=torch.float64),
                        B=torch.randn(out_features, rank, generator=generator, dtype=torch.float64),
                        scale=0.5 + index) for index in range(count)]


def test_the_gram_distance_equals_the_dense_distance():
    factors = random_factors(4)
    gram = gram_matrix(factors)
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, generator=generator, dtype=torch.float64), torch.randn(4, generator=generator, dtype=torch.float64)
    dense = (blend_dense(factors, a) - blend_dense(factors, b)).pow(2).sum()
    assert blend_distance_squared(gram, a, b).item() == pytest.approx(dense.item(), rel=1e-10)
    # Batched over leading dims, one row at a time the same.
    batch = torch.stack([a, b, a + b])
    assert torch.allclose(blend_distance_squared(gram, batch, torch.zeros(3, 4, dtype=torch.float64)),
                          torch.stack([blend_dense(factors, row).pow(2).sum() for row in batch]), rtol=1e-10)


def test_the_inner_product_ignores_how_an_adapter_splits_its_product():
    """The gauge: (B R)(R^-1 A) is the same change, and so has the same inner products."""
    first, second = random_factors(2)
    mixing = torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 3 * torch.eye(3)
    regauged = LoraFactors(A=torch.linalg.solve(mixing, first.A), B=first.B @ mixing, scale=first.scale)
    assert torch.allclose(regauged.scale * regauged.B @ regauged.A, first.scale * first.B @ first.A, atol=1e-10)
    assert inner_product(regauged, second).item() == pytest.approx(inner_product(first, second).item(), rel=1e-10)
    assert not torch.allclose(regauged.A, first.A)  # the raw factors did move


def test_a_one_hot_blend_reproduces_its_adapter_exactly():
    factors = random_factors(3)
    for index, own in enumerate(factors):
        new_a, new_b, _ = blend_to_lora(factors, torch.eye(3, dtype=torch.float64)[index], rank=3, scale=own.scale)
        assert new_a.shape == own.A.shape and new_b.shape == own.B.shape
        assert torch.allclose(own.scale * new_b @ new_a, own.scale * own.B @ own.A, atol=1e-10)


def test_the_rank_cut_is_the_dense_truncated_svd():
    factors = random_factors(3)
    coefficients = torch.tensor([0.7, 0.2, -0.4], dtype=torch.float64)
    dense = blend_dense(factors, coefficients)
    new_a, new_b, singular = blend_to_lora(factors, coefficients, rank=2, scale=2.0)
    u, s, vh = torch.linalg.svd(dense)
    assert torch.allclose(singular[:s.numel()], s, atol=1e-10)  # the blend's spectrum, from the factors alone
    assert torch.allclose(2.0 * new_b @ new_a, u[:, :2] * s[:2] @ vh[:2], atol=1e-10)


def test_a_cut_above_the_library_rank_pads_with_zeros():
    factors = random_factors(1, rank=2)
    new_a, new_b, _ = blend_to_lora(factors, torch.ones(1, dtype=torch.float64), rank=4, scale=1.0)
    assert new_a.shape == (4, 5) and new_b.shape == (7, 4)
    assert torch.allclose(new_b @ new_a, factors[0].scale * factors[0].B @ factors[0].A, atol=1e-10)


def test_refusals_name_the_problem():
    with pytest.raises(LoragenError, match="rank must be at least 1"):
        blend_to_lora(random_factors(1), torch.ones(1), rank=0, scale=1.0)
    with pytest.raises(LoragenError, match="has only one of lora_A and lora_B"):
        slot_factors({"base_model.model.x.q_proj.lora_A.weight": torch.ones(2, 3)}, scale=1.0)
    with pytest.raises(LoragenError, match="not a LoRA weight"):
        slot_factors({"model.x.weight": torch.ones(2, 3)}, scale=1.0)
    first = {"q": random_factors(1)[0]}
    with pytest.raises(LoragenError, match="targets other modules"):
        blend_state_dict([first, {"v": random_factors(1)[0]}], {"q": torch.ones(2)}, rank=2, scale=1.0)
    with pytest.raises(LoragenError, match="coefficients for a library of 2"):
        blend_state_dict([first, first], {"q": torch.ones(3)}, rank=2, scale=1.0)


def test_a_blend_exported_at_the_registry_rank_loads_in_peft_and_a_one_hot_one_acts_like_its_adapter(
        tmp_path, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loragen.adapters import load_weights, lora_config_dict, write_adapter_folder
    from tests.tiny import make_lora

    rank = 4
    folders = [make_lora(tiny_base, tmp_path / f"lib{index}", seed=index, r=rank) for index in range(2)]
    scale = 2.0  # make_lora's lora_alpha = 2r
    library = [slot_factors(load_weights(folder / "adapter_model.safetensors"), scale) for folder in folders]
    slots = list(library[0])
    inputs = torch.tensor([[1, 5, 9, 3, 7]])

    def logits(folder):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), folder).eval()
        with torch.no_grad():
            return model(inputs).logits

    config = lora_config_dict(rank, scale * rank, ["q_proj", "v_proj"])
    one_hot = blend_state_dict(library, {slot: torch.tensor([0.0, 1.0]) for slot in slots}, rank=rank, scale=scale)
    write_adapter_folder(tmp_path / "one-hot", one_hot, config)
    assert torch.allclose(logits(tmp_path / "one-hot"), logits(folders[1]), atol=1e-4)

    even = blend_state_dict(library, {slot: torch.tensor([0.5, 0.5]) for slot in slots}, rank=rank, scale=scale)
    assert all(tensor.shape[0 if key.endswith("lora_A.weight") else 1] == rank for key, tensor in even.items())
    write_adapter_folder(tmp_path / "even", even, config)
    blended = logits(tmp_path / "even")
    assert not torch.allclose(blended, logits(folders[0]), atol=1e-3)
    assert not torch.allclose(blended, logits(folders[1]), atol=1e-3)


def test_the_randomized_cut_matches_the_exact_cut():
    from loragen.generator.library import blend_to_lora_randomized

    factors = random_factors(5, rank=3, shape=(40, 30))
    coefficients = torch.tensor([0.7, -0.2, 0.4, 0.05, 1.0], dtype=torch.float64)
    dense = blend_dense(factors, coefficients)
    exact_a, exact_b, _ = blend_to_lora(factors, coefficients, rank=4, scale=2.0)
    weights = torch.cat([torch.full((3,), float(c) * f.scale, dtype=torch.float64) for c, f in zip(coefficients, factors)])
    fast_a, fast_b = blend_to_lora_randomized(torch.cat([f.A for f in factors]), torch.cat([f.B for f in factors], dim=1),
                                              weights, rank=4, scale=2.0)
    exact_error = (dense - 2.0 * exact_b @ exact_a).norm()
    fast_error = (dense - 2.0 * fast_b @ fast_a).norm()
    assert fast_error <= exact_error * 1.001
    again = blend_to_lora_randomized(torch.cat([f.A for f in factors]), torch.cat([f.B for f in factors], dim=1),
                                     weights, rank=4, scale=2.0)
    assert torch.equal(again[0], fast_a) and torch.equal(again[1], fast_b)  # seeded: the same bytes


def test_the_library_export_reproduces_a_one_hot_and_drops_only_negligible_entries():
    from loragen.generator.library import Library, relative_blend_error, significant_entries

    library_factors = [random_factors(1, rank=2, shape=(6, 5), seed=seed)[0] for seed in range(4)]
    state_dicts = [{f"base_model.model.layers.0.q_proj.lora_{kind}.weight": getattr(f, kind).float()
                    for kind in ("A", "B")} for f in library_factors]
    library = Library.from_state_dicts(state_dicts, [1.0] * 4)
    assert torch.allclose(library.grams[0], gram_matrix([LoraFactors(f.A, f.B, 1.0) for f in library_factors]),
                          rtol=1e-5)
    one_hot = torch.eye(4)[2][None]
    exported = library.to_state_dict(one_hot, rank=2, scale=1.0)
    a, b = exported["base_model.model.layers.0.q_proj.lora_A.weight"], exported["base_model.model.layers.0.q_proj.lora_B.weight"]
    own = library_factors[2]
    assert torch.allclose((b @ a).double(), own.B @ own.A, atol=1e-5)
    # A tiny fourth coefficient is dropped before the SVD; what it carried is within the tolerance.
    blend = torch.tensor([0.6, 0.3, 0.1, 1e-6], dtype=torch.float64)
    kept = significant_entries(library.grams[0], blend, tolerance=1e-4)
    assert kept.tolist() == [0, 1, 2]
    dropped = blend.clone()
    dropped[3] = 0
    assert relative_blend_error(library.grams, dropped[None], blend[None]).item() <= 1e-4
