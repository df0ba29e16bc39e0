"""Drawing an adapter from a trained generator, and turning the generator's tokens back into LoRA tensors.

    state_dict = sample_state_dict(generator, text, base, seed=0, method="ddim", steps=10, eta=0.0)

`generator` is a `LoadedGenerator`: a trained checkpoint and the network built from it (what
`loragen.workflows.load_generator` returns for a registered one). The same seed gives the same tensors,
bit for bit (tests/test_golden_hashes.py). Method, steps and eta have no defaults here: they are the user's
settings (GeneratorSettings.sample_method, sample_steps, eta) or the caller's flags.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from loragen.generator.diffusion import DDPMSchedule
from loragen.generator.model import ORALGenerator
from loragen.generator.tokenizer import LoraLayout, NormStats, detokenize, tokens_to_tensors

Positions = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class LoadedGenerator:
    uid: str                           # the registry's id of the checkpoint ("" for one not registered)
    checkpoint: Any                    # a GeneratorCheckpoint (training.py imports this module, not back)
    model: Any                         # checkpoint.build_model(): an ORALGenerator, or a BlendGenerator
    library: Any = None                # a library generator's Library (loaded from the registry); None for raw
    # A library generator trained across bases of other shapes holds a Library per family: (library, its columns
    # among the network's keys, its slot positions) each. `workflows.generation.fitted_generator` picks the one a base
    # takes and sets `library`, `columns` and `positions` from it (None: the checkpoint's own, one family).
    families: list = field(default_factory=list)
    columns: Any = None
    positions: Any = None


def token_positions(layout: LoraLayout) -> Positions:
    """Where each token sits (layer, module kind, slice within its matrix): what the generator is conditioned on."""
    return layout.layer_index(), layout.module_index(), layout.slice_index()


@torch.no_grad()
def sample_tokens(model: ORALGenerator, schedule: DDPMSchedule, positions: Positions, text: torch.Tensor,
                  base: torch.Tensor, state: torch.Tensor | None, *, method: str, steps: int | None, eta: float,
                  generator: torch.Generator | None = None, progress: Callable[[int, int], None] | None = None,
                  chunk_tokens: int = 2048) -> torch.Tensor:
    """Generate one adapter's tokens (L, token_size): prototypes once, then every token denoised independently.

    Tokens go through the denoiser `chunk_tokens` at a time, so the working memory
    beyond the (L, token_size) sample itself stays fixed however large the adapter.
    """
    prototypes = model.prototypes(*positions, text[None], base[None], state[None] if state is not None else None)[0]
    length = prototypes.shape[0]
    # The prototype's projections do not change between steps: computed once when the adapter
    # fits one chunk (kept for every chunk they would cost ~2.5x the sample's memory).
    features = model.denoiser.prototype_features(prototypes) if length <= chunk_tokens else None

    def denoise_in_chunks(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([model.denoise(x_t[i:i + chunk_tokens], prototypes[i:i + chunk_tokens], t[i:i + chunk_tokens],
                                        features)
                          for i in range(0, length, chunk_tokens)])

    return schedule.sample(denoise_in_chunks, (length, model.config.token_size), method=method, steps=steps, eta=eta,
                           generator=generator, progress=progress, device=prototypes.device)


def assemble_adapter(tokens: torch.Tensor, layout: LoraLayout, stats: NormStats,
                     anchor: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One drawn adapter's tokens (L, token_size) -> its PEFT state dict (float32, on the CPU), the anchor (the
    training adapters' mean, empty when the generator learnt adapters whole) added back."""
    residual = detokenize(tokens, layout, stats)
    return {key: value + anchor[key] if anchor else value for key, value in residual.items()}


def adapter_from_tokens(tokens: torch.Tensor, layout: LoraLayout, stats: NormStats,
                        anchor: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`assemble_adapter` for training: the same sum in the tokens' dtype and device, keeping the autograd graph
    (the task loss differentiates through it)."""
    residual = tokens_to_tensors(tokens, layout, stats)
    if not anchor:
        return residual
    return {key: value + anchor[key].to(value.device, value.dtype) for key, value in residual.items()}


def sample_state_dict(generator: LoadedGenerator, text: torch.Tensor, base: torch.Tensor, *, seed: int, method: str, steps: int,
                      eta: float, progress: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """One adapter's LoRA tensors from a condition (text and base embeddings); the same seed gives the same tensors.

    DDPM runs the whole schedule whatever `steps` says; DDIM runs `steps` of it. A library generator's
    coefficients are cut back to the LoRA rank it exports (`export_blend`).
    """
    if generator.library is not None:
        coefficients = sample_coefficients(generator, text, base, seed=seed, method=method, steps=steps, eta=eta,
                                           progress=progress)
        return export_blend(generator, coefficients)
    checkpoint = generator.checkpoint
    rng = torch.Generator().manual_seed(seed)
    state = None
    if checkpoint.config.num_permutation_states:  # RPG: one training state drawn at random
        state = torch.randint(checkpoint.config.num_permutation_states, (), generator=rng)
    tokens = sample_tokens(generator.model, checkpoint.schedule, token_positions(checkpoint.layout), text.float(),
                           base.float(), state, method=method, steps=None if method == "ddpm" else steps, eta=eta,
                           generator=rng, progress=progress)
    return assemble_adapter(tokens, checkpoint.layout, checkpoint.stats, checkpoint.anchor)


@torch.no_grad()
def sample_coefficients(generator: LoadedGenerator, text: torch.Tensor, base: torch.Tensor, *, seed: int, method: str,
                        steps: int, eta: float, allowed: torch.Tensor | None = None,
                        progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """A library generator's (S, J) coefficients for a condition: the affinities once, then the head denoises every
    slot's coefficient vector. `allowed` (J bools) masks library entries out (all allowed by default)."""
    checkpoint, model = generator.checkpoint, generator.model
    rng = torch.Generator().manual_seed(seed)
    positions = generator.positions if generator.positions is not None else checkpoint.slot_positions()
    affinity = model.affinities(*positions, text.float()[None], base.float()[None])[0]
    if generator.columns is not None:  # the family's adapters among all the network has keys for
        affinity = affinity[:, generator.columns]
    shape = affinity.shape[:-1]                                     # (S, J)
    if allowed is None:
        allowed = torch.ones(shape[-1], dtype=torch.bool)
    rows = allowed.expand(shape)

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model.denoise(x_t * rows, affinity, t, rows)

    return checkpoint.schedule.sample(denoise, tuple(shape), method=method,
                                      steps=None if method == "ddpm" else steps, eta=eta, generator=rng,
                                      progress=progress) * rows


def export_blend(generator: LoadedGenerator, coefficients: torch.Tensor, rank: int | None = None) -> dict[str, torch.Tensor]:
    """A blend's PEFT state dict at `rank` (default: the rank the generator's adapters had), the slots' sums cut by
    SVD and saved at the same lora_alpha / r scale."""
    lora = generator.checkpoint.lora
    scale = lora["lora_alpha"] / lora["r"]
    return generator.library.to_state_dict(coefficients, rank or lora["r"], scale)
