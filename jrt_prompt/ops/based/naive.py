"""Reference Taylor linear attention (Based), in plain PyTorch: quadratic, chunked and recurrent forms.

Based's feature map for x in R^D (D = 16 in every checkpoint) is
    phi(x) = [1, x / D^(1/4), vec(x x^T) / (sqrt(2) sqrt(D))]        (1 + D + D^2 = 273 features)
so phi(q).phi(k) = 1 + s + s^2 / 2 with s = q.k / sqrt(D): the second-order Taylor expansion of exp(s).
With the state S_i = S_0 + sum_{j<=i} phi(k_j)^T v_j and z_i = z_0 + sum_{j<=i} phi(k_j), token i reads
    o_i = phi(q_i).S_i / (phi(q_i).z_i + eps)                       (hazyresearch linear_attention.py).

The state is a tuple (kv [B, H, F, Dv], ksum [B, H, F]) in float32, F = 273, features in the order above.
A masked token (mask False: a left pad) adds nothing to the state and its output is 0. All math runs in
float32; outputs come back in v's dtype.
"""

from __future__ import annotations

import math

import torch

DEFAULT_CHUNK = 64


def feature_size(feature_dim: int) -> int:
    return 1 + feature_dim + feature_dim * feature_dim


def taylor_features(x: torch.Tensor) -> torch.Tensor:
    """phi(x) for x [..., D] -> [..., 1 + D + D^2] in float32."""
    x = x.float()
    d = x.shape[-1]
    second = (x[..., :, None] * x[..., None, :]).flatten(-2) / (math.sqrt(2.0) * math.sqrt(d))
    return torch.cat([torch.ones_like(x[..., :1]), x / d ** 0.25, second], dim=-1)


def taylor_kernel(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """phi(q_i).phi(k_j) = 1 + s + s^2/2 for q [..., Tq, D], k [..., Tk, D] -> [..., Tq, Tk] (float32)."""
    s = q.float() @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1])
    return 1 + s + 0.5 * s * s


def _check(q, k, v, initial_state, mask):
    if q.dim() != 4 or q.shape != k.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"expected q, k [B, T, H, D] and v [B, T, H, Dv], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    B, T, H, D = q.shape
    if mask is not None and tuple(mask.shape) != (B, T):
        raise ValueError(f"mask must be [B, T] = {(B, T)}, got {tuple(mask.shape)}")
    if initial_state is not None:
        kv, ksum = initial_state
        want = (B, H, feature_size(D), v.shape[-1])
        if tuple(kv.shape) != want or tuple(ksum.shape) != want[:3]:
            raise ValueError(f"initial_state must be (kv {want}, ksum {want[:3]}), got "
                             f"({tuple(kv.shape)}, {tuple(ksum.shape)})")


def _start(q, v, initial_state):
    """The state to continue from, float32, as [B, H, F, Dv] and [B, H, F] (fresh tensors when None)."""
    B, _, H, D = q.shape
    if initial_state is None:
        F = feature_size(D)
        return (torch.zeros(B, H, F, v.shape[-1], device=v.device, dtype=torch.float32),
                torch.zeros(B, H, F, device=v.device, dtype=torch.float32))
    kv, ksum = initial_state
    return kv.to(device=v.device, dtype=torch.float32), ksum.to(device=v.device, dtype=torch.float32)


def _heads_first(q, k, v, mask):
    """[B, T, H, *] -> [B, H, T, *] float32, with the mask as a float [B, 1, T] (1 = real)."""
    q, k, v = (t.float().transpose(1, 2) for t in (q, k, v))
    real = None if mask is None else mask.to(device=q.device, dtype=torch.float32)[:, None, :]
    return q, k, v, real


def _finish(o, v, real, final, output_final_state):
    if real is not None:
        o = o * real[..., None]
    return o.transpose(1, 2).to(v.dtype), (final if output_final_state else None)


def taylor_linear_attention_quadratic(q, k, v, initial_state=None, mask=None, eps=1e-6, output_final_state=True):
    """The definition, with the whole T x T causal kernel matrix (for tests)."""
    _check(q, k, v, initial_state, mask)
    kv0, z0 = _start(q, v, initial_state)
    qh, kh, vh, real = _heads_first(q, k, v, mask)
    T = qh.shape[2]
    a = taylor_kernel(qh, kh) * torch.ones(T, T, device=qh.device).tril()
    if real is not None:
        a = a * real[..., None, :]
    phq = taylor_features(qh)
    num = a @ vh + phq @ kv0
    den = a.sum(-1) + (phq * z0[:, :, None, :]).sum(-1)
    o = num / (den[..., None] + eps)
    phk = taylor_features(kh)
    if real is not None:
        phk = phk * real[..., None]
    final = (kv0 + phk.transpose(-1, -2) @ vh, z0 + phk.sum(2))
    return _finish(o, v, real, final, output_final_state)


def taylor_linear_attention_chunked(q, k, v, initial_state=None, mask=None, eps=1e-6, output_final_state=True,
                                    chunk_size: int = DEFAULT_CHUNK):
    """Chunks of ``chunk_size`` tokens: the kernel matrix inside a chunk, the carried state across chunks.

    Memory is bounded by the chunk (no T x T matrix), so long prompts run on CPU as well.
    """
    _check(q, k, v, initial_state, mask)
    kv, z = _start(q, v, initial_state)
    qh, kh, vh, real = _heads_first(q, k, v, mask)
    T = qh.shape[2]
    causal = torch.ones(chunk_size, chunk_size, device=qh.device).tril()
    outs = []
    for a in range(0, T, chunk_size):
        b = min(T, a + chunk_size)
        qc, kc, vc = qh[:, :, a:b], kh[:, :, a:b], vh[:, :, a:b]
        att = taylor_kernel(qc, kc) * causal[: b - a, : b - a]
        phk = taylor_features(kc)
        if real is not None:
            att = att * real[..., None, a:b]
            phk = phk * real[:, :, a:b, None]
        phq = taylor_features(qc)
        num = att @ vc + phq @ kv
        den = att.sum(-1) + (phq * z[:, :, None, :]).sum(-1)
        outs.append(num / (den[..., None] + eps))
        kv = kv + phk.transpose(-1, -2) @ vc
        z = z + phk.sum(2)
    o = torch.cat(outs, dim=2) if outs else vh.new_zeros(vh.shape)
    return _finish(o, v, real, (kv, z), output_final_state)


def taylor_linear_attention_recurrent(q, k, v, initial_state=None, mask=None, eps=1e-6, output_final_state=True):
    """One token at a time, exactly as decoding does it."""
    _check(q, k, v, initial_state, mask)
    kv, z = _start(q, v, initial_state)
    kv, z = kv.clone(), z.clone()
    outs = []
    for t in range(q.shape[1]):
        if mask is None:
            outs.append(taylor_linear_attention_step(q[:, t], k[:, t], v[:, t].float(), kv, z, eps))
            continue
        real = mask[:, t].to(device=kv.device, dtype=torch.float32)[:, None, None]
        phk = taylor_features(k[:, t]) * real
        kv.add_(phk[..., :, None] * v[:, t].float()[..., None, :])
        z.add_(phk)
        outs.append(_read(q[:, t], kv, z, eps) * real)
    o = torch.stack(outs, dim=1) if outs else v.float().new_zeros(v.shape)
    return o.to(v.dtype), ((kv, z) if output_final_state else None)


def _read(q, kv, ksum, eps):
    """phi(q).S / (phi(q).z + eps) for one token q [B, H, D] -> [B, H, Dv] (float32)."""
    phq = taylor_features(q)
    num = (phq[..., None, :] @ kv).squeeze(-2)
    return num / ((phq * ksum).sum(-1, keepdim=True) + eps)


def taylor_linear_attention_step(q, k, v, kv, ksum, eps=1e-6):
    """One token: q, k [B, H, D], v [B, H, Dv] -> o [B, H, Dv] in v's dtype.

    ``kv`` [B, H, F, Dv] and ``ksum`` [B, H, F] (float32) are updated in place to include this token, which
    the output attends to as well.
    """
    phk = taylor_features(k)
    kv.add_(phk[..., :, None] * v.float()[..., None, :])
    ksum.add_(phk)
    return _read(q, kv, ksum, eps).to(v.dtype)
