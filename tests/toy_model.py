"""A tiny RecurrentLM with a test-only mixer (conv + diagonal decay), for engine tests that should not
depend on any one architecture's adapter."""

from __future__ import annotations

import torch
from torch import nn

from jrt_prompt.layers.norm import RMSNorm
from jrt_prompt.model import Block, LMConfig, RecurrentLM
from jrt_prompt.ops.conv import causal_conv1d, causal_conv1d_step


class ToyMixer(nn.Module):
    """h_t = a * h_{t-1} + W conv(x)_t, y_t = h_t * silu(x_t): simplest mixer with both state kinds."""

    def __init__(self, d: int, k: int = 3):
        super().__init__()
        self.conv_w = nn.Parameter(torch.randn(d, k) * 0.5)
        self.inp = nn.Linear(d, d, bias=False)
        self.decay = nn.Parameter(torch.rand(d) * 0.9)
        self.k = k

    def init_state(self, batch_size, device):
        d = self.decay.shape[0]
        return {"conv": torch.zeros(batch_size, self.k - 1, d, device=device),
                "h": torch.zeros(batch_size, d, device=device, dtype=torch.float32)}

    def forward(self, x, state, mask=None, positions=None):
        c, tail = causal_conv1d(x, self.conv_w, None, state["conv"], mask)
        u = self.inp(c).float()
        a = self.decay.float().expand_as(u)
        if mask is not None:
            a = torch.where(mask[..., None], a, torch.ones_like(a))
            u = u * mask[..., None]
        h = state["h"]
        hs = []
        for t in range(x.shape[1]):
            h = a[:, t] * h + u[:, t]
            hs.append(h)
        hs = torch.stack(hs, 1)
        return (hs * nn.functional.silu(x.float())).to(x.dtype), {"conv": tail, "h": h}

    def step(self, x, state, positions):
        c = causal_conv1d_step(x, self.conv_w, None, state["conv"])
        state["h"].mul_(self.decay.float()).add_(self.inp(c).float())
        return (state["h"] * nn.functional.silu(x.float())).to(x.dtype)


def toy_lm(vocab: int, d: int = 32, n_layer: int = 2, seed: int = 0, eos: int | None = None) -> RecurrentLM:
    torch.manual_seed(seed)
    blocks = [Block(RMSNorm(d), ToyMixer(d)) for _ in range(n_layer)]
    emb = nn.Embedding(vocab, d)
    head = nn.Linear(d, vocab, bias=False)
    cfg = LMConfig(arch="toy", vocab_size=vocab, d_model=d, n_layer=n_layer, eos_token_id=eos)
    return RecurrentLM(cfg, emb, blocks, RMSNorm(d), head).eval()
