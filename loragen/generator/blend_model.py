"""The ORAL generator in library coordinates: one token per adapter slot, coefficients over the library as its value.

Read top to bottom:
  1. every slot (layer x module, e.g. layer 3's q_proj) is a token with a fixed position code;
  2. the condition (task text embedding, base-model embedding) is projected and added to every token (ORAL);
  3. a Mamba stack reads the slot sequence and emits a query per slot;
  4. each library adapter j has a key made from its task's description embedding (plus a learned offset), so a
     slot's affinity for adapter j is query . key_j: a new description lands near the adapters of tasks described
     alike, which is what lets it compose neighbours for a task it never saw;
  5. the diffusion head denoises the slot's coefficient vector (one value per library adapter) from x_t, the
     affinities, the plain cosine between the description and each adapter's task text (fixed, not learned: near 1
     says "this very task", which tells looking an adapter up from composing neighbours) and the timestep,
     predicting x0. It is equivariant over the library (the same small MLP reads each
     adapter's entry), so it does not care how many adapters there are or in which order.

A one-hot coefficient vector is a training adapter exactly (library.py); the noise schedule and sampler are
diffusion.py's; the loss, in weight-change space, is in blend_training.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from loragen.generator.model import Condition, sinusoid
from loragen.generator.modules.mamba import MambaConfig, MambaStack

TIME_FEATURES = 16


@dataclass
class BlendGeneratorConfig:
    """The network's shape, saved with every checkpoint. Built by `blend_config_from_settings`."""

    library_size: int          # J: adapters the coefficients range over
    num_slots: int             # S: adapter slots (layer x module)
    num_module_types: int      # distinct module leaves (q_proj, v_proj, …)
    d_model: int               # Mamba width
    n_layers: int              # Mamba blocks
    d_state: int               # SSM state size
    key_dim: int               # query/key width of the slot-to-adapter affinities
    head_hidden: int           # the diffusion head's MLP width
    text_dim: int
    base_dim: int

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"BlendGeneratorConfig.{name} must be a positive integer (got {value!r})")
        if self.d_model % 2:
            raise ValueError("BlendGeneratorConfig.d_model must be even (sinusoidal position code)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlendGeneratorConfig:
        return cls(**data)


class SlotPositions(nn.Module):
    """Where each slot sits: a fixed sinusoid of its layer plus a learned code of its module kind."""

    def __init__(self, config: BlendGeneratorConfig):
        super().__init__()
        self.d_model = config.d_model
        self.layer_mix = nn.Linear(config.d_model, config.d_model)
        self.module_embedding = nn.Embedding(config.num_module_types, config.d_model)

    def forward(self, layer: torch.Tensor, module: torch.Tensor) -> torch.Tensor:
        return self.layer_mix(sinusoid(layer, self.d_model)) + self.module_embedding(module)


class LibraryKeys(nn.Module):
    """A key per library adapter from its task's description embedding, plus a learned offset (zero at first)."""

    def __init__(self, config: BlendGeneratorConfig):
        super().__init__()
        self.from_text = nn.Linear(config.text_dim, config.key_dim)
        self.offset = nn.Parameter(torch.zeros(config.library_size, config.key_dim))

    def forward(self, library_text: torch.Tensor) -> torch.Tensor:
        """(J, text_dim) -> (J, key_dim)."""
        return self.from_text(library_text) + self.offset


class CoefficientDenoiser(nn.Module):
    """x0 of each slot's coefficient vector from x_t, the slot's affinities and t: one small MLP applied to every
    (slot, adapter) entry alike, reading the entry, its affinity, the affinity's softmax share, the description's
    cosine to the entry's task text, and the time."""

    def __init__(self, config: BlendGeneratorConfig):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4 + TIME_FEATURES, config.head_hidden), nn.SiLU(),
                                 nn.Linear(config.head_hidden, config.head_hidden), nn.SiLU(),
                                 nn.Linear(config.head_hidden, 1))

    def forward(self, x_t: torch.Tensor, affinity: torch.Tensor, t: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x_t: (..., J); affinity: (..., J, 2), the learned affinity and the text cosine (BlendGenerator.affinities);
        t: (...,) timesteps; allowed: (..., J) bools (entries a blend may use)."""
        learned, cosine = affinity[..., 0], affinity[..., 1]
        share = torch.softmax(learned.masked_fill(~allowed, -math.inf), dim=-1).nan_to_num(0.0)
        time = sinusoid(t.flatten(), TIME_FEATURES).reshape(*t.shape, TIME_FEATURES) / 4.0
        features = torch.cat([x_t[..., None], learned[..., None] / math.sqrt(learned.shape[-1]), share[..., None],
                              cosine[..., None], time[..., None, :].expand(*x_t.shape, TIME_FEATURES)], dim=-1)
        return self.mlp(features).squeeze(-1) * allowed


class BlendGenerator(nn.Module):
    def __init__(self, config: BlendGeneratorConfig):
        super().__init__()
        self.config = config
        self.positions = SlotPositions(config)
        self.condition = Condition(config)  # reads text_dim, base_dim, d_model
        self.backbone = MambaStack(MambaConfig(d_model=config.d_model, n_layers=config.n_layers, d_state=config.d_state))
        self.to_query = nn.Linear(config.d_model, config.key_dim)
        self.keys = LibraryKeys(config)
        self.denoiser = CoefficientDenoiser(config)
        # Each library adapter's task text (the mean of its description embeddings), saved with the weights.
        self.register_buffer("library_text", torch.zeros(config.library_size, config.text_dim))

    def affinities(self, layer: torch.Tensor, module: torch.Tensor, text: torch.Tensor,
                   base: torch.Tensor) -> torch.Tensor:
        """(S,) slot positions and (B, dim) conditions -> (B, S, J, 2): each slot's learned affinity to each library
        adapter, and the description's cosine to the adapter's task text (the same for every slot)."""
        x = self.positions(layer, module)[None] + self.condition(text, base)[:, None, :]
        queries = self.to_query(self.backbone(x))
        learned = queries @ self.keys(self.library_text).T / math.sqrt(self.config.key_dim)
        cosine = nn.functional.normalize(text, dim=-1) @ nn.functional.normalize(self.library_text, dim=-1).T
        return torch.stack([learned, cosine[:, None, :].expand_as(learned)], dim=-1)

    def denoise(self, x_t: torch.Tensor, affinity: torch.Tensor, t: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Predict x0 of the coefficients: (..., J) x_t, (..., J, 2) affinities, (...,) t, (..., J) allowed -> (..., J)."""
        return self.denoiser(x_t, affinity, t, allowed)


def blend_config_from_settings(network: Any, *, library_size: int, num_slots: int, num_module_types: int,
                               text_dim: int, base_dim: int) -> BlendGeneratorConfig:
    """The network that `network` (GeneratorSettings or its network section) describes, sized for a library."""
    return BlendGeneratorConfig(library_size=library_size, num_slots=num_slots, num_module_types=num_module_types,
                                d_model=network.d_model, n_layers=network.n_layers, d_state=network.d_state,
                                key_dim=network.key_dim, head_hidden=network.head_hidden, text_dim=text_dim,
                                base_dim=base_dim)
