"""Fused one-token decode step of Based's Taylor linear attention (Triton).

One program per (batch, head): builds phi(k) and phi(q), adds phi(k)^T v and phi(k) into the fp32
state in place, then reads phi(q).S / (phi(q).z + eps), all in one launch. The value dim is walked
in blocks inside the program, so the k-sum is updated exactly once and no program races another;
the 256 order-2 rows are walked in tiles of 64 so that a tile fits in registers.
The kernel only reads and writes the state through fixed pointers: CUDA graphs can capture it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from jrt_prompt.errors import JRTError

FEATURE_DIM = 16
STATE_DIM = 273


@triton.jit
def _based_step_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, kv_ptr, z_ptr,
    H, DV,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, stride_ob, stride_oh,
    stride_sb, stride_sh, stride_zb, stride_zh,
    eps,
    BV: tl.constexpr, BF: tl.constexpr,
):
    """One program per (batch, head); the state is walked in [BF, BV] tiles (few registers each)."""
    ibh = tl.program_id(0)
    b = (ibh // H).to(tl.int64)
    h = (ibh % H).to(tl.int64)
    offs_f = tl.arange(0, 16)
    offs_r = tl.arange(0, BF)
    c2 = 0.17677669529663687  # 1 / (4 sqrt 2)

    q_base = q_ptr + b * stride_qb + h * stride_qh
    k_base = k_ptr + b * stride_kb + h * stride_kh
    q1 = tl.load(q_base + offs_f).to(tl.float32) * 0.5
    k1 = tl.load(k_base + offs_f).to(tl.float32) * 0.5

    # the k-sum first (once per program), then phi(q) . z with this token included
    z_base = z_ptr + b * stride_zb + h * stride_zh
    z0 = tl.sum(tl.load(z_base + offs_f, mask=offs_f < 1, other=0.0), axis=0) + 1.0
    z1 = tl.load(z_base + 1 + offs_f) + k1
    tl.store(z_base + offs_f, tl.where(offs_f < 1, z0, 0.0), mask=offs_f < 1)
    tl.store(z_base + 1 + offs_f, z1)
    den = z0 + tl.sum(q1 * z1, axis=0) + eps
    for r0 in range(0, 256, BF):
        f = r0 + offs_r  # order-2 feature 16 i + j is x_i x_j: two gathers of a 16-vector
        k2 = tl.load(k_base + f // 16).to(tl.float32) * tl.load(k_base + f % 16).to(tl.float32) * c2
        q2 = tl.load(q_base + f // 16).to(tl.float32) * tl.load(q_base + f % 16).to(tl.float32) * c2
        z2 = tl.load(z_base + 17 + f) + k2
        tl.store(z_base + 17 + f, z2)
        den += tl.sum(q2 * z2, axis=0)

    s_base = kv_ptr + b * stride_sb + h * stride_sh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    o_base = o_ptr + b * stride_ob + h * stride_oh
    for v0 in range(0, DV, BV):
        offs_v = v0 + tl.arange(0, BV)
        vmask = offs_v < DV
        v = tl.load(v_base + offs_v, mask=vmask, other=0.0).to(tl.float32)
        p0 = s_base + offs_v
        p1 = s_base + (1 + offs_f)[:, None] * DV + offs_v[None, :]
        s0 = tl.load(p0, mask=vmask, other=0.0) + v
        s1 = tl.load(p1, mask=vmask[None, :], other=0.0) + k1[:, None] * v[None, :]
        tl.store(p0, s0, mask=vmask)
        tl.store(p1, s1, mask=vmask[None, :])
        num = s0 + tl.sum(q1[:, None] * s1, axis=0)
        for r0 in range(0, 256, BF):
            f = r0 + offs_r
            k2 = tl.load(k_base + f // 16).to(tl.float32) * tl.load(k_base + f % 16).to(tl.float32) * c2
            q2 = tl.load(q_base + f // 16).to(tl.float32) * tl.load(q_base + f % 16).to(tl.float32) * c2
            p2 = s_base + (17 + f)[:, None] * DV + offs_v[None, :]
            s2 = tl.load(p2, mask=vmask[None, :], other=0.0) + k2[:, None] * v[None, :]
            tl.store(p2, s2, mask=vmask[None, :])
            num += tl.sum(q2[:, None] * s2, axis=0)
        tl.store(o_base + offs_v, (num / den).to(o_ptr.dtype.element_ty), mask=vmask)


def taylor_linear_attention_step(q, k, v, kv, ksum, eps=1e-6):
    """One token: q, k [B, H, 16], v [B, H, Dv] -> o [B, H, Dv] in v's dtype.

    kv [B, H, 273, Dv] and ksum [B, H, 273] (fp32, contiguous in their last two dims) are updated
    in place to include this token, which the output attends to as well.
    """
    if q.dim() != 3 or q.shape != k.shape or q.shape[-1] != FEATURE_DIM:
        raise JRTError(f"taylor_linear_attention_step: q and k must be [B, H, {FEATURE_DIM}] and equal, "
                       f"got {tuple(q.shape)} and {tuple(k.shape)}")
    B, H, _ = q.shape
    if v.dim() != 3 or v.shape[:2] != (B, H):
        raise JRTError(f"taylor_linear_attention_step: v must be [B, H, Dv] = [{B}, {H}, Dv], got {tuple(v.shape)}")
    Dv = v.shape[-1]
    if kv.shape != (B, H, STATE_DIM, Dv) or ksum.shape != (B, H, STATE_DIM):
        raise JRTError(f"taylor_linear_attention_step: state must be kv [{B}, {H}, {STATE_DIM}, {Dv}] and "
                       f"ksum [{B}, {H}, {STATE_DIM}], got {tuple(kv.shape)} and {tuple(ksum.shape)}")
    if kv.dtype != torch.float32 or ksum.dtype != torch.float32:
        raise JRTError(f"taylor_linear_attention_step: the state must be float32, got {kv.dtype}, {ksum.dtype}")
    if kv.stride(3) != 1 or kv.stride(2) != Dv or ksum.stride(2) != 1:
        raise JRTError("taylor_linear_attention_step: kv must be contiguous in its last two dims and ksum in its "
                       "last (it is updated in place, so it cannot be copied)")
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    o = torch.empty_like(v)
    bv = min(64, max(16, triton.next_power_of_2(Dv)))
    _based_step_kernel[(B * H,)](
        q, k, v, o, kv, ksum, H, Dv,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), o.stride(0), o.stride(1),
        kv.stride(0), kv.stride(1), ksum.stride(0), ksum.stride(1), float(eps),
        BV=bv, BF=64, num_warps=4)
    return o
