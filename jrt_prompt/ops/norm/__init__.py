"""RMSNorm with the input cast folded in: ``rms_norm(x, weight, eps, hf_rounding=..., cast=..., out_dtype=...)``,
and a block's residual add before it: ``add_rms_norm``.

The fast path (``triton_norm``: one launch) runs on CUDA tensors when no gradient is needed and Triton imports;
otherwise the reference (``naive``).
"""

from __future__ import annotations

import torch

from ..backend import inference_kernels
from . import naive

FAST = "jrt_prompt.ops.norm.triton_norm"


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, *, hf_rounding: bool,
             cast: torch.dtype | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    kw = dict(hf_rounding=hf_rounding, cast=cast, out_dtype=out_dtype)
    fast = inference_kernels(FAST, x, weight)
    if fast is not None and fast.supported(x, weight, cast):
        return fast.rms_norm(x, weight, eps, **kw)
    return naive.rms_norm(x, weight, eps, **kw)


def add_rms_norm(h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, eps: float, *, hf_rounding: bool,
                 residual_fp32: bool, cast: torch.dtype | None = None, out_dtype: torch.dtype | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(h + y, rms_norm(h + y)), the sum in float32 when ``residual_fp32`` (see ``naive.add_rms_norm``)."""
    kw = dict(hf_rounding=hf_rounding, residual_fp32=residual_fp32, cast=cast, out_dtype=out_dtype)
    fast = inference_kernels(FAST, h, y, weight)
    if fast is not None and h.shape == y.shape and fast.supported(h, weight, cast) and y.dtype in fast._TL:
        return fast.add_rms_norm(h, y, weight, eps, **kw)
    return naive.add_rms_norm(h, y, weight, eps, **kw)


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor | None, group_size: int, eps: float,
                   norm_before_gate: bool = False) -> torch.Tensor:
    """Grouped RMSNorm gated by silu(z) (Mamba-2's output norm; see ``naive.gated_rms_norm``)."""
    fast = inference_kernels(FAST, y, z, weight)
    if (fast is not None and y.shape == z.shape and y.shape[-1] % group_size == 0 and fast.supported(y, weight, None)
            and z.dtype in fast._TL and group_size <= 16384):
        return fast.gated_rms_norm(y, z, weight, group_size, eps, norm_before_gate)
    return naive.gated_rms_norm(y, z, weight, group_size, eps, norm_before_gate)


__all__ = ["rms_norm", "add_rms_norm", "gated_rms_norm", "naive"]
