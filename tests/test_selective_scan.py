"""The pure-PyTorch selective scans against the reference loop (and mamba-ssm's kernel on a GPU)."""

import types

import pytest
import torch

from loragen.generator.ops import selective_scan as ss
from loragen.generator.ops.selective_scan import (
    selective_scan_chunked,
    selective_scan_fn,
    selective_scan_ref,
    selective_scan_sequential,
)

FAST_PATHS = {
    "sequential": selective_scan_sequential,
    "chunked": selective_scan_chunked,
    "chunked-5": lambda *a, **k: selective_scan_chunked(*a, **k, chunk_size=5),
}


def make_inputs(batch, dim, n, L, bc="variable", with_D=True, with_z=True, with_bias=True, seed=0, device="cpu"):
    """Random scan inputs, all requiring grad; bc picks constant (dim, n), variable or grouped B/C."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    bc_shape = {"constant": (dim, n), "variable": (batch, n, L), "grouped": (batch, 2, n, L)}[bc]
    tensors = {
        "u": rand(batch, dim, L),
        "delta": rand(batch, dim, L) * 0.5,
        "A": -torch.rand(dim, n, generator=g) * 4 - 0.1,
        "B": rand(*bc_shape),
        "C": rand(*bc_shape),
        "D": rand(dim) if with_D else None,
        "z": rand(batch, dim, L) if with_z else None,
        "delta_bias": rand(dim) * 0.5 if with_bias else None,
    }
    return {k: (v.to(device).requires_grad_() if v is not None else None) for k, v in tensors.items()}


def forward_and_grads(fn, inputs, delta_softplus, weight_seed=1, through_last_state=True):
    """Output, last state and the gradients of a random projection of both (of the output alone when
    `through_last_state` is False)."""
    out, last = fn(**inputs, delta_softplus=delta_softplus, return_last_state=True)
    g = torch.Generator().manual_seed(weight_seed)
    loss = (out * torch.randn(out.shape, generator=g).to(out.device)).sum()
    if through_last_state:
        loss = loss + last.sum()
    leaves = {k: v for k, v in inputs.items() if v is not None}
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return out, last, dict(zip(leaves, grads))


CASES = [
    # batch, dim, n, L, bc, with_D, with_z, with_bias, softplus
    (2, 8, 4, 1, "variable", True, True, True, True),  # one step
    (2, 8, 4, 19, "variable", True, True, True, True),  # 16 + 3: a partial last chunk
    (1, 6, 3, 37, "variable", False, False, False, False),  # bare scan, raw delta
    (3, 4, 16, 33, "constant", True, False, True, True),  # time-invariant B and C
    (2, 4, 8, 1, "constant", True, True, True, True),  # nothing has a time axis longer than 1
    (2, 8, 4, 21, "grouped", True, True, False, True),  # B/C shared by groups of channels
]


@pytest.mark.parametrize("path", FAST_PATHS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}-d{c[1]}-n{c[2]}-L{c[3]}-{c[4]}")
def test_fast_paths_match_reference(path, case):
    batch, dim, n, L, bc, with_D, with_z, with_bias, softplus = case
    inputs = make_inputs(batch, dim, n, L, bc, with_D, with_z, with_bias)
    ref_out, ref_last, ref_grads = forward_and_grads(selective_scan_ref, inputs, softplus)
    out, last, grads = forward_and_grads(FAST_PATHS[path], inputs, softplus)

    assert out.shape == (batch, dim, L) and last.shape == (batch, dim, n)
    torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(last, ref_last, atol=1e-4, rtol=1e-4)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-4, rtol=1e-3, msg=f"grad of {name}")


@pytest.mark.parametrize("chunk_size", [1, 4, 16, 64])
def test_chunk_size_does_not_change_result(chunk_size):
    inputs = make_inputs(2, 8, 4, 40)
    expected = selective_scan_ref(**inputs, delta_softplus=True)
    got = selective_scan_chunked(**inputs, delta_softplus=True, chunk_size=chunk_size)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", FAST_PATHS)
def test_strong_decay_stays_finite(path):
    """Decays of exp(-1000) per step: the chunked path's masked segment sums must not overflow."""
    inputs = make_inputs(2, 4, 8, 40, with_bias=False)
    with torch.no_grad():
        inputs["delta"].fill_(60.0)
        inputs["A"].fill_(-16.0)
    ref_out, _, ref_grads = forward_and_grads(selective_scan_ref, inputs, delta_softplus=False)
    out, _, grads = forward_and_grads(FAST_PATHS[path], inputs, delta_softplus=False)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads.values())
    torch.testing.assert_close(out, ref_out, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("path", FAST_PATHS)
def test_low_precision_input_keeps_dtype(path):
    inputs = {k: (v.detach().bfloat16() if k in ("u", "delta", "z") else v) for k, v in make_inputs(2, 8, 4, 12).items()}
    out = FAST_PATHS[path](**inputs, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, selective_scan_ref(**inputs, delta_softplus=True))


def test_bad_arguments_raise():
    inputs = make_inputs(2, 8, 4, 12)
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan_chunked(**inputs, chunk_size=0)
    with pytest.raises(ValueError, match=r"\(batch, dim, L\)"):
        selective_scan_sequential(**{**inputs, "delta": inputs["delta"][:, :, :5]})


def test_dispatcher_takes_pure_pytorch_paths_without_the_kernel(monkeypatch):
    inputs = make_inputs(2, 8, 4, 12)
    assert ss.scan_backend(inputs["u"]) == "sequential"  # CPU, whatever is installed

    calls = []
    real = ss.selective_scan_sequential
    monkeypatch.setattr(ss, "selective_scan_sequential", lambda *a: calls.append(1) or real(*a))
    out = selective_scan_fn(**inputs, delta_softplus=True)
    assert calls == [1]
    torch.testing.assert_close(out, selective_scan_ref(**inputs, delta_softplus=True), atol=1e-4, rtol=1e-4)

    # On CUDA the choice hangs on mamba-ssm; only is_cuda is read, so a stand-in tensor will do.
    on_cuda = types.SimpleNamespace(is_cuda=True)
    monkeypatch.setattr(ss, "_cuda_selective_scan", lambda: None)
    assert ss.scan_backend(on_cuda) == "chunked"
    monkeypatch.setattr(ss, "_cuda_selective_scan", lambda: selective_scan_ref)
    assert ss.scan_backend(on_cuda) == "cuda_kernel"
    assert ss.scan_backend(on_cuda, use_cuda_kernel=False) == "chunked"


def _mamba_ssm_kernel_available() -> bool:
    return torch.cuda.is_available() and ss._cuda_selective_scan() is not None


@pytest.mark.gpu
@pytest.mark.skipif(not _mamba_ssm_kernel_available(), reason="needs CUDA and mamba-ssm")
@pytest.mark.parametrize("path", FAST_PATHS)
def test_pure_pytorch_paths_match_mamba_ssm_kernel(path):
    kernel = ss._cuda_selective_scan()
    inputs = make_inputs(2, 64, 16, 100, device="cuda")
    # mamba-ssm's backward drops the last state's gradient (SelectiveScanFn.backward(ctx, dout, *args)), so the
    # gradients are compared through the output only; the generator never trains through the last state.
    expected, expected_last, expected_grads = forward_and_grads(kernel, inputs, delta_softplus=True,
                                                                through_last_state=False)
    out, last, grads = forward_and_grads(FAST_PATHS[path], inputs, delta_softplus=True, through_last_state=False)
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(last, expected_last, atol=1e-3, rtol=1e-3)
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], atol=1e-3, rtol=1e-2, msg=f"grad of {name}")
