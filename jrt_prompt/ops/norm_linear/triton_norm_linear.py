"""Norm + matrix-vector product in one Triton launch, for decode steps of one row.

Each program owns ``BLOCK_N`` output features. It loads its whole [BLOCK_N, K] slice of the weight first (the
only large read; all of it in flight at once), then normalises the input row itself (K values: every program
repeats this small piece of work, which the weight's latency hides) and takes the dot products in float32.
Program 0 also writes the residual sum. With programmatic dependent launch (``ops.pdl``) the weight loads are
issued before the wait for the previous launch, so they overlap its tail. The kernels loop over rows (the tests
use up to 4), but dispatch sends them one row only (``MAX_ROWS``, measured below). Rounding as the references:
``ops.norm.naive`` then ``F.linear``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..norm.triton_norm import _TL, _out_dtype
from ..pdl import pdl_launch

# Measured on an H100 (benchmarks/decode_kernels.py, 2026-11-24): at one row, over 48 layers' weights, norm +
# in_proj 7.8 -> 4.3 us and gated norm + out_proj 7.9 -> 2.7 us (Mamba-2 370M); at 4 rows the row loop made the
# fused kernels 2x slower than our norm kernel + cuBLAS, so they take one row only.
MAX_ROWS = 1
MAX_K = 8192
TILE = 16384  # weight elements per program: BLOCK_N = TILE // next_pow2(K) (16 for K = 1024, 8 for 2048)


@triton.jit
def _add_norm_linear_kernel(x_ptr, y_ptr, nw_ptr, w_ptr, b_ptr, r_ptr, o_ptr, M, N, K,
                            stride_x, stride_y, stride_r, stride_w, stride_o, eps,
                            ADD: tl.constexpr, CAST: tl.constexpr, NORM_OUT: tl.constexpr, HF: tl.constexpr,
                            HAS_NW: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    nmask = offs_n < N
    kmask = offs_k < K
    w = tl.load(w_ptr + offs_n[:, None].to(tl.int64) * stride_w + offs_k[None, :],
                mask=nmask[:, None] & kmask[None, :], other=0.0)
    nw = tl.zeros([BLOCK_K], dtype=tl.float32) + 1.0
    if HAS_NW:
        nw = tl.load(nw_ptr + offs_k, mask=kmask, other=0.0).to(tl.float32)
    bias = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
    if PDL:  # the rows are read only once the previous launch has finished (the weights are in flight)
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    for m in range(M):
        x = tl.load(x_ptr + m * stride_x + offs_k, mask=kmask, other=0.0)
        if ADD:
            x = x.to(r_ptr.dtype.element_ty).to(tl.float32)
            x = (x + tl.load(y_ptr + m * stride_y + offs_k, mask=kmask, other=0.0).to(tl.float32))
            x = x.to(r_ptr.dtype.element_ty)
            if pid == 0:
                tl.store(r_ptr + m * stride_r + offs_k, x, mask=kmask)
        x = x.to(CAST).to(tl.float32)
        xn = x / tl.sqrt(tl.sum(x * x, axis=0) / K + eps)
        if HF:
            xn = xn.to(CAST).to(tl.float32)
        xn = (xn * nw).to(NORM_OUT).to(tl.float32)
        acc = tl.sum(w.to(tl.float32) * xn[None, :], axis=1) + bias
        tl.store(o_ptr + m * stride_o + offs_n, acc.to(o_ptr.dtype.element_ty), mask=nmask)


@triton.jit
def _gated_norm_linear_kernel(y_ptr, z_ptr, nw_ptr, w_ptr, b_ptr, o_ptr, M, N, GS, G,
                              stride_y, stride_z, stride_w, stride_o, eps,
                              HAS_NW: tl.constexpr, GATE_FIRST: tl.constexpr, HAS_BIAS: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_GS: tl.constexpr,
                              PDL: tl.constexpr):
    """The input row as [group, channel] (BLOCK_G x BLOCK_GS, padded), the weight's columns in the same order."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    offs_d = tl.arange(0, BLOCK_G * BLOCK_GS)
    col = (offs_d // BLOCK_GS) * GS + offs_d % BLOCK_GS
    dmask = (offs_d % BLOCK_GS < GS) & (offs_d // BLOCK_GS < G)
    w = tl.load(w_ptr + offs_n[:, None].to(tl.int64) * stride_w + col[None, :],
                mask=nmask[:, None] & dmask[None, :], other=0.0)
    offs_g = tl.arange(0, BLOCK_G)
    offs_j = tl.arange(0, BLOCK_GS)
    col2 = offs_g[:, None] * GS + offs_j[None, :]
    mask2 = (offs_g[:, None] < G) & (offs_j[None, :] < GS)
    nw = tl.zeros([BLOCK_G, BLOCK_GS], dtype=tl.float32) + 1.0
    if HAS_NW:
        nw = tl.load(nw_ptr + col2, mask=mask2, other=0.0).to(tl.float32)
    bias = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    for m in range(M):
        h = tl.load(y_ptr + m * stride_y + col2, mask=mask2, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + m * stride_z + col2, mask=mask2, other=0.0).to(tl.float32)
        gate = z / (1.0 + tl.exp(-z))
        if HAS_NW:
            if GATE_FIRST:
                h = h * gate
            h = h / tl.sqrt(tl.sum(h * h, axis=1) / GS + eps)[:, None] * nw
            if not GATE_FIRST:
                h = h * gate
        else:
            h = h * gate
        xn = tl.reshape(h.to(y_ptr.dtype.element_ty).to(tl.float32), [BLOCK_G * BLOCK_GS])
        acc = tl.sum(w.to(tl.float32) * xn[None, :], axis=1) + bias
        tl.store(o_ptr + m * stride_o + offs_n, acc.to(o_ptr.dtype.element_ty), mask=nmask)


def _rows(x: torch.Tensor) -> int:
    return x.numel() // max(1, x.shape[-1])


def _weight_ok(weight, bias, k: int) -> bool:
    return (weight.dim() == 2 and weight.shape[1] == k and weight.stride(1) == 1 and weight.dtype in _TL
            and (bias is None or (bias.dtype in _TL and bias.shape == (weight.shape[0],))) and k <= MAX_K)


def _res_dtype(h, y, residual_fp32: bool) -> torch.dtype:
    if y is None:
        return h.dtype
    return torch.promote_types(torch.float32 if residual_fp32 else h.dtype, y.dtype)


def supported_add(h, y, norm_weight, weight, bias, cast, *, residual_fp32, hf_rounding, out_dtype) -> bool:
    k = h.shape[-1]
    dtype = cast or _res_dtype(h, y, residual_fp32)
    return (0 < _rows(h) <= MAX_ROWS and h.dtype in _TL and dtype in _TL and _weight_ok(weight, bias, k)
            and (y is None or (y.shape == h.shape and y.dtype in _TL))
            and (norm_weight is None or norm_weight.dtype in _TL)
            and _out_dtype(dtype, norm_weight, hf_rounding, out_dtype) == weight.dtype)


def supported_gated(y, z, norm_weight, group_size, weight, bias) -> bool:
    d = y.shape[-1]
    return (0 < _rows(y) <= MAX_ROWS and y.shape == z.shape and y.dtype == weight.dtype and z.dtype in _TL
            and d % group_size == 0 and _weight_ok(weight, bias, d)
            and (norm_weight is None or norm_weight.dtype in _TL))


def _matrix(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _block_n(n: int, block_k: int, block_n: int | None) -> int:
    return block_n or max(1, min(64, TILE // block_k, triton.next_power_of_2(n)))


def add_rms_norm_linear(h, y, norm_weight, eps, weight, bias=None, *, hf_rounding: bool, residual_fp32: bool,
                        cast=None, out_dtype=None, block_n: int | None = None, num_warps: int = 4):
    """Same contract as ``naive.add_rms_norm_linear``; ``block_n`` and ``num_warps`` override the launch (for
    benchmarks)."""
    N, K = weight.shape
    add = y is not None
    res_dtype = _res_dtype(h, y, residual_fp32)
    dtype = cast or res_dtype
    h2 = _matrix(h)
    y2 = _matrix(y) if add else h2
    res = torch.empty(h2.shape, device=h.device, dtype=res_dtype) if add else h2
    out = torch.empty(h2.shape[0], N, device=h.device, dtype=weight.dtype)
    block_k = triton.next_power_of_2(K)
    bn = _block_n(N, block_k, block_n)
    _add_norm_linear_kernel[(triton.cdiv(N, bn),)](
        h2, y2, norm_weight if norm_weight is not None else h2, weight, bias if bias is not None else weight, res,
        out, h2.shape[0], N, K, h2.stride(0), y2.stride(0), res.stride(0), weight.stride(0), out.stride(0),
        float(eps), ADD=add, CAST=_TL[dtype], NORM_OUT=_TL[_out_dtype(dtype, norm_weight, hf_rounding, out_dtype)],
        HF=hf_rounding, HAS_NW=norm_weight is not None, HAS_BIAS=bias is not None, BLOCK_N=bn, BLOCK_K=block_k,
        num_warps=num_warps, **pdl_launch(h.device))
    return (res.view(h.shape) if add else h), out.view(*h.shape[:-1], N)


def gated_rms_norm_linear(y, z, norm_weight, group_size: int, eps: float, norm_before_gate: bool, weight,
                          bias=None, *, block_n: int | None = None, num_warps: int = 4):
    """Same contract as ``naive.gated_rms_norm_linear``; ``block_n`` and ``num_warps`` as above."""
    N, D = weight.shape
    y2, z2 = _matrix(y), _matrix(z)
    out = torch.empty(y2.shape[0], N, device=y.device, dtype=weight.dtype)
    groups = D // group_size
    block_g, block_gs = triton.next_power_of_2(groups), triton.next_power_of_2(group_size)
    bn = _block_n(N, block_g * block_gs, block_n)
    _gated_norm_linear_kernel[(triton.cdiv(N, bn),)](
        y2, z2, norm_weight if norm_weight is not None else y2, weight, bias if bias is not None else weight, out,
        y2.shape[0], N, group_size, groups, y2.stride(0), z2.stride(0), weight.stride(0), out.stride(0), float(eps),
        HAS_NW=norm_weight is not None, GATE_FIRST=not norm_before_gate, HAS_BIAS=bias is not None, BLOCK_N=bn,
        BLOCK_G=block_g, BLOCK_GS=block_gs, num_warps=num_warps, **pdl_launch(y.device))
    return out.view(*y.shape[:-1], N)
