"""Based layers as hazyresearch/based computes them (based/models/gpt.py and mixers/): BaseConv, Taylor linear
attention, sliding-window attention with rotary, the gated MLP, and the pre-norm layer holding them.

Attribute names mirror the checkpoints (``mixer.in_proj``, ``mixer.conv.conv.weight``, ``mixer.proj_q``,
``mixer.Wqkv``, ``mlp.fc1`` ...), so a hazyresearch state dict loads onto ``BasedLayer``s by key.
Every mixer follows the contract of ``jrt_prompt.model``; per-layer state:
- BaseConv: ``conv`` [B, K-1, 2d], the last inputs of the short conv;
- linear attention: ``kv`` [B, H, 273, Dv] and ``ksum`` [B, H, 273] (float32);
- sliding window: ``k``, ``v`` [B, H, W, Dh] ring buffers (after rotary) and ``seen`` [B, W] (position + 1 of
  the key in each slot, 0 = empty).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from ..ops.based import feature_size, taylor_linear_attention, taylor_linear_attention_step
from ..ops.conv import causal_conv1d, causal_conv1d_step
from ..ops.window import (apply_rotary, empty_cache, rotary_cos_sin, sliding_window_attention,
                          sliding_window_attention_step)
from ..state import LayerState
from .norm import RMSNorm

MixerKind = Literal["conv", "linear", "window"]
GATE_ACTIVATIONS = {"swiglu": F.silu, "glu": torch.sigmoid, "geglu": F.gelu}


class BasedSettings(BaseModel):
    """Everything the layers need to know of a Based model, already checked by the adapter."""

    model_config = ConfigDict(extra="forbid")

    d_model: int
    vocab_size: int  # embedding rows (the config's vocab padded to pad_vocab_size_multiple)
    kinds: list[MixerKind]  # one per layer
    norm_eps: float = 1e-5
    residual_in_fp32: bool = False
    tie_embeddings: bool = True
    # BaseConv
    conv_expand: int = 2
    conv_kernel: int = 3
    conv_proj_bias: bool = True
    conv_bias: bool = False
    # Taylor linear attention
    la_heads: int = 16
    la_feature_dim: int = 16
    la_head_dim: int  # value dim per head
    la_eps: float = 1e-12
    # sliding-window attention
    swa_heads: int
    swa_window: int = 128  # keys looked back (config window_size // 2)
    swa_rotary_dim: int = 0
    swa_rotary_base: float = 10000.0
    swa_scale: float  # softmax scale of layer 0
    swa_scale_by_layer: bool = False  # scale_attn_by_inverse_layer_idx: layer i divides it by i + 1
    swa_qkv_bias: bool = True
    swa_out_bias: bool = True
    # MLP
    mlp_hidden: int
    mlp_activation: Literal["swiglu", "glu", "geglu"] = "swiglu"
    mlp_fc1_bias: bool = True
    mlp_fc2_bias: bool = True

    @property
    def n_layer(self) -> int:
        return len(self.kinds)


class GatedMLP(nn.Module):
    """fc1 d -> 2 n_inner, split (y, gate) in that order, y * act(gate), fc2 n_inner -> d."""

    def __init__(self, s: BasedSettings):
        super().__init__()
        self.fc1 = nn.Linear(s.d_model, 2 * s.mlp_hidden, bias=s.mlp_fc1_bias)
        self.fc2 = nn.Linear(s.mlp_hidden, s.d_model, bias=s.mlp_fc2_bias)
        self.act = GATE_ACTIVATIONS[s.mlp_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(y * self.act(gate))


class ShortConv(nn.Module):
    """Holds the depthwise conv's weight as hazyresearch's ShortConvolution does (``conv.weight`` [C, 1, K])."""

    def __init__(self, channels: int, kernel: int, bias: bool):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel, groups=channels, padding=kernel - 1, bias=bias)

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight[:, 0]

    @property
    def bias(self) -> torch.Tensor | None:
        return self.conv.bias


class BaseConv(nn.Module):
    """in_proj d -> e d, halves u1, u2; y = out_proj(silu(causal_conv(u1)) * u2)."""

    def __init__(self, s: BasedSettings):
        super().__init__()
        self.d_inner = s.conv_expand * s.d_model // 2
        self.kernel = s.conv_kernel
        self.in_proj = nn.Linear(s.d_model, 2 * self.d_inner, bias=s.conv_proj_bias)
        self.out_proj = nn.Linear(self.d_inner, s.d_model, bias=s.conv_proj_bias)
        self.conv = ShortConv(self.d_inner, s.conv_kernel, s.conv_bias)

    def init_state(self, batch_size: int, device) -> LayerState:
        dtype = self.in_proj.weight.dtype
        return {"conv": torch.zeros(batch_size, self.kernel - 1, self.d_inner, device=device, dtype=dtype)}

    def forward(self, x, state, mask=None, positions=None):
        u1, u2 = self.in_proj(x).split(self.d_inner, dim=-1)
        c, tail = causal_conv1d(u1, self.conv.weight, self.conv.bias, state["conv"], mask)
        return self.out_proj(F.silu(c) * u2), {"conv": tail}

    def step(self, x, state, positions):
        u1, u2 = self.in_proj(x).split(self.d_inner, dim=-1)
        c = causal_conv1d_step(u1, self.conv.weight, self.conv.bias, state["conv"])
        return self.out_proj(F.silu(c) * u2)


class TaylorLinearAttention(nn.Module):
    """proj_q, proj_k d -> H x 16, proj_v d -> H x Dv; Taylor linear attention per head; out_proj."""

    def __init__(self, s: BasedSettings):
        super().__init__()
        self.heads, self.feature_dim, self.head_dim, self.eps = s.la_heads, s.la_feature_dim, s.la_head_dim, s.la_eps
        self.proj_q = nn.Linear(s.d_model, self.heads * self.feature_dim, bias=False)
        self.proj_k = nn.Linear(s.d_model, self.heads * self.feature_dim, bias=False)
        self.proj_v = nn.Linear(s.d_model, self.heads * self.head_dim, bias=False)
        self.out_proj = nn.Linear(self.heads * self.head_dim, s.d_model, bias=False)

    def init_state(self, batch_size: int, device) -> LayerState:
        f = feature_size(self.feature_dim)
        return {"kv": torch.zeros(batch_size, self.heads, f, self.head_dim, device=device, dtype=torch.float32),
                "ksum": torch.zeros(batch_size, self.heads, f, device=device, dtype=torch.float32)}

    def _qkv(self, x):
        lead = x.shape[:-1]
        return (self.proj_q(x).view(*lead, self.heads, self.feature_dim),
                self.proj_k(x).view(*lead, self.heads, self.feature_dim),
                self.proj_v(x).view(*lead, self.heads, self.head_dim))

    def forward(self, x, state, mask=None, positions=None):
        q, k, v = self._qkv(x)
        o, (kv, ksum) = taylor_linear_attention(q, k, v, (state["kv"], state["ksum"]), mask=mask, eps=self.eps)
        return self.out_proj(o.flatten(-2)), {"kv": kv, "ksum": ksum}

    def step(self, x, state, positions):
        q, k, v = self._qkv(x)
        o = taylor_linear_attention_step(q, k, v, state["kv"], state["ksum"], eps=self.eps)
        return self.out_proj(o.flatten(-2))


class SlidingWindowAttention(nn.Module):
    """Wqkv d -> 3d as (3, heads, head_dim); rotary on q, k; softmax attention over the last W keys; out_proj."""

    def __init__(self, s: BasedSettings, layer_idx: int):
        super().__init__()
        self.heads, self.head_dim = s.swa_heads, s.d_model // s.swa_heads
        self.window, self.rotary_dim, self.base = s.swa_window, s.swa_rotary_dim, s.swa_rotary_base
        self.scale = s.swa_scale / (layer_idx + 1) if s.swa_scale_by_layer else s.swa_scale
        self.Wqkv = nn.Linear(s.d_model, 3 * s.d_model, bias=s.swa_qkv_bias)
        self.out_proj = nn.Linear(s.d_model, s.d_model, bias=s.swa_out_bias)

    def init_state(self, batch_size: int, device) -> LayerState:
        k, v, seen = empty_cache(batch_size, self.heads, self.window, self.head_dim, device, self.Wqkv.weight.dtype)
        return {"k": k, "v": v, "seen": seen}

    def _qkv(self, x, positions):
        q, k, v = self.Wqkv(x).view(*x.shape[:-1], 3, self.heads, self.head_dim).unbind(-3)
        cos, sin = rotary_cos_sin(positions, self.rotary_dim, self.base, x.dtype)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    @staticmethod
    def _positions(state, x, mask):
        """Positions when the caller gave none: count on from the newest cached one."""
        start = state["seen"].max(dim=1).values  # the newest key's position + 1 (0 when empty)
        real = torch.ones(x.shape[:2], dtype=torch.long, device=x.device) if mask is None else mask.long()
        return start[:, None] + real.cumsum(1) - 1

    def forward(self, x, state, mask=None, positions=None):
        if positions is None:
            positions = self._positions(state, x, mask)
        q, k, v = self._qkv(x, positions)
        o, (kc, vc, seen) = sliding_window_attention(q, k, v, (state["k"], state["v"], state["seen"]), positions,
                                                     mask=mask, scale=self.scale)
        return self.out_proj(o.flatten(-2)), {"k": kc, "v": vc, "seen": seen}

    def step(self, x, state, positions):
        q, k, v = self._qkv(x, positions)
        o = sliding_window_attention_step(q, k, v, state["k"], state["v"], state["seen"], positions, scale=self.scale)
        return self.out_proj(o.flatten(-2))


class BasedLayer(nn.Module):
    """One pre-norm layer as stored: norm1, mixer, norm2, mlp (``jrt_prompt.model.Block`` runs it)."""

    def __init__(self, s: BasedSettings, layer_idx: int):
        super().__init__()
        kind = s.kinds[layer_idx]
        self.norm1 = RMSNorm(s.d_model, eps=s.norm_eps)
        if kind == "conv":
            self.mixer = BaseConv(s)
        elif kind == "linear":
            self.mixer = TaylorLinearAttention(s)
        else:
            self.mixer = SlidingWindowAttention(s, layer_idx)
        self.norm2 = RMSNorm(s.d_model, eps=s.norm_eps)
        self.mlp = GatedMLP(s)
