"""The task loss: the generator's predicted adapter, applied to the frozen base, scored on the task's own examples.

Beside the diffusion loss (match the training adapters' tokens), this trains the
generator through what an adapter is for, as Text-to-LoRA's SFT objective does:

  1. the generator predicts the clean tokens x0 of the WHOLE adapter for a
     (description, base) condition: from pure noise at the last timestep (the
     first sampling step, no adapter needed), or from the task's adapter noised
     at a random timestep (the diffusion loss's view);
  2. the tokens are turned back into LoRA A/B differentiably (+ the anchor);
  3. the LoRA is added to the frozen base by forward hooks (functional_lora.py),
     and the next-token loss on the answers of a batch of the task's training
     examples flows back into the generator.

Unlike the diffusion loss, which sees `tokens_per_step` tokens, this needs every
token of every adapter in the batch at once. The denoiser runs over them in
checkpointed chunks of `chunk_tokens`: only a chunk's activations are alive at a
time (recomputed in the backward pass), so beyond the prototypes and the x0
tokens themselves the memory does not grow with the adapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from loragen.generator.diffusion import DDPMSchedule
from loragen.generator.functional_lora import applied_lora
from loragen.generator.model import ORALGenerator
from loragen.generator.sampling import adapter_from_tokens
from loragen.generator.tokenizer import LoraLayout, NormStats


def predicted_tokens(model: ORALGenerator, schedule: DDPMSchedule, positions: tuple[torch.Tensor, ...],
                     text: torch.Tensor, base: torch.Tensor, state: torch.Tensor | None, *, timestep: str,
                     clean: torch.Tensor | None = None, generator: torch.Generator | None = None,
                     chunk_tokens: int = 4096) -> torch.Tensor:
    """The generator's x0 for every token of B adapters: (B, L, token_size), differentiable.

    timestep "noise": x_t is pure noise at t = T-1. "sampled": x_t is `clean` (B, L, token_size),
    the tasks' own adapter tokens, noised at one random timestep per adapter.
    """
    prototypes = model.prototypes(*positions, text, base, state)              # (B, L, P)
    batch, length, _ = prototypes.shape
    size = model.config.token_size
    noise = torch.randn((batch, length, size), generator=generator).to(prototypes.device)
    last = schedule.num_train_timesteps - 1
    if timestep == "noise":
        t = torch.full((batch,), last, dtype=torch.long)
        x_t = noise
    elif timestep == "sampled":
        if clean is None:
            raise ValueError("timestep 'sampled' needs the tasks' clean tokens")
        t = schedule.sample_timesteps(batch, generator=generator)
        x_t = schedule.add_noise(clean, noise, t)
    else:
        raise ValueError(f"unknown task-loss timestep {timestep!r}")
    t_tokens = t.repeat_interleave(length).to(prototypes.device)
    flat_x_t = x_t.reshape(batch * length, size)
    flat_protos = prototypes.reshape(batch * length, -1)
    if batch * length <= chunk_tokens:
        output = model.denoise(flat_x_t, flat_protos, t_tokens)
    else:  # a chunk's activations at a time, recomputed for the backward pass
        output = torch.cat([checkpoint(model.denoise, flat_x_t[i:i + chunk_tokens], flat_protos[i:i + chunk_tokens],
                                       t_tokens[i:i + chunk_tokens], use_reentrant=False)
                            for i in range(0, batch * length, chunk_tokens)])
    return schedule.x0_from_output(output, t_tokens, flat_x_t).reshape(batch, length, size)


def task_loss(model: ORALGenerator, schedule: DDPMSchedule, layout: LoraLayout, stats: NormStats,
              anchor: Mapping[str, torch.Tensor], lora_scale: float, positions: tuple[torch.Tensor, ...],
              text: torch.Tensor, base: torch.Tensor, state: torch.Tensor | None,
              bases: Sequence[nn.Module], batches: Sequence[Mapping[str, torch.Tensor]], *, timestep: str,
              clean: torch.Tensor | None = None, generator: torch.Generator | None = None,
              chunk_tokens: int = 4096) -> torch.Tensor:
    """Mean next-token loss of B generated adapters, adapter i applied to `bases[i]` on `batches[i]`.

    text/base: (B, dim) conditions; batches[i]: input_ids, attention_mask and labels (answer tokens only,
    as loragen.finetune.collate builds them). The bases stay frozen: only the generator gets gradients.
    timestep: where x0 is read (see `predicted_tokens`; the setting GeneratorSettings.task_loss_timestep).
    """
    tokens = predicted_tokens(model, schedule, positions, text, base, state, timestep=timestep, clean=clean,
                              generator=generator, chunk_tokens=chunk_tokens)
    losses = []
    for row, (base_model, batch) in enumerate(zip(bases, batches, strict=True)):
        adapter = adapter_from_tokens(tokens[row], layout, stats, anchor)
        with applied_lora(base_model, adapter, lora_scale):
            losses.append(base_model(**batch).loss)
    return torch.stack(losses).mean()


def base_loss(base_model: nn.Module, batch: Mapping[str, torch.Tensor], adapter: Mapping[str, torch.Tensor] | None,
              lora_scale: float) -> float:
    """The base's next-token loss on a batch's answers, with `adapter` applied (None: the base alone)."""
    with torch.no_grad():
        if adapter is None:
            return base_model(**batch).loss.item()
        with applied_lora(base_model, adapter, lora_scale):
            return base_model(**batch).loss.item()
