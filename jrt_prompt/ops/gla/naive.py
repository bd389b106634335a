"""Plain PyTorch gated linear attention (GLA), state in and out; runs on any device.

Layout as fla 0.6.0 (not head-first): q, k, g ``[B, T, H, K]``, v ``[B, T, H, V]``, the state
``S [B, H, K, V]`` in float32. ``g`` is the log of a per-key-dimension decay (<= 0). One token:

    S_t = exp(g_t)[:, None] * S_{t-1} + k_t^T v_t,        o_t = scale * q_t S_t

``mask [B, T]`` (True = real token) makes padded tokens exact no-ops on the state (their k and g
are zeroed). All math is float32; outputs come back in v's dtype.
"""

from __future__ import annotations

import torch


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else scale


def _prepare(q, k, v, g, mask):
    """float32 copies of the inputs; padded tokens get k = 0 and g = 0 so the state skips them."""
    q, k, v, g = (t.float() for t in (q, k, v, g))
    if mask is not None:
        real = mask[:, :, None, None].to(q.device)
        k = torch.where(real, k, 0.0)
        g = torch.where(real, g, 0.0)
    return q, k, v, g


def _zero_state(q, v, initial_state):
    B, _, H, K = q.shape
    if initial_state is None:
        return q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32)
    return initial_state.float()


def _finish(o, dtype, mask):
    if mask is not None:
        o = o.masked_fill(~mask[:, :, None, None].to(o.device), 0.0)
    return o.to(dtype)


def quadratic_gla(q, k, v, g, scale=None, initial_state=None, mask=None):
    """The definition, O(T^2): o_t = scale * sum_{s<=t} (q_t * exp(G_t - G_s)) . k_s v_s + scale * (q_t * exp(G_t)) S_0
    with G the running sum of g. Returns (o, final state). For tests; memory grows as T^2 * K."""
    scale, dtype = _scale(q, scale), v.dtype
    q, k, v, g = _prepare(q, k, v, g, mask)
    s0 = _zero_state(q, v, initial_state)
    T = q.shape[1]
    G = g.cumsum(1)  # [B, T, H, K]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()  # [t, s], s <= t
    diff = (G[:, :, None] - G[:, None, :]).masked_fill(~causal[None, :, :, None, None], float("-inf"))
    scores = torch.einsum("bthk,bshk,btshk->bhts", q, k, diff.exp())
    o = torch.einsum("bhts,bshv->bthv", scores, v) + torch.einsum("bthk,bhkv->bthv", q * G.exp(), s0)
    last = G[:, -1]  # [B, H, K]
    final = last.exp()[..., None] * s0 + torch.einsum("bshk,bshv->bhkv", k * (last[:, None] - G).exp(), v)
    return _finish(o * scale, dtype, mask), final


def recurrent_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=True, mask=None):
    """Token by token, exactly the recurrence above. Returns (o [B, T, H, V], final state or None)."""
    scale, dtype = _scale(q, scale), v.dtype
    q, k, v, g = _prepare(q, k, v, g, mask)
    s = _zero_state(q, v, initial_state).clone()
    outs = []
    for t in range(q.shape[1]):
        s = g[:, t].exp()[..., None] * s + k[:, t, ..., None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], s))
    o = torch.stack(outs, 1) * scale
    return _finish(o, dtype, mask), (s if output_final_state else None)


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=True, mask=None, chunk_size=64):
    """Chunk-parallel form: inside a chunk, pairwise decays exp(b_i - b_j) (j <= i) from gates summed from the
    chunk start; between chunks, the carried state. Every exponent is <= 0, so strong decays underflow to 0 and
    never overflow (unlike q * exp(b), k * exp(-b) over a whole chunk). Returns (o, final state or None)."""
    scale, dtype = _scale(q, scale), v.dtype
    q, k, v, g = _prepare(q, k, v, g, mask)
    s = _zero_state(q, v, initial_state)
    T = q.shape[1]
    outs = []
    for start in range(0, T, chunk_size):
        sl = slice(start, min(start + chunk_size, T))
        qc, kc, vc, bc = q[:, sl], k[:, sl], v[:, sl], g[:, sl].cumsum(1)  # bc: [B, C, H, K], non-increasing
        C = qc.shape[1]
        causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        diff = (bc[:, :, None] - bc[:, None, :]).masked_fill(~causal[None, :, :, None, None], float("-inf"))
        scores = torch.einsum("bihk,bjhk,bijhk->bhij", qc, kc, diff.exp())
        intra = torch.einsum("bhij,bjhv->bihv", scores, vc)
        inter = torch.einsum("bihk,bhkv->bihv", qc * bc.exp(), s)
        outs.append(intra + inter)
        last = bc[:, -1]  # [B, H, K]
        s = last.exp()[..., None] * s + torch.einsum("bjhk,bjhv->bhkv", kc * (last[:, None] - bc).exp(), vc)
    o = torch.cat(outs, 1) * scale
    return _finish(o, dtype, mask), (s if output_final_state else None)


def gla_step(q, k, v, g, state, scale=None):
    """One token per row: q, k, g [B, H, K], v [B, H, V]; ``state`` [B, H, K, V] float32 is updated in place
    (same buffers, so a decode step can be captured in a CUDA graph). Returns o [B, H, V] in v's dtype."""
    scale = _scale(q, scale)
    state.mul_(g.float().exp()[..., None]).add_(k.float()[..., None] * v.float()[..., None, :])
    return (torch.einsum("bhk,bhkv->bhv", q.float(), state) * scale).to(v.dtype)
