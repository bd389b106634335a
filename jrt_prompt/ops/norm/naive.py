"""Reference RMSNorm in the two roundings checkpoints were trained with (any device).

``hf_rounding`` (transformers, mamba_ssm): normalise in float32, round to the input dtype, then scale by the
weight in the promoted dtype. Otherwise (flash-linear-attention's fused norm): normalise and scale in float32,
round once to ``out_dtype`` (default: the input dtype). ``cast`` first casts the input (a block's float32
residual stream to the norm's dtype), so that one kernel can do both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, *, hf_rounding: bool,
             cast: torch.dtype | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    if cast is not None:
        x = x.to(cast)
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if hf_rounding:
        return weight * h.to(dtype) if weight is not None else h.to(dtype)
    if weight is not None:
        h = h * weight.float()
    return h.to(out_dtype or dtype)


def add_rms_norm(h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, eps: float, *, hf_rounding: bool,
                 residual_fp32: bool, cast: torch.dtype | None = None, out_dtype: torch.dtype | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A pre-norm block's residual add and the next norm: h = (h in float32 if residual_fp32) + y, then
    (h, rms_norm(h)). One kernel on the fast path instead of an add and a norm."""
    h = (h.float() if residual_fp32 else h) + y
    return h, rms_norm(h, weight, eps, hf_rounding=hf_rounding, cast=cast, out_dtype=out_dtype)


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor | None, group_size: int, eps: float,
                   norm_before_gate: bool = False) -> torch.Tensor:
    """RMSNorm over groups of ``group_size`` channels gated by silu(z): norm(y * silu(z)) (norm_before_gate
    False, transformers' and mamba_ssm's default) or norm(y) * silu(z). float32 inside, y's dtype out;
    ``weight`` None: no norm, y * silu(z)."""
    h, gate = y.float(), F.silu(z.float())
    if weight is None:
        return (h * gate).to(y.dtype)
    if not norm_before_gate:
        h = h * gate
    g = h.unflatten(-1, (-1, group_size))
    h = (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2) * weight.float()
    if norm_before_gate:
        h = h * gate
    return h.to(y.dtype)
