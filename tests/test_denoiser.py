"""Per-token conv denoiser: config checks, shapes, and that it can learn (overfit) a few tokens."""

import re

import pytest
import torch
import torch.nn.functional as F

from loragen.errors import LoragenError
from loragen.generator.diffusion import DDPMSchedule
from loragen.generator.modules.denoiser import DenoiserConfig, TokenDenoiser, timestep_embedding


def tiny_config(**overrides) -> DenoiserConfig:
    values = dict(token_size=16, prototype_dim=8, channels=(16, 32, 16), direct_readout=False, kernel_size=3,
                  time_embed_dim=32, num_groups=4)
    values.update(overrides)
    return DenoiserConfig(**values)


def test_rpg_widths_build_rpg_stack():
    cfg = DenoiserConfig(token_size=64, prototype_dim=32, channels=[32, 48, 64, 48, 32], direct_readout=False)
    assert cfg.channels == (32, 48, 64, 48, 32) and cfg.kernel_size == 5 and cfg.num_groups == 8
    model = TokenDenoiser(cfg)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    widths = [(c.in_channels, c.out_channels) for c in convs]
    assert widths == [(1, 32), (32, 48), (48, 64), (64, 48), (48, 32), (32, 1)]
    assert all(c.kernel_size == (5,) for c in convs)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"token_size": 0}, "token_size must be a positive integer, got 0"),
        ({"prototype_dim": -1}, "prototype_dim must be a positive integer, got -1"),
        ({"kernel_size": 4}, "kernel_size must be odd"),
        ({"time_embed_dim": 31}, "time_embed_dim must be even"),
        ({"channels": ()}, "channels must have an odd length"),
        ({"channels": (16, 32)}, "channels must have an odd length"),
        ({"channels": (16, 32, 8)}, "channels must be a palindrome"),
        ({"channels": (16, 30, 16)}, "channels must be multiples of 4, the GroupNorm groups"),  # not divisible by num_groups
        ({"num_groups": 0}, "num_groups must be a positive integer, got 0"),
        ({"token_size": 16.0}, "token_size must be a positive integer, got 16.0"),
    ],
)
def test_config_is_strict(overrides, message):
    with pytest.raises(LoragenError, match=re.escape(message)):
        tiny_config(**overrides)


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 1, 999]), 32)
    assert emb.shape == (3, 32)
    assert torch.equal(emb[0, :16], torch.zeros(16)) and torch.equal(emb[0, 16:], torch.ones(16))
    assert not torch.allclose(emb[1], emb[2])


@pytest.mark.parametrize("channels", [(16,), (16, 32, 16), (8, 16, 24, 16, 8)])
def test_forward_shapes_and_zero_init(channels):
    cfg = tiny_config(channels=channels, num_groups=8)
    model = TokenDenoiser(cfg)
    x = torch.randn(5, 16)
    out = model(x, torch.randn(5, 8), torch.randint(0, 1000, (5,)))
    assert out.shape == (5, 16) and out.dtype == torch.float32
    assert torch.equal(out, torch.zeros(5, 16))  # zero-initialized output conv

    torch.nn.init.normal_(model.out_conv.weight, std=0.1)
    out = model(x, torch.randn(5, 8), torch.randint(0, 1000, (5,)))
    out.pow(2).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_tokens_are_independent():
    # denoising is per token: a row's output never depends on another row
    torch.manual_seed(0)
    model = TokenDenoiser(tiny_config())
    torch.nn.init.normal_(model.out_conv.weight, std=0.1)
    x, p, t = torch.randn(4, 16), torch.randn(4, 8), torch.tensor([3, 30, 300, 900])
    full = model(x, p, t)
    for i in range(4):
        torch.testing.assert_close(model(x[i : i + 1], p[i : i + 1], t[i : i + 1]), full[i : i + 1])


def test_forward_rejects_bad_shapes():
    model = TokenDenoiser(tiny_config())
    x, p, t = torch.randn(3, 16), torch.randn(3, 8), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="x_t"):
        model(torch.randn(3, 15), p, t)
    with pytest.raises(ValueError, match="prototype"):
        model(x, torch.randn(2, 8), t)
    with pytest.raises(ValueError, match="t must"):
        model(x, p, torch.zeros(3, 1, dtype=torch.long))


def _eval_loss(model, schedule, x0, prototypes):
    g = torch.Generator().manual_seed(123)
    rows = torch.arange(512) % x0.shape[0]
    t = schedule.sample_timesteps(512, generator=g)
    noise = torch.randn(512, x0.shape[1], generator=g)
    with torch.no_grad():
        return F.mse_loss(model(schedule.add_noise(x0[rows], noise, t), prototypes[rows], t), noise).item()


def test_overfits_two_tokens_and_samples_them_back():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    schedule = DDPMSchedule(prediction_type="epsilon")
    model = TokenDenoiser(tiny_config())
    x0 = torch.randn(2, 16, generator=g)
    prototypes = torch.randn(2, 8, generator=g)  # fixed, as a backbone would give for two positions

    before = _eval_loss(model, schedule, x0, prototypes)
    steps, batch = 600, 64
    rows = torch.arange(batch) % 2
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    for _ in range(steps):
        t = schedule.sample_timesteps(batch, generator=g)
        noise = torch.randn(batch, 16, generator=g)
        loss = F.mse_loss(model(schedule.add_noise(x0[rows], noise, t), prototypes[rows], t), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr_schedule.step()
    after = _eval_loss(model, schedule, x0, prototypes)
    assert after < before / 10, (before, after)

    # DDIM from noise lands near the memorized token its prototype points at, not the other one
    sample_rows = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    model.eval()
    out = schedule.sample(
        lambda x_t, t: model(x_t, prototypes[sample_rows], t),
        (8, 16),
        steps=50,
        method="ddim",
        eta=0.0,
        generator=torch.Generator().manual_seed(1),
    )
    distance_to_own = (out - x0[sample_rows]).norm(dim=1)
    distance_to_other = (out - x0[1 - sample_rows]).norm(dim=1)
    assert torch.all(distance_to_own < 0.5 * distance_to_other), (distance_to_own, distance_to_other)
