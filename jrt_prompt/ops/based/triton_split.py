"""Based prefill kernel, "split" family: order-2 features as plain products, order 0/1 in a small block.

The "fold" kernel (triton_chunk) packs all 273 features into one 16 x 16 grid, paid for with five
selects per feature element per chunk; that and its register pressure (one program per SM, spills)
make it issue- and latency-bound. Here the state of one (batch, head, value block) is two fp32
blocks, rows ``[0, NB)`` (order 2) and ``[NB, NB + 32)`` (squares that did not fit, linear terms,
the constant), and a feature is always one product a * b of two numbers:

- ``grid`` (NB = 256): slot (r, c) holds x_r x_c for every ordered pair, built by broadcasting
  (no selects); the small block holds the 16 linear terms and the constant.
- ``onehot`` (NB = 128): the 120 pairs r < c and the squares of dims 0..7 (136 unique order-2
  terms do not fit 128), the small block the other 8 squares, the linear terms, the constant.
  a and b are gathered from x by products with one-hot matrices on the tensor cores (exact: one
  nonzero power-of-two weight per column), so the state is 160 rows instead of 256 or 288.

Weights are powers of two chosen so that q-side x k-side products give the Taylor kernel exactly
(order 2: q_r q_c / 4 against k_r k_c / 8 for ordered slots and squares, / 4 for unordered pairs;
linear: q_i / 2 against k_i / 2; constant 1 against the mask), so 16-bit features are
single-rounded products. The k-sum is kept in the public 273 layout as in the fold kernel.
``slot_table(name)`` says what each kernel row holds; ``tables(name, device)`` builds the one-hot
matrices and biases the kernel loads once per program.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

SMALL = 32  # rows of the small block
# table layout (fp32, offsets in elements): big a/b for q [16, NB] each, big a/b for k [NB, 16] each,
# small a/b for q [16, 32], small a/b for k [32, 16], then the biases [32] each: q a, q b, k a (times the
# mask), k b. ``_table_offsets`` mirrors this.


def _table_offsets(nb: int) -> dict[str, int]:
    sizes = [("qa", 16 * nb), ("qb", 16 * nb), ("ka", 16 * nb), ("kb", 16 * nb), ("sqa", 16 * SMALL),
             ("sqb", 16 * SMALL), ("ska", 16 * SMALL), ("skb", 16 * SMALL), ("bqa", SMALL), ("bqb", SMALL),
             ("bka", SMALL), ("bkb", SMALL), ("end", 0)]
    out, at = {}, 0
    for name, n in sizes:
        out[name] = at
        at += n
    return out


BIG_ROWS = {"grid": 256, "onehot": 128}


@functools.cache
def slot_table(name: str) -> tuple[tuple[str, int, int], ...]:
    """What each kernel row holds, big block then small block: (kind, i, j), kinds as in triton_chunk:
    "ordered" x_i x_j (one order), "pair" x_i x_j + x_j x_i (i < j), "square", "linear", "const", "zero"."""
    if name == "grid":
        big = [("ordered" if r != c else "square", r, c) for r in range(16) for c in range(16)]
        small = [("linear", i, -1) for i in range(16)] + [("const", -1, -1)]
    elif name == "onehot":
        big = [("pair", r, c) for r in range(16) for c in range(r + 1, 16)] + [("square", i, i) for i in range(8)]
        small = [("square", i, i) for i in range(8, 16)] + [("linear", i, -1) for i in range(16)] + [("const", -1, -1)]
    else:
        raise KeyError(name)
    assert len(big) == BIG_ROWS[name] and len(small) <= SMALL
    return tuple(big + small + [("zero", -1, -1)] * (SMALL - len(small)))


@functools.cache
def _table_values(name: str) -> tuple[float, ...]:
    """The one-hot matrices and biases (see the module docstring for the weights)."""
    nb = BIG_ROWS[name]
    off = _table_offsets(nb)
    t = [0.0] * off["end"]
    for n, (kind, i, j) in enumerate(slot_table(name)):
        big = n < nb
        f = n if big else n - nb
        width = nb if big else SMALL
        qa, qb, ka, kb = ("qa", "qb", "ka", "kb") if big else ("sqa", "sqb", "ska", "skb")

        def q_at(which, d, w):  # q-side matrices are [16, width]: row = input dim, column = slot
            t[off[which] + d * width + f] = w

        def k_at(which, d, w):  # k-side matrices are [width, 16]: row = slot, column = input dim
            t[off[which] + f * 16 + d] = w

        if kind in ("ordered", "square"):
            q_at(qa, i, 0.5), q_at(qb, j, 0.5), k_at(ka, i, 0.5), k_at(kb, j, 0.25)
        elif kind == "pair":
            q_at(qa, i, 0.5), q_at(qb, j, 0.5), k_at(ka, i, 0.5), k_at(kb, j, 0.5)
        elif kind == "linear":
            assert not big
            q_at(qa, i, 0.5), k_at(ka, i, 0.5)
            t[off["bqb"] + f] = t[off["bkb"] + f] = 1.0
        elif kind == "const":
            assert not big
            t[off["bqa"] + f] = t[off["bqb"] + f] = t[off["bka"] + f] = t[off["bkb"] + f] = 1.0
    return tuple(t)


@functools.cache
def tables(name: str, device: torch.device) -> torch.Tensor:
    """The fp32 table the kernel of variant ``name`` reads (cached per device)."""
    return torch.tensor(_table_values(name), dtype=torch.float32, device=device)


@triton.jit
def _q_features(qd, tab_ptr, OFF_A: tl.constexpr, OFF_B: tl.constexpr, OFF_BA: tl.constexpr, OFF_BB: tl.constexpr,
                W: tl.constexpr, BT: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """[BT, W] features a * b with a = q @ A + bias_a, b = q @ B + bias_b (A, B: one-hot [16, W])."""
    offs_d = tl.arange(0, 16)
    offs_w = tl.arange(0, W)
    ta = tl.load(tab_ptr + OFF_A + offs_d[:, None] * W + offs_w[None, :]).to(DT)
    tb = tl.load(tab_ptr + OFF_B + offs_d[:, None] * W + offs_w[None, :]).to(DT)
    a0 = tl.zeros([BT, W], dtype=tl.float32)
    b0 = tl.zeros([BT, W], dtype=tl.float32)
    if OFF_BA >= 0:
        a0 += tl.load(tab_ptr + OFF_BA + offs_w)[None, :]
        b0 += tl.load(tab_ptr + OFF_BB + offs_w)[None, :]
    a = tl.dot(qd, ta, a0, input_precision=PREC)
    b = tl.dot(qd, tb, b0, input_precision=PREC)
    return (a * b).to(DT)


@triton.jit
def _k_features(kd, mf, tab_ptr, OFF_A: tl.constexpr, OFF_B: tl.constexpr, OFF_BA: tl.constexpr,
                OFF_BB: tl.constexpr, W: tl.constexpr, BT: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """[W, BT] features a * b with a = A @ k^T + bias_a * mask, b = B @ k^T + bias_b (A, B: one-hot [W, 16])."""
    offs_d = tl.arange(0, 16)
    offs_w = tl.arange(0, W)
    ta = tl.load(tab_ptr + OFF_A + offs_w[:, None] * 16 + offs_d[None, :]).to(DT)
    tb = tl.load(tab_ptr + OFF_B + offs_w[:, None] * 16 + offs_d[None, :]).to(DT)
    a0 = tl.zeros([W, BT], dtype=tl.float32)
    b0 = tl.zeros([W, BT], dtype=tl.float32)
    if OFF_BA >= 0:
        a0 += tl.load(tab_ptr + OFF_BA + offs_w)[:, None] * mf[None, :]
        b0 += tl.load(tab_ptr + OFF_BB + offs_w)[:, None]
    a = tl.dot(ta, kd, a0, input_precision=PREC)
    b = tl.dot(tb, kd, b0, input_precision=PREC)
    return (a * b).to(DT)


@triton.jit(do_not_specialize=["T_BUCKET", "BH_BUCKET"])
def _based_split_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, mask_ptr,
    kv_in_ptr, z_in_ptr, kv_out_ptr, z_out_ptr, tab_ptr,
    T, H, DV, SEG_LEN, NSEG,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    eps,
    T_BUCKET, BH_BUCKET,  # only in the autotuning key
    HAS_INIT: tl.constexpr, HAS_MASK: tl.constexpr, WRITE_O: tl.constexpr, WRITE_STATE: tl.constexpr,
    DT: tl.constexpr, XDT: tl.constexpr, PREC: tl.constexpr,
    BT: tl.constexpr, BV: tl.constexpr, NB: tl.constexpr, ONEHOT: tl.constexpr,
):
    """Grid (value blocks, B * H, segments), as the fold kernel; kv slots are [NB + 32, DV] (big block, small
    block), the k-sum the public 273 layout. ONEHOT: big features from one-hot products (NB = 128), else
    from broadcasting (NB = 256)."""
    iv = tl.program_id(0)
    ibh = tl.program_id(1)
    iseg = tl.program_id(2)
    b = (ibh // H).to(tl.int64)
    h = (ibh % H).to(tl.int64)
    slot = ibh.to(tl.int64) * NSEG + iseg
    t_start = iseg * SEG_LEN
    t_end = tl.minimum(t_start + SEG_LEN, T)
    SL: tl.constexpr = NB + 32
    # offsets into the table (mirrors _table_offsets)
    O_QA: tl.constexpr = 0
    O_QB: tl.constexpr = 16 * NB
    O_KA: tl.constexpr = 32 * NB
    O_KB: tl.constexpr = 48 * NB
    O_SQA: tl.constexpr = 64 * NB
    O_SQB: tl.constexpr = O_SQA + 512
    O_SKA: tl.constexpr = O_SQB + 512
    O_SKB: tl.constexpr = O_SKA + 512
    O_BQA: tl.constexpr = O_SKB + 512
    O_BQB: tl.constexpr = O_BQA + 32
    O_BKA: tl.constexpr = O_BQB + 32
    O_BKB: tl.constexpr = O_BKA + 32

    offs_t = tl.arange(0, BT)
    offs_f = tl.arange(0, 16)
    offs_n = tl.arange(0, NB)
    offs_s = tl.arange(0, 32)
    offs_v = iv * BV + tl.arange(0, BV)
    vmask = offs_v < DV
    c2 = 0.17677669529663687  # 1 / (4 sqrt 2)

    if HAS_INIT:
        kv_base = kv_in_ptr + slot * (SL * DV)
        sb = tl.load(kv_base + offs_n[:, None] * DV + offs_v[None, :], mask=vmask[None, :], other=0.0)
        ss = tl.load(kv_base + (NB + offs_s)[:, None] * DV + offs_v[None, :], mask=vmask[None, :], other=0.0)
        z_base = z_in_ptr + slot * 273
        z0 = tl.sum(tl.load(z_base + offs_f, mask=offs_f < 1, other=0.0), axis=0)
        z1 = tl.load(z_base + 1 + offs_f)
        zk = tl.load(z_base + 17 + offs_f[:, None] * 16 + offs_f[None, :])  # z2 as 16 x 16: c2 sum k k^T
    else:
        sb = tl.zeros([NB, BV], dtype=tl.float32)
        ss = tl.zeros([32, BV], dtype=tl.float32)
        z0 = tl.sum(tl.zeros([16], dtype=tl.float32), axis=0)
        z1 = tl.zeros([16], dtype=tl.float32)
        zk = tl.zeros([16, 16], dtype=tl.float32)

    q_base = q_ptr + b * stride_qb + h * stride_qh
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    o_base = o_ptr + b * stride_ob + h * stride_oh
    causal = offs_t[:, None] >= offs_t[None, :]

    for t0 in range(t_start, t_end, BT):
        rows = t0 + offs_t
        valid = rows < t_end
        if HAS_MASK:
            m = valid & (tl.load(mask_ptr + b * T + rows, mask=valid, other=0) != 0)
        else:
            m = valid
        # padded keys and values load as zeros: they add nothing to the state
        kx = tl.load(k_base + rows[:, None] * stride_kt + offs_f[None, :], mask=m[:, None], other=0.0).to(XDT)
        kTx = tl.load(k_base + rows[None, :] * stride_kt + offs_f[:, None], mask=m[None, :], other=0.0).to(XDT)
        v = tl.load(v_base + rows[:, None] * stride_vt + offs_v[None, :], mask=m[:, None] & vmask[None, :],
                    other=0.0).to(DT)

        if WRITE_O:
            qx = tl.load(q_base + rows[:, None] * stride_qt + offs_f[None, :], mask=valid[:, None], other=0.0)
            qx = qx.to(XDT)
            qf = qx.to(tl.float32)
            q = qx.to(DT)
            # inside the chunk: the exact kernel 1 + s + s^2/2, causal, padded keys dropped
            sc = tl.dot(qx, kTx, input_precision=PREC) * 0.25
            p = 1.0 + sc + 0.5 * sc * sc
            p = tl.where(causal & m[None, :], p, 0.0)
            acc = tl.dot(p.to(DT), v, input_precision=PREC)
            # from the state carried in: big block, then small block
            if ONEHOT:
                fq = _q_features(q, tab_ptr, O_QA, O_QB, -1, -1, NB, BT, DT, PREC)
            else:
                qh = q * 0.5
                fq = tl.reshape(qh[:, :, None] * qh[:, None, :], (BT, NB)).to(DT)
            acc = tl.dot(fq, sb.to(DT), acc, input_precision=PREC)
            fqs = _q_features(q, tab_ptr, O_SQA, O_SQB, O_BQA, O_BQB, 32, BT, DT, PREC)
            acc = tl.dot(fqs, ss.to(DT), acc, input_precision=PREC)
            qz = tl.dot(q, zk.to(DT), input_precision=PREC)  # phi2(q) . z2 = c2 q^T Z q
            den = tl.sum(p, axis=1) + z0 + 0.5 * tl.sum(qf * z1[None, :], axis=1) + c2 * tl.sum(qz * qf, axis=1)
            out = acc / (den + eps)[:, None]
            out = tl.where(m[:, None], out, 0.0)
            tl.store(o_base + rows[:, None] * stride_ot + offs_v[None, :], out.to(o_ptr.dtype.element_ty),
                     mask=valid[:, None] & vmask[None, :])

        kT = kTx.to(DT)
        mf = m.to(tl.float32)
        if ONEHOT:
            fk = _k_features(kT, mf, tab_ptr, O_KA, O_KB, -1, -1, NB, BT, DT, PREC)
        else:
            kh = kT * 0.5
            fk = tl.reshape(kh[:, None, :] * (kh * 0.5)[None, :, :], (NB, BT)).to(DT)
        sb = tl.dot(fk, v, sb, input_precision=PREC)
        fks = _k_features(kT, mf, tab_ptr, O_SKA, O_SKB, O_BKA, O_BKB, 32, BT, DT, PREC)
        ss = tl.dot(fks, v, ss, input_precision=PREC)
        z0 += tl.sum(mf, axis=0)
        z1 += 0.5 * tl.sum(kx.to(tl.float32), axis=0)
        zk += c2 * tl.dot(kTx, kx, input_precision=PREC)

    if WRITE_STATE:
        kv_base = kv_out_ptr + slot * (SL * DV)
        tl.store(kv_base + offs_n[:, None] * DV + offs_v[None, :], sb, mask=vmask[None, :])
        tl.store(kv_base + (NB + offs_s)[:, None] * DV + offs_v[None, :], ss, mask=vmask[None, :])
        if iv == 0:
            z_base = z_out_ptr + slot * 273
            tl.store(z_base + offs_f, tl.where(offs_f < 1, z0, 0.0), mask=offs_f < 1)
            tl.store(z_base + 1 + offs_f, z1)
            tl.store(z_base + 17 + offs_f[:, None] * 16 + offs_f[None, :], zk)
