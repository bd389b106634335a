"""Fused one-token Mamba-2 mixer step (Triton): conv step, SiLU, dt, SSD state update and skip in one launch
instead of about thirty small PyTorch kernels.

At batch 1 a decode step of Mamba-2 370M is launch-bound when written as PyTorch ops: 48 layers of ~40
elementwise kernels each cost ~5 ms inside a CUDA graph while reading the weights takes ~0.3 ms. Here a layer
is [norm + in_proj], this kernel, [gate + norm + out_proj] (``ops.norm_linear``).

One program per (batch, head, block of head channels) loads its parameters first (with programmatic dependent
launch, ``ops.pdl``, before waiting for in_proj), then every input at once: its slice of the state (the largest
read), the new inputs and the old conv rows. It runs the conv of its x channels (shifting their conv state in place: no other program owns them) and of its
group's B and C channels (read only: every head of the group needs the old values), SiLU, dt, the update
S = exp(dt A) S + dt x B^T and y = S C + D x. The B and C conv state of a (batch row, group) is shifted by the
last of its programs to finish: each counts itself in with an atomic add after its reads (a barrier orders
them), and the one that
sees the count complete shifts the rows and resets the counter (to zero, for the next launch).

Rounding follows the reference: the activated conv output and y are rounded to the input dtype, everything
else is float32. The kernel touches the states only through fixed pointers, so CUDA graphs capture it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from jrt_prompt.errors import JRTError

from ..pdl import pdl_launch


@triton.jit
def _silu(x):
    return x / (1.0 + tl.exp(-x))


@triton.jit
def _taps(w_ptr, K, ch, mask, K_: tl.constexpr):
    """Conv weights of channels ``ch`` for a conv of K_ <= 4 taps: (w0, w1, w2) for the state rows, wn for the new
    input (zeros past K_ - 1)."""
    wn = tl.load(w_ptr + ch * K + (K_ - 1), mask=mask, other=0.0).to(tl.float32)
    w0 = tl.zeros_like(wn)
    w1 = tl.zeros_like(wn)
    w2 = tl.zeros_like(wn)
    if K_ > 1:
        w0 = tl.load(w_ptr + ch * K + 0, mask=mask, other=0.0).to(tl.float32)
    if K_ > 2:
        w1 = tl.load(w_ptr + ch * K + 1, mask=mask, other=0.0).to(tl.float32)
    if K_ > 3:
        w2 = tl.load(w_ptr + ch * K + 2, mask=mask, other=0.0).to(tl.float32)
    return w0, w1, w2, wn


@triton.jit
def _rows(cs_ptr, stride_k, ch, mask, K_: tl.constexpr):
    """The conv state's rows (s0, s1, s2) of channels ``ch`` (zeros past K_ - 1), as float32."""
    s0 = tl.load(cs_ptr + ch, mask=mask, other=0.0).to(tl.float32)  # K_ >= 2
    s1 = tl.zeros_like(s0)
    s2 = tl.zeros_like(s0)
    if K_ > 2:
        s1 = tl.load(cs_ptr + stride_k + ch, mask=mask, other=0.0).to(tl.float32)
    if K_ > 3:
        s2 = tl.load(cs_ptr + 2 * stride_k + ch, mask=mask, other=0.0).to(tl.float32)
    return s0, s1, s2


@triton.jit
def _shift4(cs_ptr, stride_k, ch, x_new, s1, s2, mask, K_: tl.constexpr):
    """The conv state after this token: rows (s1, s2, x_new)[-(K_-1):]."""
    if K_ == 2:
        tl.store(cs_ptr + ch, x_new.to(cs_ptr.dtype.element_ty), mask=mask)
    if K_ == 3:
        tl.store(cs_ptr + ch, s1.to(cs_ptr.dtype.element_ty), mask=mask)
        tl.store(cs_ptr + stride_k + ch, x_new.to(cs_ptr.dtype.element_ty), mask=mask)
    if K_ == 4:
        tl.store(cs_ptr + ch, s1.to(cs_ptr.dtype.element_ty), mask=mask)
        tl.store(cs_ptr + stride_k + ch, s2.to(cs_ptr.dtype.element_ty), mask=mask)
        tl.store(cs_ptr + 2 * stride_k + ch, x_new.to(cs_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _step_kernel(
    zx_ptr, cs_ptr, w_ptr, cb_ptr, s_ptr, Alog_ptr, D_ptr, dtb_ptr, y_ptr, cnt_ptr,
    P, N, G, d_inner, conv_dim, K, heads_per_group, n_pblocks,
    stride_zx, stride_cs_b, stride_cs_k, stride_s_b, stride_s_h, stride_s_p, stride_y, D_stride_h, D_stride_p,
    dt_min, dt_max,
    K_: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    pb = tl.program_id(2)
    grp = h // heads_per_group
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    pmask = offs_p < P
    nmask = offs_n < N
    zx = zx_ptr + b * stride_zx
    cs = cs_ptr + b * stride_cs_b
    out_ty = zx_ptr.dtype.element_ty
    ch_x = h * P + offs_p  # this program's x channels, then its group's B and C channels
    ch_b = d_inner + grp * N + offs_n
    ch_c = d_inner + G * N + grp * N + offs_n

    # parameters first: no kernel writes them, so with PDL they load while the previous launch finishes
    wx0, wx1, wx2, wxn = _taps(w_ptr, K, ch_x, pmask, K_)
    wb0, wb1, wb2, wbn = _taps(w_ptr, K, ch_b, nmask, K_)
    wc0, wc1, wc2, wcn = _taps(w_ptr, K, ch_c, nmask, K_)
    bias_x = tl.zeros([BLOCK_P], dtype=tl.float32)
    bias_b = tl.zeros([BLOCK_N], dtype=tl.float32)
    bias_c = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_BIAS:
        bias_x = tl.load(cb_ptr + ch_x, mask=pmask, other=0.0).to(tl.float32)
        bias_b = tl.load(cb_ptr + ch_b, mask=nmask, other=0.0).to(tl.float32)
        bias_c = tl.load(cb_ptr + ch_c, mask=nmask, other=0.0).to(tl.float32)
    a_neg = -tl.exp(tl.load(Alog_ptr + h).to(tl.float32))  # A = -exp(A_log)
    dt_b = tl.load(dtb_ptr + h).to(tl.float32)
    d = tl.load(D_ptr + h * D_stride_h + offs_p * D_stride_p, mask=pmask, other=0.0).to(tl.float32)
    if PDL:  # in_proj's output and the states are read only once the previous launch has finished
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()

    # every load of the step at once: the state slice (the largest), the new inputs, the old conv rows
    sp = s_ptr + b * stride_s_b + h * stride_s_h + offs_p[:, None] * stride_s_p + offs_n[None, :]
    smask = pmask[:, None] & nmask[None, :]
    s = tl.load(sp, mask=smask, other=0.0)
    x_new = tl.load(zx + d_inner + ch_x, mask=pmask, other=0.0).to(tl.float32)
    b_new = tl.load(zx + d_inner + ch_b, mask=nmask, other=0.0).to(tl.float32)
    c_new = tl.load(zx + d_inner + ch_c, mask=nmask, other=0.0).to(tl.float32)
    dt = tl.load(zx + d_inner + conv_dim + h).to(tl.float32) + dt_b
    x0, x1, x2 = _rows(cs, stride_cs_k, ch_x, pmask, K_)
    b0, b1, b2 = _rows(cs, stride_cs_k, ch_b, nmask, K_)
    c0, c1, c2 = _rows(cs, stride_cs_k, ch_c, nmask, K_)

    # conv + SiLU (rounded to the input dtype, as the reference's conv output), dt, state update, output
    x = _silu(bias_x + wx0 * x0 + wx1 * x1 + wx2 * x2 + wxn * x_new).to(out_ty).to(tl.float32)
    bv = _silu(bias_b + wb0 * b0 + wb1 * b1 + wb2 * b2 + wbn * b_new).to(out_ty).to(tl.float32)
    cv = _silu(bias_c + wc0 * c0 + wc1 * c1 + wc2 * c2 + wcn * c_new).to(out_ty).to(tl.float32)
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))  # torch's softplus
    dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    s = s * tl.exp(dt * a_neg) + (dt * x)[:, None] * bv[None, :]
    tl.store(sp, s, mask=smask)
    y = tl.sum(s * cv[None, :], axis=1) + d * x
    tl.store(y_ptr + b * stride_y + h * P + offs_p, y.to(y_ptr.dtype.element_ty), mask=pmask)

    # conv-state shifts, after every thread of the program has read the old rows: the x rows are this
    # program's own; the group's B and C rows are shifted by the last of the group's programs to count itself
    # in (each counts after its reads, which the barrier has completed)
    tl.debug_barrier()
    _shift4(cs, stride_cs_k, ch_x, x_new, x1, x2, pmask, K_)
    cnt = cnt_ptr + b * G + grp
    if tl.atomic_add(cnt, 1, sem="relaxed") == heads_per_group * n_pblocks - 1:
        _shift4(cs, stride_cs_k, ch_b, b_new, b1, b2, nmask, K_)
        _shift4(cs, stride_cs_k, ch_c, c_new, c1, c2, nmask, K_)
        tl.store(cnt, 0)


_COUNTERS: dict = {}


@torch.compiler.disable  # plain Python state (a dict of buffers), not for tracing
def _counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 counters, one per (batch row, group), kept per device and stream (each launch leaves them at
    zero again), so that a CUDA graph captures fixed pointers."""
    stream = torch.cuda.current_stream(device).stream_id if device.type == "cuda" else 0
    buf = _COUNTERS.get((device, stream))
    if buf is None or buf.numel() < n:
        buf = _COUNTERS[(device, stream)] = torch.zeros(max(n, 256), dtype=torch.int32, device=device)
    return buf


def mamba2_step(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D, dt_bias, *,
                n_groups: int, act=None, dt_limit=(0.0, float("inf"))) -> torch.Tensor:
    """Same contract as ``naive.mamba2_step`` (SiLU activation only); both states are updated in place."""
    batch, heads, head_dim, d_state = ssm_state.shape
    d_inner = heads * head_dim
    conv_dim = conv_state.shape[-1]
    K = conv_weight.shape[-1]
    if not 2 <= K <= 4:
        raise JRTError(f"mamba2_step kernel: conv width {K} is not supported (2 to 4)")
    if conv_dim != d_inner + 2 * n_groups * d_state or heads % n_groups:
        raise JRTError(f"mamba2_step kernel: conv state has {conv_dim} channels; expected d_inner + 2 G N = "
                       f"{d_inner + 2 * n_groups * d_state} with G = {n_groups} dividing {heads} heads")
    if zxbcdt.shape != (batch, d_inner + conv_dim + heads) or zxbcdt.stride(-1) != 1:
        raise JRTError(f"mamba2_step kernel: zxbcdt must be [{batch}, {d_inner + conv_dim + heads}] with unit "
                       f"last stride, got {tuple(zxbcdt.shape)}")
    if conv_state.shape != (batch, K - 1, conv_dim) or conv_state.stride(-1) != 1:
        raise JRTError(f"mamba2_step kernel: conv state must be [{batch}, {K - 1}, {conv_dim}] with unit last "
                       f"stride, got {tuple(conv_state.shape)}")
    if ssm_state.dtype != torch.float32 or ssm_state.stride(-1) != 1:
        raise JRTError("mamba2_step kernel: the SSM state must be float32 with unit last stride (updated in place)")
    if D.numel() not in (heads, d_inner):
        raise JRTError(f"mamba2_step kernel: D must have {heads} or {d_inner} entries, got {D.numel()}")
    w = conv_weight if conv_weight.is_contiguous() else conv_weight.contiguous()
    A_log, D, dt_bias = A_log.contiguous(), D.contiguous(), dt_bias.contiguous()
    block_p = min(triton.next_power_of_2(head_dim), 16 if batch * heads < 512 else 64)
    n_pblocks = triton.cdiv(head_dim, block_p)
    y = torch.empty(batch, d_inner, device=zxbcdt.device, dtype=zxbcdt.dtype)
    d_stride_h, d_stride_p = (head_dim, 1) if D.numel() == d_inner else (1, 0)
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    _step_kernel[(batch, heads, n_pblocks)](
        zxbcdt, conv_state, w, conv_bias if conv_bias is not None else w, ssm_state, A_log, D, dt_bias, y,
        _counters(zxbcdt.device, batch * n_groups),
        head_dim, d_state, n_groups, d_inner, conv_dim, K, heads // n_groups, n_pblocks,
        zxbcdt.stride(0), conv_state.stride(0), conv_state.stride(1), ssm_state.stride(0), ssm_state.stride(1),
        ssm_state.stride(2), y.stride(0), d_stride_h, d_stride_p, lo, min(hi, 3.0e38),
        K_=K, BLOCK_P=block_p, BLOCK_N=triton.next_power_of_2(d_state), HAS_BIAS=conv_bias is not None,
        num_warps=4, **pdl_launch(zxbcdt.device))
    return y
