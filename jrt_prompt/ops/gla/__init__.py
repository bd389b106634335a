"""Gated linear attention: fla's Triton kernels on CUDA when installed, else the PyTorch reference.

Layout and meaning as in ``naive``: q, k, g ``[B, T, H, K]``, v ``[B, T, H, V]``, state ``[B, H, K, V]``
float32 (key-first, fla's default ``state_v_first=False``), ``mask [B, T]`` True for real tokens.
``gla_step`` (one decode token, in place) is a few elementwise torch ops on every device: it is already
memory-bound and stays capturable in a CUDA graph.
"""

from __future__ import annotations

import torch

from ..backend import importable, use_fast_path
from . import naive
from .naive import gla_step, quadratic_gla

__all__ = ["chunk_gla", "recurrent_gla", "gla_step", "quadratic_gla", "fla_available"]

# fla's own layer switches to its recurrent kernel at this length; we follow it.
RECURRENT_MAX_LEN = 64


def fla_available() -> bool:
    return importable("fla.ops.gla")


def _fast(q, k, v, g, initial_state, mask) -> bool:
    return use_fast_path(q, k, v, g, initial_state, mask) and fla_available()


def _fla_inputs(k, g, initial_state, mask):
    if mask is not None:
        real = mask[:, :, None, None]
        k = torch.where(real, k, torch.zeros_like(k))
        g = torch.where(real, g, torch.zeros_like(g))
    return k, g, (initial_state.float() if initial_state is not None else None)


def _masked_out(o, mask):
    return o if mask is None else o.masked_fill(~mask[:, :, None, None], 0)


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=True, mask=None):
    """Any number of tokens from ``initial_state`` (None: zeros); returns (o [B, T, H, V], final state or None).
    ``initial_state`` is never modified."""
    if not _fast(q, k, v, g, initial_state, mask):
        return naive.chunk_gla(q, k, v, g, scale, initial_state, output_final_state, mask)
    k, g, h0 = _fla_inputs(k, g, initial_state, mask)
    if q.shape[1] <= RECURRENT_MAX_LEN:
        from fla.ops.gla import fused_recurrent_gla

        o, ht = fused_recurrent_gla(q, k, v, gk=g, scale=scale, initial_state=h0, output_final_state=output_final_state)
    else:
        from fla.ops.gla import chunk_gla as fla_chunk_gla

        o, ht = fla_chunk_gla(q, k, v, g, scale=scale, initial_state=h0, output_final_state=output_final_state)
    return _masked_out(o.to(v.dtype), mask), ht


def recurrent_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=True, mask=None):
    """The token-by-token form (fla's fused_recurrent_gla on CUDA); same results as ``chunk_gla``."""
    if not _fast(q, k, v, g, initial_state, mask):
        return naive.recurrent_gla(q, k, v, g, scale, initial_state, output_final_state, mask)
    from fla.ops.gla import fused_recurrent_gla

    k, g, h0 = _fla_inputs(k, g, initial_state, mask)
    o, ht = fused_recurrent_gla(q, k, v, gk=g, scale=scale, initial_state=h0, output_final_state=output_final_state)
    return _masked_out(o.to(v.dtype), mask), ht
