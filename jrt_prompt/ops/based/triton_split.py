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
def folded_features(xr, xc, r, c, one, KEYS: tl.constexpr):
    """The fold layout's 16 x 16 slot grid from x / 2 broadcast along rows (``xr``) and columns (``xc``).

    ``r``, ``c``: each slot's row and column, broadcastable like xr and xc; ``one``: the constant
    slot (1, or the mask for keys). Queries: x_r x_c / 4 everywhere (the state's unused slots are
    zero, so what queries put there does not count); keys: x_r x_c / 4 above the diagonal,
    x_r^2 / 8 on it, zero below. Both: x_r / 2 at (r, r - 1), x_0 / 2 at (2, 0), ``one`` at (3, 0).
    ``triton_chunk._slot_table`` mirrors this.
    """
    f = xr * xc
    if KEYS:
        f = tl.where(r < c, f, tl.where(r == c, f * 0.5, 0.0))
    f = tl.where(r == c + 1, xr, f)
    f = tl.where((r == 2) & (c == 0), xc, f)
    return tl.where((r == 3) & (c == 0), one, f)


@triton.jit
def _load_table(tab_ptr, OFF: tl.constexpr, R: tl.constexpr, C: tl.constexpr, DT: tl.constexpr):
    offs_r = tl.arange(0, R)
    offs_c = tl.arange(0, C)
    return tl.load(tab_ptr + OFF + offs_r[:, None] * C + offs_c[None, :]).to(DT)


@triton.jit
def _q_big(q, ta, tb, FEAT: tl.constexpr, NB: tl.constexpr, BT: tl.constexpr, DT: tl.constexpr,
           PREC: tl.constexpr):
    """[BT, NB] query features of the big block (``ta``, ``tb``: the one-hot tables, onehot only)."""
    if FEAT == "onehot":
        a = tl.dot(q, ta, input_precision=PREC)
        b = tl.dot(q, tb, input_precision=PREC)
        f = (a * b).to(DT)
    elif FEAT == "grid":
        qh = q * 0.5
        f = tl.reshape(qh[:, :, None] * qh[:, None, :], (BT, NB)).to(DT)
    else:
        qh = q * 0.5
        offs = tl.arange(0, 16)
        f = folded_features(qh[:, :, None], qh[:, None, :], offs[None, :, None], offs[None, None, :], 1.0, False)
        f = tl.reshape(f, (BT, NB)).to(DT)
    return f


@triton.jit
def _k_big(kT, m, ta, tb, FEAT: tl.constexpr, NB: tl.constexpr, BT: tl.constexpr, DT: tl.constexpr,
           PREC: tl.constexpr):
    """[NB, BT] key features of the big block from k^T [16, BT] (padded keys already zero; m: the mask)."""
    if FEAT == "onehot":
        a = tl.dot(ta, kT, input_precision=PREC)
        b = tl.dot(tb, kT, input_precision=PREC)
        f = (a * b).to(DT)
    elif FEAT == "grid":
        kh = kT * 0.5
        f = tl.reshape(kh[:, None, :] * (kh * 0.5)[None, :, :], (NB, BT)).to(DT)
    else:
        kh = kT * 0.5
        offs = tl.arange(0, 16)
        f = folded_features(kh[:, None, :], kh[None, :, :], offs[:, None, None], offs[None, :, None],
                            m[None, None, :].to(DT), True)
        f = tl.reshape(f, (NB, BT)).to(DT)
    return f


@triton.jit
def _small(x, ta, tb, bias_a, bias_b, Q_SIDE: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """Small-block features a * b with a = one-hot product + bias_a, b = one-hot product + bias_b:
    queries x [BT, 16] -> [BT, 32] (biases [1, 32]); keys x^T [16, BT] -> [32, BT] (biases [32, 1] or [32, BT])."""
    if Q_SIDE:
        a = tl.dot(x, ta, input_precision=PREC) + bias_a
        b = tl.dot(x, tb, input_precision=PREC) + bias_b
    else:
        a = tl.dot(ta, x, input_precision=PREC) + bias_a
        b = tl.dot(tb, x, input_precision=PREC) + bias_b
    return (a * b).to(DT)


@triton.jit
def _chunk_output(qx, kTx, v, m, causal, sb, ss, z0, z1, zk, tqa, tqb, sqa, sqb, bqa, bqb,
                  FEAT: tl.constexpr, NB: tl.constexpr, BT: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
                  kT_prev=None, v_prev=None, m_prev=None, CROSS: tl.constexpr = False):
    """One chunk's outputs [BT, BV] (fp32, 0 at pads): the exact causal kernel inside the chunk plus the state
    carried in (``sb``, ``ss`` in DT; the k-sum z0 (eps included), z1, zk in fp32). Padded keys load as zeros.
    CROSS: the state is one chunk behind; the previous chunk's keys (kT_prev, v_prev, m_prev) count in full."""
    c2 = 0.17677669529663687  # 1 / (4 sqrt 2)
    qf = qx.to(tl.float32)
    q = qx.to(DT)
    # inside the chunk: the exact kernel 1 + s + s^2/2, causal, padded keys dropped
    sc = tl.dot(qx, kTx, input_precision=PREC) * 0.25
    p = 1.0 + sc + 0.5 * sc * sc
    p = tl.where(causal & m[None, :], p, 0.0)
    acc = tl.dot(p.to(DT), v, input_precision=PREC)
    if CROSS:
        sx = tl.dot(qx, kT_prev, input_precision=PREC) * 0.25
        px = tl.where(m_prev[None, :], 1.0 + sx + 0.5 * sx * sx, 0.0)
        acc = tl.dot(px.to(DT), v_prev, acc, input_precision=PREC)
        z0 += tl.sum(px, axis=1)
    # from the state carried in: big block, then small block
    acc = tl.dot(_q_big(q, tqa, tqb, FEAT, NB, BT, DT, PREC), sb, acc, input_precision=PREC)
    if FEAT != "fold":
        acc = tl.dot(_small(q, sqa, sqb, bqa, bqb, True, DT, PREC), ss, acc, input_precision=PREC)
    qz = tl.dot(q, zk.to(DT), input_precision=PREC)  # phi2(q) . z2 = c2 q^T Z q
    den = tl.sum(p, axis=1) + z0 + 0.5 * tl.sum(qf * z1[None, :], axis=1) + c2 * tl.sum(qz * qf, axis=1)
    return tl.where(m[:, None], acc / den[:, None], 0.0)


@triton.jit
def _load_chunk(q_base, k_base, v_base, mask_ptr, b, t0, t_end, T, stride_qt, stride_kt, stride_vt, offs_v, vmask,
                HAS_MASK: tl.constexpr, WRITE_O: tl.constexpr, BT: tl.constexpr, XDT: tl.constexpr,
                DT: tl.constexpr):
    """The chunk at t0: mask, k [BT, 16], k^T [16, BT], v [BT, BV] (padded keys and values as zeros: they add
    nothing to the state) and q [BT, 16] (WRITE_O; else k again). Rows at or past t_end load as pads."""
    offs_t = tl.arange(0, BT)
    offs_f = tl.arange(0, 16)
    rows = t0 + offs_t
    valid = rows < t_end
    if HAS_MASK:
        m = valid & (tl.load(mask_ptr + b * T + rows, mask=valid, other=0) != 0)
    else:
        m = valid
    kx = tl.load(k_base + rows[:, None] * stride_kt + offs_f[None, :], mask=m[:, None], other=0.0).to(XDT)
    kTx = tl.load(k_base + rows[None, :] * stride_kt + offs_f[:, None], mask=m[None, :], other=0.0).to(XDT)
    v = tl.load(v_base + rows[:, None] * stride_vt + offs_v[None, :], mask=m[:, None] & vmask[None, :],
                other=0.0).to(DT)
    if WRITE_O:
        qx = tl.load(q_base + rows[:, None] * stride_qt + offs_f[None, :], mask=valid[:, None], other=0.0).to(XDT)
    else:
        qx = kx
    return m, kx, kTx, v, qx


@triton.jit
def _store_state(base, sb, ss, z_base, z0, z1, zk, DV, offs_v, vmask, iv, NB: tl.constexpr, SMALL: tl.constexpr):
    """kv rows [NB (+ 32), DV] (cast to the pointer's dtype) and, from the first value block, the k-sum."""
    offs_n = tl.arange(0, NB)
    offs_f = tl.arange(0, 16)
    tl.store(base + offs_n[:, None] * DV + offs_v[None, :], sb.to(base.dtype.element_ty), mask=vmask[None, :])
    if SMALL:
        offs_s = tl.arange(0, 32)
        tl.store(base + (NB + offs_s)[:, None] * DV + offs_v[None, :], ss.to(base.dtype.element_ty),
                 mask=vmask[None, :])
    if iv == 0:
        tl.store(z_base + offs_f, tl.where(offs_f < 1, z0, 0.0), mask=offs_f < 1)
        tl.store(z_base + 1 + offs_f, z1)
        tl.store(z_base + 17 + offs_f[:, None] * 16 + offs_f[None, :], zk)


@triton.jit(do_not_specialize=["T_BUCKET", "BH_BUCKET"])
def _based_split_kernel(
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
    """Grid (value blocks, B * H, segments), as the fold kernel. kv slots are [NB (+ 32 unless FEAT is "fold"),
    DV]; the k-sum is in the public 273 layout. FEAT: "fold" (triton_chunk's layout), "grid" or "onehot".
    PREFETCH: the next chunk's inputs load while this one computes. WRITE_CHUNKS (one segment, no outputs):
    the state entering every CK_EVERY-th chunk goes to ``ck`` ([B * H, stored, slots, DV]) and ``cz``
    ([B * H, stored, 273] fp32) for ``_based_chunk_out_kernel``."""
    iv = tl.program_id(0)
    ibh = tl.program_id(1)
    iseg = tl.program_id(2)
    b = (ibh // H).to(tl.int64)
    h = (ibh % H).to(tl.int64)
    slot = ibh.to(tl.int64) * NSEG + iseg
    t_start = iseg * SEG_LEN
    t_end = tl.minimum(t_start + SEG_LEN, T)
    SMALL: tl.constexpr = FEAT != "fold"
    SL: tl.constexpr = NB + 32 if FEAT != "fold" else NB
    O_S: tl.constexpr = 64 * NB  # the small tables (see _table_offsets)

    offs_t = tl.arange(0, BT)
    offs_f = tl.arange(0, 16)
    offs_n = tl.arange(0, NB)
    offs_s = tl.arange(0, 32)
    offs_v = iv * BV + tl.arange(0, BV)
    vmask = offs_v < DV
    c2 = 0.17677669529663687  # 1 / (4 sqrt 2)

    ss = tl.zeros([32, BV], dtype=tl.float32)
    if HAS_INIT:
        kv_base = kv_in_ptr + slot * (SL * DV)
        sb = tl.load(kv_base + offs_n[:, None] * DV + offs_v[None, :], mask=vmask[None, :], other=0.0)
        if SMALL:
            ss = tl.load(kv_base + (NB + offs_s)[:, None] * DV + offs_v[None, :], mask=vmask[None, :], other=0.0)
        z_base = z_in_ptr + slot * 273
        z0 = tl.sum(tl.load(z_base + offs_f, mask=offs_f < 1, other=0.0), axis=0)
        z1 = tl.load(z_base + 1 + offs_f)
        zk = tl.load(z_base + 17 + offs_f[:, None] * 16 + offs_f[None, :])  # z2 as 16 x 16: c2 sum k k^T
    else:
        sb = tl.zeros([NB, BV], dtype=tl.float32)
        z0 = tl.sum(tl.zeros([16], dtype=tl.float32), axis=0)
        z1 = tl.zeros([16], dtype=tl.float32)
        zk = tl.zeros([16, 16], dtype=tl.float32)

    # the one-hot tables, loaded once (dummies where unused)
    tqa, tqb, tka, tkb, sqa, sqb = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    ska, skb, bqa, bqb, bka, bkb = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    if FEAT == "onehot":
        tka = _load_table(tab_ptr, 32 * NB, NB, 16, DT)
        tkb = _load_table(tab_ptr, 48 * NB, NB, 16, DT)
        if WRITE_O:
            tqa = _load_table(tab_ptr, 0, 16, NB, DT)
            tqb = _load_table(tab_ptr, 16 * NB, 16, NB, DT)
    if SMALL:
        ska = _load_table(tab_ptr, O_S + 1024, 32, 16, DT)
        skb = _load_table(tab_ptr, O_S + 1536, 32, 16, DT)
        bka = tl.load(tab_ptr + O_S + 2112 + offs_s)[:, None]
        bkb = tl.load(tab_ptr + O_S + 2144 + offs_s)[:, None]
        if WRITE_O:
            sqa = _load_table(tab_ptr, O_S, 16, 32, DT)
            sqb = _load_table(tab_ptr, O_S + 512, 16, 32, DT)
            bqa = tl.load(tab_ptr + O_S + 2048 + offs_s)[None, :]
            bqb = tl.load(tab_ptr + O_S + 2080 + offs_s)[None, :]

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
        if WRITE_CHUNKS:
            if (t0 // BT) % CK_EVERY == 0:
                chunk = ibh.to(tl.int64) * tl.cdiv(T, BT * CK_EVERY) + t0 // (BT * CK_EVERY)
                _store_state(ck_ptr + chunk * (SL * DV), sb, ss, cz_ptr + chunk * 273, z0, z1, zk, DV, offs_v,
                             vmask, iv, NB, SMALL)
        if WRITE_O:
            out = _chunk_output(qx, kTx, v, m, causal, sb.to(DT), ss.to(DT), z0 + eps, z1, zk, tqa, tqb, sqa, sqb,
                                bqa, bqb, FEAT, NB, BT, DT, PREC)
            rows = t0 + offs_t
            tl.store(o_base + rows[:, None] * stride_ot + offs_v[None, :], out.to(o_ptr.dtype.element_ty),
                     mask=(rows < t_end)[:, None] & vmask[None, :])
        kT = kTx.to(DT)
        mf = m.to(tl.float32)
        sb = tl.dot(_k_big(kT, m, tka, tkb, FEAT, NB, BT, DT, PREC), v, sb, input_precision=PREC)
        if SMALL:
            ss = tl.dot(_small(kT, ska, skb, bka * mf[None, :], bkb, False, DT, PREC), v, ss, input_precision=PREC)
        z0 += tl.sum(mf, axis=0)
        z1 += 0.5 * tl.sum(kx.to(tl.float32), axis=0)
        zk += c2 * tl.dot(kTx, kx, input_precision=PREC)
        if PREFETCH:
            m, kx, kTx, v, qx = m_n, kx_n, kTx_n, v_n, qx_n

    if WRITE_STATE:
        _store_state(kv_out_ptr + slot * (SL * DV), sb, ss, z_out_ptr + slot * 273, z0, z1, zk, DV, offs_v, vmask,
                     iv, NB, SMALL)


@triton.jit
def _based_chunk_out_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, mask_ptr, ck_ptr, cz_ptr, tab_ptr,
    T, H, DV, NCHUNKS,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    eps,
    HAS_MASK: tl.constexpr, DT: tl.constexpr, XDT: tl.constexpr, PREC: tl.constexpr,
    BT: tl.constexpr, BV: tl.constexpr, NB: tl.constexpr, FEAT: tl.constexpr, G: tl.constexpr = 1,
    SUB: tl.constexpr = 1,
):
    """Grid (value blocks, B * H, stored states / G): the outputs of SUB chunks of BT tokens from the state
    entering the first (written by ``_based_split_kernel`` with WRITE_CHUNKS, the same BT and CK_EVERY = SUB;
    NCHUNKS states per row); the second chunk adds the first one's keys in full. A program does G such
    pieces; they are independent, so with num_stages > 1 the compiler may load the next while one computes."""
    tl.static_assert(SUB == 1 or SUB == 2)
    iv = tl.program_id(0)
    ibh = tl.program_id(1)
    b = (ibh // H).to(tl.int64)
    h = (ibh % H).to(tl.int64)
    SMALL: tl.constexpr = FEAT != "fold"
    SL: tl.constexpr = NB + 32 if FEAT != "fold" else NB
    O_S: tl.constexpr = 64 * NB
    offs_t = tl.arange(0, BT)
    offs_f = tl.arange(0, 16)
    offs_n = tl.arange(0, NB)
    offs_s = tl.arange(0, 32)
    offs_v = iv * BV + tl.arange(0, BV)
    vmask = offs_v < DV
    tqa, tqb, sqa, sqb, bqa, bqb = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    if FEAT == "onehot":
        tqa = _load_table(tab_ptr, 0, 16, NB, DT)
        tqb = _load_table(tab_ptr, 16 * NB, 16, NB, DT)
    if SMALL:
        sqa = _load_table(tab_ptr, O_S, 16, 32, DT)
        sqb = _load_table(tab_ptr, O_S + 512, 16, 32, DT)
        bqa = tl.load(tab_ptr + O_S + 2048 + offs_s)[None, :]
        bqb = tl.load(tab_ptr + O_S + 2080 + offs_s)[None, :]
    causal = offs_t[:, None] >= offs_t[None, :]
    q_base = q_ptr + b * stride_qb + h * stride_qh
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    o_base = o_ptr + b * stride_ob + h * stride_oh
    for i in range(G):
        ic = tl.program_id(2) * G + i  # past the last piece: every row masked, the state read from the last one
        chunk = ibh.to(tl.int64) * NCHUNKS + tl.minimum(ic, NCHUNKS - 1)
        ck_base = ck_ptr + chunk * (SL * DV)
        sb = tl.load(ck_base + offs_n[:, None] * DV + offs_v[None, :], mask=vmask[None, :], other=0.0).to(DT)
        ss = tl.zeros([32, BV], dtype=DT)
        if SMALL:
            ss = tl.load(ck_base + (NB + offs_s)[:, None] * DV + offs_v[None, :], mask=vmask[None, :],
                         other=0.0).to(DT)
        cz_base = cz_ptr + chunk * 273
        z0 = tl.sum(tl.load(cz_base + offs_f, mask=offs_f < 1, other=0.0), axis=0) + eps
        z1 = tl.load(cz_base + 1 + offs_f)
        zk = tl.load(cz_base + 17 + offs_f[:, None] * 16 + offs_f[None, :])
        t0 = ic * (SUB * BT)
        m, kx, kTx, v, qx = _load_chunk(q_base, k_base, v_base, mask_ptr, b, t0, T, T, stride_qt, stride_kt,
                                        stride_vt, offs_v, vmask, HAS_MASK, True, BT, XDT, DT)
        out = _chunk_output(qx, kTx, v, m, causal, sb, ss, z0, z1, zk, tqa, tqb, sqa, sqb, bqa, bqb, FEAT, NB, BT,
                            DT, PREC)
        rows = t0 + offs_t
        tl.store(o_base + rows[:, None] * stride_ot + offs_v[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=(rows < T)[:, None] & vmask[None, :])
        if SUB == 2:
            m2, kx2, kTx2, v2, qx2 = _load_chunk(q_base, k_base, v_base, mask_ptr, b, t0 + BT, T, T, stride_qt,
                                                 stride_kt, stride_vt, offs_v, vmask, HAS_MASK, True, BT, XDT, DT)
            out = _chunk_output(qx2, kTx2, v2, m2, causal, sb, ss, z0, z1, zk, tqa, tqb, sqa, sqb, bqa, bqb, FEAT,
                                NB, BT, DT, PREC, kTx, v, m, True)
            rows = t0 + BT + offs_t
            tl.store(o_base + rows[:, None] * stride_ot + offs_v[None, :], out.to(o_ptr.dtype.element_ty),
                     mask=(rows < T)[:, None] & vmask[None, :])
