"""The diffusion objective: DDPM noise schedule, the training loss, and the DDPM / DDIM sampling loop.

The schedule only does arithmetic on tensors (diffusers' split): the denoiser
predicts the noise `eps` (or x0) of x_t, the schedule turns it into x_{t-1}.

    schedule = DDPMSchedule(prediction_type="sample")  # beta linear 1e-4 .. 0.02, T = DDPM_TRAIN_TIMESTEPS
    x_t = schedule.add_noise(x0, noise, t)              # training: t is (N,) long
    loss = diffusion_loss(model, schedule, tokens, mask, ...)   # what the generator is trained on
    x0 = schedule.sample(lambda x, t: model(x, proto, t), shape, method="ddim", steps=10, eta=0.0)

Timesteps run 0 .. T-1; t = 0 is the least noisy. Coefficients are computed in
float64 and cast to the data's dtype where they are used. Nothing here has a default
that a setting also has: prediction type, method, steps and eta come from the caller
(GeneratorSettings in loragen/config.py, or a checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch

from loragen.config import DDPM_TRAIN_TIMESTEPS, PREDICTION_TYPES, SAMPLING_METHODS
from loragen.errors import LoragenError


class PrototypeDenoiser(Protocol):
    """What the loss needs of a network (ORALGenerator is one): prototypes from positions and conditions, and a
    denoiser of tokens given their prototypes. Named here so the schedule and loss never import the network."""

    def prototypes(self, layer: torch.Tensor, module: torch.Tensor, slice_: torch.Tensor, text: torch.Tensor,
                   base: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor: ...

    def denoise(self, x_t: torch.Tensor, prototypes: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ProgressFn = Callable[[int, int], None]


@dataclass
class DDPMSchedule:
    """Linear-beta DDPM schedule (Ho et al. 2020) with precomputed cumulative alphas.

    clip_sample: if set, the predicted x0 is clamped to [-clip_sample, clip_sample]
    at every sampling step (off by default: z-scored LoRA values are not bounded).
    prediction_type: what the network predicts, as in diffusers: "epsilon" (the
    noise, DDPM's choice) or "sample" (x0). The samplers always step with eps;
    a "sample" prediction is converted first. No default: it is the generator's
    setting (GeneratorSettings.prediction_type), saved with its checkpoint.
    """

    prediction_type: str
    num_train_timesteps: int = DDPM_TRAIN_TIMESTEPS
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    clip_sample: float | None = None

    betas: torch.Tensor = field(init=False, repr=False, compare=False)
    alphas: torch.Tensor = field(init=False, repr=False, compare=False)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.num_train_timesteps, int) or self.num_train_timesteps < 2:
            raise LoragenError(f"num_train_timesteps must be an integer >= 2, got {self.num_train_timesteps!r}")
        if self.beta_schedule != "linear":
            raise LoragenError(f"unknown beta_schedule {self.beta_schedule!r}; only 'linear' is supported")
        if not (0.0 < self.beta_start <= self.beta_end < 1.0):
            raise LoragenError(
                f"betas must satisfy 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise LoragenError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {self.prediction_type!r}")
        if self.clip_sample is not None and not self.clip_sample > 0:
            raise LoragenError(f"clip_sample must be positive or None, got {self.clip_sample!r}")
        self.betas = torch.linspace(self.beta_start, self.beta_end, self.num_train_timesteps, dtype=torch.float64)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    # -- config io ----------------------------------------------------------

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("betas", "alphas", "alphas_cumprod")}

    @classmethod
    def from_dict(cls, data: Mapping) -> DDPMSchedule:
        known = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample", "prediction_type"}
        unknown = set(data) - known
        if unknown:
            raise LoragenError(f"unknown diffusion schedule option(s): {', '.join(sorted(unknown))}")
        # Checkpoints written before the prediction type was recorded predicted the noise.
        return cls(**{"prediction_type": "epsilon", **dict(data)})

    # -- helpers ------------------------------------------------------------

    def _alpha_bar(self, t: int) -> float:
        """Cumulative alpha at step t; 1.0 for t < 0 (the clean end of the chain)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def _scalar_timestep(self, t: int | torch.Tensor, name: str = "t", allow_minus_one: bool = False) -> int:
        if isinstance(t, torch.Tensor):
            if t.numel() != 1:
                raise ValueError(f"{name} must be a single timestep here, got shape {tuple(t.shape)}")
            t = int(t.item())
        t = int(t)
        low = -1 if allow_minus_one else 0
        if not low <= t < self.num_train_timesteps:
            raise ValueError(f"{name}={t} is outside [{low}, {self.num_train_timesteps - 1}]")
        return t

    def sample_timesteps(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """(n,) long timesteps drawn uniformly from [0, T), for training."""
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator, device=device)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output for a noised x0."""
        return noise if self.prediction_type == "epsilon" else x0

    def eps_from_output(self, output: torch.Tensor, t: int, x_t: torch.Tensor) -> torch.Tensor:
        """The network's output as a noise estimate, whatever it predicts."""
        if self.prediction_type == "epsilon":
            return output
        abar = self._alpha_bar(t)
        return (x_t - abar ** 0.5 * output) / (1.0 - abar) ** 0.5

    def x0_from_output(self, output: torch.Tensor, t: int | torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """The network's output as a clean-sample estimate, whatever it predicts."""
        return self.predict_x0(output, t, x_t) if self.prediction_type == "epsilon" else output

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """q(x_t | x0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

        t: an int, a 0-d tensor, or a (N,) long tensor with one step per row of x0.
        """
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
        abar = self._gather(t, x0)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def _gather(self, t: int | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """abar_t broadcastable against x (one value per row when t is a vector)."""
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t)
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != x.shape[0]):
            raise ValueError(f"timesteps of shape {tuple(t.shape)} do not match a batch of {x.shape[0]}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps - 1}]")
        abar = self.alphas_cumprod[t.long().cpu()].to(device=x.device, dtype=x.dtype)
        if t.dim() == 1:
            abar = abar.reshape(-1, *([1] * (x.dim() - 1)))
        return abar

    def predict_x0(self, eps: torch.Tensor, t: int | torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """x0 implied by the noise prediction: (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        abar = self._gather(t, x_t)
        x0 = (x_t - (1.0 - abar).sqrt() * eps) / abar.sqrt()
        if self.clip_sample is not None:
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
        return x0

    # -- one reverse step ---------------------------------------------------

    def ddpm_step(
        self,
        eps: torch.Tensor,
        t: int | torch.Tensor,
        x_t: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Ancestral DDPM step x_t -> x_{t-1}: posterior mean plus noise of variance beta~_t.

        At t = 0 no noise is added and the result is the predicted x0.
        """
        t = self._scalar_timestep(t)
        abar_t = self._alpha_bar(t)
        abar_prev = self._alpha_bar(t - 1)
        beta_t = float(self.betas[t])
        alpha_t = float(self.alphas[t])

        x0 = self.predict_x0(eps, t, x_t)
        coef_x0 = beta_t * math.sqrt(abar_prev) / (1.0 - abar_t)
        coef_xt = (1.0 - abar_prev) * math.sqrt(alpha_t) / (1.0 - abar_t)
        mean = coef_x0 * x0 + coef_xt * x_t
        if t == 0:
            return mean
        variance = beta_t * (1.0 - abar_prev) / (1.0 - abar_t)
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return mean + math.sqrt(variance) * noise

    def ddim_timesteps(self, num_steps: int) -> torch.Tensor:
        """(num_steps,) long, strictly decreasing from T-1, evenly spaced ("trailing")."""
        if not isinstance(num_steps, int) or not 1 <= num_steps <= self.num_train_timesteps:
            raise ValueError(f"DDIM steps must be an integer in [1, {self.num_train_timesteps}], got {num_steps!r}")
        i = torch.arange(num_steps, dtype=torch.long)
        return self.num_train_timesteps - 1 - (i * self.num_train_timesteps) // num_steps

    def ddim_step(
        self,
        eps: torch.Tensor,
        t: int | torch.Tensor,
        t_prev: int | torch.Tensor,
        x_t: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """DDIM step x_t -> x_{t_prev} (Song et al. 2021); t_prev = -1 lands on x0.

        eta = 0 is deterministic; eta = 1 matches DDPM's posterior variance.
        """
        t = self._scalar_timestep(t)
        t_prev = self._scalar_timestep(t_prev, "t_prev", allow_minus_one=True)
        if t_prev >= t:
            raise ValueError(f"t_prev={t_prev} must be smaller than t={t}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        abar_t = self._alpha_bar(t)
        abar_prev = self._alpha_bar(t_prev)

        x0 = self.predict_x0(eps, t, x_t)
        if self.clip_sample is not None:
            # keep eps consistent with the clipped x0, as diffusers does
            eps = (x_t - math.sqrt(abar_t) * x0) / math.sqrt(1.0 - abar_t)
        sigma = eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev))
        direction = math.sqrt(max(1.0 - abar_prev - sigma**2, 0.0)) * eps
        x_prev = math.sqrt(abar_prev) * x0 + direction
        if sigma > 0:
            noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
            x_prev = x_prev + sigma * noise
        return x_prev

    # -- the sampling loop --------------------------------------------------

    def sample(
        self,
        denoise_fn: DenoiseFn,
        shape: Sequence[int],
        *,
        method: str,
        steps: int | None,
        eta: float,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        x_T: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw x0 of `shape` by running the reverse chain from pure noise.

        denoise_fn(x_t, t) -> eps (or x0, per prediction_type), with t a (shape[0],) long tensor.
        method: "ddpm" or "ddim"; eta: DDIM's noise (0: deterministic; DDPM ignores it).
        steps: None runs every one of the T timesteps; DDPM only runs all of them,
        DDIM runs `steps` evenly spaced ones. progress(done, total) is called after
        each step. Deterministic for a given `generator` (which must live on
        `device`). x_T: start from this noise instead of drawing it. Runs under
        torch.no_grad().
        """
        if method not in SAMPLING_METHODS:
            raise ValueError(f"unknown sampling method {method!r}; choose one of {', '.join(SAMPLING_METHODS)}")
        if method == "ddpm":
            if steps is not None and steps != self.num_train_timesteps:
                raise ValueError(
                    f"DDPM samples all {self.num_train_timesteps} timesteps; use method='ddim' for {steps} steps"
                )
            timesteps = torch.arange(self.num_train_timesteps - 1, -1, -1, dtype=torch.long)
        else:
            timesteps = self.ddim_timesteps(self.num_train_timesteps if steps is None else steps)

        shape = tuple(int(s) for s in shape)
        if x_T is not None:
            if tuple(x_T.shape) != shape:
                raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {shape}")
            x = x_T.to(device=device or x_T.device, dtype=dtype)
        else:
            x = torch.randn(shape, generator=generator, device=device, dtype=dtype)

        total = len(timesteps)
        with torch.no_grad():
            for i, t in enumerate(timesteps.tolist()):
                t_batch = torch.full((shape[0],), t, dtype=torch.long, device=x.device)
                output = denoise_fn(x, t_batch)
                if output.shape != x.shape:
                    raise ValueError(f"denoiser returned shape {tuple(output.shape)}, expected {tuple(x.shape)}")
                eps = self.eps_from_output(output, t, x)
                if method == "ddpm":
                    x = self.ddpm_step(eps, t, x, generator=generator)
                else:
                    t_prev = int(timesteps[i + 1]) if i + 1 < total else -1
                    x = self.ddim_step(eps, t, t_prev, x, eta=eta, generator=generator)
                if progress is not None:
                    progress(i + 1, total)
        return x


def diffusion_loss(model: PrototypeDenoiser, schedule: DDPMSchedule, tokens: torch.Tensor, mask: torch.Tensor,
                   positions: tuple[torch.Tensor, torch.Tensor, torch.Tensor], text: torch.Tensor,
                   base: torch.Tensor, state: torch.Tensor | None, tokens_per_step: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM loss (eps or x0 target, per the schedule) on a random subset of the batch's tokens (RPG bounds memory so).

    tokens/mask: (B, L, token_size); padding (mask False) is left out of the loss.
    """
    batch, length, token_size = tokens.shape
    prototypes = model.prototypes(*positions, text, base, state)            # (B, L, P)
    flat_tokens, flat_mask = tokens.reshape(-1, token_size), mask.reshape(-1, token_size)
    flat_protos = prototypes.reshape(batch * length, -1)
    count = min(tokens_per_step, batch * length)
    chosen = torch.randperm(batch * length, generator=generator)[:count].to(tokens.device)
    x0, keep, protos = flat_tokens[chosen], flat_mask[chosen], flat_protos[chosen]
    t = schedule.sample_timesteps(count, generator=generator).to(tokens.device)
    noise = torch.randn(x0.shape, generator=generator).to(tokens.device)
    output = model.denoise(schedule.add_noise(x0, noise, t), protos, t)
    squared = (output - schedule.training_target(x0, noise)) ** 2
    return (squared * keep).sum() / keep.sum().clamp_min(1)
