"""Carry an adapter across a base update by the change the generator predicts (issue 12: a generator that uses
the base's change).

    shifted = carried + (generated on the new base - generated on the old base)

The two generated adapters are sampled from the same description with the same seed, so their difference is
what the base condition changes, not sampling noise; the known adapter anchors the result, and the generator
only has to get the change right, not the whole adapter. The sum is taken in weight space, dW = B A per
module: LoRA's factors are defined only up to an invertible r x r map (B A = (B M)(M^-1 A)), so A's and B's of
different adapters cannot be subtracted. The sum has rank up to 3r; it is cut back to the adapter's rank r by
its best rank-r approximation, so the result is a LoRA of the same shape that peft loads as before.

`low_rank_sum` is the fast path (QR of the stacked factors, then an SVD of a 3r x 3r core);
`low_rank_sum_reference` forms the dense matrix and takes its SVD, for the tests.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

LORA_A, LORA_B = "lora_A", "lora_B"


def lora_modules(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """Module prefix -> (its lora_A key, its lora_B key), for every module that has both."""
    pairs: dict[str, dict[str, str]] = {}
    for key in state_dict:
        for kind in (LORA_A, LORA_B):
            marker = f".{kind}."
            if marker in key:
                pairs.setdefault(key.split(marker)[0], {})[kind] = key
    return {prefix: (keys[LORA_A], keys[LORA_B]) for prefix, keys in sorted(pairs.items())
            if LORA_A in keys and LORA_B in keys}


def low_rank_sum(terms: Sequence[tuple[float, torch.Tensor, torch.Tensor]], rank: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_i w_i B_i A_i as (B, A) of rank `rank`: the best rank-r approximation (Eckart-Young), split evenly
    (B = U sqrt(S), A = sqrt(S) V^T). B_i: (out, r_i), A_i: (r_i, in). Computed in float64."""
    stacked_b = torch.cat([weight * b.double() for weight, b, _ in terms], dim=1)   # (out, k)
    stacked_a = torch.cat([a.double() for _, _, a in terms], dim=0)                 # (k, in)
    q_b, r_b = torch.linalg.qr(stacked_b)                                            # (out, k), (k, k)
    q_a, r_a = torch.linalg.qr(stacked_a.T)                                          # (in, k), (k, k)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)                                         # the k x k core
    root = s[:rank].sqrt()
    return _padded((q_b @ u[:, :rank]) * root, (root[:, None] * vh[:rank]) @ q_a.T, rank)


def low_rank_sum_reference(terms: Sequence[tuple[float, torch.Tensor, torch.Tensor]], rank: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same through the dense (out, in) matrix: slow for big layers, obviously right."""
    dense = sum(weight * (b.double() @ a.double()) for weight, b, a in terms)
    u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    root = s[:rank].sqrt()
    return _padded(u[:, :rank] * root, root[:, None] * vh[:rank], rank)


def _padded(b: torch.Tensor, a: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero columns of B and rows of A up to `rank` (a layer narrower than 3r has fewer singular values)."""
    missing = rank - b.shape[1]
    if missing <= 0:
        return b, a
    return (torch.cat([b, b.new_zeros(b.shape[0], missing)], dim=1),
            torch.cat([a, a.new_zeros(missing, a.shape[1])], dim=0))


def shift_adapter(carried: Mapping[str, torch.Tensor], generated_new: Mapping[str, torch.Tensor],
                  generated_old: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """carried + (generated_new - generated_old), module by module in weight space, at the carried adapter's rank
    and dtype. The three must hold the same LoRA modules with the same shapes (one LoRA config: the same
    alpha / r scale applies to all three, so it factors out); a ValueError says what differs otherwise."""
    modules = lora_modules(carried)
    for name, other in (("generated (new base)", generated_new), ("generated (old base)", generated_old)):
        if set(other) != set(carried):
            raise ValueError(f"the {name} adapter holds other LoRA tensors than the carried-over one")
        wrong = next((k for k in carried if other[k].shape != carried[k].shape), None)
        if wrong is not None:
            raise ValueError(f"{wrong}: the {name} adapter's shape {tuple(other[wrong].shape)} differs from the "
                             f"carried-over one's {tuple(carried[wrong].shape)}")
    shifted = dict(carried)
    for a_key, b_key in modules.values():
        rank = carried[a_key].shape[0]
        b, a = low_rank_sum([(1.0, carried[b_key], carried[a_key]),
                             (1.0, generated_new[b_key], generated_new[a_key]),
                             (-1.0, generated_old[b_key], generated_old[a_key])], rank)
        shifted[a_key], shifted[b_key] = a.to(carried[a_key].dtype), b.to(carried[b_key].dtype)
    return shifted
