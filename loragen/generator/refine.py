"""Few-shot refinement of a blend: start from the generator's coefficients, fit them to K examples through the
base's own loss, and keep the result only if it does better on examples held back from the fit.

LoraHub (arXiv 2307.13269) fits one weight per library adapter on a handful of examples, from uniform weights.
Here the start is the text-conditioned prior the generator drew, and the fit moves a shift of those weights
shared by every slot (coefficients = start + shift[None, :]): J numbers for K examples, LoraHub's parameterisation,
so five examples cannot memorise a per-slot blend. The fit is gradient descent (the blend is differentiable through
functional_lora.applied_blend), seconds rather than a fine-tune's minutes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from loragen.errors import LoragenError
from loragen.generator.functional_lora import applied_blend
from loragen.generator.library import Library


@dataclass
class Refinement:
    """What a refinement did; `record()` goes into the adapter's provenance."""

    coefficients: torch.Tensor       # (S, J): the refined ones if kept, else the start
    kept: str                        # "refined" or "start"
    shots: int
    held_back: int
    steps: int
    learning_rate: float
    examples_sha256: str             # of the shots and held-back examples, in order
    held_back_loss_start: float
    held_back_loss_refined: float
    seconds: float

    def record(self) -> dict:
        return {"kept": self.kept, "shots": self.shots, "held_back": self.held_back, "steps": self.steps,
                "learning_rate": self.learning_rate, "examples_sha256": self.examples_sha256,
                "held_back_loss_start": round(self.held_back_loss_start, 6),
                "held_back_loss_refined": round(self.held_back_loss_refined, 6), "seconds": round(self.seconds, 3)}


def examples_digest(examples: Sequence[tuple[str, str]]) -> str:
    return hashlib.sha256(json.dumps([list(pair) for pair in examples]).encode()).hexdigest()


def example_batch(tokenizer, examples: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    from loragen.finetune import collate, encode_examples, pad_token_id

    return collate(encode_examples(tokenizer, examples), pad_token_id(tokenizer))


def blend_loss(base_model: nn.Module, library: Library, coefficients: torch.Tensor,
               batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The base's next-token loss on the batch's answers with the blend applied."""
    with applied_blend(base_model, library, coefficients):
        return base_model(**batch).loss


def refine_blend(base_model: nn.Module, tokenizer, library: Library, start: torch.Tensor,
                 shots: Sequence[tuple[str, str]], held_back: Sequence[tuple[str, str]], *, steps: int,
                 learning_rate: float) -> Refinement:
    """Fit a slot-shared shift of `start` (S, J) on `shots`; keep it only if the loss on `held_back` went down."""
    if not shots:
        raise LoragenError("refinement needs at least one example to fit")
    if not held_back:
        raise LoragenError("refinement needs examples held back from the fit, to check it did not get worse")
    if steps < 1 or not learning_rate > 0:
        raise LoragenError(f"refinement needs steps >= 1 and a positive learning rate (got {steps}, {learning_rate})")
    began = time.perf_counter()
    base_model.eval()
    base_model.requires_grad_(False)
    fit_batch, check_batch = example_batch(tokenizer, shots), example_batch(tokenizer, held_back)
    start = start.float()
    shift = torch.zeros(start.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([shift], lr=learning_rate)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        blend_loss(base_model, library, start + shift[None, :], fit_batch).backward()
        optimizer.step()
    refined = (start + shift[None, :]).detach()
    with torch.no_grad():
        before = blend_loss(base_model, library, start, check_batch).item()
        after = blend_loss(base_model, library, refined, check_batch).item()
    better = after < before
    return Refinement(coefficients=refined if better else start, kept="refined" if better else "start",
                      shots=len(shots), held_back=len(held_back), steps=steps, learning_rate=learning_rate,
                      examples_sha256=examples_digest([*shots, *held_back]), held_back_loss_start=before,
                      held_back_loss_refined=after, seconds=time.perf_counter() - began)


def uniform_start(library: Library) -> torch.Tensor:
    """LoraHub's start: every library adapter at weight 1/J in every slot."""
    return torch.full((len(library.slots), library.size), 1.0 / library.size)


def split_examples(examples: Sequence[tuple[str, str]], shots: int, held_back: int, seed: int
                   ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """`shots` examples to fit and up to `held_back` others to check, drawn without overlap by a seeded shuffle."""
    if shots < 1:
        raise LoragenError(f"--shots must be at least 1 (got {shots})")
    if len(examples) <= shots:
        raise LoragenError(f"{len(examples)} example(s) given for {shots} shot(s): refinement needs more than "
                           "--shots, to hold some back and check the fit")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    picked = [examples[i] for i in order]
    return picked[:shots], picked[shots:shots + held_back]
