"""The Mamba (S6) backbone: mixer, pre-norm residual block, stack.

The same layers and initialisation as mamba-ssm's `Mamba` (Mamba1): in_proj -> causal
depthwise conv -> SiLU -> x_proj to (dt, B, C) -> dt_proj -> selective scan (A = -exp(A_log),
D skip, SiLU(z) gate) -> out_proj. The scan is `ops.selective_scan.selective_scan_fn`:
mamba-ssm's fused kernel on CUDA when installed, pure PyTorch otherwise.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from loragen.generator.ops.selective_scan import selective_scan_fn


@dataclass
class MambaConfig:
    d_model: int = field(metadata={"help": "width of the residual stream"})
    n_layers: int = field(metadata={"help": "number of Mamba blocks"})
    d_state: int = field(default=16, metadata={"help": "SSM state size per channel (N)"})
    d_conv: int = field(default=4, metadata={"help": "causal depthwise convolution width"})
    expand: int = field(default=2, metadata={"help": "inner width = expand * d_model"})
    dt_rank: int | str = field(default="auto", metadata={"help": 'rank of the dt projection; "auto" = ceil(d_model/16)'})
    dt_min: float = field(default=0.001, metadata={"help": "smallest initial step size"})
    dt_max: float = field(default=0.1, metadata={"help": "largest initial step size"})
    dt_init_floor: float = field(default=1e-4, metadata={"help": "floor of the initial step sizes"})
    norm_eps: float = field(default=1e-5, metadata={"help": "RMSNorm epsilon"})

    def __post_init__(self):
        for name in ("d_model", "n_layers", "d_state", "d_conv", "expand"):
            value = getattr(self, name)
            # bool is an int subclass; True as a width is a mistake, not 1.
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MambaConfig.{name} must be a positive integer, got {value!r}")
        if self.dt_rank == "auto":
            self.dt_rank = math.ceil(self.d_model / 16)
        elif not isinstance(self.dt_rank, int) or isinstance(self.dt_rank, bool) or self.dt_rank < 1:
            raise ValueError(f'MambaConfig.dt_rank must be "auto" or a positive integer, got {self.dt_rank!r}')
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"MambaConfig needs 0 < dt_min <= dt_max, got {self.dt_min} and {self.dt_max}")
        if self.dt_init_floor < 0:
            raise ValueError(f"MambaConfig.dt_init_floor must be >= 0, got {self.dt_init_floor}")
        if self.norm_eps <= 0:
            raise ValueError(f"MambaConfig.norm_eps must be > 0, got {self.norm_eps}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model


@functools.cache
def _cuda_causal_conv1d():
    """causal-conv1d's fused kernel, or None when the optional extra is missing."""
    try:
        from causal_conv1d import causal_conv1d_fn
    except (ImportError, OSError):
        return None
    return causal_conv1d_fn


class MambaMixer(nn.Module):
    """One selective-SSM layer: (batch, L, d_model) -> (batch, L, d_model), causal in L.

    use_fast_path: allow mamba-ssm / causal-conv1d kernels on CUDA; the CPU path is always
    pure PyTorch. scan_fn: replace the scan (benchmarks and tests pass `selective_scan_ref`).
    """

    def __init__(self, config: MambaConfig, use_fast_path: bool = True, scan_fn: Callable | None = None):
        super().__init__()
        self.config = config
        self.use_fast_path = use_fast_path
        self.scan_fn = scan_fn
        d_inner, d_state, dt_rank = config.d_inner, config.d_state, config.dt_rank

        self.in_proj = nn.Linear(config.d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, config.d_conv, groups=d_inner, padding=config.d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, config.d_model, bias=False)

        # S4D-real initialisation: A = -(1, 2, ..., N) for every channel, kept as log for positivity.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(d_inner))
        self._init_dt(config)

    @torch.no_grad()
    def _init_dt(self, config: MambaConfig) -> None:
        """As mamba-ssm: softplus(dt_proj.bias) starts log-uniform in [dt_min, dt_max]."""
        std = config.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        log_dt = torch.rand(config.d_inner) * (math.log(config.dt_max) - math.log(config.dt_min))
        dt = torch.exp(log_dt + math.log(config.dt_min)).clamp(min=config.dt_init_floor)
        # Inverse of softplus: softplus(dt + log(1 - exp(-dt))) == dt.
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """Causal depthwise conv + SiLU on (batch, d_inner, L)."""
        kernel = _cuda_causal_conv1d() if self.use_fast_path and x.is_cuda else None
        if kernel is not None:
            return kernel(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        # Conv1d pads d_conv-1 on both ends; the first L outputs see positions t-d_conv+1..t only.
        return F.silu(self.conv1d(x)[..., : x.shape[-1]])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (batch, d_inner, L) each
        x = self._conv(x)
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([cfg.dt_rank, cfg.d_state, cfg.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # bias goes to the scan as delta_bias
        A = -torch.exp(self.A_log.float())
        scan_args = (x, dt, A, B.transpose(1, 2), C.transpose(1, 2), self.D.float())
        scan_kwargs = {"z": z, "delta_bias": self.dt_proj.bias.float(), "delta_softplus": True}
        if self.scan_fn is not None:
            y = self.scan_fn(*scan_args, **scan_kwargs)
        else:
            y = selective_scan_fn(*scan_args, **scan_kwargs, use_cuda_kernel=self.use_fast_path)
        return self.out_proj(y.transpose(1, 2))


class MambaBlock(nn.Module):
    """Pre-norm residual: x + mixer(RMSNorm(x))."""

    def __init__(self, config: MambaConfig, use_fast_path: bool = True, scan_fn: Callable | None = None):
        super().__init__()
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mixer = MambaMixer(config, use_fast_path=use_fast_path, scan_fn=scan_fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))


class MambaStack(nn.Module):
    """n_layers Mamba blocks and a final RMSNorm: (batch, L, d_model) -> (batch, L, d_model)."""

    def __init__(self, config: MambaConfig, use_fast_path: bool = True, scan_fn: Callable | None = None):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            MambaBlock(config, use_fast_path=use_fast_path, scan_fn=scan_fn) for _ in range(config.n_layers)
        )
        self.norm_f = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self._rescale_residual_outputs()

    @torch.no_grad()
    def _rescale_residual_outputs(self) -> None:
        """GPT-2 / mamba-ssm: shrink each residual branch's output by 1/sqrt(n_layers) so depth keeps the scale."""
        for layer in self.layers:
            weight = layer.mixer.out_proj.weight
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            weight /= math.sqrt(self.config.n_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.config.d_model:
            raise ValueError(f"MambaStack expects (batch, L, {self.config.d_model}), got {tuple(x.shape)}")
        for layer in self.layers:
            x = layer(x)
        return self.norm_f(x)
