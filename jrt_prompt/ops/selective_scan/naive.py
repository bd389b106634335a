"""Reference selective scan (Mamba 1) with its state in and out, in plain PyTorch (any device).

Per channel d and state index n, with dt = softplus(delta + delta_bias):

    h[t, d, n] = exp(dt[t, d] * A[d, n]) * h[t-1, d, n] + dt[t, d] * B[t, n] * u[t, d]
    y[t, d]    = sum_n C[t, n] * h[t, d, n] + D[d] * u[t, d],   then y *= silu(z[t, d])

Left-padded (masked) tokens get dt = 0: decay 1 and no input, so the state passes them unchanged.
The time loop runs over chunks of a few tokens; inside a chunk the recurrence is unrolled in closed
form with cumulative log-decays (exp of differences only, never of a growing sum, so it cannot overflow).
State and arithmetic are float32; outputs come back in ``u``'s dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Elements of the [B, t, s, D, N] decay tensor one chunk may build (fp32): about 128 MB on a GPU, where fewer,
# larger chunks mean fewer launches. On a CPU the chunk's t x t work is paid in memory traffic instead: with
# 2 cores, B 32, L 600, D 256, N 16 the scan took 10.5 s in chunks of 16 and 0.4 s in chunks of 1 (a real Mamba's
# D 1536 at 4096 tokens, batch 1: 9.6 s against 1.1 s), so a CPU chunk holds about 64K elements: 1 or 2 tokens
# for those shapes, 4 for a small model at batch 1 (the fastest there).
_CHUNK_BUDGET = {"cuda": 1 << 25, "cpu": 1 << 16}


def prepare_dt(delta: torch.Tensor, bias: torch.Tensor | None = None, softplus: bool = True,
               limit: tuple[float, float] | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The step sizes the recurrence uses, float32: bias, softplus, clamp to ``limit``, then 0 where masked.

    delta: [B, L, C] (or [B, C] for one token); bias: [C]; mask: [B, L] bool (True = real token).
    """
    dt = delta.float()
    if bias is not None:
        dt = dt + bias.float()
    if softplus:
        dt = F.softplus(dt)
    if limit is not None and (limit[0] > 0.0 or limit[1] < math.inf):
        dt = dt.clamp(min=limit[0], max=limit[1])
    if mask is not None:
        dt = dt * mask[..., None].to(dt.dtype)
    return dt


def _chunk_len(batch: int, channels: int, d_state: int, chunk_size: int | None, device: torch.device) -> int:
    if chunk_size is not None:
        return max(1, chunk_size)
    per_step2 = max(1, batch * channels * d_state)
    budget = _CHUNK_BUDGET["cpu" if device.type == "cpu" else "cuda"]
    return int(max(1, min(16, math.isqrt(budget // per_step2))))


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                   delta_softplus: bool = True, initial_state: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None, chunk_size: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the scan over ``L`` tokens from ``initial_state``.

    u, delta, z: [B, L, C]; A: [C, N] (negative reals); B, C: [B, L, N]; D, delta_bias: [C];
    initial_state: [B, C, N] (None: zeros); mask: [B, L] bool, left padding only.
    Returns y [B, L, C] (dtype of u; zero at masked tokens) and the final state [B, C, N] float32.
    """
    batch, length, channels = u.shape
    d_state = A.shape[-1]
    dt = prepare_dt(delta, delta_bias, delta_softplus, mask=mask)  # [B, L, C]
    Af = A.float()
    Bf, Cf, uf = B.float(), C.float(), u.float()
    h = (initial_state.float() if initial_state is not None
         else u.new_zeros(batch, channels, d_state, dtype=torch.float32))
    T = _chunk_len(batch, channels, d_state, chunk_size, u.device)
    ys = []
    for s in range(0, length, T):
        e = min(length, s + T)
        cum = (dt[:, s:e, :, None] * Af).cumsum(1)  # [B, t, C, N] log-decay from chunk start through t
        inp = dt[:, s:e] * uf[:, s:e]  # [B, t, C]: dt * u, the input before B
        c, b = Cf[:, s:e], Bf[:, s:e]  # [B, t, N]
        t = e - s
        causal = torch.ones(t, t, dtype=torch.bool, device=u.device).tril()
        seg = (cum[:, :, None] - cum[:, None, :]).masked_fill(~causal[None, :, :, None, None], -math.inf)
        kernel = seg.exp() * c[:, :, None, None, :] * b[:, None, :, None, :]  # [B, t, s, C, N]
        y = (kernel.sum(-1) * inp[:, None]).sum(2)  # [B, t, C]: inputs from inside the chunk
        y = y + (cum.exp() * h[:, None] * c[:, :, None, :]).sum(-1)  # what the incoming state contributes
        to_end = (cum[:, -1:] - cum).exp()  # [B, t, C, N]: decay from each token to the chunk end
        h = cum[:, -1].exp() * h + (to_end * b[:, :, None, :] * inp[..., None]).sum(1)
        ys.append(y)
    return finish(torch.cat(ys, 1), u, D, z, mask), h


def finish(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """Every scan's last step: y + D u, gated by silu(z), zero at masked (left-padded) tokens, in u's dtype."""
    if D is not None:
        y = y + u.float() * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    if mask is not None:
        y = y * mask[..., None]
    return y.to(u.dtype)


def selective_state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                           dt_bias: torch.Tensor | None = None, dt_softplus: bool = True) -> torch.Tensor:
    """One token: ``state`` [B, C, N] float32 is updated in place; returns y [B, C] in x's dtype.

    x, dt, z: [B, C]; A: [C, N]; B, C: [B, N]; D, dt_bias: [C].
    """
    step = prepare_dt(dt, dt_bias, dt_softplus)  # [B, C]
    state.mul_(torch.exp(step[..., None] * A.float()))
    state.add_(step[..., None] * B.float()[:, None, :] * x.float()[..., None])
    return finish((state * C.float()[:, None, :]).sum(-1), x, D, z)
