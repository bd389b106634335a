"""RMSNorm as flash-linear-attention's fused kernel (``fla.modules.RMSNorm``) computes it: normalise and scale in
float32, round once to the output dtype.

fla builds the block norms and the final norm of its Mamba / Mamba-2 models in float32, also inside a bfloat16
model (``from_pretrained(..., dtype=torch.bfloat16)``), and its kernel returns the input's dtype whatever the
weight's. Our ``Block`` casts its input to the norm weight's dtype first, so the output dtype here is fixed
(``out_dtype``: the dtype the mixer after it computes in); None returns the input's dtype.
"""

from __future__ import annotations

import torch

from .norm import RMSNorm


class FlaRMSNorm(RMSNorm):
    def __init__(self, dim: int, eps: float = 1e-5, out_dtype: torch.dtype | None = None, device=None, dtype=None):
        super().__init__(dim, eps=eps, device=device, dtype=dtype)
        self.out_dtype = out_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return h.to(self.out_dtype or x.dtype)

    def _apply(self, fn, recurse: bool = True):
        # model.to(dtype) / .half() re-types the output together with the weights (fn casts floating tensors only)
        if self.out_dtype is not None:
            self.out_dtype = fn(torch.empty(0, dtype=self.out_dtype)).dtype
        return super()._apply(fn, recurse)
