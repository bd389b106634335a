"""Based prefill kernel with the fold layout's state held as four blocks of 64 slots ("K-split").

Why: in ``triton_split`` the whole [BT, 256] query-feature and [256, BT] key-feature tiles are live
at once next to the fp32 state, so the compiler spills or keeps one program per SM. Here the 16 x 16
slot grid is cut into four bands of 4 rows (slots 64 j .. 64 j + 63); each band's features are built
from the 4 input dims of its rows (loaded again, an L1 hit) and all 16, used in one product with its
state block and dropped. The math and the layout are the fold kernel's exactly (``folded_features``),
so states convert with the same tables. Same arguments as ``triton_split._based_split_kernel`` (the
table and chunk-state pointers are unused; WRITE_CHUNKS is not supported).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_split import _load_chunk, folded_features


@triton.jit
def _q_band(q_base, rows, valid, q, stride_qt, J: tl.constexpr, BT: tl.constexpr, XDT: tl.constexpr,
            DT: tl.constexpr):
    """Query features of slots 64 J .. 64 J + 63: [BT, 64]."""
    offs_r = 4 * J + tl.arange(0, 4)
    offs_c = tl.arange(0, 16)
    qr = tl.load(q_base + rows[:, None] * stride_qt + offs_r[None, :], mask=valid[:, None], other=0.0).to(XDT)
    f = folded_features((qr.to(DT) * 0.5)[:, :, None], (q * 0.5)[:, None, :], offs_r[None, :, None],
                        offs_c[None, None, :], 1.0, False)
    return tl.reshape(f, (BT, 64)).to(DT)


@triton.jit
def _k_band(k_base, rows, m, kT, stride_kt, J: tl.constexpr, BT: tl.constexpr, XDT: tl.constexpr,
            DT: tl.constexpr):
    """Key features of slots 64 J .. 64 J + 63: [64, BT] (padded keys zero)."""
    offs_r = 4 * J + tl.arange(0, 4)
    offs_c = tl.arange(0, 16)
    kr = tl.load(k_base + rows[None, :] * stride_kt + offs_r[:, None], mask=m[None, :], other=0.0).to(XDT)
    f = folded_features((kr.to(DT) * 0.5)[:, None, :], (kT * 0.5)[None, :, :], offs_r[:, None, None],
                        offs_c[None, :, None], m[None, None, :].to(DT), True)
    return tl.reshape(f, (64, BT)).to(DT)


@triton.jit
def _load_band(base, DV, offs_v, vmask, J: tl.constexpr):
    offs = 64 * J + tl.arange(0, 64)
    return tl.load(base + offs[:, None] * DV + offs_v[None, :], mask=vmask[None, :], other=0.0)


@triton.jit
def _store_band(base, s, DV, offs_v, vmask, J: tl.constexpr):
    offs = 64 * J + tl.arange(0, 64)
    tl.store(base + offs[:, None] * DV + offs_v[None, :], s, mask=vmask[None, :])


@triton.jit(do_not_specialize=["T_BUCKET", "BH_BUCKET"])
def _based_ksplit_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, mask_ptr,
    kv_in_ptr, z_in_ptr, kv_out_ptr, z_out_ptr, tab_ptr, ck_ptr, cz_ptr,
    T, H, DV, SEG_LEN, NSEG,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    eps,
    T_BUCKET, BH_BUCKET,  # only in the autotuning key
    HAS_INIT: tl.constexpr, HAS_MASK: tl.constexpr, WRITE_O: tl.constexpr, WRITE_STATE: tl.constexpr,
    DT: tl.constexpr, XDT: tl.constexpr, PREC: tl.constexpr,
    BT: tl.constexpr, BV: tl.constexpr, NB: tl.constexpr, FEAT: tl.constexpr, PREFETCH: tl.constexpr = False,
    WRITE_CHUNKS: tl.constexpr = False, CK_EVERY: tl.constexpr = 1,
):
    """Grid (value blocks, B * H, segments); kv slots [256, DV] in the fold layout, k-sum public."""
    tl.static_assert(NB == 256 and FEAT == "fold" and not WRITE_CHUNKS)
    iv = tl.program_id(0)
    ibh = tl.program_id(1)
    iseg = tl.program_id(2)
    b = (ibh // H).to(tl.int64)
    h = (ibh % H).to(tl.int64)
    slot = ibh.to(tl.int64) * NSEG + iseg
    t_start = iseg * SEG_LEN
    t_end = tl.minimum(t_start + SEG_LEN, T)
    offs_t = tl.arange(0, BT)
    offs_f = tl.arange(0, 16)
    offs_v = iv * BV + tl.arange(0, BV)
    vmask = offs_v < DV
    c2 = 0.17677669529663687  # 1 / (4 sqrt 2)

    if HAS_INIT:
        kv_base = kv_in_ptr + slot * (256 * DV)
        s0 = _load_band(kv_base, DV, offs_v, vmask, 0)
        s1 = _load_band(kv_base, DV, offs_v, vmask, 1)
        s2 = _load_band(kv_base, DV, offs_v, vmask, 2)
        s3 = _load_band(kv_base, DV, offs_v, vmask, 3)
        z_base = z_in_ptr + slot * 273
        z0 = tl.sum(tl.load(z_base + offs_f, mask=offs_f < 1, other=0.0), axis=0)
        z1 = tl.load(z_base + 1 + offs_f)
        zk = tl.load(z_base + 17 + offs_f[:, None] * 16 + offs_f[None, :])  # z2 as 16 x 16: c2 sum k k^T
    else:
        s0 = tl.zeros([64, BV], dtype=tl.float32)
        s1 = tl.zeros([64, BV], dtype=tl.float32)
        s2 = tl.zeros([64, BV], dtype=tl.float32)
        s3 = tl.zeros([64, BV], dtype=tl.float32)
        z0 = tl.sum(tl.zeros([16], dtype=tl.float32), axis=0)
        z1 = tl.zeros([16], dtype=tl.float32)
        zk = tl.zeros([16, 16], dtype=tl.float32)

    q_base = q_ptr + b * stride_qb + h * stride_qh
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    o_base = o_ptr + b * stride_ob + h * stride_oh
    causal = offs_t[:, None] >= offs_t[None, :]

    if PREFETCH:
        m, kx, kTx, v, qx = _load_chunk(q_base, k_base, v_base, mask_ptr, b, t_start, t_end, T, stride_qt,
                                        stride_kt, stride_vt, offs_v, vmask, HAS_MASK, WRITE_O, BT, XDT, DT)
    for t0 in range(t_start, t_end, BT):
        if PREFETCH:
            m_n, kx_n, kTx_n, v_n, qx_n = _load_chunk(q_base, k_base, v_base, mask_ptr, b, t0 + BT, t_end, T,
                                                      stride_qt, stride_kt, stride_vt, offs_v, vmask, HAS_MASK,
                                                      WRITE_O, BT, XDT, DT)
        else:
            m, kx, kTx, v, qx = _load_chunk(q_base, k_base, v_base, mask_ptr, b, t0, t_end, T, stride_qt,
                                            stride_kt, stride_vt, offs_v, vmask, HAS_MASK, WRITE_O, BT, XDT, DT)
        rows = t0 + offs_t
        if WRITE_O:
            valid = rows < t_end
            qf = qx.to(tl.float32)
            q = qx.to(DT)
            sc = tl.dot(qx, kTx, input_precision=PREC) * 0.25
            p = 1.0 + sc + 0.5 * sc * sc
            p = tl.where(causal & m[None, :], p, 0.0)
            acc = tl.dot(p.to(DT), v, input_precision=PREC)
            acc = tl.dot(_q_band(q_base, rows, valid, q, stride_qt, 0, BT, XDT, DT), s0.to(DT), acc,
                         input_precision=PREC)
            acc = tl.dot(_q_band(q_base, rows, valid, q, stride_qt, 1, BT, XDT, DT), s1.to(DT), acc,
                         input_precision=PREC)
            acc = tl.dot(_q_band(q_base, rows, valid, q, stride_qt, 2, BT, XDT, DT), s2.to(DT), acc,
                         input_precision=PREC)
            acc = tl.dot(_q_band(q_base, rows, valid, q, stride_qt, 3, BT, XDT, DT), s3.to(DT), acc,
                         input_precision=PREC)
            qz = tl.dot(q, zk.to(DT), input_precision=PREC)  # phi2(q) . z2 = c2 q^T Z q
            den = tl.sum(p, axis=1) + z0 + eps + 0.5 * tl.sum(qf * z1[None, :], axis=1) + c2 * tl.sum(qz * qf, axis=1)
            out = tl.where(m[:, None], acc / den[:, None], 0.0)
            tl.store(o_base + rows[:, None] * stride_ot + offs_v[None, :], out.to(o_ptr.dtype.element_ty),
                     mask=valid[:, None] & vmask[None, :])
        kT = kTx.to(DT)
        s0 = tl.dot(_k_band(k_base, rows, m, kT, stride_kt, 0, BT, XDT, DT), v, s0, input_precision=PREC)
        s1 = tl.dot(_k_band(k_base, rows, m, kT, stride_kt, 1, BT, XDT, DT), v, s1, input_precision=PREC)
        s2 = tl.dot(_k_band(k_base, rows, m, kT, stride_kt, 2, BT, XDT, DT), v, s2, input_precision=PREC)
        s3 = tl.dot(_k_band(k_base, rows, m, kT, stride_kt, 3, BT, XDT, DT), v, s3, input_precision=PREC)
        z0 += tl.sum(m.to(tl.float32), axis=0)
        z1 += 0.5 * tl.sum(kx.to(tl.float32), axis=0)
        zk += c2 * tl.dot(kTx, kx, input_precision=PREC)
        if PREFETCH:
            m, kx, kTx, v, qx = m_n, kx_n, kTx_n, v_n, qx_n

    if WRITE_STATE:
        kv_base = kv_out_ptr + slot * (256 * DV)
        _store_band(kv_base, s0, DV, offs_v, vmask, 0)
        _store_band(kv_base, s1, DV, offs_v, vmask, 1)
        _store_band(kv_base, s2, DV, offs_v, vmask, 2)
        _store_band(kv_base, s3, DV, offs_v, vmask, 3)
        if iv == 0:
            z_base = z_out_ptr + slot * 273
            tl.store(z_base + offs_f, tl.where(offs_f < 1, z0, 0.0), mask=offs_f < 1)
            tl.store(z_base + 1 + offs_f, z1)
            tl.store(z_base + 17 + offs_f[:, None] * 16 + offs_f[None, :], zk)
