"""DDPM schedule and samplers, checked with an oracle noise predictor (no network)."""

import math
import re

import pytest
import torch

from loragen.errors import LoragenError
from loragen.generator.diffusion import DDPMSchedule


def oracle(schedule: DDPMSchedule, x0: torch.Tensor):
    """The exact eps of x_t for a model that knows x0: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = schedule.alphas_cumprod[t].to(x_t.dtype)[:, None]
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    return denoise


def test_schedule_values():
    s = DDPMSchedule(prediction_type="epsilon")
    assert s.betas.shape == (1000,)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert torch.all(s.alphas_cumprod[1:] < s.alphas_cumprod[:-1])
    assert s.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4)
    assert s.alphas_cumprod[-1].item() < 1e-4  # x_T is almost pure noise
    assert DDPMSchedule.from_dict(s.to_dict()) == s
    assert s.to_dict() == {
        "num_train_timesteps": 1000,
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "clip_sample": None,
        "prediction_type": "epsilon",
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_train_timesteps": 1}, "num_train_timesteps must be an integer >= 2, got 1"),
        ({"beta_start": 0.0}, "0 < beta_start <= beta_end < 1, got 0.0"),
        ({"beta_start": 0.1, "beta_end": 0.01}, "0 < beta_start <= beta_end < 1, got 0.1, 0.01"),
        ({"beta_schedule": "cosine"}, "unknown beta_schedule 'cosine'"),
        ({"clip_sample": -1.0}, "clip_sample must be positive or None, got -1.0"),
    ],
)
def test_schedule_rejects_bad_config(kwargs, message):
    with pytest.raises(LoragenError, match=re.escape(message)):
        DDPMSchedule(**{"prediction_type": "epsilon", **kwargs})


def test_schedule_from_dict_rejects_unknown_option():
    with pytest.raises(LoragenError, match="unknown"):
        DDPMSchedule.from_dict({"num_steps": 3})


def test_add_noise_statistics():
    s = DDPMSchedule(prediction_type="epsilon")
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n,), 2.0)
    for t in (0, 100, 500, 999):
        noise = torch.randn(n, generator=g)
        x_t = s.add_noise(x0, noise, t)
        abar = s.alphas_cumprod[t].item()
        assert x_t.mean().item() == pytest.approx(2.0 * math.sqrt(abar), abs=0.01)
        assert x_t.std().item() == pytest.approx(math.sqrt(1 - abar), rel=0.01, abs=1e-3)


def test_add_noise_per_row_timesteps():
    s = DDPMSchedule(prediction_type="epsilon")
    x0 = torch.randn(4, 8)
    noise = torch.randn(4, 8)
    t = torch.tensor([0, 10, 500, 999])
    batched = s.add_noise(x0, noise, t)
    for i in range(4):
        assert torch.allclose(batched[i], s.add_noise(x0[i], noise[i], int(t[i])))
    with pytest.raises(ValueError, match=re.escape("timesteps of shape (2,) do not match a batch of 4")):
        s.add_noise(x0, noise, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=re.escape("timesteps must lie in [0, 999]")):
        s.add_noise(x0, noise, 1000)


def test_ddim_timesteps():
    s = DDPMSchedule(prediction_type="epsilon")
    for steps in (1, 7, 50, 60, 999, 1000):
        ts = s.ddim_timesteps(steps)
        assert ts.shape == (steps,) and ts.dtype == torch.long
        assert ts[0].item() == 999
        assert ts.min().item() >= 0 and ts.max().item() <= 999
        assert torch.all(ts[1:] < ts[:-1])
    assert s.ddim_timesteps(1000).tolist() == list(range(999, -1, -1))
    for bad in (0, 1001):
        with pytest.raises(ValueError, match=re.escape(f"DDIM steps must be an integer in [1, 1000], got {bad}")):
            s.ddim_timesteps(bad)


def test_ddpm_full_chain_recovers_x0_with_oracle():
    s = DDPMSchedule(prediction_type="epsilon")
    x0 = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    calls = []
    out = s.sample(
        oracle(s, x0),
        x0.shape,
        method="ddpm",
        steps=None,
        eta=0.0,
        generator=torch.Generator().manual_seed(2),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls[0] == (1, 1000) and calls[-1] == (1000, 1000) and len(calls) == 1000
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_recovers_x0_with_oracle(eta):
    s = DDPMSchedule(prediction_type="epsilon")
    x0 = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    seen = []

    def denoise(x_t, t):
        seen.append(int(t[0]))
        assert t.shape == (8,) and t.dtype == torch.long and torch.all(t == t[0])
        return oracle(s, x0)(x_t, t)

    out = s.sample(denoise, x0.shape, steps=50, method="ddim", eta=eta, generator=torch.Generator().manual_seed(3))
    assert seen == s.ddim_timesteps(50).tolist()
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_reverse_chain_keeps_the_forward_marginals(method):
    # with the oracle, every x_t of the reverse chain must be distributed as q(x_t | x0):
    # mean sqrt(abar_t) x0, std sqrt(1 - abar_t); checks the posterior variance (DDPM) and sigma (DDIM, eta 1)
    s = DDPMSchedule(prediction_type="epsilon")
    g = torch.Generator().manual_seed(5)
    x0 = torch.full((20_000, 1), 1.5)
    denoise = oracle(s, x0)
    x = torch.randn(x0.shape, generator=g)
    if method == "ddpm":
        path = list(range(999, 299, -1))  # ends at x_299
    else:
        path = [t for t in s.ddim_timesteps(25).tolist() if t >= 300]
    for t, t_next in zip(path[:-1], path[1:]):
        eps = denoise(x, torch.full((x0.shape[0],), t))
        if method == "ddpm":
            x = s.ddpm_step(eps, t, x, generator=g)
        else:
            x = s.ddim_step(eps, t, t_next, x, eta=1.0, generator=g)
    reached = path[-1]
    abar = s.alphas_cumprod[reached].item()
    assert x.mean().item() == pytest.approx(1.5 * math.sqrt(abar), abs=0.02)
    assert x.std().item() == pytest.approx(math.sqrt(1 - abar), rel=0.02)


def test_sampling_is_deterministic_given_the_generator():
    s = DDPMSchedule(prediction_type="epsilon", num_train_timesteps=100)

    def crude(x_t, t):  # a fixed, imperfect denoiser so the sampler's own noise matters
        return 0.5 * x_t

    for method, steps, eta in (("ddpm", None, 0.0), ("ddim", 20, 0.3)):
        a = s.sample(crude, (4, 6), steps=steps, method=method, eta=eta, generator=torch.Generator().manual_seed(7))
        b = s.sample(crude, (4, 6), steps=steps, method=method, eta=eta, generator=torch.Generator().manual_seed(7))
        c = s.sample(crude, (4, 6), steps=steps, method=method, eta=eta, generator=torch.Generator().manual_seed(8))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_ddim_eta_zero_is_deterministic_from_x_T():
    s = DDPMSchedule(prediction_type="epsilon", num_train_timesteps=100)
    x_T = torch.randn(3, 5)

    def crude(x_t, t):
        return 0.3 * x_t

    a, b = (
        s.sample(crude, x_T.shape, steps=10, method="ddim", eta=0.0, x_T=x_T, generator=torch.Generator().manual_seed(i))
        for i in (0, 1)
    )
    assert torch.equal(a, b)


def test_single_steps():
    s = DDPMSchedule(prediction_type="epsilon")
    x0 = torch.randn(4, 8)
    noise = torch.randn(4, 8)
    x_t = s.add_noise(x0, noise, 0)
    # at t = 0 DDPM adds no noise and returns the predicted x0
    torch.testing.assert_close(s.ddpm_step(noise, 0, x_t), x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(s.predict_x0(noise, 0, x_t), x0, rtol=0, atol=1e-5)
    # DDIM eta 0 with the true eps moves exactly along q: x_{t'} = sqrt(abar') x0 + sqrt(1-abar') eps
    x_500 = s.add_noise(x0, noise, 500)
    torch.testing.assert_close(s.ddim_step(noise, 500, 200, x_500), s.add_noise(x0, noise, 200), rtol=0, atol=1e-5)
    torch.testing.assert_close(s.ddim_step(noise, 500, -1, x_500), x0, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="t_prev=500 must be smaller than t=200"):
        s.ddim_step(noise, 200, 500, x_500)
    with pytest.raises(ValueError, match=re.escape("t must be a single timestep here, got shape (4,)")):
        s.ddpm_step(noise, torch.tensor([1, 2, 3, 4]), x_t)


def test_clip_sample_bounds_predicted_x0():
    s = DDPMSchedule(prediction_type="epsilon", clip_sample=1.0)
    x_t = torch.full((2, 3), 10.0)
    assert s.predict_x0(torch.zeros(2, 3), 10, x_t).max().item() == 1.0
    out = s.sample(lambda x, t: torch.zeros_like(x), (2, 3), steps=5, method="ddim", eta=0.0, x_T=x_t)
    assert out.abs().max().item() <= 1.0 + 1e-6


def test_sample_argument_errors():
    s = DDPMSchedule(prediction_type="epsilon", num_train_timesteps=10)
    with pytest.raises(ValueError, match="ddim"):
        s.sample(lambda x, t: x, (2, 2), steps=5, method="ddpm", eta=0.0)
    with pytest.raises(ValueError, match="unknown sampling method"):
        s.sample(lambda x, t: x, (2, 2), method="euler", steps=None, eta=0.0)
    with pytest.raises(ValueError, match="denoiser returned"):
        s.sample(lambda x, t: x[:1], (2, 2), method="ddpm", steps=None, eta=0.0)


def test_sample_prediction_is_converted_to_eps_for_the_samplers():
    """An x0-predicting oracle recovers x0 through the same DDIM/DDPM steps as an eps oracle."""
    schedule = DDPMSchedule(prediction_type="sample")
    torch.manual_seed(0)
    x0 = torch.randn(3, 8)
    out = schedule.sample(lambda x_t, t: x0, x0.shape, steps=20, method="ddim", eta=0.0,
                          generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out, x0, atol=1e-4)
    noise = torch.randn(3, 8)
    assert torch.equal(schedule.training_target(x0, noise), x0)
    assert torch.equal(DDPMSchedule(prediction_type="epsilon").training_target(x0, noise), noise)
    with pytest.raises(LoragenError, match="prediction_type"):
        DDPMSchedule(prediction_type="v")


def test_no_default_where_a_setting_decides():
    """The prediction type, sampling method, steps, eta and the task loss's timestep are the user's settings
    (GeneratorSettings), so no function below them carries a default of its own that could disagree."""
    import inspect

    from loragen.generator.sampling import sample_state_dict, sample_tokens
    from loragen.generator.task_loss import task_loss

    decided = {DDPMSchedule: ["prediction_type"], DDPMSchedule.sample: ["method", "steps", "eta"],
               sample_tokens: ["method", "steps", "eta"], sample_state_dict: ["method", "steps", "eta"],
               task_loss: ["timestep"]}
    for function, names in decided.items():
        parameters = inspect.signature(function).parameters
        for name in names:
            assert parameters[name].default is inspect.Parameter.empty, (function.__qualname__, name)


def test_a_schedule_saved_before_the_prediction_type_was_recorded_loads_as_epsilon():
    saved = DDPMSchedule(prediction_type="epsilon").to_dict()
    del saved["prediction_type"]
    assert DDPMSchedule.from_dict(saved).prediction_type == "epsilon"
    assert DDPMSchedule.from_dict({**saved, "prediction_type": "sample"}).prediction_type == "sample"
