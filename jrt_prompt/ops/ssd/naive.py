"""Reference SSD (Mamba 2 state-space duality) with its state in and out, in plain PyTorch (any device).

Per head h (of H, in G groups sharing B and C), head channel p and state index n, with
dt = clamp(softplus(dt_raw + dt_bias), dt_limit):

    S[t, h, p, n] = exp(dt[t, h] * A[h]) * S[t-1, h, p, n] + dt[t, h] * x[t, h, p] * B[t, g(h), n]
    y[t, h, p]    = sum_n C[t, g(h), n] * S[t, h, p, n] + D[h] * x[t, h, p]

a linear recurrence with one scalar decay per head and token. Two forms compute it: ``ssd_recurrent``
(token by token, the definition) and ``ssd_chunked`` (chunks of tokens in closed form, the one layers use).
Masked (left-padded) tokens get dt = 0, so they leave the state unchanged. States are [B, H, P, N] float32.
"""

from __future__ import annotations

import math

import torch

from ..selective_scan.naive import prepare_dt

NO_LIMIT = (0.0, math.inf)


def _heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, L, G, N] -> [B, L, H, N] float32: each group's B/C serves H/G consecutive heads."""
    return t.float().repeat_interleave(n_heads // t.shape[-2], dim=-2)


def add_skip(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    """Add D * x; D is [H] (one per head) or [H, P] (mamba_ssm's D_has_hdim)."""
    if D is None:
        return y
    d = D.float()
    return y + x.float() * (d[:, None] if d.dim() == 1 else d)


def fla_inputs(x, dt, A, B, C, *, dt_bias=None, dt_softplus=True, dt_limit=NO_LIMIT, mask=None):
    """SSD as simple gated linear attention (fla's ``chunk_simple_gla``): q = C and k = B over heads [B, L, H, N]
    in x's dtype, v = x * dt [B, L, H, P] in x's dtype (the product in float32, rounded once), log-decay
    g = dt * A [B, L, H] float32, with dt = prepare_dt(...) (0 at masked tokens)."""
    heads = x.shape[2]
    step = prepare_dt(dt, dt_bias, dt_softplus, dt_limit, mask)  # [B, L, H] float32
    q = C.to(x.dtype).repeat_interleave(heads // C.shape[2], dim=2)
    k = B.to(x.dtype).repeat_interleave(heads // B.shape[2], dim=2)
    v = (x.float() * step[..., None]).to(x.dtype)
    return q, k, v, step * A.float()


def skip_out(o: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """The SSD output from the attention part ``o`` [B, L, H, P]: (o + D x) zeroed at masked tokens, in x's dtype."""
    y = add_skip(o.float(), x, D)
    if mask is not None:
        y = y * mask[:, :, None, None]
    return y.to(x.dtype)


def _check(x, B, C, initial_state):
    batch, _, heads, headdim = x.shape
    if heads % B.shape[-2] or B.shape != C.shape:
        raise ValueError(f"B and C must be [batch, length, groups, d_state] with groups dividing {heads} heads")
    if initial_state is not None and initial_state.shape != (batch, heads, headdim, B.shape[-1]):
        raise ValueError(f"initial_state must be [{batch}, {heads}, {headdim}, {B.shape[-1]}], "
                         f"got {tuple(initial_state.shape)}")


def _zeros(x: torch.Tensor, d_state: int) -> torch.Tensor:
    batch, _, heads, headdim = x.shape
    return x.new_zeros(batch, heads, headdim, d_state, dtype=torch.float32)


def ssd_recurrent(x, dt, A, B, C, D=None, *, dt_bias=None, dt_softplus=True, dt_limit=NO_LIMIT,
                  initial_state=None, mask=None):
    """Token by token. x: [B, L, H, P]; dt: [B, L, H]; A: [H]; B, C: [B, L, G, N]; D: [H] or [H, P];
    dt_bias: [H]; initial_state: [B, H, P, N]; mask: [B, L] bool. Returns y [B, L, H, P] (x's dtype), final state."""
    _check(x, B, C, initial_state)
    step = prepare_dt(dt, dt_bias, dt_softplus, dt_limit, mask)  # [B, L, H]
    Bh, Ch = _heads(B, x.shape[2]), _heads(C, x.shape[2])
    xf = x.float()
    state = initial_state.float() if initial_state is not None else _zeros(x, B.shape[-1])
    ys = []
    for t in range(x.shape[1]):
        decay = torch.exp(step[:, t] * A.float())  # [B, H]
        state = decay[..., None, None] * state + (step[:, t, :, None] * xf[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append((state * Ch[:, t, :, None, :]).sum(-1))
    return skip_out(torch.stack(ys, 1), x, D, mask), state


def ssd_chunked(x, dt, A, B, C, D=None, *, dt_bias=None, dt_softplus=True, dt_limit=NO_LIMIT,
                initial_state=None, mask=None, chunk_size=64):
    """Chunks of ``chunk_size`` tokens: inside a chunk, attention-like with the decay mask
    exp(cum[t] - cum[s]) (s <= t); across chunks, the state is carried. Same arguments as ``ssd_recurrent``."""
    _check(x, B, C, initial_state)
    heads = x.shape[2]
    step = prepare_dt(dt, dt_bias, dt_softplus, dt_limit, mask)  # [B, L, H]
    Bh, Ch = _heads(B, heads), _heads(C, heads)
    xf = x.float()
    state = initial_state.float() if initial_state is not None else _zeros(x, B.shape[-1])
    ys = []
    for s in range(0, x.shape[1], chunk_size):
        e = min(x.shape[1], s + chunk_size)
        cum = (step[:, s:e] * A.float()).cumsum(1)  # [B, t, H] log-decay from the chunk start through t
        v = xf[:, s:e] * step[:, s:e, :, None]  # [B, t, H, P]
        b, c = Bh[:, s:e], Ch[:, s:e]  # [B, t, H, N]
        causal = torch.ones(e - s, e - s, dtype=torch.bool, device=x.device).tril()
        seg = (cum[:, :, None] - cum[:, None, :]).masked_fill(~causal[None, :, :, None], -math.inf)
        scores = torch.einsum("bthn,bshn->btsh", c, b) * seg.exp()  # [B, t, s, H]
        y = torch.einsum("btsh,bshp->bthp", scores, v)
        y = y + torch.einsum("bthn,bhpn->bthp", c, state) * cum.exp()[..., None]
        to_end = (cum[:, -1:] - cum).exp()  # [B, t, H]
        state = state * cum[:, -1].exp()[..., None, None] + torch.einsum("bshn,bshp->bhpn", b * to_end[..., None], v)
        ys.append(y)
    return skip_out(torch.cat(ys, 1), x, D, mask), state


def ssd_state_update(state, x, dt, A, B, C, D=None, *, dt_bias=None, dt_softplus=True, dt_limit=NO_LIMIT):
    """One token, in place. state: [B, H, P, N] float32; x: [B, H, P]; dt: [B, H]; B, C: [B, G, N].
    Returns y [B, H, P] in x's dtype."""
    heads = x.shape[1]
    step = prepare_dt(dt, dt_bias, dt_softplus, dt_limit)  # [B, H]
    Bh = B.float().repeat_interleave(heads // B.shape[1], dim=1)  # [B, H, N]
    Ch = C.float().repeat_interleave(heads // C.shape[1], dim=1)
    state.mul_(torch.exp(step * A.float())[..., None, None])
    state.add_((step[..., None] * x.float())[..., None] * Bh[:, :, None, :])
    y = (state * Ch[:, :, None, :]).sum(-1)
    return add_skip(y, x, D).to(x.dtype)
