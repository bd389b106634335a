"""Triton prefill for Based's Taylor linear attention, with the recurrent state in and out.

Why ours: fla's Based kernels neither take an initial state nor return the final one, so they
cannot hand a prompt over to a decoder. The kernel (``triton_split._based_split_kernel``) walks the
sequence in chunks of ``BT`` tokens and keeps the fp32 state of one (batch, head, value block) in
registers for the whole walk:

    chunk : num = phi(q) . S  +  causal(1 + s + s^2/2) @ v     with s = q k^T / 4 inside the chunk
            den = phi(q) . z  +  row sums of that causal matrix
            S += phi(k)^T v,   z += sum phi(k)

Variants (``VARIANTS``, chosen by ``variant=`` or $JRT_BASED_TRITON_VARIANT) differ in how the 273
public features are laid out in the kernel's state (``layout``: "fold" packs them into one 16 x 16
grid of 256 slots, below; "grid" and "onehot" are described in triton_split), in whether the next
chunk's inputs are loaded while one computes (``prefetch``), and in running as two passes
(``twopass``: a walk that writes the state entering every chunk, then all chunks' outputs at once).

The fold layout: slot (r, c) holds x_r x_c for r < c (both orders of a pair at once), x_r^2 on the
diagonal, x_r / 2 at (r, r-1), x_0 / 2 at (2, 0), the constant 1 at (3, 0), zero elsewhere. The
q side and the k side use power-of-two weights whose products give the kernel exactly (pairs 1/4
and 1/4, squares 1/4 and 1/8, so 1/16 and 1/32 = the s^2/2 coefficients), so bf16 features are
single-rounded products. The k-sum stays in the public form (z0, z1 [16], z2 as a 16 x 16 matrix
Z = c2 sum k k^T); its order-2 term is phi2(q).z2 = c2 q^T Z q, from a [BT, 16] x [16, 16] dot.
The wrapper converts the state between a variant's layout and the public one
(kv [B, H, 273, Dv] over (1, x/2, vec(x x^T)/(4 sqrt 2))).

When batch x heads is too small to fill the GPU the sequence is also cut into segments: one pass
sums each segment's phi(k)^T v and phi(k) (no outputs), a prefix sum gives each segment its
starting state, and a second pass runs all segments in parallel.

What limits it (H100 sweep, benchmarks/based_kernel_sweep.py, BENCHMARKS.md; sm_90a reports): the
compiler gives every variant 255 registers, so one program (8 warps) runs per SM and each chunk's
dots wait one after the other (fold 64/64/8: ~2350 SASS instructions per warp per chunk, ~6.5 us per
chunk, about 1.5 of 4 instructions issued per cycle). Spilling to reach two programs per SM (maxnreg
128, 16 warps) was 2-3x slower; value blocks of 32 double the feature work and were 2x slower;
prefetching the next chunk gained 10%; the two-pass form gained 16% but moves 20 KB of state per
chunk through memory. Next: fewer instructions per chunk for the features (they, not the products,
dominate), and the state written every 2 chunks in the two-pass form (in the sweep).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import torch
import triton
import triton.language as tl

from jrt_prompt.errors import JRTError

from . import triton_ksplit as ksplit
from . import triton_split as split

FEATURE_DIM = 16
STATE_DIM = 1 + FEATURE_DIM + FEATURE_DIM * FEATURE_DIM  # 273, the public layout
SLOTS = 256  # the fold kernel's layout
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


# The kernels live in triton_split (one kernel, three feature layouts: FEAT "fold", "grid", "onehot").
_based_chunk_kernel = split._based_split_kernel


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
CONFIG_ENV = "JRT_BASED_TRITON_CONFIG"  # "BT,BV,num_warps,num_stages[,...]" pins one config (parse_config)
VARIANT_ENV = "JRT_BASED_TRITON_VARIANT"  # which kernel family runs (see VARIANTS)
# foldp: on an H100 (B16 H16 Dv64 bf16, T = 65536) 13.4 ms against fold's 14.9 ms, same structure (segments
# for small batch x heads). twopass1h was faster there (12.5 ms) but walks each (batch, head) alone, so it is
# slow when batch x heads is small: opt in with JRT_BASED_TRITON_VARIANT=twopass1h.
DEFAULT_VARIANT = "foldp"
# With many (batch, head) pairs the two-pass kernel fills the GPU with one walk each and is the fastest: on an H100
# (B16 H16 Dv64 bf16, T = 65536, 2026-11-24) twopass1h 64,64,4 with the state every 2 chunks took 9.0 ms against
# foldp's 13.5 ms. With few pairs its walk is serial, so below WIDE_MIN_PAIRS the default runs.
WIDE_VARIANT, WIDE_MIN_PAIRS = "twopass1h", 128


@dataclasses.dataclass(frozen=True)
class Variant:
    """One prefill kernel family: its feature layout, whether it prefetches the next chunk, whether its state
    is held in bands (``ksplit``) or it runs as two passes, and its configs to tune."""

    name: str
    layout: str  # "fold", "grid" or "onehot" (FEAT)
    configs_16bit: tuple = ()
    configs_fp32: tuple = ()
    prefetch: bool = False
    twopass: bool = False  # a state walk writing every chunk's state, then all chunks' outputs in parallel
    default_config: tuple = ()  # twopass: no autotuning, this config unless one is given
    ksplit: bool = False  # the fold layout's state as four bands of 64 slots (triton_ksplit)

    @property
    def kernel(self):
        return ksplit._based_ksplit_kernel if self.ksplit else split._based_split_kernel

    def slot_table(self) -> tuple:
        return _slot_table() if self.layout == "fold" else split.slot_table(self.layout)

    @property
    def slots(self) -> int:
        return len(self.slot_table())

    @property
    def constexprs(self) -> tuple:
        return (("NB", 128 if self.layout == "onehot" else 256), ("FEAT", self.layout), ("PREFETCH", self.prefetch))

    def table(self, device: torch.device) -> torch.Tensor | None:
        return None if self.layout == "fold" else split.tables(self.layout, device)


_SPLIT_16BIT = ((64, 64, 8, 1), (32, 64, 8, 1), (64, 32, 8, 1), (32, 32, 8, 1), (32, 32, 4, 1))
_SPLIT_FP32 = ((32, 32, 8, 1), (64, 32, 8, 1))
VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("fold", "fold", tuple(_CONFIGS_16BIT), tuple(_CONFIGS_FP32)),
    Variant("foldp", "fold", tuple(_CONFIGS_16BIT), tuple(_CONFIGS_FP32), prefetch=True),
    Variant("grid", "grid", _SPLIT_16BIT, _SPLIT_FP32),
    Variant("gridp", "grid", _SPLIT_16BIT, _SPLIT_FP32, prefetch=True),
    Variant("onehot", "onehot", _SPLIT_16BIT, _SPLIT_FP32),
    Variant("onehotp", "onehot", _SPLIT_16BIT, _SPLIT_FP32, prefetch=True),
    Variant("foldk", "fold", tuple(_CONFIGS_16BIT), tuple(_CONFIGS_FP32), ksplit=True),
    Variant("foldkp", "fold", tuple(_CONFIGS_16BIT), tuple(_CONFIGS_FP32), prefetch=True, ksplit=True),
    Variant("twopass", "fold", prefetch=True, twopass=True, default_config=(64, 64, 8, 1, 0, 64, 8, 1)),
    Variant("twopass1h", "onehot", prefetch=True, twopass=True, default_config=(64, 64, 4, 1, 0, 64, 8, 1, 2)),
]}


def auto_variant(batch_heads: int) -> str | None:
    """The variant chosen when none is given or pinned: WIDE_VARIANT for many (batch, head) pairs, else None
    (the default)."""
    if os.environ.get(VARIANT_ENV) or batch_heads < WIDE_MIN_PAIRS:
        return None
    return WIDE_VARIANT


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
    """'BT,BV,num_warps,num_stages[,maxnreg[,walk BV,walk num_warps[,pieces per program[,chunks per piece]]]]'
    -> a config tuple (the last four only mean something to the two-pass variants, see _twopass)."""
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        values = ()
    if not 4 <= len(values) <= 9 or len(values) == 6:
        raise JRTError(f"{CONFIG_ENV}={text!r}: expected 'BT,BV,num_warps,num_stages[,maxnreg[,walk BV,walk "
                       f"num_warps[,pieces per program[,chunks per piece]]]]'")
    return values


def _config_tuple(c: triton.Config) -> tuple:
    t = (c.kwargs["BT"], c.kwargs["BV"], c.num_warps, c.num_stages)
    return t + (c.maxnreg,) if getattr(c, "maxnreg", None) else t


def _pruner(variant: Variant):
    def prune(configs, named_args, **kwargs):
        """The fp32 or 16-bit list, minus value blocks wider than the value dim; or the pinned config."""
        pinned = os.environ.get(CONFIG_ENV)
        if pinned:
            return [_as_config(parse_config(pinned)[:5])]
        fp32 = named_args["q_ptr"].dtype == torch.float32
        wanted = set(variant.configs_fp32 if fp32 else variant.configs_16bit)
        dv_pow2 = max(16, triton.next_power_of_2(named_args["DV"]))
        kept = [c for c in configs if _config_tuple(c) in wanted and c.kwargs["BV"] <= max(32, dv_pow2)]
        return kept or [_as_config((32, 32, 8, 1))]
    return prune


_KEY = ["DV", "T_BUCKET", "BH_BUCKET", "HAS_INIT", "HAS_MASK", "WRITE_O", "WRITE_STATE"]


@functools.cache
def _autotuned(name: str):
    variant = VARIANTS[name]
    configs = [_as_config(t) for t in dict.fromkeys(variant.configs_16bit + variant.configs_fp32)]
    return triton.autotune(configs=configs, key=_KEY, prune_configs_by={"early_config_prune": _pruner(variant)})(
        variant.kernel)


_tuned_kernel = None if _INTERPRET else _autotuned(DEFAULT_VARIANT)
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


def _dtypes(q):
    """(DT, XDT, PREC): fp16 runs its dots in bf16 (a long prompt's summed state and (q.k)^2 can pass fp16's
    range). Triton 3.9's CPU interpreter computes garbage for bf16 arithmetic (loads, stores and casts are
    right), so there the 16-bit path runs the same code with fp16 operands."""
    dt = tl.float32 if q.dtype == torch.float32 else (tl.float16 if _INTERPRET else tl.bfloat16)
    xdt = tl.float32 if (_INTERPRET or q.dtype == torch.float32) else _TL_DTYPES[q.dtype]
    prec = "ieee" if _INTERPRET else "tf32x3"  # only used by fp32 dots: about fp32's accuracy
    return dt, xdt, prec


def _strides(*tensors) -> list[int]:
    return [n for x in tensors for n in (x.stride(0), x.stride(1), x.stride(2))]


def _run(kernel, grid, args, meta, config: tuple | None):
    """Launches with ``config`` (BT, BV, num_warps, num_stages[, maxnreg]); records the compiled kernel."""
    bt, bv, warps, stages = config[:4]
    extra = {"maxnreg": config[4]} if len(config) > 4 and config[4] else {}
    compiled = kernel[grid](*args, **meta, BT=bt, BV=bv, num_warps=warps, num_stages=stages, **extra)
    last_compiled[:] = [compiled]


def _launch(q, k, v, o, mask_u8, kv_in, z_in, kv_out, z_out, seg_len, nseg, eps, write_o, write_state,
            variant: Variant, config: tuple | None = None, chunks: tuple | None = None, every: int = 1):
    """The fused kernel over ``nseg`` segments; ``chunks`` = (ck, cz): also write the state entering every
    ``every``-th chunk."""
    B, T, H, _ = q.shape
    DV = v.shape[-1]
    dt, xdt, prec = _dtypes(q)
    o_arg = o if o is not None else v  # never written when write_o is False
    args = [q, k, v, o_arg, mask_u8 if mask_u8 is not None else q,
            kv_in if kv_in is not None else q, z_in if z_in is not None else q,
            kv_out if kv_out is not None else q, z_out if z_out is not None else q]
    table = variant.table(q.device)
    args += [table if table is not None else q, *(chunks if chunks is not None else (q, q))]
    args += [T, H, DV, seg_len, nseg, *_strides(q, k, v, o_arg),
             float(eps), max(T - 1, 1).bit_length(), max(B * H - 1, 1).bit_length()]
    meta = dict(HAS_INIT=kv_in is not None, HAS_MASK=mask_u8 is not None, WRITE_O=write_o,
                WRITE_STATE=write_state, DT=dt, XDT=xdt, PREC=prec, **dict(variant.constexprs))
    if chunks is not None:
        meta.update(WRITE_CHUNKS=True, CK_EVERY=every)
    if _INTERPRET:
        bv = min(interpret_config["BV"], max(16, triton.next_power_of_2(DV)))
        grid = (triton.cdiv(DV, bv), B * H, nseg)
        variant.kernel[grid](*args, **meta, BT=interpret_config["BT"], BV=bv)
    elif config is not None:
        _run(variant.kernel, (triton.cdiv(DV, config[1]), B * H, nseg), args, meta, config)
    else:
        tuned = _autotuned(variant.name)
        _last_tuned[:] = [tuned]
        grid = lambda meta: (triton.cdiv(DV, meta["BV"]), B * H, nseg)  # noqa: E731
        tuned[grid](*args, **meta)


def _twopass(q, k, v, o, mask_u8, kv_in, z_in, eps, output_final_state, variant: Variant, config: tuple | None):
    """Two kernels: one walk per (batch, head) sums the state and writes the state entering every chunk (in
    the operand dtype: the product reads it in that dtype anyway), then every chunk's outputs in parallel.
    config: (BT, BV, num_warps, num_stages[, maxnreg[, walk BV, walk num_warps[, pieces per program[, SUB]]]]),
    the first five for the output kernel; BT is the chunk of both; the walk writes the state every SUB (1 or
    2) chunks and an output program reads SUB chunks from it."""
    B, T, H, _ = q.shape
    DV = v.shape[-1]
    dev = q.device
    pinned = os.environ.get(CONFIG_ENV)
    config = tuple(config or (parse_config(pinned) if pinned else variant.default_config))
    bt = interpret_config["BT"] if _INTERPRET else config[0]
    walk = (bt, config[5] if len(config) > 5 else 64, config[6] if len(config) > 6 else 8, 1)
    per_program = config[7] if len(config) > 7 else 1
    sub = config[8] if len(config) > 8 else 1
    nchunks = triton.cdiv(T, bt * sub)
    ck_dtype = torch.float32 if q.dtype == torch.float32 else torch.bfloat16
    ck = torch.empty(B * H, nchunks, variant.slots, DV, device=dev, dtype=ck_dtype)
    cz = torch.empty(B * H, nchunks, STATE_DIM, device=dev, dtype=torch.float32)
    kv_out = z_out = None
    if output_final_state:
        kv_out = torch.empty(B, H, variant.slots, DV, device=dev, dtype=torch.float32)
        z_out = torch.empty(B, H, STATE_DIM, device=dev, dtype=torch.float32)
    _launch(q, k, v, None, mask_u8, kv_in, z_in, kv_out, z_out, T, 1, eps, False, output_final_state, variant,
            walk, chunks=(ck, cz), every=sub)
    dt, xdt, prec = _dtypes(q)
    table = variant.table(dev)
    args = [q, k, v, o, mask_u8 if mask_u8 is not None else q, ck, cz, table if table is not None else q,
            T, H, DV, nchunks, *_strides(q, k, v, o), float(eps)]
    meta = dict(HAS_MASK=mask_u8 is not None, DT=dt, XDT=xdt, PREC=prec, G=per_program, SUB=sub,
                **{k: v for k, v in variant.constexprs if k != "PREFETCH"})
    if _INTERPRET:
        bv = min(interpret_config["BV"], max(16, triton.next_power_of_2(DV)))
        grid = (triton.cdiv(DV, bv), B * H, triton.cdiv(nchunks, per_program))
        split._based_chunk_out_kernel[grid](*args, **meta, BT=bt, BV=bv)
    else:
        grid = (triton.cdiv(DV, config[1]), B * H, triton.cdiv(nchunks, per_program))
        _run(split._based_chunk_out_kernel, grid, args, meta, config)
    return (kv_out, z_out) if output_final_state else None


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
    dead = ~mask.any(1)  # no host check of dead.any(): a prefill captured in a CUDA graph cannot sync
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
    (None: chosen from the GPU's size). ``variant``: the kernel family (None: $JRT_BASED_TRITON_VARIANT, else
    WIDE_VARIANT for at least WIDE_MIN_PAIRS (batch, head) pairs, else DEFAULT_VARIANT); ``config``: (BT, BV,
    num_warps, num_stages[, maxnreg]) run as given, without autotuning.
    """
    _check(q, k, v, initial_state, mask)
    B, T, H, _ = q.shape
    var = variant_named(variant or (auto_variant(B * H) if config is None else None))
    slots = var.slots
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

    if var.twopass:
        state = _twopass(q, k, v, o, mask_u8, kv0, z0, eps, output_final_state, var, config)
        if state is None:
            return o, None
        return o, _keep_padded_rows((from_kernel_layout(state[0], var.name), state[1]), initial_state, mask)
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
