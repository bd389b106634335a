"""Causal depthwise conv1d over time with its last ``K-1`` inputs carried as state.

``causal_conv1d`` (a prefill: y and the new tail, silu optionally folded in) takes the fast path
(``triton_conv``: one launch) on CUDA tensors when no gradient is needed and Triton imports; otherwise the
reference (``naive``). ``causal_conv1d_step`` (one decoded token) is the reference.
"""

from __future__ import annotations

import torch

from ..backend import inference_kernels
from . import naive
from .naive import causal_conv1d_step

FAST = "jrt_prompt.ops.conv.triton_conv"


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  tail: torch.Tensor | None = None, mask: torch.Tensor | None = None, *,
                  activation: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, new tail) as ``naive.causal_conv1d``: y = act(conv over (tail, x)), zero at left-padded positions."""
    fast = inference_kernels(FAST, x, weight, bias, tail, mask)
    if fast is not None and fast.supported(x, weight, bias, tail, mask):
        return fast.causal_conv1d(x, weight, bias, tail, mask, activation=activation)
    return naive.causal_conv1d(x, weight, bias, tail, mask, activation=activation)


__all__ = ["causal_conv1d", "causal_conv1d_step", "naive"]
