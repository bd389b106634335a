"""One-token Mamba-2 mixer step (between in_proj and the gated norm), states updated in place.

The fast path (``triton_step``: one fused launch) runs when every tensor is on CUDA, the activation is SiLU, no
gradient is needed and Triton imports; otherwise the reference (``naive``: the prefill's own ops).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backend import inference_kernels
from . import naive

FAST_STEP = "jrt_prompt.ops.mamba2_step.triton_step"


def mamba2_step(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D, dt_bias, *,
                n_groups: int, act=F.silu, dt_limit=naive.NO_LIMIT) -> torch.Tensor:
    """See ``naive.mamba2_step``: zxbcdt [B, 2 d_inner + 2 G N + H] -> y [B, d_inner] (before gate and norm)."""
    kw = dict(n_groups=n_groups, act=act, dt_limit=dt_limit)
    tensors = (zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D, dt_bias)
    fast = inference_kernels(FAST_STEP, *tensors) if act is F.silu else None
    if fast is not None:
        return fast.mamba2_step(*tensors, **kw)
    return naive.mamba2_step(*tensors, **kw)


__all__ = ["mamba2_step", "naive"]
