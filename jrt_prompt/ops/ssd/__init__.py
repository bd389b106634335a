"""Mamba 2 SSD with explicit state: ``ssd`` over a sequence, ``ssd_state_update`` for one token in place.

SSD is simple gated linear attention (one scalar log-decay per head and token) plus a skip term:
q = C, k = B, v = x * dt, log-decay g = A * dt, scale 1. On CUDA, when flash-linear-attention imports,
``ssd`` runs fla's ``chunk_simple_gla`` kernel with that mapping (16-bit inputs), the mapping and the skip term
around it in Triton (``triton_prep``); elsewhere, and for float32 inputs, the chunked PyTorch reference.
"""

from __future__ import annotations

import torch

from ..backend import importable, inference_kernels, use_fast_path
from . import naive
from .naive import NO_LIMIT, ssd_chunked, ssd_recurrent, ssd_state_update

__all__ = ["ssd", "ssd_chunked", "ssd_recurrent", "ssd_state_update", "ssd_fla"]

FLA_MODULE = "fla.ops.simple_gla"
PREP_MODULE = "jrt_prompt.ops.ssd.triton_prep"


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
    """``ssd`` through fla's chunk_simple_gla (CUDA; fla >= 0.6). The elementwise work before and after it
    (``naive.fla_inputs``, ``naive.skip_out``) is one Triton launch each (``triton_prep``) when no gradient is
    needed; fla keeps the states in our [B, H, P, N] layout (``state_v_first=True``: [N, H, V, K]), float32."""
    from fla.ops.simple_gla import chunk_simple_gla

    prep = inference_kernels(PREP_MODULE, x, dt, A, B, C, D, dt_bias, mask)
    if prep is None or not prep.supported(x, dt, A, B, C, D, dt_bias, mask):
        prep = naive
    q, k, v, g = prep.fla_inputs(x, dt, A, B, C, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit,
                                 mask=mask)
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    o, final = chunk_simple_gla(q, k, v, g=g, scale=1.0, initial_state=h0, output_final_state=True,
                                state_v_first=True)
    return prep.skip_out(o, x, D, mask), final
