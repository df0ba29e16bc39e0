"""The ORAL generator: positions + condition -> Mamba -> one prototype per token -> diffusion head.

Read top to bottom:
  1. every LoRA token gets a fixed position code (layer, module, slice within its matrix);
  2. the condition (task text embedding, base-model embedding) and, as in RPG, a
     learned "permutation state" per training adapter are projected and added;
  3. a Mamba stack reads that sequence and emits one prototype per token. It never
     sees the noisy weights, so at sampling time it runs once per adapter;
  4. a small per-token conv denoiser predicts the noise of each token given its
     prototype and the timestep. The noise schedule and the training loss live in
     diffusion.py; drawing an adapter, in sampling.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from loragen.config import GeneratorNetworkSettings
from loragen.generator.diffusion import DDPMSchedule, diffusion_loss
from loragen.generator.modules.denoiser import DenoiserConfig, TokenDenoiser
from loragen.generator.modules.mamba import MambaConfig, MambaStack
from loragen.generator.tokenizer import LoraLayout

NETWORK_SETTINGS = frozenset(f.name for f in fields(GeneratorNetworkSettings))


@dataclass
class GeneratorConfig:
    """The network's shape, saved with every checkpoint.

    No defaults: the user's defaults live in GeneratorSettings' network section (loragen/config.py), and
    `generator_config_from_settings` is the one place that turns settings into this: the fields named like a
    network setting are copied from it, the others derived from the adapters and conditions.
    """

    token_size: int                   # LoRA values per token
    d_model: int                      # Mamba width
    n_layers: int                     # Mamba blocks
    d_state: int                      # SSM state size
    prototype_dim: int                # prototype per token
    denoiser_channels: tuple[int, ...]
    direct_readout: bool              # denoiser adds a time-gated linear readout of the prototype
    memory_slots: int                 # learned per-token prototype tables mixed by the condition (0: off)
    memory_code_dim: int              # > 0: the factorised memory (per-token code of this width x per-slot map)
    num_tokens: int                   # tokens per adapter (sizes the memory tables; 0 without them)
    text_dim: int                     # task-text embedding size
    base_dim: int                     # base-model embedding size
    num_permutation_states: int       # learned states, one per training adapter (0: off)
    num_module_types: int             # rows of the module-kind embedding

    def __post_init__(self) -> None:
        self.denoiser_channels = tuple(self.denoiser_channels)
        for name in ("token_size", "d_model", "n_layers", "d_state", "prototype_dim", "text_dim", "base_dim",
                     "num_module_types"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GeneratorConfig.{name} must be positive (got {getattr(self, name)})")
        if self.num_permutation_states < 0 or self.memory_slots < 0:
            raise ValueError("GeneratorConfig.num_permutation_states and memory_slots must be >= 0")
        if self.memory_code_dim < 0:
            raise ValueError("GeneratorConfig.memory_code_dim must be >= 0")
        if self.memory_slots and self.num_tokens <= 0:
            raise ValueError("GeneratorConfig.num_tokens must be set when memory_slots is on")
        if self.d_model % 2:
            raise ValueError("GeneratorConfig.d_model must be even (sinusoidal position code)")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["denoiser_channels"] = list(self.denoiser_channels)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratorConfig:
        """As `to_dict` wrote it; older checkpoints also carry `max_layers`, which nothing ever read, and predate
        the factorised memory (their tables are the full kind: memory_code_dim 0)."""
        return cls(**{"memory_code_dim": 0, **{key: value for key, value in data.items() if key != "max_layers"}})


def generator_config_from_settings(network: GeneratorNetworkSettings, layout: LoraLayout, *, text_dim: int,
                                   base_dim: int, num_adapters: int) -> GeneratorConfig:
    """The network `network` describes (a GeneratorSettings, or its `network` section), sized for adapters of
    `layout`, conditions of `text_dim`/`base_dim` values, and `num_adapters` training adapters (one permutation
    state each, when those are on).

    Every config field named like a network setting is copied by name; the rest are derived here.
    """
    copied = {f.name: getattr(network, f.name) for f in fields(GeneratorConfig) if f.name in NETWORK_SETTINGS}
    return GeneratorConfig(**{
        **copied,
        "memory_code_dim": network.memory_code_dim if network.memory_slots else 0,
        "num_tokens": layout.num_tokens if network.memory_slots else 0,
        "text_dim": text_dim, "base_dim": base_dim,
        "num_permutation_states": num_adapters if network.permutation_states else 0,
        # At least 64 rows, as every checkpoint so far; rows a layout does not use are never read.
        "num_module_types": max(64, len(layout.module_names))})


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sinusoidal code of integer positions: (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=positions.device) / half)
    angles = positions.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TokenPositions(nn.Module):
    """Where each token sits: fixed sinusoids of (layer, slice) as in RPG, plus a learned module-type code."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.d_model = config.d_model
        self.module_embedding = nn.Embedding(config.num_module_types, config.d_model)
        self.mix = nn.Linear(2 * config.d_model, config.d_model)

    def forward(self, layer: torch.Tensor, module: torch.Tensor, slice_: torch.Tensor) -> torch.Tensor:
        fixed = torch.cat([sinusoid(layer, self.d_model), sinusoid(slice_, self.d_model)], dim=1)
        return self.mix(fixed) + self.module_embedding(module)


class Condition(nn.Module):
    """Task text embedding and base-model embedding, each projected to d_model and summed (ORAL).

    Versions of one base differ only slightly in their embeddings, so the base
    embedding is standardised with the spread of the training bases (buffers set
    by `fit_base_scaling`, saved with the weights) before the projection.
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        d_model = config.d_model
        self.text = nn.Sequential(nn.Linear(config.text_dim, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.base = nn.Sequential(nn.Linear(config.base_dim, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.register_buffer("base_shift", torch.zeros(config.base_dim))
        self.register_buffer("base_scale", torch.ones(config.base_dim))

    @torch.no_grad()
    def fit_base_scaling(self, bases: torch.Tensor, eps: float = 1e-4) -> None:
        """bases: (distinct training bases, base_dim). Dimensions that never vary map to 0.

        Each dimension is divided by its spread, but never by less than the mean spread of
        the dimensions that vary: a value that barely moved between the training versions
        would otherwise be blown up for an unseen version, where it moves a little more.
        """
        self.base_shift.copy_(bases.mean(dim=0))
        spread = bases.std(dim=0, unbiased=False) if bases.shape[0] > 1 else torch.zeros_like(self.base_scale)
        varying = spread > 0
        floor = spread[varying].mean() if varying.any() else torch.tensor(0.0)
        self.base_scale.copy_(torch.where(varying, spread.clamp_min(floor) + eps, torch.ones_like(spread)))

    def forward(self, text: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        return self.text(text) + self.base((base - self.base_shift) / self.base_scale)


class TokenMemory(nn.Module):
    """K learned prototype tables over the whole token sequence, mixed by softmax weights read from the condition.

    Why: a LoRA holds ~1M values per task that look like noise, and a CPU-sized Mamba
    (~0.1M weights) cannot store them; trained without this, the generator ignored its
    condition (bench/bench_conditioning.py). The tables hold that content at almost no
    compute; the condition chooses and interpolates between them, and the Mamba's
    prototypes add what depends on position. Tables start at zero (no effect at first).
    """

    def __init__(self, slots: int, num_tokens: int, d_model: int, prototype_dim: int):
        super().__init__()
        self.tables = nn.Parameter(torch.zeros(slots, num_tokens, prototype_dim))
        self.mixture = nn.Linear(d_model, slots)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        """(B, d_model) projected condition -> (B, num_tokens, prototype_dim)."""
        weights = torch.softmax(self.mixture(condition), dim=-1)
        return torch.einsum("bk,klp->blp", weights, self.tables)

    def per_token_parameters(self) -> list[nn.Parameter]:
        """Parameters whose rows see a gradient only when their token is drawn (trained at a larger step)."""
        return [self.tables]


class FactorisedTokenMemory(nn.Module):
    """The token memory at a small constant per adapter value: a per-token code E (num_tokens x code_dim) shared by
    every slot, times per-slot maps M_k (code_dim x prototype_dim) mixed by the condition:

        memory[b, l] = E[l] @ (sum_k w_k(c_b) M_k)

    Size: num_tokens x code_dim + slots x code_dim x prototype_dim, instead of slots x num_tokens x prototype_dim
    (docs/token-memory-proposal.md: 44 MB instead of 10.2 GB for a 7B r64 adapter). The task-dependent part,
    E (M(c1) - M(c2)), has rank <= code_dim over tokens; the full tables give rank <= slots. E starts random and
    M at zero, so the memory adds nothing at first and M still gets a gradient.
    """

    def __init__(self, slots: int, num_tokens: int, d_model: int, prototype_dim: int, code_dim: int):
        super().__init__()
        self.codes = nn.Parameter(torch.randn(num_tokens, code_dim) / math.sqrt(code_dim))
        self.maps = nn.Parameter(torch.zeros(slots, code_dim, prototype_dim))
        self.mixture = nn.Linear(d_model, slots)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        """(B, d_model) projected condition -> (B, num_tokens, prototype_dim)."""
        weights = torch.softmax(self.mixture(condition), dim=-1)
        mixed = torch.einsum("bk,kdp->bdp", weights, self.maps)     # mix the small maps, not whole tables
        return torch.einsum("ld,bdp->blp", self.codes, mixed)

    def per_token_parameters(self) -> list[nn.Parameter]:
        return [self.codes]  # the maps see a gradient every step


def token_memory(config: GeneratorConfig) -> TokenMemory | FactorisedTokenMemory | None:
    if not config.memory_slots:
        return None
    if config.memory_code_dim:
        return FactorisedTokenMemory(config.memory_slots, config.num_tokens, config.d_model, config.prototype_dim,
                                     config.memory_code_dim)
    return TokenMemory(config.memory_slots, config.num_tokens, config.d_model, config.prototype_dim)


class ORALGenerator(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        self.positions = TokenPositions(config)
        self.condition = Condition(config)
        self.permutation_states = (nn.Embedding(config.num_permutation_states, config.d_model)
                                   if config.num_permutation_states else None)
        self.backbone = MambaStack(MambaConfig(d_model=config.d_model, n_layers=config.n_layers, d_state=config.d_state))
        self.to_prototype = nn.Linear(config.d_model, config.prototype_dim)
        self.memory = token_memory(config)
        self.denoiser = TokenDenoiser(DenoiserConfig(token_size=config.token_size, prototype_dim=config.prototype_dim,
                                                     channels=config.denoiser_channels,
                                                     direct_readout=config.direct_readout))

    def prototypes(self, layer: torch.Tensor, module: torch.Tensor, slice_: torch.Tensor,
                   text: torch.Tensor, base: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """(L,) token positions and (B, dim) conditions -> (B, L, prototype_dim)."""
        condition = self.condition(text, base)
        x = self.positions(layer, module, slice_)[None] + condition[:, None, :]
        if self.permutation_states is not None and state is not None:
            x = x + self.permutation_states(state)[:, None, :]
        prototypes = self.to_prototype(self.backbone(x))
        if self.memory is not None:
            prototypes = prototypes + self.memory(condition)
        return prototypes

    def denoise(self, x_t: torch.Tensor, prototypes: torch.Tensor, t: torch.Tensor, features=None) -> torch.Tensor:
        """Predict the noise (or x0) of N tokens: (N, token_size), (N, prototype_dim), (N,) -> (N, token_size)."""
        return self.denoiser(x_t, prototypes, t, features)

    def forward(self, schedule: DDPMSchedule, tokens: torch.Tensor, mask: torch.Tensor,
                positions: tuple[torch.Tensor, torch.Tensor, torch.Tensor], text: torch.Tensor, base: torch.Tensor,
                state: torch.Tensor | None, tokens_per_step: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training loss (a forward, so DistributedDataParallel sees the whole computation)."""
        return diffusion_loss(self, schedule, tokens, mask, positions, text, base, state, tokens_per_step, generator)
