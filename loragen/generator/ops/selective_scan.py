"""Mamba's selective scan (S6): a reference loop, two pure-PyTorch fast paths, a dispatcher.

Shapes follow mamba-ssm's `selective_scan_ref` ("d" is the channel, "n" the state):

    u, delta, z   : (batch, dim, L)
    A             : (dim, n)                  real, usually negative
    B, C          : (dim, n) constant, (batch, n, L) variable, or (batch, groups, n, L)
    D, delta_bias : (dim,)

    delta <- softplus(delta + delta_bias)                     (each step optional)
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t    (h: (batch, dim, n))
    y_t = sum_n C_t * h_t + D * u_t;   out = y * silu(z)

Every path computes in float32 and casts back to u's dtype, like the reference, and can
return the last state h_L (float32, (batch, dim, n)).

Which path where (measured in bench/bench_scan.py): on CPU, `selective_scan_sequential`, a
loop over time whose every step touches only small, cache-resident slices. Mamba1's decay
differs per channel *and* state, so the chunked "segment-sum" form does chunk_size times the
work and memory of the loop and loses on CPU; it is kept for CUDA without mamba-ssm, where a
loop would pay one kernel launch per op per step.
"""

from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F

DEFAULT_CHUNK_SIZE = 16


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    """Upcast to float32, apply bias/softplus to delta, bring B and C to (batch|1, dim|1, n, L|1)."""
    if A.is_complex():
        raise ValueError("selective scan: complex A is not supported, only real A")
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            "selective scan: u and delta must both be (batch, dim, L), "
            f"got {tuple(u.shape)} and {tuple(delta.shape)}"
        )
    u, delta, A = u.float(), delta.float(), A.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    dim = A.shape[0]
    return u, delta, A, _as_4d(B.float(), dim), _as_4d(C.float(), dim)


def _as_4d(M: torch.Tensor, dim: int) -> torch.Tensor:
    """(dim, n) | (batch, n, L) | (batch, groups, n, L) -> broadcastable to (batch, dim, n, L)."""
    if M.dim() == 2:
        return M[None, :, :, None]
    if M.dim() == 3:
        return M[:, None]
    if M.dim() == 4:
        groups = M.shape[1]
        if dim % groups:
            raise ValueError(f"selective scan: dim {dim} is not a multiple of the {groups} B/C groups")
        return M.repeat_interleave(dim // groups, dim=1)
    raise ValueError(f"selective scan: B and C must have 2, 3 or 4 dimensions, got {M.dim()}")


def _finish(y, u, D, z, dtype_in):
    """Skip connection, gate, cast back: the same tail for every path."""
    out = y if D is None else y + u * D.float()[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(dtype_in)


def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """The reference: one Python step per position, laid out as mamba-ssm's `selective_scan_ref`."""
    dtype_in = u.dtype
    u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    B, C = B.transpose(-1, -2), C.transpose(-1, -2)  # (batch|1, dim|1, L|1, n)
    deltaA = torch.exp(delta[..., None] * A[:, None, :])  # (batch, dim, L, n)
    deltaB_u = (delta * u)[..., None] * B  # (batch, dim, L, n)
    C = C.expand(-1, -1, length, -1)
    # unbind rather than indexing [:, :, t]: each index's backward would write a full-size gradient.
    steps = zip(deltaA.unbind(2), deltaB_u.unbind(2), C.unbind(2))
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for decay_t, drive_t, C_t in steps:
        h = decay_t * h + drive_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    out = _finish(y, u, D, z, dtype_in)
    return (out, h) if return_last_state else out


def _steps(x: torch.Tensor, length: int):
    """(..., L) -> L contiguous (...) slices, one per step; a length-1 time axis (constant B/C) repeats."""
    if x.shape[-1] != length:
        return itertools.repeat(x[..., 0], length)
    return x.movedim(-1, 0).contiguous().unbind(0)


def selective_scan_sequential(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """The CPU fast path: the reference's recurrence, each step built from small contiguous slices.

    Nothing of size (batch, dim, n, L) is materialised: on CPU those full-size tensors (memory
    traffic, page faults), not the Python loop, are what make the reference slow.
    """
    dtype_in = u.dtype
    u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    steps = zip(_steps(delta, length), _steps(delta * u, length), _steps(B, length), _steps(C, length))
    for delta_t, delta_u_t, B_t, C_t in steps:
        decay_t = torch.exp(delta_t[..., None] * A)
        h = torch.addcmul(decay_t * h, delta_u_t[..., None], B_t)
        ys.append((h * C_t).sum(-1))
    out = _finish(torch.stack(ys, dim=-1), u, D, z, dtype_in)
    return (out, h) if return_last_state else out


def _time_major(u, delta, A, B, C, delta_bias, delta_softplus):
    """The chunked scan's inputs as (L, batch, dim, n) contiguous tensors.

    Returns u (float32, (batch, dim, L)), log_decay = delta*A, drive = delta*B*u, and C broadcastable
    to (L, batch, dim, n).
    """
    u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    delta_t = delta.permute(2, 0, 1)[..., None]  # (L, batch, dim, 1)
    u_t = u.permute(2, 0, 1)[..., None]
    # .contiguous(): elementwise ops keep their inputs' (batch-major) memory order otherwise.
    log_decay = (delta_t * A).contiguous()
    drive = (delta_t * u_t * B.permute(3, 0, 1, 2)).contiguous()
    return u, log_decay, drive, C.permute(3, 0, 1, 2)


def _scan_chunk(log_decay: torch.Tensor, drive: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """All states of h_t = exp(log_decay_t) h_{t-1} + drive_t over one chunk, without a loop.

    log_decay, drive: (T, ...) time-major; h0: (...). Returns (T, ...).
    """
    T = log_decay.shape[0]
    cum = log_decay.cumsum(0)
    # seg[t, s] = log of the decay from step s to step t = cum[t] - cum[s] (the "segment sum").
    seg = cum[:, None] - cum[None, :]
    # Mask the future (s > t) before exp: there seg is positive and exp may overflow to inf,
    # and inf * 0 would turn into NaN in the backward pass.
    causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()
    seg = seg.masked_fill(~causal.view(T, T, *[1] * (seg.dim() - 2)), float("-inf"))
    intra = (seg.exp() * drive[None]).sum(1)
    return intra + cum.exp() * h0


def selective_scan_chunked(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
):
    """The chunked path: each chunk of chunk_size steps at once (segment sums), a loop across chunks.

    Memory and work per chunk are batch*dim*n*chunk_size**2: Mamba1's decay differs per
    channel and state, so unlike Mamba2's SSD there is no shared decay matrix to reuse.
    """
    if chunk_size < 1:
        raise ValueError(f"selective scan: chunk_size must be >= 1, got {chunk_size}")
    dtype_in = u.dtype
    u, log_decay, drive, C = _time_major(u, delta, A, B, C, delta_bias, delta_softplus)
    h = torch.zeros_like(drive[0])
    chunks = []
    for log_decay_c, drive_c in zip(log_decay.split(chunk_size), drive.split(chunk_size)):
        states = _scan_chunk(log_decay_c, drive_c, h)
        chunks.append(states)
        h = states[-1]
    y = (torch.cat(chunks) * C).sum(-1).permute(1, 2, 0)  # (batch, dim, L)
    out = _finish(y, u, D, z, dtype_in)
    return (out, h) if return_last_state else out


@functools.cache
def _cuda_selective_scan():
    """mamba-ssm's fused kernel, or None when the optional extra is not installed or not loadable."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as kernel
    except (ImportError, OSError):  # OSError: the extension is there but its CUDA libraries are not
        return None
    return kernel


def scan_backend(u: torch.Tensor, use_cuda_kernel: bool = True) -> str:
    """Which path `selective_scan_fn` takes for u: "cuda_kernel", "chunked" (CUDA) or "sequential" (CPU)."""
    if not u.is_cuda:
        return "sequential"
    if use_cuda_kernel and _cuda_selective_scan() is not None:
        return "cuda_kernel"
    return "chunked"


def selective_scan_fn(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    use_cuda_kernel: bool = True,
):
    """The fastest path for u's device: mamba-ssm's kernel on CUDA when installed, else pure PyTorch."""
    backend = scan_backend(u, use_cuda_kernel)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend == "cuda_kernel":
        return _cuda_selective_scan()(*args)
    if backend == "chunked":
        return selective_scan_chunked(*args)
    return selective_scan_sequential(*args)
