"""RMSNorm as flash-linear-attention's fused kernels compute it (``fla.modules.RMSNorm``, ``FusedRMSNormGated``,
GLA's ``g_norm``): normalise, scale by the weight and, when a gate is given, by swish(gate), all in float32;
round once at the end.

The output dtype: the input's, or ``out_dtype`` when set. fla builds the block norms and the final norm of its
Mamba / Mamba-2 models in float32, also inside a bfloat16 model, and its kernel returns the dtype the next layer
computes in; our ``Block`` casts its input to the norm weight's dtype first, so that dtype is fixed here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.norm import add_rms_norm, rms_norm
from ..ops.norm_linear import add_rms_norm_linear


class FlaRMSNorm(nn.Module):
    fuses_cast = True  # forward(x, cast=dtype) casts the input first, in the same kernel

    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = True, device=None, dtype=None,
                 out_dtype: torch.dtype | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype)) if affine else None
        self.eps = eps
        self.out_dtype = out_dtype

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None, cast: torch.dtype | None = None
                ) -> torch.Tensor:
        if gate is None:
            return rms_norm(x, self.weight, self.eps, hf_rounding=False, cast=cast, out_dtype=self.out_dtype)
        if cast is not None:
            x = x.to(cast)
        y = x.float()
        y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.float()
        y = y * F.silu(gate.float())
        return y.to(self.out_dtype or x.dtype)

    def add_forward(self, h: torch.Tensor, y: torch.Tensor, residual_fp32: bool, cast: torch.dtype | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(h + y, forward(h + y, cast=cast)), the sum in float32 when ``residual_fp32``: one kernel on CUDA."""
        return add_rms_norm(h, y, self.weight, self.eps, hf_rounding=False, residual_fp32=residual_fp32, cast=cast,
                            out_dtype=self.out_dtype)

    def add_forward_linear(self, h: torch.Tensor, y: torch.Tensor | None, residual_fp32: bool, linear: nn.Linear,
                           cast: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(h + y, linear(forward(h + y, cast=cast))) (``y`` None: no add): one kernel on CUDA at batch 1."""
        return add_rms_norm_linear(h, y, self.weight, self.eps, linear.weight, linear.bias, hf_rounding=False,
                                   residual_fp32=residual_fp32, cast=cast, out_dtype=self.out_dtype)

    def _apply(self, fn, recurse: bool = True):
        # model.to(dtype) / .half() re-types the output together with the weights (fn casts floating tensors only)
        if self.out_dtype is not None:
            self.out_dtype = fn(torch.empty(0, dtype=self.out_dtype)).dtype
        return super()._apply(fn, recurse)
