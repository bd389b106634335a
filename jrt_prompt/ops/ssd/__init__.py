"""Mamba 2 SSD with explicit state: ``ssd`` over a sequence, ``ssd_state_update`` for one token in place.

SSD is simple gated linear attention (one scalar log-decay per head and token) plus a skip term:
q = C, k = B, v = x * dt, log-decay g = A * dt, scale 1. On CUDA, when flash-linear-attention imports,
``ssd`` runs fla's ``chunk_simple_gla`` kernel with that mapping (16-bit inputs); elsewhere, and for float32
inputs, the chunked PyTorch reference.
"""

from __future__ import annotations

import torch

from ..backend import importable, use_fast_path
from .naive import NO_LIMIT, add_skip, prepare_dt, ssd_chunked, ssd_recurrent, ssd_state_update

__all__ = ["ssd", "ssd_chunked", "ssd_recurrent", "ssd_state_update", "ssd_fla"]

FLA_MODULE = "fla.ops.simple_gla"


def ssd(x, dt, A, B, C, D=None, *, dt_bias=None, dt_softplus=True, dt_limit=NO_LIMIT, initial_state=None,
        mask=None, chunk_size=64):
    """x: [B, L, H, P]; dt: [B, L, H]; A: [H]; B, C: [B, L, G, N]; D: [H] or [H, P]; dt_bias: [H];
    initial_state: [B, H, P, N] float32 (None: zeros); mask: [B, L] bool (left padding).
    Returns y [B, L, H, P] in x's dtype and the final state [B, H, P, N] float32."""
    kw = dict(dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit, initial_state=initial_state, mask=mask)
    # float32 inputs take the reference: fla's kernels run float32 dots in TF32 (logits 1.0e-3 to 1.5e-3 from
    # the float32 reference on an H100, 2026-11-24), too far for a float32 model
    if x.dtype != torch.float32 and use_fast_path(x, dt, B, C, initial_state) and importable(FLA_MODULE):
        return ssd_fla(x, dt, A, B, C, D, **kw)
    return ssd_chunked(x, dt, A, B, C, D, chunk_size=chunk_size, **kw)


def ssd_fla(x, dt, A, B, C, D=None, *, dt_bias=None, dt_softplus=True, dt_limit=NO_LIMIT, initial_state=None,
            mask=None):
    """``ssd`` through fla's chunk_simple_gla (CUDA; fla >= 0.6). fla keeps states as [B, H, K, V] = [B, H, N, P]
    by default; ours are [B, H, P, N], so they are transposed on the way in and out (one small copy)."""
    from fla.ops.simple_gla import chunk_simple_gla

    heads = x.shape[2]
    step = prepare_dt(dt, dt_bias, dt_softplus, dt_limit, mask)  # [B, L, H] float32
    q = C.to(x.dtype).repeat_interleave(heads // C.shape[2], dim=2)
    k = B.to(x.dtype).repeat_interleave(heads // B.shape[2], dim=2)
    v = (x.float() * step[..., None]).to(x.dtype)
    g = step * A.float()
    h0 = initial_state.float().transpose(-1, -2).contiguous() if initial_state is not None else None
    o, final = chunk_simple_gla(q, k, v, g=g, scale=1.0, initial_state=h0, output_final_state=True)
    y = add_skip(o.float(), x, D)
    if mask is not None:
        y = y * mask[:, :, None, None]
    return y.to(x.dtype), final.float().transpose(-1, -2).contiguous()
