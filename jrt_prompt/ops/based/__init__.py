"""Taylor linear attention (Based), with the fp32 state (kv [B, H, 273, Dv], ksum [B, H, 273]) in and out.

``taylor_linear_attention`` reads a prompt, ``taylor_linear_attention_step`` one decoded token (in place).
The fast path: when every tensor is on CUDA (``use_fast_path``) and the Triton kernels import, the
functions of the same name and signature in ``triton_chunk`` / ``triton_step`` run; otherwise the
reference chunked / recurrent forms of ``naive`` do.
"""

from __future__ import annotations

import torch

from ..backend import inference_kernels
from . import naive
from .naive import feature_size, taylor_features

# Where the CUDA kernels are chosen: module -> the function of this package it replaces.
FAST_PREFILL = "jrt_prompt.ops.based.triton_chunk"
FAST_STEP = "jrt_prompt.ops.based.triton_step"


# Input dtypes the current prefill kernel was verified for on a GPU. On an H100 (2026-11-24) its float32 path
# hit an illegal memory access while autotuning; until that is found and re-verified, float32 and float16
# prompts take the reference (correct, slower). The step kernel was verified in float32 and bfloat16.
PREFILL_VERIFIED = (torch.bfloat16,)


def _fast(module: str, name: str, *tensors):
    kernels = inference_kernels(module, *tensors)
    return getattr(kernels, name, None) if kernels is not None else None


def taylor_linear_attention(q, k, v, initial_state=None, mask=None, eps=1e-6, output_final_state=True):
    """Causal Taylor linear attention over ``T`` tokens, continuing from ``initial_state``.

    q, k: [B, T, H, 16] (before the feature map); v: [B, T, H, Dv]; mask: [B, T] bool, False = left pad
    (its key adds nothing to the state, its output is 0); initial_state: (kv, ksum) or None (empty).
    Returns (o [B, T, H, Dv] in v's dtype, (kv, ksum) or None). Never modifies ``initial_state``.
    """
    fast = _fast(FAST_PREFILL, "taylor_linear_attention", q, k, v) if q.dtype in PREFILL_VERIFIED else None
    if fast is not None:
        return fast(q, k, v, initial_state=initial_state, mask=mask, eps=eps, output_final_state=output_final_state)
    return naive.taylor_linear_attention_chunked(q, k, v, initial_state, mask, eps, output_final_state)


def taylor_linear_attention_step(q, k, v, kv, ksum, eps=1e-6):
    """One token: q, k [B, H, 16], v [B, H, Dv] -> o [B, H, Dv]; ``kv`` and ``ksum`` are updated in place."""
    fast = _fast(FAST_STEP, "taylor_linear_attention_step", q, k, v, kv, ksum)
    if fast is not None:
        return fast(q, k, v, kv, ksum, eps=eps)
    return naive.taylor_linear_attention_step(q, k, v, kv, ksum, eps)


__all__ = ["taylor_linear_attention", "taylor_linear_attention_step", "feature_size", "taylor_features", "naive"]
