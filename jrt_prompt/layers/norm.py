"""RMSNorm as transformers and mamba-ssm compute it: normalise in float32, cast back, scale."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.norm import add_rms_norm, rms_norm
from ..ops.norm_linear import add_rms_norm_linear


class RMSNorm(nn.Module):
    fuses_cast = True  # forward(x, cast=dtype) casts the input first, in the same kernel

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor, cast: torch.dtype | None = None) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, hf_rounding=True, cast=cast)

    def add_forward(self, h: torch.Tensor, y: torch.Tensor, residual_fp32: bool, cast: torch.dtype | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(h + y, forward(h + y, cast)), the sum in float32 when ``residual_fp32``: one kernel on CUDA."""
        return add_rms_norm(h, y, self.weight, self.eps, hf_rounding=True, residual_fp32=residual_fp32, cast=cast)

    def add_forward_linear(self, h: torch.Tensor, y: torch.Tensor | None, residual_fp32: bool, linear: nn.Linear,
                           cast: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(h + y, linear(forward(h + y, cast))) (``y`` None: no add): one kernel on CUDA at batch 1."""
        return add_rms_norm_linear(h, y, self.weight, self.eps, linear.weight, linear.bias, hf_rounding=True,
                                   residual_fp32=residual_fp32, cast=cast)
