"""Mamba (1) mixer with explicit conv and SSM state, parameters named and shaped as in transformers' MambaMixer
and mamba_ssm's Mamba (in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj), so their state dicts load as they are.

    x, z = in_proj(u).chunk(2); x = act(conv1d(x)); dt, B, C = x_proj(x).split(...); dt = dt_proj(dt)
    y = selective_scan(x, dt, -exp(A_log), B, C, D, z); out = out_proj(y)

State per layer: ``conv`` [B, K-1, d_inner] (the last K-1 inputs of the conv, weights' dtype) and
``ssm`` [B, d_inner, d_state] float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.conv import causal_conv1d, causal_conv1d_step
from ..ops.selective_scan import selective_scan, selective_state_update
from ..state import LayerState

ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def activation(name: str):
    """The conv activation by its transformers name; ValueError names the ones supported."""
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act {name!r} is not supported; use one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def conv_activation(name: str) -> str | None:
    """The activation ``ops.conv.causal_conv1d`` applies inside its kernel, or None (the layer applies it)."""
    return "silu" if name in ("silu", "swish") else None


def depthwise_conv(channels: int, kernel: int, bias: bool, device=None, dtype=None) -> nn.Conv1d:
    """Holds the conv's parameters in the layout checkpoints store (weight [C, 1, K]); never called as a module."""
    return nn.Conv1d(channels, channels, kernel, groups=channels, padding=kernel - 1, bias=bias, device=device,
                     dtype=dtype)


class MambaMixer(nn.Module):
    def __init__(self, d_model: int, d_inner: int, d_state: int = 16, d_conv: int = 4, dt_rank: int | None = None,
                 use_bias: bool = False, use_conv_bias: bool = True, hidden_act: str = "silu", device=None, dtype=None):
        super().__init__()
        dt_rank = dt_rank if dt_rank is not None else -(-d_model // 16)
        kw = dict(device=device, dtype=dtype)
        self.d_inner, self.d_state, self.d_conv, self.dt_rank = d_inner, d_state, d_conv, dt_rank
        self.act, self.conv_act = activation(hidden_act), conv_activation(hidden_act)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=use_bias, **kw)
        self.conv1d = depthwise_conv(d_inner, d_conv, use_conv_bias, **kw)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False, **kw)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True, **kw)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state, **kw))
        self.D = nn.Parameter(torch.empty(d_inner, **kw))
        self.out_proj = nn.Linear(d_inner, d_model, bias=use_bias, **kw)
        if self.A_log.device.type != "meta":
            self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        """S4D-real start values (A = -[1..N] per channel) and D = 1, so a fresh layer is usable before loading."""
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)))
        self.D.fill_(1.0)

    def init_state(self, batch_size: int, device) -> LayerState:
        return {"conv": torch.zeros(batch_size, self.d_conv - 1, self.d_inner, device=device,
                                    dtype=self.in_proj.weight.dtype),
                "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32)}

    def _conv_weight(self) -> torch.Tensor:
        return self.conv1d.weight[:, 0, :]

    def _ssm_inputs(self, x: torch.Tensor):
        """dt (before bias and softplus), B, C from the conv output x [..., d_inner]."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.linear(dt, self.dt_proj.weight), B, C

    def forward(self, u, state, mask=None, positions=None):
        if mask is not None:
            u = u * mask[..., None].to(u.dtype)
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x, tail = causal_conv1d(x, self._conv_weight(), self.conv1d.bias, state["conv"], mask,
                                activation=self.conv_act)
        if self.conv_act is None:
            x = self.act(x)
        dt, B, C = self._ssm_inputs(x)
        y, ssm = selective_scan(x, dt, -torch.exp(self.A_log.float()), B, C, self.D, z, delta_bias=self.dt_proj.bias,
                                initial_state=state["ssm"], mask=mask)
        return self.out_proj(y), {"conv": tail, "ssm": ssm}

    def step(self, u, state, positions):
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = self.act(causal_conv1d_step(x, self._conv_weight(), self.conv1d.bias, state["conv"]))
        dt, B, C = self._ssm_inputs(x)
        y = selective_state_update(state["ssm"], x, dt, -torch.exp(self.A_log.float()), B, C, self.D, z,
                                   dt_bias=self.dt_proj.bias)
        return self.out_proj(y)
