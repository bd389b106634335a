"""Mamba-2 mixer with explicit conv and SSM state, parameters named and shaped as in transformers' Mamba2Mixer
and mamba_ssm's Mamba2 (in_proj, conv1d, dt_bias, A_log, D, norm, out_proj).

    z, xBC, dt = in_proj(u).split([d_inner, d_inner + 2 G N, H]); x, B, C = act(conv1d(xBC)).split(...)
    y = ssd(x, dt, -exp(A_log), B, C, D); y = norm(y, z) (gated RMSNorm per group); out = out_proj(y)

State per layer: ``conv`` [B, K-1, d_inner + 2 G N] (weights' dtype) and ``ssm`` [B, H, P, N] float32.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops.conv import causal_conv1d
from ..ops.mamba2_step import mamba2_step
from ..ops.norm import gated_rms_norm
from ..ops.norm_linear import gated_rms_norm_linear
from ..ops.ssd import ssd
from ..state import LayerState
from .mamba import activation, conv_activation, depthwise_conv


class GatedRMSNorm(nn.Module):
    """RMSNorm over groups of ``group_size`` channels, gated by silu(z): norm(y * silu(z)) (the default, as in
    transformers and mamba_ssm with norm_before_gate=False) or norm(y) * silu(z) (norm_before_gate=True).
    Computed in float32, returned in the input's dtype."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5, norm_before_gate: bool = False,
                 device=None, dtype=None):
        super().__init__()
        if dim % group_size:
            raise ValueError(f"norm group size {group_size} does not divide {dim} channels")
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.group_size, self.eps, self.norm_before_gate = group_size, eps, norm_before_gate

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(y, z, self.weight, self.group_size, self.eps, self.norm_before_gate)


class Mamba2Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, head_dim: int, d_state: int = 128, n_groups: int = 1,
                 d_conv: int = 4, use_bias: bool = False, use_conv_bias: bool = True, hidden_act: str = "silu",
                 dt_limit: tuple[float, float] = (0.0, math.inf), rmsnorm: bool = True, norm_before_gate: bool = False,
                 norm_eps: float = 1e-5, D_has_hdim: bool = False, chunk_size: int = 64, device=None, dtype=None):
        super().__init__()
        if n_heads % n_groups:
            raise ValueError(f"n_groups {n_groups} must divide the {n_heads} heads")
        kw = dict(device=device, dtype=dtype)
        d_inner = n_heads * head_dim
        self.d_inner, self.n_heads, self.head_dim = d_inner, n_heads, head_dim
        self.d_state, self.n_groups = d_state, n_groups
        self.d_conv, self.conv_dim = d_conv, d_inner + 2 * n_groups * d_state
        self.dt_limit, self.chunk_size = (float(dt_limit[0]), float(dt_limit[1])), chunk_size
        self.act, self.conv_act = activation(hidden_act), conv_activation(hidden_act)
        self.in_proj = nn.Linear(d_model, d_inner + self.conv_dim + n_heads, bias=use_bias, **kw)
        self.conv1d = depthwise_conv(self.conv_dim, d_conv, use_conv_bias, **kw)
        self.dt_bias = nn.Parameter(torch.zeros(n_heads, **kw))
        self.A_log = nn.Parameter(torch.empty(n_heads, **kw))
        self.D = nn.Parameter(torch.ones(d_inner if D_has_hdim else n_heads, **kw))
        self.norm = (GatedRMSNorm(d_inner, d_inner // n_groups, norm_eps, norm_before_gate, **kw) if rmsnorm
                     else None)
        self.out_proj = nn.Linear(d_inner, d_model, bias=use_bias, **kw)
        if self.A_log.device.type != "meta":
            with torch.no_grad():
                self.A_log.copy_(torch.log(torch.arange(1, n_heads + 1, dtype=torch.float32)))

    def init_state(self, batch_size: int, device) -> LayerState:
        return {"conv": torch.zeros(batch_size, self.d_conv - 1, self.conv_dim, device=device,
                                    dtype=self.in_proj.weight.dtype),
                "ssm": torch.zeros(batch_size, self.n_heads, self.head_dim, self.d_state, device=device,
                                   dtype=torch.float32)}

    def _split_in(self, u: torch.Tensor):
        return self.in_proj(u).split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)

    def _split_conv(self, xBC: torch.Tensor):
        """x [..., H, P], B and C [..., G, N] from the activated conv output."""
        x, B, C = xBC.split([self.d_inner, self.n_groups * self.d_state, self.n_groups * self.d_state], dim=-1)
        return (x.unflatten(-1, (self.n_heads, self.head_dim)), B.unflatten(-1, (self.n_groups, self.d_state)),
                C.unflatten(-1, (self.n_groups, self.d_state)))

    def _skip_weight(self) -> torch.Tensor:
        return self.D if self.D.shape[0] == self.n_heads else self.D.view(self.n_heads, self.head_dim)

    def _out(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """out_proj(norm(y, z)), or out_proj(y * silu(z)) without a norm: one kernel for a decoded token on CUDA."""
        norm, w, b = self.norm, self.out_proj.weight, self.out_proj.bias
        if norm is None:
            return gated_rms_norm_linear(y, z, None, y.shape[-1], 0.0, False, w, b)
        return gated_rms_norm_linear(y, z, norm.weight, norm.group_size, norm.eps, norm.norm_before_gate, w, b)

    def forward(self, u, state, mask=None, positions=None):
        if mask is not None:
            u = u * mask[..., None].to(u.dtype)
        z, xBC, dt = self._split_in(u)
        xBC, tail = causal_conv1d(xBC, self.conv1d.weight[:, 0, :], self.conv1d.bias, state["conv"], mask,
                                  activation=self.conv_act)
        x, B, C = self._split_conv(xBC if self.conv_act else self.act(xBC))
        y, ssm = ssd(x, dt, -torch.exp(self.A_log.float()), B, C, self._skip_weight(), dt_bias=self.dt_bias,
                     dt_limit=self.dt_limit, initial_state=state["ssm"], mask=mask, chunk_size=self.chunk_size)
        return self._out(y.flatten(-2), z), {"conv": tail, "ssm": ssm}

    @property
    def step_in_proj(self) -> nn.Linear:
        """The projection a decode step starts with: the block fuses its norm into it (``step_projected``)."""
        return self.in_proj

    def step(self, u, state, positions):
        return self.step_projected(self.in_proj(u), state, positions)

    def step_projected(self, zxbcdt, state, positions):
        # dt_limit clamps here too, unlike mamba_ssm's own step (the same for the released (0, inf) limit).
        y = mamba2_step(zxbcdt, state["conv"], self.conv1d.weight[:, 0, :], self.conv1d.bias, state["ssm"],
                        self.A_log, self._skip_weight(), self.dt_bias, n_groups=self.n_groups, act=self.act,
                        dt_limit=self.dt_limit)
        return self._out(y, zxbcdt[..., :self.d_inner])
