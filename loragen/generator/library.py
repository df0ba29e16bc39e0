"""Adapters as blends of a library: the coordinates issue 20's generator is to work in.

A library is a list of LoRA adapters on one base. A blend gives each (layer, module) slot its own coefficients
over the library, and its weight change there is

    delta_W(slot) = sum_j a[slot, j] * s_j * B_j A_j          (s_j = lora_alpha / r of adapter j)

A one-hot coefficient reproduces adapter j exactly, and a blend does not depend on how each adapter happens to
split its product into B and A (the gauge freedom B A = (B R)(R^-1 A) that makes raw A, B a poor space to learn in).

Everything here works from the low-rank factors and never builds a dense delta_W, except the `*_dense` reference
functions kept beside the fast ones for the tests (mamba-ssm's convention):
* the inner product of two adapters' changes is trace((B_i^T B_j)(A_j A_i^T)), so the distance between two blends
  of a slot is a quadratic form in their coefficients over the slot's Gram matrix;
* a blend goes back to a plain LoRA of rank r through thin QR factorisations and the SVD of a small core
  (its size is the library's total rank), keeping the r largest singular directions (Eckart-Young: the best rank-r
  approximation in Frobenius norm).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from loragen.architectures import LORA_KEY_PATTERN, PEFT_PREFIX
from loragen.errors import LoragenError


@dataclass(frozen=True)
class LoraFactors:
    """One adapter's factors at one slot: delta_W = scale * B @ A, with A (r, in) and B (out, r)."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float


def slot_factors(state_dict: Mapping[str, torch.Tensor], scale: float) -> dict[str, LoraFactors]:
    """A PEFT state dict's factors by slot (the module path, e.g. `model.layers.0.self_attn.q_proj`)."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        match = LORA_KEY_PATTERN.match(key)
        if match is None:
            raise LoragenError(f"{key!r} is not a LoRA weight of PEFT's format")
        found.setdefault(match["module"], {})[match["kind"]] = tensor.double()
    missing = [slot for slot, kinds in found.items() if len(kinds) != 2]
    if missing:
        raise LoragenError(f"slot {missing[0]!r} has only one of lora_A and lora_B")
    return {slot: LoraFactors(A=kinds["lora_A"], B=kinds["lora_B"], scale=scale) for slot, kinds in found.items()}


def common_slots(library: Sequence[Mapping[str, LoraFactors]]) -> list[str]:
    """The slots every library adapter has, in the first one's order; refused when they differ."""
    if not library:
        raise LoragenError("the library is empty")
    slots = list(library[0])
    for index, adapter in enumerate(library[1:], start=1):
        if set(adapter) != set(slots):
            raise LoragenError(f"library adapter {index} targets other modules than adapter 0: a blend needs one set")
    return slots


def inner_product(a: LoraFactors, b: LoraFactors) -> torch.Tensor:
    """<delta_W_a, delta_W_b> (Frobenius) from the factors: trace((B_a^T B_b)(A_b A_a^T)), O(r^2 (in + out))."""
    return a.scale * b.scale * torch.einsum("ij,ji->", a.B.T @ b.B, b.A @ a.A.T)


def gram_matrix(factors: Sequence[LoraFactors]) -> torch.Tensor:
    """(J, J) inner products of the library's changes at one slot."""
    size = len(factors)
    gram = torch.empty(size, size, dtype=torch.float64)
    for i in range(size):
        for j in range(i, size):
            gram[i, j] = gram[j, i] = inner_product(factors[i], factors[j])
    return gram


def blend_distance_squared(gram: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||delta_W(a) - delta_W(b)||_F^2 at a slot for coefficient vectors a, b (the last dim indexes the library):
    (a - b)^T G (a - b), exact, batched over any leading dims, and differentiable in a and b."""
    difference = (a - b).to(gram.dtype)
    return torch.einsum("...i,ij,...j->...", difference, gram, difference)


def blend_dense(factors: Sequence[LoraFactors], coefficients: torch.Tensor) -> torch.Tensor:
    """Reference: the blend's dense delta_W at one slot."""
    return sum(c * f.scale * (f.B @ f.A) for c, f in zip(coefficients.double(), factors))


def blend_to_lora(factors: Sequence[LoraFactors], coefficients: torch.Tensor, rank: int, scale: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best rank-`rank` LoRA (A, B, with delta_W = scale * B @ A) of a slot's blend, and the singular values
    of the whole blend (so a caller can say what the cut kept). Never builds the dense (out, in) matrix.

    The blend is stacked_B @ stacked_A with stacked_B = [c_j s_j B_j] (out, R) and stacked_A = [A_j] (R, in),
    R the library's total rank. With stacked_B = Q_b R_b and stacked_A^T = Q_a R_a (thin QR), the blend is
    Q_b (R_b R_a^T) Q_a^T, so the SVD of the (R, R) core gives the blend's.
    """
    if rank < 1:
        raise LoragenError(f"rank must be at least 1 (got {rank})")
    stacked_b = torch.cat([c * f.scale * f.B for c, f in zip(coefficients.double(), factors)], dim=1)
    stacked_a = torch.cat([f.A for f in factors], dim=0)
    q_b, r_b = torch.linalg.qr(stacked_b)
    q_a, r_a = torch.linalg.qr(stacked_a.T)
    u, singular, vh = torch.linalg.svd(r_b @ r_a.T)
    kept = min(rank, singular.numel())
    root = singular[:kept].sqrt()
    new_b = (q_b @ u[:, :kept]) * root / scale ** 0.5
    new_a = (root[:, None] * vh[:kept]) @ q_a.T / scale ** 0.5
    if kept < rank:  # a library of smaller total rank than asked: pad with zero directions, PEFT needs r rows
        new_b = torch.cat([new_b, new_b.new_zeros(new_b.shape[0], rank - kept)], dim=1)
        new_a = torch.cat([new_a, new_a.new_zeros(rank - kept, new_a.shape[1])], dim=0)
    return new_a, new_b, singular


def blend_state_dict(library: Sequence[Mapping[str, LoraFactors]], coefficients: Mapping[str, torch.Tensor],
                     rank: int, scale: float, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A PEFT state dict (rank `rank`, to be saved with lora_alpha = scale * rank) of a blend: each slot's
    coefficient vector over the library in `coefficients`."""
    state_dict = {}
    for slot in common_slots(library):
        if slot not in coefficients:
            raise LoragenError(f"no coefficients for slot {slot!r}")
        if coefficients[slot].shape != (len(library),):
            raise LoragenError(f"slot {slot!r} has {tuple(coefficients[slot].shape)} coefficients for a library of "
                               f"{len(library)}")
        new_a, new_b, _ = blend_to_lora([adapter[slot] for adapter in library], coefficients[slot], rank, scale)
        state_dict[f"{PEFT_PREFIX}{slot}.lora_A.weight"] = new_a.to(dtype).contiguous()
        state_dict[f"{PEFT_PREFIX}{slot}.lora_B.weight"] = new_b.to(dtype).contiguous()
    return state_dict
