"""Triton selective scan (Mamba 1) that starts from a given state and returns the final one.

Why ours: mamba_ssm's CUDA scan has no initial-state input, so it cannot continue a prefilled state,
which JRT's reuse of a read document needs. Same signatures and semantics as ``naive``:

    dt = softplus(delta + delta_bias)            (0 at left-padded tokens: state passes unchanged)
    h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t     (per channel c and state index n, fp32)
    y_t = (C_t . h_t + D u_t) * silu(z_t)        (0 at left-padded tokens)

One program owns the fp32 state [BLOCK_C, N] of one batch row and a few channels and walks the
sequence in blocks of BLOCK_L tokens. Inside a block the pairs (a, b) = (exp(dt A), dt u B) are combined
by ``tl.associative_scan`` along time ((a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2)), so every token's
state is a_cum h_in + b_cum with h_in the state carried in from the previous block.

``selective_state_update`` is the one-token step as one kernel (in place, no autotuning, so a CUDA
graph can capture it).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from jrt_prompt.errors import JRTError

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
LOG2E = 1.4426950408889634
# Largest [BLOCK_L, BLOCK_C, BLOCK_N] block a config may hold (fp32 elements per live tensor).
_MAX_BLOCK = 8192


@triton.jit
def _softplus(x):
    """torch's softplus (threshold 20) as max(x, 0) + log1p(exp(-|x|)).

    log1p(e) = log(w) * e / (w - 1) with w = 1 + e (w's rounding cancels), which keeps full relative
    accuracy for small e where log(1 + e) would not; Triton has no portable log1p.
    """
    e = tl.exp(-tl.abs(x))
    w = 1.0 + e
    tiny = w == 1.0
    log1p_e = tl.where(tiny, e, tl.log(w) * (e / tl.where(tiny, 1.0, w - 1.0)))
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + log1p_e)


@triton.jit
def _combine(a1, b1, a2, b2):
    """Two consecutive steps h -> a h + b, the earlier one first."""
    return a1 * a2, a2 * b1 + b2


@triton.jit(do_not_specialize=["L", "B_BUCKET"])
def _scan_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, mask_ptr, h0_ptr, y_ptr, hT_ptr,
    L, CH, N,
    s_ub, s_ul, s_uc, s_db, s_dl, s_dc, s_zb, s_zl, s_zc,
    s_Bb, s_Bl, s_Bn, s_Cb, s_Cl, s_Cn, s_Ac, s_An, s_mb, s_ml,
    B_BUCKET,  # only in the autotuning key
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_INIT: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid (channel blocks, batch). y [B, L, CH] and the states [B, CH, N] (fp32) are contiguous."""
    pid_c = tl.program_id(0)
    bid = tl.program_id(1).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_n = tl.arange(0, BLOCK_N)
    c_ok = offs_c < CH
    cn_ok = c_ok[:, None] & (offs_n < N)[None, :]
    # A in base 2: exp(dt A) = exp2(dt A log2 e); padded lanes get A = 0, so a = 1, b = 0, h stays 0
    A2 = tl.load(A_ptr + offs_c[:, None] * s_Ac + offs_n[None, :] * s_An, mask=cn_ok, other=0.0).to(tl.float32)
    A2 = A2 * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    state_off = bid * CH * N + offs_c[:, None] * N + offs_n[None, :]
    if HAS_INIT:
        h = tl.load(h0_ptr + state_off, mask=cn_ok, other=0.0)
    else:
        h = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    # Pointers to the current block's first token, advanced by one block per step (64-bit pointer arithmetic,
    # so offsets inside a block stay small however long the sequence is).
    u_blk = u_ptr + bid * s_ub
    dt_blk = dt_ptr + bid * s_db
    z_blk = z_ptr + bid * s_zb
    B_blk = B_ptr + bid * s_Bb
    C_blk = C_ptr + bid * s_Cb
    m_blk = mask_ptr + bid * s_mb
    y_blk = y_ptr + bid * L * CH
    rows = tl.arange(0, BLOCK_L)
    last = (rows == BLOCK_L - 1)[:, None, None]
    for start in range(0, L, BLOCK_L):
        l_ok = start + rows < L
        lc_ok = l_ok[:, None] & c_ok[None, :]
        ln_ok = l_ok[:, None] & (offs_n < N)[None, :]
        u = tl.load(u_blk + rows[:, None] * s_ul + offs_c[None, :] * s_uc, mask=lc_ok, other=0.0).to(tl.float32)
        dt = tl.load(dt_blk + rows[:, None] * s_dl + offs_c[None, :] * s_dc, mask=lc_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[None, :]
        if SOFTPLUS:
            dt = _softplus(dt)
        keep = lc_ok
        if HAS_MASK:
            real = tl.load(m_blk + rows * s_ml, mask=l_ok, other=0) != 0
            keep = keep & real[:, None]
        dt = tl.where(keep, dt, 0.0)  # past the end and at padding: a = 1, b = 0
        Bt = tl.load(B_blk + rows[:, None] * s_Bl + offs_n[None, :] * s_Bn, mask=ln_ok, other=0.0).to(tl.float32)
        Ct = tl.load(C_blk + rows[:, None] * s_Cl + offs_n[None, :] * s_Cn, mask=ln_ok, other=0.0).to(tl.float32)
        a = tl.exp2(dt[:, :, None] * A2[None, :, :])
        b = (dt * u)[:, :, None] * Bt[:, None, :]
        a_cum, b_cum = tl.associative_scan((a, b), 0, _combine)
        hs = a_cum * h[None, :, :] + b_cum  # [BLOCK_L, BLOCK_C, BLOCK_N]: the state after each token
        y = tl.sum(hs * Ct[:, None, :], 2)
        h = tl.sum(tl.where(last, hs, 0.0), 0)  # tokens past the end left it unchanged
        if HAS_D:
            y = y + u * Dv[None, :]
        if HAS_Z:
            z = tl.load(z_blk + rows[:, None] * s_zl + offs_c[None, :] * s_zc, mask=lc_ok, other=0.0)
            z = z.to(tl.float32)
            y = y * (z * tl.sigmoid(z))
        if HAS_MASK:
            y = tl.where(real[:, None], y, 0.0)
        tl.store(y_blk + rows[:, None] * CH + offs_c[None, :], y.to(y_ptr.dtype.element_ty), mask=lc_ok)
        u_blk += BLOCK_L * s_ul
        dt_blk += BLOCK_L * s_dl
        z_blk += BLOCK_L * s_zl
        B_blk += BLOCK_L * s_Bl
        C_blk += BLOCK_L * s_Cl
        m_blk += BLOCK_L * s_ml
        y_blk += BLOCK_L * CH
    tl.store(hT_ptr + state_off, h, mask=cn_ok)


@triton.jit
def _step_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    CH, N,
    s_sb, s_sc, s_sn, s_xb, s_xc, s_db, s_dc, s_zb, s_zc, s_Bb, s_Bn, s_Cb, s_Cn, s_Ac, s_An,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid (channel blocks, batch): state <- exp(dt A) state + dt x B in place; y = C.state + D x, * silu(z)."""
    pid_c = tl.program_id(0)
    bid = tl.program_id(1).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_n = tl.arange(0, BLOCK_N)
    c_ok = offs_c < CH
    n_ok = offs_n < N
    cn_ok = c_ok[:, None] & n_ok[None, :]
    s_ptrs = state_ptr + bid * s_sb + offs_c[:, None] * s_sc + offs_n[None, :] * s_sn
    h = tl.load(s_ptrs, mask=cn_ok, other=0.0)
    x = tl.load(x_ptr + bid * s_xb + offs_c * s_xc, mask=c_ok, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + bid * s_db + offs_c * s_dc, mask=c_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt = dt + tl.load(bias_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + offs_c[:, None] * s_Ac + offs_n[None, :] * s_An, mask=cn_ok, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + bid * s_Bb + offs_n * s_Bn, mask=n_ok, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + bid * s_Cb + offs_n * s_Cn, mask=n_ok, other=0.0).to(tl.float32)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, h, mask=cn_ok)
    y = tl.sum(h * Cv[None, :], 1)
    if HAS_D:
        y = y + x * tl.load(D_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + bid * s_zb + offs_c * s_zc, mask=c_ok, other=0.0).to(tl.float32)
        y = y * (z * tl.sigmoid(z))
    tl.store(y_ptr + bid * CH + offs_c, y.to(y_ptr.dtype.element_ty), mask=c_ok)


# ---------------------------------------------------------------------------------------------
# Launching

# (BLOCK_L, BLOCK_C, num_warps, num_stages) for N = 16; other N keep BLOCK_L * BLOCK_C * N within _MAX_BLOCK.
# Few channels per program (4-16) give B * C / BLOCK_C programs, enough to fill the GPU at batch 1
# (1536 channels / 4 = 384 programs). Read off the sm_90a compiler's report (ptxas -v, no GPU at hand when
# this was written): 96-168 registers a thread, no spills but 12 bytes for 64 x 4 on 4 warps; 128 x 4 on 8
# warps needs all 255. The autotuner times them on the real shape.
_CONFIGS = [(32, 4, 4, 1), (64, 4, 8, 1), (32, 8, 4, 1), (16, 16, 4, 1), (64, 4, 4, 1), (32, 4, 4, 2)]
CONFIG_ENV = "JRT_SCAN_TRITON_CONFIG"  # "BLOCK_L,BLOCK_C,num_warps,num_stages" pins one config, no tuning
_KEY = ["CH", "N", "B_BUCKET", "HAS_D", "HAS_Z", "HAS_BIAS", "HAS_MASK", "HAS_INIT", "SOFTPLUS"]


def _as_config(t: tuple[int, int, int, int]) -> triton.Config:
    return triton.Config({"BLOCK_L": t[0], "BLOCK_C": t[1]}, num_warps=t[2], num_stages=t[3])


def _prune(configs, named_args, **kwargs):
    """Blocks that fit the register budget for this N, and no wider than the channels; or the pinned config."""
    pinned = os.environ.get(CONFIG_ENV)
    if pinned:
        try:
            return [_as_config(tuple(int(x) for x in pinned.split(",")))]
        except ValueError as e:
            raise JRTError(f"{CONFIG_ENV}={pinned!r}: expected 'BLOCK_L,BLOCK_C,num_warps,num_stages'") from e
    block_n = kwargs.get("BLOCK_N") or named_args.get("BLOCK_N") or triton.next_power_of_2(named_args["N"])
    ch = named_args["CH"]
    kept = [c for c in configs if c.kwargs["BLOCK_L"] * c.kwargs["BLOCK_C"] * block_n <= _MAX_BLOCK
            and c.kwargs["BLOCK_C"] <= max(4, triton.next_power_of_2(ch))]
    if kept:
        return kept
    return [_as_config((max(1, _MAX_BLOCK // (4 * block_n)), 4, 4, 1))] if block_n <= _MAX_BLOCK // 4 else [
        _as_config((1, 1, 4, 1))]


_tuned_kernel = None if _INTERPRET else triton.autotune(
    configs=[_as_config(t) for t in _CONFIGS], key=_KEY,
    prune_configs_by={"early_config_prune": _prune})(_scan_kernel)

# The interpreter (CPU tests) cannot time configs: it runs this one (tests may change it).
interpret_config: dict = {"BLOCK_L": 16, "BLOCK_C": 8}
# The step's one config (never tuned: it is captured in CUDA graphs).
STEP_BLOCK_ELEMS = 512


def last_config() -> str | None:
    """The config the autotuner picked for the last shape it tuned (for benchmark reports)."""
    cfg = getattr(_tuned_kernel, "best_config", None)
    if cfg is None:
        return None
    return (f"BLOCK_L={cfg.kwargs['BLOCK_L']} BLOCK_C={cfg.kwargs['BLOCK_C']} warps={cfg.num_warps} "
            f"stages={cfg.num_stages}")


def _new_output(u: torch.Tensor) -> torch.Tensor:
    """The output buffer y, contiguous (a hook: the GPU tests fill it with NaN first)."""
    return torch.empty(u.shape, dtype=u.dtype, device=u.device)


def _new_state(batch: int, channels: int, d_state: int, device: torch.device) -> torch.Tensor:
    """The final-state buffer, float32 (a hook like ``_new_output``)."""
    return torch.empty(batch, channels, d_state, dtype=torch.float32, device=device)


def _check_float(name: str, t: torch.Tensor | None):
    if t is not None and t.dtype not in _FLOATS:
        raise JRTError(f"selective_scan: {name} has dtype {t.dtype}; the Triton scan takes float32, bfloat16 or float16")


def _check_shape(name: str, t: torch.Tensor | None, shape: tuple[int, ...]):
    if t is not None and tuple(t.shape) != shape:
        raise JRTError(f"selective_scan: {name} has shape {tuple(t.shape)}, expected {shape}")


def _check_device(device: torch.device, **tensors: torch.Tensor | None):
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise JRTError(f"selective_scan: {name} is on {t.device} but u is on {device}")


def _validate(u, delta, A, B, C, D, z, delta_bias, initial_state, mask):
    if u.dim() != 3:
        raise JRTError(f"selective_scan: u must be [batch, length, channels], got shape {tuple(u.shape)}")
    batch, length, channels = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise JRTError(f"selective_scan: A has shape {tuple(A.shape)}, expected [{channels}, d_state]")
    d_state = A.shape[1]
    _check_shape("delta", delta, (batch, length, channels))
    _check_shape("z", z, (batch, length, channels))
    _check_shape("B", B, (batch, length, d_state))
    _check_shape("C", C, (batch, length, d_state))
    _check_shape("D", D, (channels,))
    _check_shape("delta_bias", delta_bias, (channels,))
    _check_shape("initial_state", initial_state, (batch, channels, d_state))
    _check_shape("mask", mask, (batch, length))
    for name, t in dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                        initial_state=initial_state).items():
        _check_float(name, t)
    if mask is not None and mask.dtype != torch.bool:
        raise JRTError(f"selective_scan: mask must be bool (True = real token), got {mask.dtype}")
    _check_device(u.device, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                  initial_state=initial_state, mask=mask)
    return batch, length, channels, d_state


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                   delta_softplus: bool = True, initial_state: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None, chunk_size: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The scan over ``L`` tokens from ``initial_state``; arguments and results as ``naive.selective_scan``.

    u, delta, z: [B, L, C]; A: [C, N]; B, C: [B, L, N]; D, delta_bias: [C]; initial_state: [B, C, N]
    (None: zeros; never modified); mask: [B, L] bool, left padding. Any strides. ``chunk_size`` is the
    reference's and ignored here. Returns y [B, L, C] (u's dtype) and a new final state [B, C, N] float32.
    """
    batch, length, channels, d_state = _validate(u, delta, A, B, C, D, z, delta_bias, initial_state, mask)
    y = _new_output(u)
    h_out = _new_state(batch, channels, d_state, u.device)
    if batch == 0 or channels == 0 or d_state == 0:
        return y, h_out
    h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
    if length == 0:
        return y, (h_out.copy_(h0) if h0 is not None else h_out.zero_())
    mask_u8 = None if mask is None else mask.view(torch.uint8)
    D, delta_bias = (None if t is None else t.contiguous() for t in (D, delta_bias))  # read with stride 1
    zz = z if z is not None else u
    mm = mask_u8 if mask_u8 is not None else u
    block_n = triton.next_power_of_2(d_state)
    args = (u, delta, A, B, C, D if D is not None else u, zz, delta_bias if delta_bias is not None else u, mm,
            h0 if h0 is not None else h_out, y, h_out,
            length, channels, d_state,
            u.stride(0), u.stride(1), u.stride(2), delta.stride(0), delta.stride(1), delta.stride(2),
            zz.stride(0), zz.stride(1), zz.stride(2),
            B.stride(0), B.stride(1), B.stride(2), C.stride(0), C.stride(1), C.stride(2),
            A.stride(0), A.stride(1), mm.stride(0), mm.stride(1),
            min(triton.next_power_of_2(batch), 64))
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                 HAS_MASK=mask is not None, HAS_INIT=h0 is not None, SOFTPLUS=bool(delta_softplus), BLOCK_N=block_n)
    if _INTERPRET:
        block_c = min(interpret_config["BLOCK_C"], max(4, triton.next_power_of_2(channels)))
        _scan_kernel[(triton.cdiv(channels, block_c), batch)](*args, **flags, BLOCK_L=interpret_config["BLOCK_L"],
                                                              BLOCK_C=block_c)
    else:
        with torch.cuda.device(u.device):
            _tuned_kernel[lambda meta: (triton.cdiv(channels, meta["BLOCK_C"]), batch)](*args, **flags)
    return y, h_out


def selective_state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                           dt_bias: torch.Tensor | None = None, dt_softplus: bool = True) -> torch.Tensor:
    """One token, one kernel: ``state`` [B, C, N] float32 is updated in place; returns y [B, C] in x's dtype.

    x, dt, z: [B, C]; A: [C, N]; B, C: [B, N]; D, dt_bias: [C]. Any strides.
    """
    if x.dim() != 2:
        raise JRTError(f"selective_state_update: x must be [batch, channels], got shape {tuple(x.shape)}")
    batch, channels = x.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise JRTError(f"selective_state_update: A has shape {tuple(A.shape)}, expected [{channels}, d_state]")
    d_state = A.shape[1]
    if state.dtype != torch.float32 or tuple(state.shape) != (batch, channels, d_state):
        raise JRTError(f"selective_state_update: state must be float32 [{batch}, {channels}, {d_state}], "
                       f"got {state.dtype} {tuple(state.shape)}")
    for name, t, shape in (("dt", dt, (batch, channels)), ("z", z, (batch, channels)), ("B", B, (batch, d_state)),
                           ("C", C, (batch, d_state)), ("D", D, (channels,)), ("dt_bias", dt_bias, (channels,))):
        if t is not None and tuple(t.shape) != shape:
            raise JRTError(f"selective_state_update: {name} has shape {tuple(t.shape)}, expected {shape}")
        _check_float(name, t)
    _check_float("x", x)
    y = torch.empty(batch, channels, dtype=x.dtype, device=x.device)
    if batch == 0 or channels == 0:
        return y
    D, dt_bias = (None if t is None else t.contiguous() for t in (D, dt_bias))  # read with stride 1
    block_n = triton.next_power_of_2(d_state)
    block_c = max(1, min(triton.next_power_of_2(channels), STEP_BLOCK_ELEMS // block_n))
    zz = z if z is not None else x
    args = (state, x, dt, A, B, C, D if D is not None else x, zz, dt_bias if dt_bias is not None else x, y,
            channels, d_state,
            state.stride(0), state.stride(1), state.stride(2), x.stride(0), x.stride(1), dt.stride(0), dt.stride(1),
            zz.stride(0), zz.stride(1), B.stride(0), B.stride(1), C.stride(0), C.stride(1), A.stride(0), A.stride(1))
    grid = (triton.cdiv(channels, block_c), batch)
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
                 BLOCK_C=block_c, BLOCK_N=block_n)
    if _INTERPRET:
        _step_kernel[grid](*args, **flags)
    else:
        with torch.cuda.device(x.device):
            _step_kernel[grid](*args, **flags, num_warps=4)
    return y
