"""The elementwise work around fla's ``chunk_simple_gla`` in Mamba-2's SSD prefill, one Triton launch each side.

``fla_inputs`` (before): dt = clamp(softplus(dt + dt_bias), dt_limit) * mask, g = dt * A, v = x * dt, and q = C,
k = B broadcast from G groups to H heads. ``skip_out`` (after): y = (o + D x) * mask in x's dtype. Same signatures
and rounding as ``naive.fla_inputs`` / ``naive.skip_out`` (float32 inside, one rounding per output); as PyTorch ops
these were ~20 float32 kernels, ~7 ms of a 23.8 ms Mamba-2 370M prefill of 2048 tokens on an H100.

Both kernels are bandwidth bound. Inputs may be strided views (x, B, C: column slices of the conv output; dt: of the
in_proj output); every stride is passed, and Triton specialises the unit ones, so the inner dimension stays
coalesced. ``fla_inputs``: one program per (block of tokens, block of heads in one group); it loads the group's B and
C rows once and writes them to each of its heads (the q/k expansion, the bulk of the bytes, is a broadcast write).
``skip_out``: one program per (block of tokens, block of the H * P channels).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..selective_scan.triton_scan import _softplus

_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
_MAX_DIM = 1024  # largest head_dim / d_state a tile takes
_PREP_TILE = 2048  # elements of one [tokens, d_state] tile of fla_inputs (370M: 16 tokens; 4 heads a program)
_SKIP_TILE = 4096  # elements of one [tokens, channels] tile of skip_out


@triton.jit
def _prep_kernel(x_ptr, dt_ptr, a_ptr, bias_ptr, b_ptr, c_ptr, mask_ptr, q_ptr, k_ptr, v_ptr, g_ptr,
                 n_rows, L, H, R, P, N, lo, hi,
                 s_xb, s_xl, s_xh, s_xp, s_db, s_dl, s_dh, s_bb, s_bl, s_bg, s_bn, s_cb, s_cl, s_cg, s_cn, s_mb, s_ml,
                 HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr, HAS_MASK: tl.constexpr,
                 BT: tl.constexpr, HB: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """Tokens pid0 * BT ... (rows of the flattened [B * L]) and heads R * grp + HB * blk + [0, HB) of group grp."""
    n_blk = tl.cdiv(R, HB)
    grp = tl.program_id(1) // n_blk
    first = (tl.program_id(1) % n_blk) * HB  # head index inside the group
    rows = tl.program_id(0).to(tl.int64) * BT + tl.arange(0, BT)
    rmask = rows < n_rows
    bi, li = rows // L, rows % L
    offs_p, offs_n = tl.arange(0, BP), tl.arange(0, BN)
    nm = rmask[:, None] & (offs_n < N)[None, :]
    # The group's B and C rows, once for all its heads here.
    bv = tl.load(b_ptr + (bi * s_bb + li * s_bl + grp * s_bg)[:, None] + offs_n[None, :] * s_bn, mask=nm, other=0.0)
    cv = tl.load(c_ptr + (bi * s_cb + li * s_cl + grp * s_cg)[:, None] + offs_n[None, :] * s_cn, mask=nm, other=0.0)
    bv, cv = bv.to(k_ptr.dtype.element_ty), cv.to(q_ptr.dtype.element_ty)
    if HAS_MASK:
        keep = tl.load(mask_ptr + bi * s_mb + li * s_ml, mask=rmask, other=0).to(tl.float32)
    for i in tl.static_range(HB):
        h = grp * R + first + i
        live = first + i < R
        hm = rmask & (tl.zeros([BT], tl.int32) + first + i < R)  # [BT]: a scalar-and-block mask fails interpreted
        hpm, hnm = hm[:, None] & (offs_p < P)[None, :], hm[:, None] & (offs_n < N)[None, :]
        d = tl.load(dt_ptr + bi * s_db + li * s_dl + h * s_dh, mask=hm, other=0.0).to(tl.float32)
        if HAS_BIAS:
            d = d + tl.load(bias_ptr + h, mask=live, other=0.0).to(tl.float32)
        if SOFTPLUS:
            d = _softplus(d)
        if CLAMP:
            d = tl.minimum(tl.maximum(d, lo), hi)
        if HAS_MASK:
            d = d * keep
        out = rows * H + h  # the token-and-head row of q, k, v, g (all contiguous)
        tl.store(g_ptr + out, d * tl.load(a_ptr + h, mask=live, other=0.0).to(tl.float32), mask=hm)
        xv = tl.load(x_ptr + (bi * s_xb + li * s_xl + h * s_xh)[:, None] + offs_p[None, :] * s_xp,
                     mask=hpm, other=0.0).to(tl.float32)
        tl.store(v_ptr + (out * P)[:, None] + offs_p[None, :], (xv * d[:, None]).to(v_ptr.dtype.element_ty),
                 mask=hpm)
        tl.store(q_ptr + (out * N)[:, None] + offs_n[None, :], cv, mask=hnm)
        tl.store(k_ptr + (out * N)[:, None] + offs_n[None, :], bv, mask=hnm)


@triton.jit
def _skip_kernel(o_ptr, x_ptr, d_ptr, mask_ptr, y_ptr, n_rows, L, HP, P, s_xb, s_xl, s_xh, s_xp, s_mb, s_ml,
                 D_MODE: tl.constexpr, HAS_MASK: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """Tokens pid0 * BT ... and channels pid1 * BC ... of the H * P per token; D_MODE 0: no D, 1: per head,
    2: per channel."""
    rows = tl.program_id(0).to(tl.int64) * BT + tl.arange(0, BT)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    rmask, cmask = rows < n_rows, cols < HP
    m = rmask[:, None] & cmask[None, :]
    bi, li = rows // L, rows % L
    head, ch = cols // P, cols % P
    flat = rows[:, None] * HP + cols[None, :]  # o and y are contiguous
    y = tl.load(o_ptr + flat, mask=m, other=0.0).to(tl.float32)
    if D_MODE != 0:
        xv = tl.load(x_ptr + (bi * s_xb + li * s_xl)[:, None] + (head * s_xh + ch * s_xp)[None, :], mask=m,
                     other=0.0).to(tl.float32)
        dv = tl.load(d_ptr + (head if D_MODE == 1 else cols), mask=cmask, other=0.0).to(tl.float32)
        y = y + xv * dv[None, :]
    if HAS_MASK:
        y = y * tl.load(mask_ptr + bi * s_mb + li * s_ml, mask=rmask, other=0).to(tl.float32)[:, None]
    tl.store(y_ptr + flat, y.to(y_ptr.dtype.element_ty), mask=m)


def supported(x, dt, A, B, C, D=None, dt_bias=None, mask=None) -> bool:
    """Whether both kernels take these ``ssd`` arguments (else the callers use ``naive``)."""
    batch, length, heads, head_dim = x.shape
    groups, d_state = B.shape[-2:]
    return (all(t.dtype in _TL for t in (x, dt, A, B, C) + tuple(t for t in (D, dt_bias) if t is not None))
            and x.numel() > 0 and B.shape == C.shape == (batch, length, groups, d_state) and heads % groups == 0
            and dt.shape == (batch, length, heads) and A.shape == (heads,)
            and (dt_bias is None or dt_bias.shape == (heads,))
            and (D is None or D.shape in ((heads,), (heads, head_dim)))
            and (mask is None or (mask.dtype == torch.bool and mask.shape == (batch, length)))
            and head_dim <= _MAX_DIM and d_state <= _MAX_DIM)


def _u8(mask: torch.Tensor) -> torch.Tensor:
    return mask.view(torch.uint8)  # bool as bytes (0/1), as the other kernels load masks


def _clamps(dt_limit) -> bool:
    return dt_limit is not None and (dt_limit[0] > 0.0 or dt_limit[1] < math.inf)


def fla_inputs(x, dt, A, B, C, *, dt_bias=None, dt_softplus=True, dt_limit=(0.0, math.inf), mask=None):
    """``naive.fla_inputs`` in one launch: (q, k [B, L, H, N], v [B, L, H, P] in x's dtype, g [B, L, H] float32)."""
    batch, length, heads, head_dim = x.shape
    groups, d_state = B.shape[-2:]
    per_group = heads // groups
    q = torch.empty(batch, length, heads, d_state, device=x.device, dtype=x.dtype)
    k, v = torch.empty_like(q), torch.empty(batch, length, heads, head_dim, device=x.device, dtype=x.dtype)
    g = torch.empty(batch, length, heads, device=x.device, dtype=torch.float32)
    bp, bn = triton.next_power_of_2(head_dim), triton.next_power_of_2(d_state)
    hb = min(4, triton.next_power_of_2(per_group))
    bt = max(1, min(32, _PREP_TILE // max(bp, bn)))
    n_rows = batch * length
    clamp = _clamps(dt_limit)
    lo, hi = (float(dt_limit[0]), float(dt_limit[1])) if clamp else (0.0, 0.0)
    m = _u8(mask) if mask is not None else x
    _prep_kernel[(triton.cdiv(n_rows, bt), groups * triton.cdiv(per_group, hb))](
        x, dt, A, dt_bias if dt_bias is not None else A, B, C, m, q, k, v, g, n_rows, length, heads, per_group,
        head_dim, d_state, lo, hi, *x.stride(), *dt.stride(), *B.stride(), *C.stride(), m.stride(0), m.stride(1),
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), CLAMP=clamp, HAS_MASK=mask is not None,
        BT=bt, HB=hb, BP=bp, BN=bn, num_warps=4)
    return q, k, v, g


def skip_out(o: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """``naive.skip_out`` in one launch: (o + D x) * mask in x's dtype; o [B, L, H, P] (made contiguous)."""
    batch, length, heads, head_dim = x.shape
    o = o.contiguous()
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    hp, n_rows = heads * head_dim, batch * length
    bc = min(1024, triton.next_power_of_2(hp))
    bt = max(1, _SKIP_TILE // bc)
    d = D.contiguous() if D is not None else o
    m = _u8(mask) if mask is not None else o
    _skip_kernel[(triton.cdiv(n_rows, bt), triton.cdiv(hp, bc))](
        o, x, d, m, y, n_rows, length, hp, head_dim, *x.stride(), m.stride(0), m.stride(1),
        D_MODE=0 if D is None else D.dim(), HAS_MASK=mask is not None, BT=bt, BC=bc, num_warps=4)
    return y
