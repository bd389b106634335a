"""Fused one-token Mamba-2 mixer step (Triton): conv step, SiLU, dt, SSD state update, skip, gate and grouped
RMSNorm in two launches instead of about forty small PyTorch kernels.

At batch 1 a decode step of Mamba-2 370M is launch-bound: 48 layers of ~50 elementwise kernels each cost
~5 ms inside a CUDA graph while reading the weights takes ~0.3 ms. Here a layer is in_proj, two kernels and
out_proj:

1. ``_step_kernel``, one program per (batch, head, block of head channels): the conv of its x channels
   (shifting their conv state in place: no other program owns them), the conv of its group's B and C
   channels (read only: every head of the group needs the old values), SiLU, dt, the state update
   S = exp(dt A) S + dt x B^T, y = S C + D x, the gate (unless the norm comes first), and its share of the
   group's sum of squares.
2. ``_norm_kernel``, one program per (batch, head): the group's RMS from the shares, the weight, the gate
   when the norm comes first; and the first head of each group shifts the B and C conv state, now that
   every reader of the old values has finished (the launches are ordered on the stream).

Rounding follows the reference: the activated conv output and y are rounded to the input dtype, everything
else is float32. The kernels touch the states only through fixed pointers, so CUDA graphs capture them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from jrt_prompt.errors import JRTError


@triton.jit
def _silu(x):
    return x / (1.0 + tl.exp(-x))


@triton.jit
def _conv4(cs_ptr, stride_k, w_ptr, K, ch, x_new, mask, bias, K_: tl.constexpr):
    """bias + sum_k w[ch, k] * (state[0..K-2], x_new)[k] for a conv of K_ <= 4 taps (state rows stride_k apart);
    returns the sum and the old state rows (zeros past K_-1)."""
    acc = bias + tl.load(w_ptr + ch * K + (K_ - 1), mask=mask, other=0.0).to(tl.float32) * x_new
    s0 = tl.zeros_like(x_new)
    s1 = tl.zeros_like(x_new)
    s2 = tl.zeros_like(x_new)
    if K_ > 1:
        s0 = tl.load(cs_ptr + ch, mask=mask, other=0.0).to(tl.float32)
        acc += tl.load(w_ptr + ch * K + 0, mask=mask, other=0.0).to(tl.float32) * s0
    if K_ > 2:
        s1 = tl.load(cs_ptr + stride_k + ch, mask=mask, other=0.0).to(tl.float32)
        acc += tl.load(w_ptr + ch * K + 1, mask=mask, other=0.0).to(tl.float32) * s1
    if K_ > 3:
        s2 = tl.load(cs_ptr + 2 * stride_k + ch, mask=mask, other=0.0).to(tl.float32)
        acc += tl.load(w_ptr + ch * K + 2, mask=mask, other=0.0).to(tl.float32) * s2
    return acc, s0, s1, s2


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
    zx_ptr, cs_ptr, w_ptr, cb_ptr, s_ptr, Alog_ptr, D_ptr, dtb_ptr, g_ptr, sq_ptr,
    H, P, N, G, d_inner, conv_dim, K, heads_per_group, n_pblocks,
    stride_zx, stride_cs_b, stride_cs_k, stride_s_b, stride_s_h, stride_s_p, stride_g, D_stride_h, D_stride_p,
    dt_min, dt_max,
    K_: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr,
    GATE_FIRST: tl.constexpr, HAS_NORM: tl.constexpr,
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

    # conv of this program's x channels; their state rows are shifted here (no other program reads them)
    ch_x = h * P + offs_p
    x_new = tl.load(zx + d_inner + ch_x, mask=pmask, other=0.0).to(tl.float32)
    bias_x = tl.zeros_like(x_new)
    if HAS_BIAS:
        bias_x = tl.load(cb_ptr + ch_x, mask=pmask, other=0.0).to(tl.float32)
    x, s0, s1, s2 = _conv4(cs, stride_cs_k, w_ptr, K, ch_x, x_new, pmask, bias_x, K_)
    x = _silu(x).to(out_ty).to(tl.float32)
    tl.debug_barrier()  # every thread has read the old rows before any is overwritten
    _shift4(cs, stride_cs_k, ch_x, x_new, s1, s2, pmask, K_)

    # conv of the group's B and C channels, from the old state (shifted by _norm_kernel)
    ch_b = d_inner + grp * N + offs_n
    ch_c = d_inner + G * N + grp * N + offs_n
    b_new = tl.load(zx + d_inner + ch_b, mask=nmask, other=0.0).to(tl.float32)
    c_new = tl.load(zx + d_inner + ch_c, mask=nmask, other=0.0).to(tl.float32)
    bias_b = tl.zeros_like(b_new)
    bias_c = tl.zeros_like(c_new)
    if HAS_BIAS:
        bias_b = tl.load(cb_ptr + ch_b, mask=nmask, other=0.0).to(tl.float32)
        bias_c = tl.load(cb_ptr + ch_c, mask=nmask, other=0.0).to(tl.float32)
    bv, t0, t1, t2 = _conv4(cs, stride_cs_k, w_ptr, K, ch_b, b_new, nmask, bias_b, K_)
    cv, t0, t1, t2 = _conv4(cs, stride_cs_k, w_ptr, K, ch_c, c_new, nmask, bias_c, K_)
    bv = _silu(bv).to(out_ty).to(tl.float32)
    cv = _silu(cv).to(out_ty).to(tl.float32)

    # dt = clamp(softplus(dt_raw + dt_bias)) (torch's softplus: linear above 20)
    dt = tl.load(zx + d_inner + conv_dim + h).to(tl.float32) + tl.load(dtb_ptr + h).to(tl.float32)
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    decay = tl.exp(-dt * tl.exp(tl.load(Alog_ptr + h).to(tl.float32)))  # A = -exp(A_log)

    sp = s_ptr + b * stride_s_b + h * stride_s_h + offs_p[:, None] * stride_s_p + offs_n[None, :]
    smask = pmask[:, None] & nmask[None, :]
    s = tl.load(sp, mask=smask, other=0.0)
    s = s * decay + (dt * x)[:, None] * bv[None, :]
    tl.store(sp, s, mask=smask)
    d = tl.load(D_ptr + h * D_stride_h + offs_p * D_stride_p, mask=pmask, other=0.0).to(tl.float32)
    y = tl.sum(s * cv[None, :], axis=1) + d * x
    y = y.to(out_ty).to(tl.float32)
    if GATE_FIRST or not HAS_NORM:
        z = tl.load(zx + h * P + offs_p, mask=pmask, other=0.0).to(tl.float32)
        y = y * _silu(z)
    y = tl.where(pmask, y, 0.0)
    if HAS_NORM:
        tl.store(g_ptr + b * stride_g + h * P + offs_p, y, mask=pmask)
        tl.store(sq_ptr + (b * H + h) * n_pblocks + pb, tl.sum(y * y, axis=0))
    else:
        tl.store(g_ptr + b * stride_g + h * P + offs_p, y.to(out_ty), mask=pmask)


@triton.jit
def _norm_kernel(
    zx_ptr, cs_ptr, g_ptr, sq_ptr, nw_ptr, o_ptr,
    H, P, N, G, d_inner, heads_per_group, n_pblocks,
    stride_zx, stride_cs_b, stride_cs_k, stride_g, stride_o, eps,
    K_: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr,
    GATE_FIRST: tl.constexpr, HAS_NORM: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    grp = h // heads_per_group
    zx = zx_ptr + b * stride_zx
    if HAS_NORM:
        offs_q = tl.arange(0, BLOCK_Q)
        n_parts = heads_per_group * n_pblocks
        parts = tl.load(sq_ptr + (b * H + grp * heads_per_group) * n_pblocks + offs_q, mask=offs_q < n_parts,
                        other=0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(parts, axis=0) / (heads_per_group * P) + eps)
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            pmask = offs_p < P
            ch = h * P + offs_p
            y = tl.load(g_ptr + b * stride_g + ch, mask=pmask, other=0.0)
            y = y * rstd * tl.load(nw_ptr + ch, mask=pmask, other=0.0).to(tl.float32)
            if not GATE_FIRST:
                y = y * _silu(tl.load(zx + ch, mask=pmask, other=0.0).to(tl.float32))
            tl.store(o_ptr + b * stride_o + ch, y.to(o_ptr.dtype.element_ty), mask=pmask)

    # the first head of each group shifts the group's B and C conv state rows
    if h % heads_per_group == 0:
        cs = cs_ptr + b * stride_cs_b
        offs_n = tl.arange(0, BLOCK_N)
        nmask = offs_n < N
        for part in range(0, 2):
            ch = d_inner + part * G * N + grp * N + offs_n
            x_new = tl.load(zx + d_inner + ch, mask=nmask, other=0.0).to(tl.float32)
            s1 = tl.zeros_like(x_new)
            s2 = tl.zeros_like(x_new)
            if K_ > 2:
                s1 = tl.load(cs + stride_cs_k + ch, mask=nmask, other=0.0).to(tl.float32)
            if K_ > 3:
                s2 = tl.load(cs + 2 * stride_cs_k + ch, mask=nmask, other=0.0).to(tl.float32)
            tl.debug_barrier()
            _shift4(cs, stride_cs_k, ch, x_new, s1, s2, nmask, K_)


def mamba2_step(zxbcdt, conv_state, conv_weight, conv_bias, ssm_state, A_log, D, dt_bias, norm_weight, *,
                n_groups: int, act=None, dt_limit=(0.0, float("inf")), norm_eps: float = 1e-5,
                norm_before_gate: bool = False) -> torch.Tensor:
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
    has_norm = norm_weight is not None
    block_p = min(triton.next_power_of_2(head_dim), 16 if batch * heads < 512 else 64)
    n_pblocks = triton.cdiv(head_dim, block_p)
    block_n = triton.next_power_of_2(d_state)
    hpg = heads // n_groups
    out = torch.empty(batch, d_inner, device=zxbcdt.device, dtype=zxbcdt.dtype)
    g = torch.empty(batch, d_inner, device=zxbcdt.device, dtype=torch.float32) if has_norm else out
    sq = torch.empty(batch, heads, n_pblocks, device=zxbcdt.device, dtype=torch.float32)
    d_stride_h, d_stride_p = (head_dim, 1) if D.numel() == d_inner else (1, 0)
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    _step_kernel[(batch, heads, n_pblocks)](
        zxbcdt, conv_state, w, conv_bias if conv_bias is not None else w, ssm_state, A_log, D, dt_bias, g, sq,
        heads, head_dim, d_state, n_groups, d_inner, conv_dim, K, hpg, n_pblocks,
        zxbcdt.stride(0), conv_state.stride(0), conv_state.stride(1), ssm_state.stride(0), ssm_state.stride(1),
        ssm_state.stride(2), g.stride(0), d_stride_h, d_stride_p, lo, min(hi, 3.0e38),
        K_=K, BLOCK_P=block_p, BLOCK_N=block_n, HAS_BIAS=conv_bias is not None,
        GATE_FIRST=not norm_before_gate, HAS_NORM=has_norm, num_warps=4)
    _norm_kernel[(batch, heads)](
        zxbcdt, conv_state, g, sq, norm_weight if has_norm else g, out,
        heads, head_dim, d_state, n_groups, d_inner, hpg, n_pblocks,
        zxbcdt.stride(0), conv_state.stride(0), conv_state.stride(1), g.stride(0), out.stride(0), float(norm_eps),
        K_=K, BLOCK_P=min(triton.next_power_of_2(head_dim), 128), BLOCK_N=block_n,
        BLOCK_Q=triton.next_power_of_2(hpg * n_pblocks), GATE_FIRST=not norm_before_gate, HAS_NORM=has_norm,
        num_warps=4)
    return out
