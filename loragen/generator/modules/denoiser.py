"""Per-token diffusion head: a small 1-D conv encoder-decoder (RPG's denoiser).

Every token is denoised on its own, in parallel: the network sees the noisy
token x_t (token_size values), the prototype the recurrent backbone produced for
that token, and the timestep, and predicts the noise eps of x_t.

    h = (x_t + Linear(prototype)) * time_mlp(sinusoid(t))          # (N, token_size), as in RPG
    h: 1 -> c0 -> c1 -> ... -> c_mid -> ... -> c0 -> 1 channels     # conv over the token's values
       decoder blocks add the encoder features of the same width (skip connections)

Each conv block is Conv1d -> GroupNorm -> FiLM (per-channel scale and shift, as
in improved-DDPM U-Nets) -> SiLU, the FiLM driven by cond = time_mlp(sinusoid(t))
+ Linear(prototype). RPG feeds time and prototype only at the input; without
them in every block a small denoiser, at high noise, draws a token from the whole
data distribution instead of the one its prototype points at (measured on a
two-token overfit: samples landed on the wrong token). The token length stays
token_size throughout (stride 1, "same" padding). The output conv starts at zero,
so an untrained denoiser predicts eps = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from loragen.config import DENOISER_NORM_GROUPS, denoiser_channels_problem
from loragen.errors import LoragenError


@dataclass
class DenoiserConfig:
    """Hyper-parameters of `TokenDenoiser`.

    channels: widths of the conv stack between the 1-channel input and output;
    an odd-length palindrome (encoder, bottleneck, mirrored decoder) so each
    decoder block has an encoder block of its width to skip from. The widths and
    the readout come from the user's settings (no defaults here); kernel size,
    time embedding and GroupNorm groups are fixed parts of the design.
    """

    token_size: int
    prototype_dim: int
    channels: tuple[int, ...]
    direct_readout: bool
    kernel_size: int = 5
    time_embed_dim: int = 128
    num_groups: int = DENOISER_NORM_GROUPS

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        for name in ("token_size", "prototype_dim", "kernel_size", "time_embed_dim", "num_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise LoragenError(f"denoiser {name} must be a positive integer, got {value!r}")
        if self.kernel_size % 2 != 1:
            raise LoragenError(f"denoiser kernel_size must be odd (same-length conv), got {self.kernel_size}")
        if self.time_embed_dim % 2 != 0:
            raise LoragenError(f"denoiser time_embed_dim must be even (sin + cos halves), got {self.time_embed_dim}")
        problem = denoiser_channels_problem(self.channels, self.num_groups)
        if problem:
            raise LoragenError(f"denoiser channels {problem}")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps: (N,) -> (N, dim), [sin | cos] halves."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class ConvBlock(nn.Module):
    """Conv1d -> GroupNorm -> h * (1 + scale(cond)) + shift(cond) per channel -> SiLU, length preserved."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_groups: int, cond_dim: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(num_groups, out_channels)
        self.film = nn.Linear(cond_dim, 2 * out_channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.conv(x))
        scale, shift = self.film(cond)[:, :, None].chunk(2, dim=1)
        return F.silu(h * (1 + scale) + shift)


class TokenDenoiser(nn.Module):
    """eps-prediction network for one token at a time, conditioned on its prototype."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.config = config
        c = config.channels
        k = config.kernel_size
        hidden = config.time_embed_dim * 4

        self.prototype_proj = nn.Linear(config.prototype_dim, config.token_size)
        self.time_mlp = nn.Sequential(
            nn.Linear(config.time_embed_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
        )
        # RPG multiplies the conditioned input by a token-sized timestep embedding
        self.time_scale = nn.Linear(hidden, config.token_size)
        nn.init.ones_(self.time_scale.bias)  # start near x * 1, not x * (small random)
        # per-block conditioning: timestep plus prototype (see the module docstring)
        self.prototype_cond = nn.Linear(config.prototype_dim, hidden)

        self.in_block = ConvBlock(1, c[0], k, config.num_groups, hidden)
        self.mid = len(c) // 2
        self.blocks = nn.ModuleList(
            ConvBlock(c[i - 1], c[i], k, config.num_groups, hidden) for i in range(1, len(c))
        )
        self.out_conv = nn.Conv1d(c[-1], 1, k, padding=k // 2)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)
        # Optional shortcut prototype -> output, gated by time: at high noise the best
        # x0 estimate is the conditional mean, which this path states linearly instead
        # of through the normalised conv stack (which learns it far more slowly).
        self.readout = nn.Linear(config.prototype_dim, config.token_size) if config.direct_readout else None
        self.readout_gate = nn.Linear(hidden, 1) if config.direct_readout else None
        if self.readout is not None:
            nn.init.zeros_(self.readout.weight)
            nn.init.zeros_(self.readout.bias)

    def prototype_features(self, prototype: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The projections of the prototype alone: equal at every sampling step, so a sampler computes them once."""
        readout = self.readout(prototype) if self.readout is not None else None
        return self.prototype_proj(prototype), self.prototype_cond(prototype), readout

    def forward(self, x_t: torch.Tensor, prototype: torch.Tensor, t: torch.Tensor,
                features: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None) -> torch.Tensor:
        """x_t (N, token_size), prototype (N, prototype_dim), t (N,) long -> eps (N, token_size).

        `features`: `prototype_features(prototype)` when the caller already has them.
        """
        cfg = self.config
        n = x_t.shape[0]
        if x_t.dim() != 2 or x_t.shape[1] != cfg.token_size:
            raise ValueError(f"x_t must be (N, {cfg.token_size}), got {tuple(x_t.shape)}")
        if prototype.shape != (n, cfg.prototype_dim):
            raise ValueError(f"prototype must be ({n}, {cfg.prototype_dim}), got {tuple(prototype.shape)}")
        if t.shape != (n,):
            raise ValueError(f"t must be ({n},), got {tuple(t.shape)}")

        input_shift, block_cond, readout = features if features is not None else self.prototype_features(prototype)
        time_hidden = self.time_mlp(timestep_embedding(t, cfg.time_embed_dim).to(x_t.dtype))
        h = (x_t + input_shift) * self.time_scale(time_hidden)
        cond = time_hidden + block_cond

        h = self.in_block(h[:, None, :], cond)  # (N, c0, token_size)
        skips = [h]
        for i, block in enumerate(self.blocks, start=1):
            h = block(h, cond)
            if i < self.mid:
                skips.append(h)
            elif i > self.mid:
                # decoder block i mirrors encoder block len(c)-1-i, same width
                h = h + skips[len(cfg.channels) - 1 - i]
        out = self.out_conv(h)[:, 0, :]
        if readout is not None:
            out = out + torch.sigmoid(self.readout_gate(time_hidden)) * readout
        return out
