"""Reference causal sliding-window softmax attention with a ring-buffer cache, and rotary embeddings.

Window rule (hazyresearch SlidingAttention: flash-attn ``window_size=(window_size // 2, 0)``): the query at
position i sees the keys at positions j with i - W <= j <= i, W = window_size // 2 (128 for the released
checkpoints, whose config says 256). Positions count real tokens only, so left pads never shift them.

Cache of one layer: (k [B, H, W, Dh], v [B, H, W, Dh], seen [B, W] long). The key of position p lives in
slot p % W; ``seen`` holds p + 1 there (the tokens read up to that key), 0 for an empty slot, so the empty
cache is all zeros. Before the query at p runs, the cache
holds positions p-W .. p-1 at most, which is all the query needs besides its own key. Keys are stored
after rotary, as the layer produced them. Masked (pad) tokens are never written. Scores, softmax and
weighted sums run in float32; outputs come back in q's dtype.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK = 256


# --- rotary (rotate-half, as flash-attn's RotaryEmbedding with interleaved=False) -------------------------
def rotary_cos_sin(positions: torch.Tensor, rotary_dim: int, base: float, dtype: torch.dtype):
    """cos, sin [..., rotary_dim / 2] for integer ``positions``, rounded to ``dtype`` as flash-attn's cache is."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, device=positions.device, dtype=torch.float32)
                               / rotary_dim))
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    return torch.cos(freqs).to(dtype).float(), torch.sin(freqs).to(dtype).float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``2 * cos.shape[-1]`` channels of x [..., H, D] by halves; cos, sin [..., D_r / 2]."""
    half = cos.shape[-1]
    if half == 0:
        return x
    xf = x.float()
    x1, x2, rest = xf[..., :half], xf[..., half:2 * half], xf[..., 2 * half:]
    c, s = cos[..., None, :], sin[..., None, :]  # broadcast over heads
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c, rest], dim=-1).to(x.dtype)


# --- attention --------------------------------------------------------------------------------------------
def _softmax_read(scores: torch.Tensor, allowed: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """softmax over the allowed keys of each query, times values; a query with no allowed key reads 0."""
    p = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    p = p.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
    return p @ values


def sliding_window_attention_full(q, k, v, positions, window: int, mask=None, scale=None):
    """The definition over one whole sequence (no cache), with the T x T score matrix (for tests).

    q, k, v: [B, T, H, Dh]; positions: [B, T] long; mask: [B, T] bool (False = pad) or None.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qh, kh, vh = (t.float().transpose(1, 2) for t in (q, k, v))
    real = torch.ones_like(positions, dtype=torch.bool) if mask is None else mask.bool()
    pq, pk = positions[:, :, None], positions[:, None, :]
    allowed = real[:, None, :] & (pk <= pq) & (pk >= pq - window)  # [B, Tq, Tk]
    o = _softmax_read(qh @ kh.transpose(-1, -2) * scale, allowed[:, None], vh)
    o = o * real[:, None, :, None]
    return o.transpose(1, 2).to(q.dtype)


def empty_cache(batch_size: int, heads: int, window: int, head_dim: int, device, dtype):
    return (torch.zeros(batch_size, heads, window, head_dim, device=device, dtype=dtype),
            torch.zeros(batch_size, heads, window, head_dim, device=device, dtype=dtype),
            torch.zeros(batch_size, window, device=device, dtype=torch.long))


def _write(cache, k, v, positions, real):
    """A new cache: ``cache`` plus the real tokens among k, v [B, H, T, Dh] (the last W suffice)."""
    kc, vc, sc = cache
    B, H, W, D = kc.shape
    n = min(W, k.shape[2])  # earlier tokens are overwritten by these (pads only sit before real tokens)
    k, v, positions, real = k[:, :, -n:], v[:, :, -n:], positions[:, -n:], real[:, -n:]
    slot = torch.where(real, positions % W, torch.full_like(positions, W))  # pads go to a spare slot W
    spare = kc.new_zeros(B, H, 1, D)
    idx = slot[:, None, :, None].expand(B, H, n, D)
    new_k = torch.cat([kc, spare], 2).scatter(2, idx, k.to(kc.dtype))[:, :, :W]
    new_v = torch.cat([vc, spare], 2).scatter(2, idx, v.to(vc.dtype))[:, :, :W]
    new_s = torch.cat([sc, sc.new_zeros(B, 1)], 1).scatter(1, slot, positions + 1)[:, :W]
    return new_k, new_v, new_s


def sliding_window_attention(q, k, v, cache, positions, mask=None, scale=None, chunk_size: int = DEFAULT_CHUNK):
    """T new tokens after ``cache``: queries in chunks, each against the cache and the last W new keys.

    q, k, v: [B, T, H, Dh] (k after rotary); cache: (k, v, seen) as in the module docstring; positions [B, T];
    mask [B, T] bool or None. Returns (o [B, T, H, Dh], new cache); ``cache`` itself is not modified.
    """
    kc, vc, sc = cache
    W = sc.shape[1]
    B, T = positions.shape
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    real = torch.ones_like(positions, dtype=torch.bool) if mask is None else mask.bool()
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, Dh]
    keys = torch.cat([kc.float(), kh.float()], 2)
    vals = torch.cat([vc.float(), vh.float()], 2)
    kpos = torch.cat([sc - 1, positions], 1)
    kreal = torch.cat([sc > 0, real], 1)
    outs = []
    for a in range(0, T, chunk_size):
        b = min(T, a + chunk_size)
        cols = torch.cat([torch.arange(W, device=q.device), W + torch.arange(max(0, a - W), b, device=q.device)])
        pq, pk = positions[:, a:b, None], kpos[:, None, cols]
        allowed = kreal[:, None, cols] & (pk <= pq) & (pk >= pq - W)  # [B, c, n]
        scores = qh[:, :, a:b].float() @ keys[:, :, cols].transpose(-1, -2) * scale
        outs.append(_softmax_read(scores, allowed[:, None], vals[:, :, cols]))
    o = torch.cat(outs, 2) * real[:, None, :, None] if outs else qh.float()
    return o.transpose(1, 2).to(q.dtype), _write(cache, kh, vh, positions, real)


def sliding_window_attention_step(q, k, v, k_cache, v_cache, seen_cache, positions, scale=None):
    """One token per row: q, k, v [B, H, Dh] at ``positions`` [B] -> o [B, H, Dh]; the cache is updated in place."""
    B, H, W, D = k_cache.shape
    scale = D ** -0.5 if scale is None else scale
    p = positions[:, None]
    held = seen_cache - 1  # positions in the slots (-1: empty)
    allowed = (held >= 0) & (held >= p - W) & (held <= p)  # [B, W]
    keys = torch.cat([k_cache.float(), k[:, :, None].float()], 2)  # [B, H, W + 1, Dh]
    vals = torch.cat([v_cache.float(), v[:, :, None].float()], 2)
    allowed = torch.cat([allowed, torch.ones_like(allowed[:, :1])], 1)[:, None, None, :]
    scores = q.float()[:, :, None, :] @ keys.transpose(-1, -2) * scale  # [B, H, 1, W + 1]
    o = _softmax_read(scores, allowed, vals)[:, :, 0]
    slot = (positions % W)[:, None]
    k_cache.scatter_(2, slot[:, None, :, None].expand(B, H, 1, D), k[:, :, None].to(k_cache.dtype))
    v_cache.scatter_(2, slot[:, None, :, None].expand(B, H, 1, D), v[:, :, None].to(v_cache.dtype))
    seen_cache.scatter_(1, slot, p + 1)
    return o.to(q.dtype)
