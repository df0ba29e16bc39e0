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

import re
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


def shape_families(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> list[list[int]]:
    """The adapters grouped by what they fit (each tensor's key and shape): one group per base architecture and size
    (every SmolLM2 version is one, Gemma 3 270M another), in order of first appearance. A blend can only mix adapters
    of one group, so a generator trained across bases keeps a library per group."""
    groups: dict[tuple, list[int]] = {}
    for index, state_dict in enumerate(state_dicts):
        signature = tuple(sorted((key, tuple(tensor.shape)) for key, tensor in state_dict.items()))
        groups.setdefault(signature, []).append(index)
    return list(groups.values())


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


def blend_to_lora_randomized(stacked_a: torch.Tensor, stacked_b: torch.Tensor, weights: torch.Tensor, rank: int,
                             scale: float, oversample: int = 8, power_iterations: int = 2
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The fast path of `blend_to_lora` (its reference): the rank-`rank` cut (A, B with delta_W = scale B A) of
    stacked_b diag(weights) stacked_a, where stacked_a (R, in) and stacked_b (out, R) hold the blended adapters'
    factors side by side and `weights` (R,) each column's coefficient times its adapter's scale.

    A randomized range finder with power iterations (Halko, Martinsson and Tropp 2011) touches the blend only through
    products with its factors: O(R (in + out) k) for k = rank + oversample, where the exact cut needs the SVD of an
    (R, R) core, R up to the whole library's rank. The probe is seeded, so a blend always gives the same bytes; the
    tests hold the result to the exact cut."""
    if rank < 1:
        raise LoragenError(f"rank must be at least 1 (got {rank})")
    stacked_b = stacked_b * weights.to(stacked_b.dtype)
    width = min(rank + oversample, stacked_a.shape[0], stacked_b.shape[0], stacked_a.shape[1])
    probe = torch.randn(stacked_a.shape[1], width, generator=torch.Generator().manual_seed(0)).to(stacked_a.dtype)
    basis = torch.linalg.qr(stacked_b @ (stacked_a @ probe)).Q                                           # (out, k)
    for _ in range(power_iterations):
        back = torch.linalg.qr(stacked_a.T @ (stacked_b.T @ basis)).Q                                    # (in, k)
        basis = torch.linalg.qr(stacked_b @ (stacked_a @ back)).Q
    small = (basis.T @ stacked_b) @ stacked_a                                                            # (k, in)
    u, singular, vh = torch.linalg.svd(small, full_matrices=False)
    kept = min(rank, singular.numel())
    root = singular[:kept].sqrt()
    new_b = (basis @ u[:, :kept]) * root / scale ** 0.5
    new_a = (root[:, None] * vh[:kept]) / scale ** 0.5
    if kept < rank:
        new_b = torch.cat([new_b, new_b.new_zeros(new_b.shape[0], rank - kept)], dim=1)
        new_a = torch.cat([new_a, new_a.new_zeros(rank - kept, new_a.shape[1])], dim=0)
    return new_a, new_b


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


# ---------------------------------------------------------------- a library stacked for training and sampling

SLOT_LAYER = re.compile(r"\.(\d+)\.")
# What an exported blend may drop before its SVD: 1e-4 of its squared delta_W norm (a relative error of 1%).
EXPORT_TOLERANCE = 1e-4


@dataclass
class Library:
    """J adapters (all of rank r, same slots) stacked per slot: what a blend generator's coefficients range over.

    For slot s, `A[s]` is (J r, in) and `B[s]` is (out, J r), adapter j's rows/columns at [j r, (j+1) r), so the
    blend with coefficients c is  delta_W = B[s] diag(repeat(c * scales, r)) A[s]  without any dense (out, in)
    matrix; `grams[s]` is the (J, J) Gram matrix of the adapters' changes at slot s (float64).
    """

    slots: list[str]
    A: list[torch.Tensor]
    B: list[torch.Tensor]
    scales: torch.Tensor            # (J,) lora_alpha / r of each adapter
    rank: int                       # r of every adapter
    grams: torch.Tensor             # (S, J, J)

    @property
    def size(self) -> int:
        return int(self.scales.numel())

    @classmethod
    def from_state_dicts(cls, state_dicts: Sequence[Mapping[str, torch.Tensor]], scales: Sequence[float]) -> Library:
        if len(state_dicts) != len(scales):
            raise LoragenError(f"{len(state_dicts)} library adapters but {len(scales)} scales")
        factors = [slot_factors(sd, scale) for sd, scale in zip(state_dicts, scales)]
        slots = common_slots(factors)
        ranks = {f[slot].A.shape[0] for f in factors for slot in slots}
        if len(ranks) != 1:
            raise LoragenError(f"library adapters have ranks {sorted(ranks)}: a library needs one rank")
        rank = ranks.pop()
        scale_vector = torch.tensor([float(s) for s in scales], dtype=torch.float64)
        stacked_a, stacked_b, grams = [], [], []
        for slot in slots:
            a = torch.cat([f[slot].A for f in factors], dim=0)
            b = torch.cat([f[slot].B for f in factors], dim=1)
            stacked_a.append(a.float())
            stacked_b.append(b.float())
            grams.append(stacked_gram(a, b, scale_vector, rank))
        return cls(slots=slots, A=stacked_a, B=stacked_b, scales=scale_vector.float(), rank=rank,
                   grams=torch.stack(grams))

    def misfits(self, linear_shapes: Mapping[str, Sequence[int]]) -> list[str]:
        """The slots a base with these linear shapes (module path -> [out, in]) lacks or has at another shape,
        each as `slot: [out, in] here, <the base's> there`: where the library's adapters cannot be applied."""
        misfits = []
        for index, slot in enumerate(self.slots):
            wanted = [int(self.B[index].shape[0]), int(self.A[index].shape[1])]
            found = linear_shapes.get(slot)
            if found is None or list(found) != wanted:
                misfits.append(f"{slot}: {wanted} in the library, {list(found) if found else 'absent'} in the base")
        return misfits

    def slot_modules(self) -> list[str]:
        """Each slot's module leaf name (q_proj, v_proj, …)."""
        return [slot.rsplit(".", 1)[-1] for slot in self.slots]

    def to_state_dict(self, coefficients: torch.Tensor, rank: int, scale: float,
                      tolerance: float = EXPORT_TOLERANCE) -> dict[str, torch.Tensor]:
        """(S, J) coefficients -> a PEFT state dict of rank `rank` (lora_alpha = scale * rank), by SVD per slot.

        Before the SVD each slot's blend drops its smallest contributions while what they add stays below
        `tolerance` of the blend (relative squared delta_W distance, exact through the Gram matrix): a blend of a
        few neighbours then costs an SVD of a few adapters' ranks instead of the whole library's.
        """
        if tuple(coefficients.shape) != (len(self.slots), self.size):
            raise LoragenError(f"coefficients of shape {tuple(coefficients.shape)} for a library of {self.size} "
                               f"adapters over {len(self.slots)} slots")
        state_dict = {}
        for index, slot in enumerate(self.slots):
            kept = significant_entries(self.grams[index], coefficients[index].double(), tolerance)
            columns = (kept[:, None] * self.rank + torch.arange(self.rank)).flatten()
            weights = (coefficients[index][kept].float() * self.scales[kept]).repeat_interleave(self.rank)
            new_a, new_b = blend_to_lora_randomized(self.A[index][columns], self.B[index][:, columns], weights,
                                                    rank, scale)
            state_dict[f"{PEFT_PREFIX}{slot}.lora_A.weight"] = new_a.float().contiguous()
            state_dict[f"{PEFT_PREFIX}{slot}.lora_B.weight"] = new_b.float().contiguous()
        return state_dict


def significant_entries(gram: torch.Tensor, coefficients: torch.Tensor, tolerance: float) -> torch.Tensor:
    """The fewest library entries, largest contributions first, whose blend is within `tolerance` of the whole
    blend (||delta_W(dropped)||^2 <= tolerance * ||delta_W(all)||^2); at least one. Returned in library order."""
    energy = coefficients.pow(2) * gram.diagonal()
    order = torch.argsort(energy, descending=True)
    weighted = torch.outer(coefficients[order], coefficients[order]) * gram[order][:, order]
    # tail[k] = the squared norm of the blend of entries order[k:], for every k at once.
    tail = weighted.flip(0, 1).cumsum(0).cumsum(1).flip(0, 1).diagonal()
    total = tail[0].clamp_min(1e-300)
    enough = (torch.cat([tail[1:], tail.new_zeros(1)]) <= tolerance * total).nonzero()
    count = int(enough[0]) + 1 if enough.numel() else coefficients.numel()
    return order[:count].sort().values


def stacked_gram(stacked_a: torch.Tensor, stacked_b: torch.Tensor, scales: torch.Tensor, rank: int) -> torch.Tensor:
    """The (J, J) Gram matrix of J adapters stacked as (J r, in) and (out, J r): G_ij = s_i s_j
    trace((B_i^T B_j)(A_j A_i^T)), all pairs at once from the two (J r, J r) products (equal to `gram_matrix`)."""
    size = scales.numel()
    a, b = stacked_a.double(), stacked_b.double()
    products = (b.T @ b) * (a @ a.T)            # A A^T is symmetric, so this is the elementwise trace summand
    blocks = products.reshape(size, rank, size, rank).sum(dim=(1, 3))
    return blocks * scales[:, None] * scales[None, :]


def relative_blend_error(grams: torch.Tensor, coefficients: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||delta_W(c) - delta_W(target)||^2 / ||delta_W(target)||^2 per slot, batched.

    grams (S, J, J); coefficients and target (..., S, J). Exact and differentiable: the loss a blend generator is
    trained on, in weight-change space (no dense delta_W is built)."""
    difference = (coefficients - target).to(grams.dtype)
    error = torch.einsum("...si,sij,...sj->...s", difference, grams, difference)
    target = target.to(grams.dtype)
    size = torch.einsum("...si,sij,...sj->...s", target, grams, target)
    return error / size.clamp_min(1e-30)


def best_blend(grams: torch.Tensor, target: torch.Tensor, allowed: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """Per slot, the blend of the `allowed` library entries (J bools) of full strength (coefficients summing to 1)
    nearest, in delta_W, to the blend `target` (S, J); entries not allowed get 0. Leave-one-task-out training noises
    this, not the unreachable one-hot.

    Why full strength: adapters of different tasks are nearly orthogonal in delta_W, so the unconstrained projection
    of a task onto the others is a near-zero blend, that is zero-shot. Summing to 1 makes it a mix of neighbours
    at an adapter's strength, leaning toward the tasks whose changes resemble the target's (a uniform-like mix, the
    mean adapter, when none does). Solved in closed form (Lagrange): a = G^-1 (g + mu 1), mu = (1 - 1'G^-1 g) /
    1'G^-1 1, with a small ridge for libraries of near-equal adapters."""
    index = allowed.nonzero().flatten()
    sub = grams[:, index][:, :, index]                                        # (S, K, K)
    rhs = torch.einsum("sij,sj->si", grams[:, index], target.to(grams.dtype))  # (S, K)
    eye = torch.eye(index.numel(), dtype=grams.dtype)
    damping = ridge * sub.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)
    system = sub + damping[:, None, None] * eye
    toward = torch.linalg.solve(system, rhs)                                  # G^-1 g
    ones = torch.linalg.solve(system, torch.ones_like(rhs))                   # G^-1 1
    mu = (1.0 - toward.sum(dim=1)) / ones.sum(dim=1)
    out = torch.zeros(target.shape, dtype=grams.dtype)
    out[:, index] = toward + mu[:, None] * ones
    return out
