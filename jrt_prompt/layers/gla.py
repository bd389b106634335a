"""GLA layers as fla 0.6.0 computes them: GatedLinearAttention (mixer), its short conv, its gated output
norm, and GatedMLP. Parameter names mirror fla's (``q_proj``, ``gk_proj.0``, ``g_norm_swish_gate`` ...), so an
fla state dict maps onto these modules by a prefix change only.

Per token, with x the normed hidden state (fla's ``GatedLinearAttention.forward``):
q, k, v = projections (each optionally through a causal depthwise conv + SiLU);
g = logsigmoid(gk_proj(x)) / gate_logit_normalizer (optionally clamped from below): log-decay per key dim;
o = GLA(q, k, v, g) per head (scale K^-1/2); o = RMSNorm_head(o) * swish(g_proj(x)); y = o_proj(o).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from ..ops.conv import causal_conv1d, causal_conv1d_step
from ..ops.gla import chunk_gla, gla_step
from ..state import LayerState
from .fla_norm import FlaRMSNorm


def _sqrelu(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x.float()).square().to(x.dtype)


# fla's ACT2FN entries that make sense as a feature map on q and k.
FEATURE_MAPS = {
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "logsigmoid": F.logsigmoid,
    "silu": F.silu,
    "swish": F.silu,
    "sqrelu": _sqrelu,
}


class GLASettings(BaseModel):
    """Shapes and switches of one GLA layer (and its MLP), already checked by the adapter."""

    model_config = ConfigDict(extra="forbid")

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    key_dim: int  # all query heads together
    value_dim: int
    intermediate_size: int
    use_short_conv: bool = False
    conv_size: int = 4
    use_output_gate: bool = True
    fuse_norm: bool = True  # only the name of the output norm's weight depends on it
    elementwise_affine: bool = True  # the output norm has a weight
    norm_eps: float = 1e-6
    clamp_min: float | None = None
    feature_map: str | None = None
    gate_low_rank_dim: int = 16
    gate_logit_normalizer: float = 16.0

    @property
    def head_k_dim(self) -> int:
        return self.key_dim // self.num_heads

    @property
    def head_v_dim(self) -> int:
        return self.value_dim // self.num_heads

    @property
    def kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def output_norm_name(self) -> str:
        """fla's attribute: the fused norm+swish gate when both are on, else a plain RMSNorm."""
        return "g_norm_swish_gate" if self.use_output_gate and self.fuse_norm else "g_norm"


class ShortConv(nn.Module):
    """fla's ShortConvolution: depthwise causal conv (weight [C, 1, K] as nn.Conv1d keeps it, no bias) + SiLU."""

    def __init__(self, channels: int, kernel_size: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size, device=device, dtype=dtype))

    def forward(self, x, tail, mask=None):
        return causal_conv1d(x, self.weight[:, 0], None, tail, mask, activation="silu")

    def step(self, x, tail):
        return F.silu(causal_conv1d_step(x, self.weight[:, 0], None, tail))


class GatedMLP(nn.Module):
    """fla's GatedMLP with swish: down_proj(silu(gate_proj(x)) * up_proj(x)), the product in float32."""

    def __init__(self, hidden_size: int, intermediate_size: int, device=None, dtype=None):
        super().__init__()
        kw = dict(bias=False, device=device, dtype=dtype)
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, **kw)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, **kw)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.gate_proj(x).float()) * self.up_proj(x).float()
        return self.down_proj(h.to(x.dtype))


class GatedLinearAttention(nn.Module):
    """The GLA mixer (see the module docstring); state: ``kv`` [B, H, K, V] float32, plus ``conv_q/k/v``
    [B, conv_size-1, C] (inputs in the weights' dtype) when the config has short convs."""

    def __init__(self, s: GLASettings, device=None, dtype=None):
        super().__init__()
        if s.feature_map is not None and s.feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map {s.feature_map!r} is not implemented (known: {sorted(FEATURE_MAPS)})")
        self.s = s
        kw = dict(bias=False, device=device, dtype=dtype)
        kv_key, kv_value = s.key_dim // s.kv_groups, s.value_dim // s.kv_groups
        self.q_proj = nn.Linear(s.hidden_size, s.key_dim, **kw)
        self.k_proj = nn.Linear(s.hidden_size, kv_key, **kw)
        self.v_proj = nn.Linear(s.hidden_size, kv_value, **kw)
        if s.use_output_gate:
            self.g_proj = nn.Linear(s.hidden_size, s.value_dim, **kw)
        if s.use_short_conv:
            self.q_conv1d = ShortConv(s.key_dim, s.conv_size, device, dtype)
            self.k_conv1d = ShortConv(kv_key, s.conv_size, device, dtype)
            self.v_conv1d = ShortConv(kv_value, s.conv_size, device, dtype)
        self.gk_proj = nn.Sequential(nn.Linear(s.hidden_size, s.gate_low_rank_dim, **kw),
                                     nn.Linear(s.gate_low_rank_dim, kv_key, bias=True, device=device, dtype=dtype))
        self.o_proj = nn.Linear(s.value_dim, s.hidden_size, **kw)
        norm = FlaRMSNorm(s.head_v_dim, s.norm_eps, s.elementwise_affine, device, dtype)
        setattr(self, s.output_norm_name, norm)
        self._out_norm = s.output_norm_name
        self._feature_map = FEATURE_MAPS[s.feature_map] if s.feature_map is not None else None

    # --- state ----------------------------------------------------------------------------------
    def init_state(self, batch_size: int, device: torch.device) -> LayerState:
        s = self.s
        state = {"kv": torch.zeros(batch_size, s.num_heads, s.head_k_dim, s.head_v_dim, device=device,
                                   dtype=torch.float32)}
        if s.use_short_conv:
            dtype = self.q_proj.weight.dtype
            for name, conv in (("conv_q", self.q_conv1d), ("conv_k", self.k_conv1d), ("conv_v", self.v_conv1d)):
                state[name] = torch.zeros(batch_size, s.conv_size - 1, conv.weight.shape[0], device=device, dtype=dtype)
        return state

    # --- shared pieces --------------------------------------------------------------------------
    def _heads(self, q, k, v, gk):
        """[..., dim] -> [..., heads, head_dim]; k, v, g of a kv head serve its group of query heads
        (fla's '(h g)' order: query head j reads kv head j // groups); gate logits -> log-decay."""
        s = self.s
        q = q.unflatten(-1, (s.num_heads, s.head_k_dim))
        k, gk = (t.unflatten(-1, (s.num_kv_heads, s.head_k_dim)) for t in (k, gk))
        v = v.unflatten(-1, (s.num_kv_heads, s.head_v_dim))
        if s.kv_groups > 1:
            k, gk, v = (t.repeat_interleave(s.kv_groups, dim=-2) for t in (k, gk, v))
        g = F.logsigmoid(gk) / s.gate_logit_normalizer
        if s.clamp_min is not None:
            g = g.clamp_min(s.clamp_min)
        if self._feature_map is not None:
            q, k = self._feature_map(q), self._feature_map(k)
        return q, k, v, g

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gate = self.g_proj(x).unflatten(-1, (self.s.num_heads, self.s.head_v_dim)) if self.s.use_output_gate else None
        o = getattr(self, self._out_norm)(o, gate)
        return self.o_proj(o.flatten(-2))

    # --- mixer contract -------------------------------------------------------------------------
    def forward(self, x, state: LayerState, mask=None, positions=None):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        new: LayerState = {}
        if self.s.use_short_conv:
            q, new["conv_q"] = self.q_conv1d(q, state["conv_q"], mask)
            k, new["conv_k"] = self.k_conv1d(k, state["conv_k"], mask)
            v, new["conv_v"] = self.v_conv1d(v, state["conv_v"], mask)
        q, k, v, g = self._heads(q, k, v, self.gk_proj(x))
        o, new["kv"] = chunk_gla(q, k, v, g, initial_state=state["kv"], output_final_state=True, mask=mask)
        return self._output(o, x), new

    def step(self, x, state: LayerState, positions):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.s.use_short_conv:
            q = self.q_conv1d.step(q, state["conv_q"])
            k = self.k_conv1d.step(k, state["conv_k"])
            v = self.v_conv1d.step(v, state["conv_v"])
        q, k, v, g = self._heads(q, k, v, self.gk_proj(x))
        return self._output(gla_step(q, k, v, g, state["kv"]), x)
