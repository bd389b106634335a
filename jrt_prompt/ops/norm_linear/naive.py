"""Reference norm-then-projection for decode steps (any device): a norm from ``ops.norm.naive`` followed by
``F.linear``. The fused kernels in ``triton_norm_linear`` compute the same in one launch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..norm import naive as norm


def add_rms_norm_linear(h, y, norm_weight, eps, weight, bias=None, *, hf_rounding: bool, residual_fp32: bool,
                        cast=None, out_dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(h + y, linear(rms_norm(h + y))) as ``norm.add_rms_norm``; ``y`` None: (h, linear(rms_norm(h)))."""
    if y is None:
        x = norm.rms_norm(h, norm_weight, eps, hf_rounding=hf_rounding, cast=cast, out_dtype=out_dtype)
    else:
        h, x = norm.add_rms_norm(h, y, norm_weight, eps, hf_rounding=hf_rounding, residual_fp32=residual_fp32,
                                 cast=cast, out_dtype=out_dtype)
    return h, F.linear(x, weight, bias)


def gated_rms_norm_linear(y, z, norm_weight, group_size: int, eps: float, norm_before_gate: bool, weight,
                          bias=None) -> torch.Tensor:
    """linear(gated_rms_norm(y, z)): Mamba-2's output norm and out_proj."""
    return F.linear(norm.gated_rms_norm(y, z, norm_weight, group_size, eps, norm_before_gate), weight, bias)
