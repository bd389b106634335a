"""Reference RMSNorm in the two roundings checkpoints were trained with (any device).

``hf_rounding`` (transformers, mamba_ssm): normalise in float32, round to the input dtype, then scale by the
weight in the promoted dtype. Otherwise (flash-linear-attention's fused norm): normalise and scale in float32,
round once to ``out_dtype`` (default: the input dtype). ``cast`` first casts the input (a block's float32
residual stream to the norm's dtype), so that one kernel can do both.
"""

from __future__ import annotations

import torch


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
