"""Triton prefill for Based's Taylor linear attention, with the recurrent state in and out.

Why ours: fla's Based kernels neither take an initial state nor return the final one, so they
cannot hand a prompt over to a decoder. This kernel walks the sequence in chunks of ``BT`` tokens
and keeps the fp32 state of one (batch, head, value block) in registers for the whole walk:

    chunk : num = phi(q) . S  +  causal(1 + s + s^2/2) @ v     with s = q k^T / 4 inside the chunk
            den = phi(q) . z  +  row sums of that causal matrix
            S += phi(k)^T v,   z += sum phi(k)

Inside the kernel the 273 public features are folded into one 16 x 16 grid of 256 slots, so
that the state needs a single [256, Dv] matrix product each way (one tensor-core dot for
phi(q) S and one for phi(k)^T v, no separate order-0/1 products): slot (r, c) holds
x_r x_c for r < c (both orders of a pair at once), x_r^2 on the diagonal, x_r / 2 at (r, r-1),
x_0 / 2 at (2, 0), the constant 1 at (3, 0), zero elsewhere. The q side and the k side use
power-of-two weights whose products give the kernel exactly (pairs 1/4 and 1/4, squares 1/4
and 1/8, so 1/16 and 1/32 = the s^2/2 coefficients), so bf16 features are single-rounded
products. The k-sum stays in the public form (z0, z1 [16], z2 as a 16 x 16 matrix Z = c2 sum k k^T);
its order-2 term is phi2(q).z2 = c2 q^T Z q, from a [BT, 16] x [16, 16] dot.
The wrapper converts the state between this layout and the public one
(kv [B, H, 273, Dv] over (1, x/2, vec(x x^T)/(4 sqrt 2))).

When batch x heads is too small to fill the GPU the sequence is also cut into segments: one pass
sums each segment's phi(k)^T v and phi(k) (no outputs), a prefix sum gives each segment its
starting state, and a second pass runs all segments in parallel.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Callable

import torch
import triton
import triton.language as tl

from jrt_prompt.errors import JRTError

from . import triton_split as split

FEATURE_DIM = 16
STATE_DIM = 1 + FEATURE_DIM + FEATURE_DIM * FEATURE_DIM  # 273, the public layout
SLOTS = 256  # the fold kernel's layout
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _folded_features(xr, xc, r, c, one, KEYS: tl.constexpr):
    """The 16 x 16 slot grid from x / 2 broadcast along rows (``xr``) and columns (``xc``).

    ``r``, ``c``: each slot's row and column, broadcastable like xr and xc; ``one``: the constant
    slot (1, or the mask for keys). Queries: x_r x_c / 4 everywhere (the state's unused slots are
    zero, so what queries put there does not count); keys: x_r x_c / 4 above the diagonal,
    x_r^2 / 8 on it, zero below. Both: x_r / 2 at (r, r - 1), x_0 / 2 at (2, 0), ``one`` at (3, 0).
    ``_slot_table`` mirrors this.
    """
    f = xr * xc
    if KEYS:
        f = tl.where(r < c, f, tl.where(r == c, f * 0.5, 0.0))
    f = tl.where(r == c + 1, xr, f)
    f = tl.where((r == 2) & (c == 0), xc, f)
    return tl.where((r == 3) & (c == 0), one, f)


@triton.jit(do_not_specialize=["T_BUCKET", "BH_BUCKET"])
def _based_chunk_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, mask_ptr,
    kv_in_ptr, z_in_ptr, kv_out_ptr, z_out_ptr,
    T, H, DV, SEG_LEN, NSEG,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    eps,
    T_BUCKET, BH_BUCKET,  # only in the autotuning key
    HAS_INIT: tl.constexpr, HAS_MASK: tl.constexpr, WRITE_O: tl.constexpr, WRITE_STATE: tl.constexpr,
    DT: tl.constexpr, XDT: tl.constexpr, PREC: tl.constexpr,
    BT: tl.constexpr, BV: tl.constexpr,
):
    """Grid (value blocks, B * H, segments). State slots are [B * H, NSEG, ...] in and out: kv in
    the folded [256, DV] layout, the k-sum in the public 273 layout. DT: the operand dtype of the feature,
    state and value products; XDT: of the exact small ones (q k^T and k^T k), the inputs' own."""
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
    offs_s = tl.arange(0, 256)
    offs_v = iv * BV + tl.arange(0, BV)
    vmask = offs_v < DV
    c2 = 0.17677669529663687  # 1 / (4 sqrt 2)

    if HAS_INIT:
        s = tl.load(kv_in_ptr + slot * (256 * DV) + offs_s[:, None] * DV + offs_v[None, :],
                    mask=vmask[None, :], other=0.0)
        z_base = z_in_ptr + slot * 273
        z0 = tl.sum(tl.load(z_base + offs_f, mask=offs_f < 1, other=0.0), axis=0)
        z1 = tl.load(z_base + 1 + offs_f)
        zk = tl.load(z_base + 17 + offs_f[:, None] * 16 + offs_f[None, :])  # z2 as 16 x 16: c2 sum k k^T
    else:
        s = tl.zeros([256, BV], dtype=tl.float32)
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
            # from the state carried in
            qh = q * 0.5
            fq = _folded_features(qh[:, :, None], qh[:, None, :], offs_f[None, :, None], offs_f[None, None, :],
                                  1.0, False).to(DT)
            acc = tl.dot(tl.reshape(fq, (BT, 256)), s.to(DT), acc, input_precision=PREC)
            qz = tl.dot(q, zk.to(DT), input_precision=PREC)  # phi2(q) . z2 = c2 q^T Z q
            den = tl.sum(p, axis=1) + z0 + 0.5 * tl.sum(qf * z1[None, :], axis=1) + c2 * tl.sum(qz * qf, axis=1)
            out = acc / (den + eps)[:, None]
            out = tl.where(m[:, None], out, 0.0)
            tl.store(o_base + rows[:, None] * stride_ot + offs_v[None, :], out.to(o_ptr.dtype.element_ty),
                     mask=valid[:, None] & vmask[None, :])

        kh = kTx.to(DT) * 0.5
        fk = _folded_features(kh[:, None, :], kh[None, :, :], offs_f[:, None, None], offs_f[None, :, None],
                              m[None, None, :].to(DT), True).to(DT)
        s = tl.dot(tl.reshape(fk, (256, BT)), v, s, input_precision=PREC)
        z0 += tl.sum(m.to(tl.float32), axis=0)
        z1 += 0.5 * tl.sum(kx.to(tl.float32), axis=0)
        zk += c2 * tl.dot(kTx, kx, input_precision=PREC)

    if WRITE_STATE:
        tl.store(kv_out_ptr + slot * (256 * DV) + offs_s[:, None] * DV + offs_v[None, :], s, mask=vmask[None, :])
        if iv == 0:
            z_base = z_out_ptr + slot * 273
            tl.store(z_base + offs_f, tl.where(offs_f < 1, z0, 0.0), mask=offs_f < 1)
            tl.store(z_base + 1 + offs_f, z1)
            tl.store(z_base + 17 + offs_f[:, None] * 16 + offs_f[None, :], zk)


# ----------------------------------------------------------------------------------------------
# The kernel's folded layout and the public one


@functools.cache
def _slot_table() -> tuple[tuple[str, int, int], ...]:
    """What each of the fold kernel's 256 slots holds, mirroring ``_folded_features``: (kind, i, j)."""
    table = []
    for r in range(16):
        for c in range(16):
            if r < c:
                table.append(("pair", r, c))
            elif r == c:
                table.append(("square", r, r))
            elif r == c + 1:
                table.append(("linear", r, -1))
            elif (r, c) == (2, 0):
                table.append(("linear", 0, -1))
            elif (r, c) == (3, 0):
                table.append(("const", -1, -1))
            else:
                table.append(("zero", -1, -1))
    return tuple(table)


@functools.cache
def _conversion(device: torch.device, variant: str = "fold"):
    """Gathers between layouts: kernel = pub[ia] * wa + pub[ib] * wb; public = kernel[back] * wback.

    Kinds of kernel rows: "pair" (i < j) stands for x_i x_j and x_j x_i at once: kernel (q_i q_j / 4)(k_i k_j / 4)
    against public c2^2 over both orders, so kernel = (pub[ij] + pub[ji]) / sqrt 2 and pub[ij] = pub[ji] =
    kernel / sqrt 2. "ordered" (i, j) and "square": kernel (1/4)(1/8) against c2^2, so kernel = pub / sqrt 2.
    Linear and constant rows equal the public rows; "zero" rows hold nothing.
    """
    r2 = math.sqrt(2.0)
    ia, ib, wa, wb = [], [], [], []
    back, wback = [0] * STATE_DIM, [0.0] * STATE_DIM
    for n, (kind, i, j) in enumerate(VARIANTS[variant].slot_table()):
        if kind == "pair":
            ia.append(17 + 16 * i + j), ib.append(17 + 16 * j + i), wa.append(1 / r2), wb.append(1 / r2)
            back[17 + 16 * i + j] = back[17 + 16 * j + i] = n
            wback[17 + 16 * i + j] = wback[17 + 16 * j + i] = 1 / r2
        elif kind == "zero":
            ia.append(0), ib.append(0), wa.append(0.0), wb.append(0.0)
        else:
            row, w_in = {"square": (17 + 17 * i, 1 / r2), "ordered": (17 + 16 * i + j, 1 / r2), "linear": (1 + i, 1.0),
                         "const": (0, 1.0)}[kind]
            ia.append(row), ib.append(row), wa.append(w_in), wb.append(0.0)
            back[row], wback[row] = n, 1 / w_in
    as_long = functools.partial(torch.tensor, dtype=torch.long, device=device)
    as_f32 = functools.partial(torch.tensor, dtype=torch.float32, device=device)
    return as_long(ia), as_long(ib), as_f32(wa)[:, None], as_f32(wb)[:, None], as_long(back), as_f32(wback)[:, None]


def to_kernel_layout(kv: torch.Tensor, variant: str = "fold") -> torch.Tensor:
    """Public kv [..., 273, Dv] -> the kernel's [..., slots, Dv] (same phi(q) . kv for every q)."""
    ia, ib, wa, wb, _, _ = _conversion(kv.device, variant)
    return kv.index_select(-2, ia) * wa + kv.index_select(-2, ib) * wb


def from_kernel_layout(kv: torch.Tensor, variant: str = "fold") -> torch.Tensor:
    """The kernel's [..., slots, Dv] -> public [..., 273, Dv] (a "pair" row gives equal x_i x_j and x_j x_i rows)."""
    _, _, _, _, back, wback = _conversion(kv.device, variant)
    return kv.index_select(-2, back) * wback


# ----------------------------------------------------------------------------------------------
# Launching


# (BT, BV, num_warps, num_stages). Fold: read off the sm_90a compiler's report (BV 64 shares the features
# over the whole head but spills some registers; BT 32 uses mma.sync and spills none). The autotuner times a
# variant's configs on the real shape; JRT_BASED_TRITON_CONFIG pins one.
_CONFIGS_16BIT = [(64, 64, 8, 1), (64, 32, 8, 1), (32, 32, 8, 1), (32, 64, 8, 1), (32, 32, 4, 1)]
_CONFIGS_FP32 = [(32, 32, 8, 1), (64, 32, 8, 1)]  # fp32 is for checking, not speed: compile fewer
CONFIG_ENV = "JRT_BASED_TRITON_CONFIG"  # "BT,BV,num_warps,num_stages" pins one config, no tuning
VARIANT_ENV = "JRT_BASED_TRITON_VARIANT"  # which kernel family runs (see VARIANTS)
DEFAULT_VARIANT = "fold"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One prefill kernel family: its Triton function, what its kv rows hold, its configs to tune."""

    name: str
    kernel: object
    slot_table: Callable[[], tuple]
    configs_16bit: tuple
    configs_fp32: tuple
    constexprs: tuple = ()  # extra (name, value) compile-time arguments
    table: bool = False  # whether the kernel reads triton_split.tables(name)

    @property
    def slots(self) -> int:
        return len(self.slot_table())


_SPLIT_16BIT = ((64, 64, 8, 1), (64, 64, 8, 2), (32, 64, 8, 1), (64, 32, 8, 1), (32, 32, 4, 1))
_SPLIT_FP32 = ((32, 32, 8, 1), (64, 32, 8, 1))
VARIANTS: dict[str, Variant] = {
    "fold": Variant("fold", _based_chunk_kernel, _slot_table, tuple(_CONFIGS_16BIT), tuple(_CONFIGS_FP32)),
    "grid": Variant("grid", split._based_split_kernel, functools.partial(split.slot_table, "grid"), _SPLIT_16BIT,
                    _SPLIT_FP32, (("NB", 256), ("ONEHOT", False)), table=True),
    "onehot": Variant("onehot", split._based_split_kernel, functools.partial(split.slot_table, "onehot"),
                      _SPLIT_16BIT, _SPLIT_FP32, (("NB", 128), ("ONEHOT", True)), table=True),
}


def variant_named(name: str | None = None) -> Variant:
    """``name``, else $JRT_BASED_TRITON_VARIANT, else the default; an unknown name is an error."""
    chosen = name or os.environ.get(VARIANT_ENV) or DEFAULT_VARIANT
    if chosen not in VARIANTS:
        where = "variant" if name else VARIANT_ENV
        raise JRTError(f"{where}={chosen!r}: unknown Based Triton kernel variant; choose one of {sorted(VARIANTS)}")
    return VARIANTS[chosen]


def _as_config(t: tuple) -> triton.Config:
    """(BT, BV, num_warps, num_stages[, maxnreg]); maxnreg 0 or absent: the compiler's choice."""
    extra = {"maxnreg": t[4]} if len(t) > 4 and t[4] else {}
    return triton.Config({"BT": t[0], "BV": t[1]}, num_warps=t[2], num_stages=t[3], **extra)


def parse_config(text: str) -> tuple[int, ...]:
    """'BT,BV,num_warps,num_stages[,maxnreg]' -> a config tuple."""
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in (4, 5):
        raise JRTError(f"{CONFIG_ENV}={text!r}: expected 'BT,BV,num_warps,num_stages[,maxnreg]'")
    return values


def _config_tuple(c: triton.Config) -> tuple:
    t = (c.kwargs["BT"], c.kwargs["BV"], c.num_warps, c.num_stages)
    return t + (c.maxnreg,) if getattr(c, "maxnreg", None) else t


def _pruner(variant: Variant):
    def prune(configs, named_args, **kwargs):
        """The fp32 or 16-bit list, minus value blocks wider than the value dim; or the pinned config."""
        pinned = os.environ.get(CONFIG_ENV)
        if pinned:
            return [_as_config(parse_config(pinned))]
        fp32 = named_args["q_ptr"].dtype == torch.float32
        wanted = set(variant.configs_fp32 if fp32 else variant.configs_16bit)
        dv_pow2 = max(16, triton.next_power_of_2(named_args["DV"]))
        kept = [c for c in configs if _config_tuple(c) in wanted and c.kwargs["BV"] <= max(32, dv_pow2)]
        return kept or [_as_config((32, 32, 8, 1))]
    return prune


_prune = _pruner(VARIANTS["fold"])
_KEY = ["DV", "T_BUCKET", "BH_BUCKET", "HAS_INIT", "HAS_MASK", "WRITE_O", "WRITE_STATE"]


@functools.cache
def _autotuned(name: str):
    variant = VARIANTS[name]
    configs = [_as_config(t) for t in dict.fromkeys(variant.configs_16bit + variant.configs_fp32)]
    return triton.autotune(configs=configs, key=_KEY, prune_configs_by={"early_config_prune": _pruner(variant)})(
        variant.kernel)


_tuned_kernel = None if _INTERPRET else _autotuned("fold")
_last_tuned: list = []  # the autotuner used last (for last_config)
last_compiled: list = []  # the compiled kernel of the last launch with an explicit config (registers, spills)

# The interpreter (CPU tests) cannot time configs: it runs this one.
interpret_config: dict = {"BT": 32, "BV": 32}


def last_config() -> str | None:
    """The config the autotuner picked for the last shape it tuned (for benchmark reports)."""
    cfg = getattr(_last_tuned[-1] if _last_tuned else _tuned_kernel, "best_config", None)
    if cfg is None:
        return None
    reg = f" maxnreg={cfg.maxnreg}" if getattr(cfg, "maxnreg", None) else ""
    return f"BT={cfg.kwargs['BT']} BV={cfg.kwargs['BV']} warps={cfg.num_warps} stages={cfg.num_stages}{reg}"


def _launch(q, k, v, o, mask_u8, kv_in, z_in, kv_out, z_out, seg_len, nseg, eps, write_o, write_state,
            variant: Variant, config: tuple | None = None):
    B, T, H, _ = q.shape
    DV = v.shape[-1]
    # fp16 runs its dots in bf16: a long prompt's summed state and (q.k)^2 can pass fp16's range.
    # Triton 3.9's CPU interpreter computes garbage for bf16 arithmetic (loads, stores and casts are
    # right), so there the 16-bit path runs the same code with fp16 operands.
    dt = tl.float32 if q.dtype == torch.float32 else (tl.float16 if _INTERPRET else tl.bfloat16)
    xdt = tl.float32 if (_INTERPRET or q.dtype == torch.float32) else _TL_DTYPES[q.dtype]
    prec = "ieee" if _INTERPRET else "tf32x3"  # only used by fp32 dots: about fp32's accuracy
    o_arg = o if o is not None else v  # never written when write_o is False
    args = [q, k, v, o_arg, mask_u8 if mask_u8 is not None else q,
            kv_in if kv_in is not None else q, z_in if z_in is not None else q,
            kv_out if kv_out is not None else q, z_out if z_out is not None else q]
    if variant.table:
        args.append(split.tables(variant.name, q.device))
    args += [T, H, DV, seg_len, nseg,
             q.stride(0), q.stride(1), q.stride(2),
             k.stride(0), k.stride(1), k.stride(2),
             v.stride(0), v.stride(1), v.stride(2),
             o_arg.stride(0), o_arg.stride(1), o_arg.stride(2),
             float(eps), max(T - 1, 1).bit_length(), max(B * H - 1, 1).bit_length()]
    meta = dict(HAS_INIT=kv_in is not None, HAS_MASK=mask_u8 is not None, WRITE_O=write_o,
                WRITE_STATE=write_state, DT=dt, XDT=xdt, PREC=prec, **dict(variant.constexprs))
    if _INTERPRET:
        bv = min(interpret_config["BV"], max(16, triton.next_power_of_2(DV)))
        grid = (triton.cdiv(DV, bv), B * H, nseg)
        variant.kernel[grid](*args, **meta, BT=interpret_config["BT"], BV=bv)
    elif config is not None:
        bt, bv, warps, stages = config[:4]
        extra = {"maxnreg": config[4]} if len(config) > 4 and config[4] else {}
        compiled = variant.kernel[(triton.cdiv(DV, bv), B * H, nseg)](*args, **meta, BT=bt, BV=bv, num_warps=warps,
                                                                      num_stages=stages, **extra)
        last_compiled[:] = [compiled]
    else:
        tuned = _autotuned(variant.name)
        _last_tuned[:] = [tuned]
        grid = lambda meta: (triton.cdiv(DV, meta["BV"]), B * H, nseg)  # noqa: E731
        tuned[grid](*args, **meta)


def num_segments(batch_heads: int, T: int, device: torch.device) -> int:
    """How many pieces to cut the sequence into so that batch x heads x pieces fills the GPU.

    Segmenting costs an extra pass over k and v (about half the main pass), so it is used only
    when batch x heads leaves more than half of the multiprocessors idle.
    """
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    if 2 * batch_heads >= sms:
        return 1
    return max(1, min(triton.cdiv(2 * sms, batch_heads), T // 512))


def _check(q, k, v, initial_state, mask):
    if q.dim() != 4 or q.shape != k.shape or q.shape[-1] != FEATURE_DIM:
        raise JRTError(f"taylor_linear_attention: q and k must be [B, T, H, {FEATURE_DIM}] and equal, "
                       f"got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3] or v.shape[-1] < 1:
        raise JRTError(f"taylor_linear_attention: v must be [B, T, H, Dv] matching q {tuple(q.shape)}, "
                       f"got {tuple(v.shape)}")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise JRTError(f"taylor_linear_attention (Triton): q, k, v must share one dtype among "
                       f"{[str(d) for d in _DTYPES]}, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, T, H, _ = q.shape
    Dv = v.shape[-1]
    if mask is not None and (tuple(mask.shape) != (B, T) or mask.dtype != torch.bool):
        raise JRTError(f"taylor_linear_attention: mask must be a bool tensor [B, T] = [{B}, {T}], "
                       f"got {mask.dtype} {tuple(mask.shape)}")
    per_row = max(T * x.stride(1) for x in (q, k, v))
    if per_row >= 2 ** 31:
        raise JRTError(f"taylor_linear_attention (Triton): one batch row spans {per_row} elements (T = {T}); "
                       f"offsets inside a row are 32-bit, so T * H * Dv must stay below 2^31: split the prompt")
    if initial_state is not None:
        kv, ksum = initial_state
        if tuple(kv.shape) != (B, H, STATE_DIM, Dv) or tuple(ksum.shape) != (B, H, STATE_DIM):
            raise JRTError(f"taylor_linear_attention: initial_state must be (kv [B, H, {STATE_DIM}, Dv], "
                           f"ksum [B, H, {STATE_DIM}]) = ([{B}, {H}, {STATE_DIM}, {Dv}], [{B}, {H}, {STATE_DIM}]), "
                           f"got {tuple(kv.shape)} and {tuple(ksum.shape)}")


def _new_output(v: torch.Tensor) -> torch.Tensor:
    """The output buffer (a hook: the GPU tests fill it with NaN first)."""
    return torch.empty_like(v)


def _keep_padded_rows(state, initial_state, mask):
    """Rows with no real token return their initial state bit for bit (the layout conversion rounds)."""
    if state is None or mask is None or initial_state is None:
        return state
    dead = ~mask.any(1)
    if not bool(dead.any()):
        return state
    kv, z = state
    kv0, z0 = (t.to(device=kv.device, dtype=torch.float32) for t in initial_state)
    return (torch.where(dead[:, None, None, None], kv0, kv), torch.where(dead[:, None, None], z0, z))


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def taylor_linear_attention(q, k, v, initial_state=None, mask=None, eps=1e-6, output_final_state=True,
                            *, segments: int | None = None, variant: str | None = None,
                            config: tuple | None = None):
    """Causal Taylor linear attention over a prompt, continuing from ``initial_state``.

    q, k: [B, T, H, 16]; v: [B, T, H, Dv]; initial_state: (kv [B, H, 273, Dv], ksum [B, H, 273]) fp32
    or None; mask: [B, T] bool (False = left pad: it leaves the state untouched, its output is 0).
    Returns (o [B, T, H, Dv] in v's dtype, (kv, ksum) or None); the returned kv has equal
    x_i x_j and x_j x_i rows. ``segments`` forces the number of sequence pieces run in parallel
    (None: chosen from the GPU's size). ``variant``: the kernel family (None: $JRT_BASED_TRITON_VARIANT or
    DEFAULT_VARIANT); ``config``: (BT, BV, num_warps, num_stages[, maxnreg]) run as given, without autotuning.
    """
    _check(q, k, v, initial_state, mask)
    var = variant_named(variant)
    slots = var.slots
    B, T, H, _ = q.shape
    Dv = v.shape[-1]
    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    dev = q.device
    o = _new_output(v)
    if T == 0:
        if not output_final_state:
            return o, None
        if initial_state is None:
            return o, (v.new_zeros(B, H, STATE_DIM, Dv, dtype=torch.float32),
                       v.new_zeros(B, H, STATE_DIM, dtype=torch.float32))
        return o, tuple(t.to(device=dev, dtype=torch.float32).clone() for t in initial_state)
    kv0 = z0 = None
    if initial_state is not None:
        kv0 = to_kernel_layout(initial_state[0].to(device=dev, dtype=torch.float32), var.name).contiguous()
        z0 = initial_state[1].to(device=dev, dtype=torch.float32).contiguous()
    mask_u8 = mask.to(device=dev).view(torch.uint8).contiguous() if mask is not None else None

    nseg = segments if segments is not None else num_segments(B * H, T, dev)
    seg_len = triton.cdiv(triton.cdiv(T, max(1, nseg)), 64) * 64
    nseg = triton.cdiv(T, seg_len)

    if nseg == 1:
        kv_out = z_out = None
        if output_final_state:
            kv_out = torch.empty(B, H, slots, Dv, device=dev, dtype=torch.float32)
            z_out = torch.empty(B, H, STATE_DIM, device=dev, dtype=torch.float32)
        _launch(q, k, v, o, mask_u8, kv0, z0, kv_out, z_out, seg_len, 1, eps, True, output_final_state, var, config)
        if not output_final_state:
            return o, None
        return o, _keep_padded_rows((from_kernel_layout(kv_out, var.name), z_out), initial_state, mask)

    # 1) each segment's own sum of phi(k)^T v and of phi(k)
    part_kv = torch.empty(B * H, nseg, slots, Dv, device=dev, dtype=torch.float32)
    part_z = torch.empty(B * H, nseg, STATE_DIM, device=dev, dtype=torch.float32)
    _launch(q, k, v, None, mask_u8, None, None, part_kv, part_z, seg_len, nseg, eps, False, True, var, config)
    # 2) state entering each segment = initial + sum of the segments before it
    cum_kv, cum_z = part_kv.cumsum(1), part_z.cumsum(1)
    start_kv = torch.cat([torch.zeros_like(cum_kv[:, :1]), cum_kv[:, :-1]], 1)
    start_z = torch.cat([torch.zeros_like(cum_z[:, :1]), cum_z[:, :-1]], 1)
    if kv0 is not None:
        start_kv += kv0.view(B * H, 1, slots, Dv)
        start_z += z0.view(B * H, 1, STATE_DIM)
    # 3) all segments at once, each from its own starting state
    _launch(q, k, v, o, mask_u8, start_kv, start_z, None, None, seg_len, nseg, eps, True, False, var, config)
    if not output_final_state:
        return o, None
    kv_fin, z_fin = cum_kv[:, -1], cum_z[:, -1]
    if kv0 is not None:
        kv_fin = kv_fin + kv0.view(B * H, slots, Dv)
        z_fin = z_fin + z0.view(B * H, STATE_DIM)
    state = (from_kernel_layout(kv_fin.reshape(B, H, slots, Dv), var.name), z_fin.reshape(B, H, STATE_DIM))
    return o, _keep_padded_rows(state, initial_state, mask)
