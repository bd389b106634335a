"""Causal depthwise conv1d with a carried tail in one Triton launch per call: y and the new tail together, the
optional silu folded in. Semantics, rounding and output dtypes as ``naive.causal_conv1d``.

As PyTorch ops a prefill pays a ``torch.cat`` of tail and x, the depthwise conv, copies and a separate
activation kernel (Mamba-2 370M, 2048 tokens on an H100: ~3.5 ms of 23.8 ms). Here one program covers a
BLOCK_T x BLOCK_C tile of one batch row and reads its K shifted rows of x directly (overlapping rows hit
L1/L2); tail values enter only where a window reaches before the row's first real token.

Left padding without a gather: in the window [t-K+1, t] of a real token t the real tokens are a suffix, so the
row's first real token p = t + 1 - (real tokens in the window) whenever p lies in the window, and a position s
of the window reads x[s] when s >= p, else tail[s - p + K - 1] (the tail sits just before the first real token,
as the reference's reordered (pads, tail, real) sequence has it). The programs of the last time block also
write the new tail from the same rule over the last K-1 positions: they read x and the old tail and write a new
tensor, so no program reads what another writes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
MAX_K = 4
NUM_WARPS = 4


def tile(dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_T, BLOCK_C) at 4 warps: 32 x 128 for 16-bit inputs, 16 x 128 for float32. Compiled for sm_90 with
    every option on: ~150 and ~90 registers, no spills, 16-byte loads and stores (twice the tile needs 200-255
    registers, and spills with a mask). Mamba-2 370M's 2048 x 2304 prefill is 64 x 18 programs a batch row."""
    return (16, 128) if dtype == torch.float32 else (32, 128)


@triton.jit
def _window_sum(x_row, tail_row, w_ptr, b_ptr, t, c, c_ok, real_t, first, stride_xl, stride_wc, stride_wk,
                stride_tl, K: tl.constexpr, HAS_BIAS: tl.constexpr, WITH_TAIL: tl.constexpr, BLOCK_T: tl.constexpr,
                BLOCK_C: tl.constexpr):
    """bias + sum_k w[:, k] * s[t - K + 1 + k] in float32 for a tile's real rows t, each input rounded to x's
    dtype; s is x from the row's first real token ``first`` on, the tail just before it (read if WITH_TAIL)."""
    dt = x_row.dtype.element_ty
    acc = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c_ok, other=0.0).to(dt).to(tl.float32)[None, :]
    for k in tl.static_range(K):
        s = t - (K - 1) + k
        w = tl.load(w_ptr + c * stride_wc + k * stride_wk, mask=c_ok, other=0.0).to(dt).to(tl.float32)
        from_x = real_t & (s >= first)
        v = tl.load(x_row + (s.to(tl.int64) * stride_xl)[:, None] + c[None, :], mask=from_x[:, None] & c_ok[None, :],
                    other=0.0).to(tl.float32)
        if WITH_TAIL:  # the masks are disjoint: v is x's value or the tail's
            from_tail = real_t & (s < first)
            v += tl.load(tail_row + ((s - first + (K - 1)) * stride_tl)[:, None] + c[None, :],
                         mask=from_tail[:, None] & c_ok[None, :], other=0.0).to(dt).to(tl.float32)
        acc += v * w[None, :]
    return acc


@triton.jit
def _causal_conv1d_kernel(x_ptr, w_ptr, b_ptr, tail_ptr, mask_ptr, y_ptr, new_tail_ptr, L, C, n_tblocks,
                          stride_xb, stride_xl, stride_wc, stride_wk, stride_tb, stride_tl,
                          stride_mb, stride_ml, stride_yb, stride_yl, stride_nb, stride_nl,
                          K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_TAIL: tl.constexpr, HAS_MASK: tl.constexpr,
                          SILU: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    """One (batch row, time block) x channel block tile of y; the last time block also writes the new tail."""
    pid = tl.program_id(0)
    b = (pid // n_tblocks).to(tl.int64)
    tb = pid % n_tblocks
    dt = x_ptr.dtype.element_ty
    t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    x_row = x_ptr + b * stride_xb
    tail_row = tail_ptr + b * stride_tb
    mask_row = mask_ptr + b * stride_mb

    # The row's first real token as seen from each t's window (see the module docstring).
    if HAS_MASK:
        real_t = tl.load(mask_row + t * stride_ml, mask=t < L, other=0) != 0
        n_real = tl.zeros([BLOCK_T], dtype=tl.int32)
        for k in tl.static_range(K):
            s = t - (K - 1) + k
            ok = (s >= 0) & (s < L)
            n_real += (tl.load(mask_row + s * stride_ml, mask=ok, other=0) != 0).to(tl.int32)
        first = t + 1 - n_real
    else:
        real_t = t < L
        first = tl.zeros([BLOCK_T], dtype=tl.int32)

    # Only tiles whose windows reach before a row's first real token read the tail: a uniform branch, so the
    # others skip its K gathers and keep their registers for x. Both sum in the same order (bias, k = 0..K-1).
    args = (x_row, tail_row, w_ptr, b_ptr, t, c, c_ok, real_t, first, stride_xl, stride_wc, stride_wk, stride_tl)
    if HAS_TAIL:
        if HAS_MASK:
            need = tl.max((real_t & (t - (K - 1) < first)).to(tl.int32), axis=0) > 0
        else:
            need = tb * BLOCK_T < K - 1
        if need:
            acc = _window_sum(*args, K, HAS_BIAS, True, BLOCK_T, BLOCK_C)
        else:
            acc = _window_sum(*args, K, HAS_BIAS, False, BLOCK_T, BLOCK_C)
    else:
        acc = _window_sum(*args, K, HAS_BIAS, False, BLOCK_T, BLOCK_C)
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    acc = tl.where(real_t[:, None], acc, 0.0)
    tl.store(y_ptr + b * stride_yb + (t.to(tl.int64) * stride_yl)[:, None] + c[None, :], acc.to(dt),
             mask=(t < L)[:, None] & c_ok[None, :])

    if K > 1:
        if tb == n_tblocks - 1:
            # The new tail: positions L-K+1 .. L-1 by the same rule (first_row is the row's first real token
            # wherever it lies among them; before them it does not matter).
            i = tl.arange(0, BLOCK_K)
            i_ok = i < K - 1
            u = L - (K - 1) + i
            real_s = i_ok & (u >= 0)
            if HAS_MASK:
                real_s = real_s & (tl.load(mask_row + u * stride_ml, mask=real_s, other=0) != 0)
            first_row = L - tl.sum(real_s.to(tl.int32), axis=0)
            from_x_u = i_ok & (u >= first_row)
            vu = tl.load(x_row + (u.to(tl.int64) * stride_xl)[:, None] + c[None, :],
                         mask=from_x_u[:, None] & c_ok[None, :], other=0.0)
            if HAS_TAIL:
                ju = u - first_row + (K - 1)
                from_tail_u = i_ok & (u < first_row)
                vu += tl.load(tail_row + (ju * stride_tl)[:, None] + c[None, :],
                              mask=from_tail_u[:, None] & c_ok[None, :], other=0.0).to(dt)
            tl.store(new_tail_ptr + b * stride_nb + (i * stride_nl)[:, None] + c[None, :], vu,
                     mask=i_ok[:, None] & c_ok[None, :])


def supported(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
              tail: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> bool:
    """Whether the kernel takes this call: 16/32-bit floats, x [B, L, C] with unit channel stride and at least
    one element, weight [C, K] with K <= MAX_K, matching bias [C], tail [B, K-1, C] and bool mask [B, L]."""
    if x.dim() != 3 or x.dtype not in _TL or x.numel() == 0 or x.stride(-1) != 1:
        return False
    B, L, C = x.shape
    if weight.dim() != 2 or weight.shape[0] != C or not 1 <= weight.shape[1] <= MAX_K or weight.dtype not in _TL:
        return False
    K = weight.shape[1]
    return ((bias is None or (bias.shape == (C,) and bias.dtype in _TL))
            and (tail is None or (tail.shape == (B, K - 1, C) and tail.dtype in _TL))
            and (mask is None or (mask.shape == (B, L) and mask.dtype == torch.bool)))


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  tail: torch.Tensor | None = None, mask: torch.Tensor | None = None, *,
                  activation: str | None = None, block_t: int | None = None, block_c: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``naive.causal_conv1d`` (call only where ``supported``); ``block_t``/``block_c`` (powers of two) replace
    ``tile``'s (tests shrink them to cross block edges on small shapes)."""
    grid, args, constexprs, (y, new_tail) = launch(x, weight, bias, tail, mask, activation, block_t, block_c)
    _causal_conv1d_kernel[grid](*args, **constexprs, num_warps=NUM_WARPS)
    return y, new_tail


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tail: torch.Tensor | None,
           mask: torch.Tensor | None, activation: str | None, block_t: int | None = None, block_c: int | None = None
           ) -> tuple[tuple[int, int], tuple, dict, tuple[torch.Tensor, torch.Tensor]]:
    """The kernel's grid, arguments and constexprs for a call, and its outputs (y, new tail), allocated here.
    Separate from the launch so that tests can compile exactly what a call runs (for sm_90, without a GPU)."""
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', not {activation!r}")
    B, L, C = x.shape
    K = weight.shape[1]
    y = torch.empty(B, L, C, device=x.device, dtype=x.dtype)
    new_tail = torch.empty(B, K - 1, C, device=x.device, dtype=x.dtype)
    default_t, default_c = tile(x.dtype)
    block_t = min(block_t or default_t, triton.next_power_of_2(L))
    block_c = min(block_c or default_c, triton.next_power_of_2(C))
    n_tblocks = triton.cdiv(L, block_t)
    if tail is not None and tail.stride(-1) != 1:
        tail = tail.contiguous()  # K-1 rows: the kernel reads the tail with unit channel stride
    t_strides = tail.stride()[:2] if tail is not None else (0, 0)
    m = mask.view(torch.uint8) if mask is not None else None
    m_strides = m.stride() if m is not None else (0, 0)
    args = (x, weight, bias if bias is not None else weight, tail if tail is not None else x,
            m if m is not None else x, y, new_tail, L, C, n_tblocks, x.stride(0), x.stride(1), weight.stride(0),
            weight.stride(1), *t_strides, *m_strides, y.stride(0), y.stride(1), new_tail.stride(0),
            new_tail.stride(1))
    constexprs = dict(K=K, HAS_BIAS=bias is not None, HAS_TAIL=tail is not None and K > 1,
                      HAS_MASK=mask is not None, SILU=activation == "silu", BLOCK_T=block_t, BLOCK_C=block_c,
                      BLOCK_K=triton.next_power_of_2(max(K - 1, 1)))
    return (B * n_tblocks, triton.cdiv(C, block_c)), args, constexprs, (y, new_tail)
