"""A one-row ``F.linear`` in Triton: weight rows streamed once at close to memory bandwidth.

At batch 1 a decode step is a chain of matrix-vector products. On an H100 cuBLAS ran Mamba-2 370M's in_proj and
out_proj at about 1.1 TB/s (5.8 us each; 0.55 ms of a 1.0 ms step, 2026-11-24); the weights' 3 TB/s bound is
2.2 us. Each program here owns a few output rows and walks K in wide blocks, accumulating in float32.
Measured there it is slower still (7.2 us each), so it is opt-in (JRT_PROMPT_GEMV=1); next: split K across
programs, wider vector loads, more rows per program.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_xm, stride_wn, stride_ym,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    m = tl.program_id(1).to(tl.int64)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < K
        x = tl.load(x_ptr + m * stride_xm + offs_k, mask=kmask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :],
                    mask=nmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(w * x[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
    tl.store(y_ptr + m * stride_ym + offs_n, acc.to(y_ptr.dtype.element_ty), mask=nmask)


def supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    rows = x.numel() // max(1, x.shape[-1])
    return (rows <= 2 and x.dtype == weight.dtype and x.dtype in (torch.bfloat16, torch.float16, torch.float32)
            and weight.dim() == 2 and weight.stride(-1) == 1 and x.shape[-1] == weight.shape[1])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    N, K = weight.shape
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x2.shape[0], N, device=x.device, dtype=x.dtype)
    block_n = 16
    while block_n > 2 and triton.cdiv(N, block_n) < 264:  # two programs per SM at least
        block_n //= 2
    block_k = min(triton.next_power_of_2(K), 4096 // block_n)
    _gemv_kernel[(triton.cdiv(N, block_n), x2.shape[0])](
        x2, weight, bias if bias is not None else weight, y, N, K, x2.stride(0), weight.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    return y.view(*x.shape[:-1], N)
