"""A norm and the projection that reads it, for decode steps: ``add_rms_norm_linear`` (a block's
residual add, its RMSNorm and the mixer's in_proj) and ``gated_rms_norm_linear`` (Mamba-2's gated output norm
and out_proj).

At batch 1 a projection is a matrix-vector product bound by reading the weight, and the norm before it is a
launch of its own that reads one row. The fast path (``triton_norm_linear``) does both in one launch: each
program starts its share of the weight streaming, then normalises the row itself (it is small and sits in L2)
while the weight arrives. It runs for ``MAX_ROWS`` (one) row on CUDA without gradients; otherwise the norm op
(``ops.norm``, itself one kernel on CUDA) and ``F.linear`` run one after the other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backend import inference_kernels
from ..norm import add_rms_norm, gated_rms_norm, rms_norm
from . import naive

FAST = "jrt_prompt.ops.norm_linear.triton_norm_linear"


def add_rms_norm_linear(h: torch.Tensor, y: torch.Tensor | None, norm_weight: torch.Tensor | None, eps: float,
                        weight: torch.Tensor, bias: torch.Tensor | None = None, *, hf_rounding: bool,
                        residual_fp32: bool, cast: torch.dtype | None = None, out_dtype: torch.dtype | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(h + y, linear(rms_norm(h + y))), the sum in float32 when ``residual_fp32``; ``y`` None: (h,
    linear(rms_norm(h))). See ``naive.add_rms_norm_linear``."""
    kw = dict(hf_rounding=hf_rounding, cast=cast, out_dtype=out_dtype)
    fast = inference_kernels(FAST, h, y, norm_weight, weight, bias)
    if fast is not None and fast.supported_add(h, y, norm_weight, weight, bias, cast, residual_fp32=residual_fp32,
                                               hf_rounding=hf_rounding, out_dtype=out_dtype):
        return fast.add_rms_norm_linear(h, y, norm_weight, eps, weight, bias, residual_fp32=residual_fp32, **kw)
    if y is None:
        x = rms_norm(h, norm_weight, eps, **kw)
    else:
        h, x = add_rms_norm(h, y, norm_weight, eps, residual_fp32=residual_fp32, **kw)
    return h, F.linear(x, weight, bias)


def gated_rms_norm_linear(y: torch.Tensor, z: torch.Tensor, norm_weight: torch.Tensor | None, group_size: int,
                          eps: float, norm_before_gate: bool, weight: torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """linear(gated_rms_norm(y, z)) (see ``naive.gated_rms_norm_linear``)."""
    fast = inference_kernels(FAST, y, z, norm_weight, weight, bias)
    if fast is not None and fast.supported_gated(y, z, norm_weight, group_size, weight, bias):
        return fast.gated_rms_norm_linear(y, z, norm_weight, group_size, eps, norm_before_gate, weight, bias)
    return F.linear(gated_rms_norm(y, z, norm_weight, group_size, eps, norm_before_gate), weight, bias)


__all__ = ["add_rms_norm_linear", "gated_rms_norm_linear", "naive"]
