"""RMSNorm in one Triton launch per call (one program per row), with the input cast folded in.

A decode step calls a norm twice per layer on one row; as PyTorch ops that is ~7 kernels each (cast, square,
mean, add, rsqrt, multiply, cast, scale). Rounding as ``naive.rms_norm``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _rms_norm_kernel(x_ptr, y_ptr, w_ptr, r_ptr, o_ptr, D, stride_x, stride_y, stride_r, stride_o, eps,
                     ADD: tl.constexpr, CAST: tl.constexpr, BLOCK: tl.constexpr, HAS_W: tl.constexpr,
                     HF: tl.constexpr):
    """One row: with ADD, r = x + y (rounded to r's dtype) is stored and normalised; else x is normalised."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < D
    x = tl.load(x_ptr + row * stride_x + offs, mask=m, other=0.0)
    if ADD:
        x = x.to(r_ptr.dtype.element_ty).to(tl.float32)
        x = (x + tl.load(y_ptr + row * stride_y + offs, mask=m, other=0.0).to(tl.float32)).to(r_ptr.dtype.element_ty)
        tl.store(r_ptr + row * stride_r + offs, x, mask=m)
    x = x.to(CAST).to(tl.float32)
    out = x / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    if HF:
        out = out.to(CAST).to(tl.float32)
    if HAS_W:
        out = out * tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(o_ptr + row * stride_o + offs, out.to(o_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gated_norm_kernel(y_ptr, z_ptr, w_ptr, o_ptr, GS, n_groups, stride_y, stride_z, stride_o, eps,
                       BLOCK: tl.constexpr, HAS_W: tl.constexpr, GATE_FIRST: tl.constexpr):
    """One program per (row, group): norm(y * silu(z)) or norm(y) * silu(z), float32 inside."""
    pid = tl.program_id(0)
    row = (pid // n_groups).to(tl.int64)
    col = (pid % n_groups) * GS + tl.arange(0, BLOCK)
    m = tl.arange(0, BLOCK) < GS
    h = tl.load(y_ptr + row * stride_y + col, mask=m, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + row * stride_z + col, mask=m, other=0.0).to(tl.float32)
    gate = z / (1.0 + tl.exp(-z))
    if not HAS_W:
        tl.store(o_ptr + row * stride_o + col, (h * gate).to(o_ptr.dtype.element_ty), mask=m)
        return
    if GATE_FIRST:
        h = h * gate
    h = h / tl.sqrt(tl.sum(h * h, axis=0) / GS + eps) * tl.load(w_ptr + col, mask=m, other=0.0).to(tl.float32)
    if not GATE_FIRST:
        h = h * gate
    tl.store(o_ptr + row * stride_o + col, h.to(o_ptr.dtype.element_ty), mask=m)


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor | None, group_size: int, eps: float,
                   norm_before_gate: bool = False) -> torch.Tensor:
    D = y.shape[-1]
    y2, z2 = _rows(y), _rows(z)
    out = torch.empty(y2.shape, device=y.device, dtype=y.dtype)
    n_groups = D // group_size
    block = triton.next_power_of_2(group_size)
    _gated_norm_kernel[(y2.shape[0] * n_groups,)](y2, z2, weight if weight is not None else y2, out, group_size,
                                                  n_groups, y2.stride(0), z2.stride(0), out.stride(0), float(eps),
                                                  BLOCK=block, HAS_W=weight is not None,
                                                  GATE_FIRST=not norm_before_gate,
                                                  num_warps=4 if block <= 2048 else 8)
    return out.view(y.shape)


def supported(x: torch.Tensor, weight: torch.Tensor | None, cast: torch.dtype | None) -> bool:
    return (x.dtype in _TL and (cast or x.dtype) in _TL and (weight is None or weight.dtype in _TL)
            and x.shape[-1] <= 16384 and x.numel() > 0)


def _out_dtype(dtype, weight, hf_rounding, out_dtype):
    if hf_rounding:
        return torch.promote_types(weight.dtype, dtype) if weight is not None else dtype
    return out_dtype or dtype


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _launch(x2, y2, weight, res, out, eps, dtype, hf_rounding):
    D = x2.shape[-1]
    block = triton.next_power_of_2(D)
    add = y2 is not None
    _rms_norm_kernel[(x2.shape[0],)](
        x2, y2 if add else x2, weight if weight is not None else x2, res if add else out, out, D, x2.stride(0),
        y2.stride(0) if add else 0, res.stride(0) if add else 0, out.stride(0), float(eps), ADD=add,
        CAST=_TL[dtype], BLOCK=block, HAS_W=weight is not None, HF=hf_rounding, num_warps=4 if block <= 2048 else 8)


def add_rms_norm(h: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, eps: float, *, hf_rounding: bool,
                 residual_fp32: bool, cast: torch.dtype | None = None, out_dtype: torch.dtype | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    res_dtype = torch.promote_types(torch.float32 if residual_fp32 else h.dtype, y.dtype)
    dtype = cast or res_dtype
    h2, y2 = _rows(h), _rows(y)
    res = torch.empty(h2.shape, device=h.device, dtype=res_dtype)
    out = torch.empty(h2.shape, device=h.device, dtype=_out_dtype(dtype, weight, hf_rounding, out_dtype))
    _launch(h2, y2, weight, res, out, eps, dtype, hf_rounding)
    return res.view(h.shape), out.view(h.shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, *, hf_rounding: bool,
             cast: torch.dtype | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    dtype = cast or x.dtype
    x2 = _rows(x)
    out = torch.empty(x2.shape, device=x.device, dtype=_out_dtype(dtype, weight, hf_rounding, out_dtype))
    _launch(x2, None, weight, None, out, eps, dtype, hf_rounding)
    return out.view(x.shape)
