"""Apply a LoRA to a frozen Hugging Face causal LM without touching its weights, so gradients reach A and B.

    with applied_lora(model, state_dict, scale=alpha / r):
        loss = model(**batch).loss     # d loss / d state_dict[...] exists when those tensors require grad

A forward hook on every targeted nn.Linear adds `scale * (x @ A.T) @ B.T` to its
output: the same sum peft's LoRA layer computes (without dropout, as in eval).
The base's parameters are never modified or wrapped, and the hooks are removed
however the block is left, so one loaded base serves every step and every task.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from loragen.architectures import PEFT_PREFIX
from loragen.errors import InvalidAdapter


def lora_pairs(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """PEFT keys -> {module name in the base model: (A, B)}.

    `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` names module
    `model.layers.0.self_attn.q_proj`; an A without its B (or the reverse) is refused.
    """
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        head, _, tail = key.partition(".lora_")
        kind = tail.split(".", 1)[0]
        if not tail or kind not in ("A", "B"):
            raise InvalidAdapter(f"adapter key {key!r} is not a LoRA A or B matrix")
        module = head.removeprefix(PEFT_PREFIX)
        halves.setdefault(module, {})[kind] = value
    incomplete = sorted(m for m, pair in halves.items() if set(pair) != {"A", "B"})
    if incomplete:
        raise InvalidAdapter(f"adapter module {incomplete[0]!r} lacks its lora_A or lora_B matrix")
    return {module: (pair["A"], pair["B"]) for module, pair in halves.items()}


@contextmanager
def applied_lora(model: nn.Module, state_dict: Mapping[str, torch.Tensor], scale: float) -> Iterator[nn.Module]:
    """`model` with the LoRA in `state_dict` added to its targeted linear layers for the duration of the block."""
    modules = dict(model.named_modules())
    pairs = lora_pairs(state_dict)
    for name, (a, b) in pairs.items():
        target = modules.get(name)
        if not isinstance(target, nn.Linear):
            raise InvalidAdapter(f"adapter targets {name!r}, which is not a linear layer of this base")
        if a.shape[1] != target.in_features or b.shape[0] != target.out_features or a.shape[0] != b.shape[1]:
            raise InvalidAdapter(f"adapter matrices for {name!r} have shapes {tuple(a.shape)} and {tuple(b.shape)}; "
                                 f"the layer maps {target.in_features} -> {target.out_features}")
    handles = []
    try:
        for name, (a, b) in pairs.items():
            handles.append(modules[name].register_forward_hook(_lora_hook(a, b, scale)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _lora_hook(a: torch.Tensor, b: torch.Tensor, scale: float):
    def add_lora(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        delta = nn.functional.linear(nn.functional.linear(x, a.to(device=x.device, dtype=x.dtype)),
                                     b.to(device=x.device, dtype=x.dtype))
        return output + scale * delta
    return add_lora


@contextmanager
def applied_blend(model: nn.Module, library, coefficients: torch.Tensor) -> Iterator[nn.Module]:
    """`model` with a blend of a library's adapters (loragen.generator.library.Library) added to its linear layers:
    slot s gets  sum_j coefficients[s, j] * scale_j * B_j A_j,  computed as one rank-(J r) LoRA whose middle is scaled
    by the coefficients, so gradients reach `coefficients` (S, J) and no dense delta_W is built."""
    modules = dict(model.named_modules())
    for slot in library.slots:
        if not isinstance(modules.get(slot), nn.Linear):
            raise InvalidAdapter(f"the library targets {slot!r}, which is not a linear layer of this base")
    weights = coefficients * library.scales.to(coefficients.dtype)                # (S, J)
    handles = []
    try:
        for index, slot in enumerate(library.slots):
            middle = weights[index].repeat_interleave(library.rank)                 # (J r,)
            handles.append(modules[slot].register_forward_hook(
                _blend_hook(library.A[index], library.B[index], middle)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _blend_hook(a: torch.Tensor, b: torch.Tensor, middle: torch.Tensor):
    def add_blend(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        inner = nn.functional.linear(x, a.to(device=x.device, dtype=x.dtype)) * middle.to(x.device, x.dtype)
        return output + nn.functional.linear(inner, b.to(device=x.device, dtype=x.dtype))
    return add_blend
