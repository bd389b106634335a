"""Reference one-token Mamba-2 mixer step, after in_proj and before the gated norm, in plain PyTorch (any device).

    z, xBC, dt = split(zxbcdt); xBC = act(conv_step(xBC)); x, B, C = split(xBC)
    y = ssd_state_update(x, dt, A, B, C, D)

It is the composition of the ops the prefill uses (conv, SSD), so a decoded token equals the same token read by
``forward``; the fused kernel in ``triton_step`` computes the same in one launch. The gate and norm that follow
(with out_proj) are ``ops.norm_linear.gated_rms_norm_linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..conv import causal_conv1d_step
from ..ssd.naive import NO_LIMIT, ssd_state_update


def mamba2_step(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D, dt_bias, *,
                n_groups: int, act=F.silu, dt_limit=NO_LIMIT) -> torch.Tensor:
    """zxbcdt [B, 2 d_inner + 2 G N + H] (in_proj's output); conv_state [B, K-1, d_inner + 2 G N];
    conv_weight [d_inner + 2 G N, K]; ssm_state [B, H, P, N] float32; A_log [H] (A = -exp(A_log));
    D [H] or [H, P]; dt_bias [H]. Both states are updated in place.
    Returns y [B, d_inner] in zxbcdt's dtype, before the gate by z and the norm."""
    batch, heads, head_dim, d_state = ssm_state.shape
    d_inner = heads * head_dim
    conv_dim = conv_state.shape[-1]
    _, xBC, dt = zxbcdt.split([d_inner, conv_dim, heads], dim=-1)
    xBC = act(causal_conv1d_step(xBC, conv_weight, conv_bias, conv_state))
    x, B, C = xBC.split([d_inner, n_groups * d_state, n_groups * d_state], dim=-1)
    A = -torch.exp(A_log.float())
    y = ssd_state_update(ssm_state, x.unflatten(-1, (heads, head_dim)), dt, A, B.unflatten(-1, (n_groups, d_state)),
                         C.unflatten(-1, (n_groups, d_state)), D, dt_bias=dt_bias, dt_limit=dt_limit)
    return y.flatten(-2)
