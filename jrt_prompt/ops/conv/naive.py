"""Reference causal depthwise conv1d with a carried tail (works on any device).

The tail holds the last ``K-1`` inputs the layer has seen, so a sequence can be read in pieces:
conv(x[:a]) then conv(x[a:]) from the returned tail equals conv(x). Left-padded tokens are skipped
exactly: they are neither convolved with the real tokens nor written to the tail.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  tail: torch.Tensor | None = None, mask: torch.Tensor | None = None, *,
                  activation: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """y[t] = act(bias + sum_k weight[:, k] * s[t + k]) over s = (tail, x), per channel.

    x: [B, L, C]; weight: [C, K]; bias: [C] or None; tail: [B, K-1, C] or None (zeros);
    mask: [B, L] bool, True for real tokens, padding on the left only; activation: None (identity) or "silu".
    Weight, bias and tail are rounded to x's dtype and the conv runs in it; the activation follows in x's dtype.
    Returns y [B, L, C] in x's dtype (zero at padded positions) and the new tail [B, K-1, C] in x's dtype
    (a row with no real token keeps its old tail).
    """
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', not {activation!r}")
    B, L, C = x.shape
    K = weight.shape[1]
    if tail is None:
        tail = x.new_zeros(B, K - 1, C)
    seq = torch.cat([tail.to(x.dtype), x], dim=1)  # [B, K-1+L, C]
    if mask is not None:
        # Move each row's p pads in front of the tail: (pads, tail, real) instead of (tail, pads, real).
        pads = (~mask).sum(1, keepdim=True)  # [B, 1]
        j = torch.arange(K - 1 + L, device=x.device)[None, :]
        src = torch.where(j < pads, torch.zeros_like(j), torch.where(j < pads + K - 1, j - pads, j))
        seq = seq.gather(1, src[..., None].expand(B, K - 1 + L, C))
        seq = seq.masked_fill((j < pads)[..., None], 0)
    y = F.conv1d(seq.transpose(1, 2), weight[:, None, :].to(x.dtype), bias.to(x.dtype) if bias is not None else None,
                 groups=C).transpose(1, 2)
    if activation == "silu":
        y = F.silu(y)
    if mask is not None:
        y = y.masked_fill(~mask[..., None], 0)
    return y, seq[:, L:].contiguous() if K > 1 else seq[:, :0].contiguous()


def causal_conv1d_step(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tail: torch.Tensor
                       ) -> torch.Tensor:
    """One token: x [B, C] -> y [B, C]; ``tail`` [B, K-1, C] is shifted in place."""
    window = torch.cat([tail, x[:, None].to(tail.dtype)], dim=1)  # [B, K, C]
    y = (window * weight.t().to(window.dtype)).sum(1)
    if bias is not None:
        y = y + bias.to(y.dtype)
    tail.copy_(window[:, 1:])
    return y.to(x.dtype)
