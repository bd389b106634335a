"""Our Triton selective scan (Mamba 1, state in and out) and its one-token step against the reference.

CPU: the kernels run under Triton's interpreter, which must be switched on before triton is imported, so
every check runs in one child process (``python tests/test_ops_selective_scan_triton.py``) with
TRITON_INTERPRET=1; each pytest test reports one of its results. The interpreter runs the in-kernel
associative scan one element at a time in Python, so the shapes are tiny (B <= 3, L <= 70, C <= 16, N <= 8).
GPU (``pytest -m gpu``): the compiled kernels at Mamba-130M's shape, bf16 and fp32, outputs poisoned first,
and a Mamba model's logits with the fast path against the reference.
"""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script (the interpreter child): make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.triton_child import child_main, child_results, collect_checks, interpreter_tests  # noqa: E402


# ---------------------------------------------------------------------------------------------
# inputs and references


def rel(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def inputs(Bn, L, C, N, dtype=torch.float32, device="cpu", seed=0):
    """u, delta, A, B, C, D, z, delta_bias with Mamba-like ranges (A = -exp(...) in about [-7, -0.4])."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "u": torch.randn(Bn, L, C, generator=g),
        "delta": torch.randn(Bn, L, C, generator=g),
        "A": -torch.exp(torch.rand(C, N, generator=g) * 3 - 1),
        "B": torch.randn(Bn, L, N, generator=g),
        "C": torch.randn(Bn, L, N, generator=g),
        "D": torch.randn(C, generator=g),
        "z": torch.randn(Bn, L, C, generator=g),
        "delta_bias": torch.randn(C, generator=g) * 0.5 - 1.0,
    }
    return {k: v.to(device, torch.float32 if k == "A" else dtype) for k, v in t.items()}


def start_state(Bn, C, N, seed=7, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(Bn, C, N, generator=g).to(device)


def left_pad_mask(Bn, L, pads, device="cpu"):
    m = torch.ones(Bn, L, dtype=torch.bool, device=device)
    for b, p in enumerate(pads):
        m[b, :p] = False
    return m


def direct(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, h0=None):
    """Token by token in float64, written from the definition."""
    u, delta, A, B, C = (t.double().cpu() for t in (u, delta, A, B, C))
    h = torch.zeros(u.shape[0], u.shape[2], A.shape[1], dtype=torch.float64) if h0 is None else h0.double().cpu()
    ys = []
    for t in range(u.shape[1]):
        dt = delta[:, t] + (0 if delta_bias is None else delta_bias.double().cpu())
        dt = F.softplus(dt) if delta_softplus else dt
        h = torch.exp(dt[..., None] * A) * h + (dt * u[:, t])[..., None] * B[:, t, None, :]
        y = (h * C[:, t, None, :]).sum(-1)
        if D is not None:
            y = y + D.double().cpu() * u[:, t]
        if z is not None:
            y = y * F.silu(z[:, t].double().cpu())
        ys.append(y)
    return torch.stack(ys, 1), h


def _modules():
    from jrt_prompt.ops.selective_scan import naive, triton_scan
    return triton_scan, naive


def _args(t, **drop):
    """Positional arguments (u, delta, A, B, C, D, z, delta_bias) with the named ones set to None."""
    return [None if drop.get(k) else t[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]


@contextlib.contextmanager
def interpret_config(**cfg):
    ts, _ = _modules()
    old = dict(ts.interpret_config)
    ts.interpret_config.update(cfg)
    try:
        yield
    finally:
        ts.interpret_config.clear()
        ts.interpret_config.update(old)


# ---------------------------------------------------------------------------------------------
# Checks: plain functions, run in the interpreter child on CPU


def check_matches_naive_with_initial_state():
    """L 70 (not a multiple of the block), C 12 (a partial channel block), N 6 (not a power of two)."""
    ts, naive = _modules()
    t = inputs(2, 70, 12, 6)
    h0 = start_state(2, 12, 6)
    saved = h0.clone()
    y, h = ts.selective_scan(*_args(t), initial_state=h0)
    ry, rh = naive.selective_scan(*_args(t), initial_state=h0)
    assert y.dtype == torch.float32 and h.dtype == torch.float32 and tuple(h.shape) == (2, 12, 6)
    assert rel(y, ry) < 1e-5 and rel(h, rh) < 1e-5, (rel(y, ry), rel(h, rh))
    assert torch.equal(h0, saved), "initial_state was modified"
    assert h.data_ptr() != h0.data_ptr()


def check_option_combinations():
    """With and without D, z, delta_bias, softplus; with and without a start state (zeros when absent)."""
    ts, naive = _modules()
    t = inputs(1, 20, 8, 4, seed=1)
    h0 = start_state(1, 8, 4, seed=2)
    for drop_d in (False, True):
        for drop_z in (False, True):
            for drop_bias in (False, True):
                for softplus in (True, False):
                    init = h0 if drop_d == drop_z else None
                    args = _args(t, D=drop_d, z=drop_z, delta_bias=drop_bias)
                    if not softplus:  # a positive dt without softplus, as callers that pass dt ready-made do
                        args[1] = F.softplus(args[1])
                        args[7] = None if args[7] is None else args[7].abs()
                    y, h = ts.selective_scan(*args, softplus, init)
                    ry, rh = direct(*args, softplus, init)
                    what = (drop_d, drop_z, drop_bias, softplus)
                    assert rel(y, ry) < 1e-5 and rel(h, rh) < 1e-5, (what, rel(y, ry), rel(h, rh))


def check_softplus_extremes_against_float64():
    """dt inputs past softplus's threshold (20) and far below 0, where log1p's small-argument form counts."""
    ts, _ = _modules()
    t = inputs(2, 24, 8, 4, seed=3)
    g = torch.Generator().manual_seed(4)
    scale = torch.tensor([0.1, 1, 5, 12, 25, 40, 0.5, 18])[torch.randint(0, 8, (2, 24, 8), generator=g)]
    t["delta"] = t["delta"] * scale
    t["A"] = t["A"] * 0.05  # keeps large steps from zeroing the state outright
    h0 = start_state(2, 8, 4)
    y, h = ts.selective_scan(*_args(t), initial_state=h0)
    ry, rh = direct(*_args(t), h0=h0)
    assert rel(y, ry) < 1e-5 and rel(h, rh) < 1e-5, (rel(y, ry), rel(h, rh))
    # softplus alone, element by element: with A = 0, B = C = u = 1, no D and a zero start, y = h = dt
    x = torch.cat([torch.linspace(-40, 40, 161), torch.tensor([-80.0, -20.0, 19.99, 20.0, 20.01, 1e-6, -1e-6])])
    C = x.numel()
    ones = torch.ones(1, 1, 1)
    y, h = ts.selective_scan(torch.ones(1, 1, C), x.view(1, 1, C), torch.zeros(C, 1), ones, ones)
    ref = F.softplus(x.double())
    err = ((y.view(-1).double() - ref).abs() / ref).max().item()
    assert err < 1e-5 and rel(h.view(-1), ref) < 1e-6, err


def check_split_points():
    """Reading [0, a) then [a, L) from the returned state gives the outputs and state of one read."""
    ts, _ = _modules()
    t = inputs(2, 50, 8, 4, seed=5)
    h0 = start_state(2, 8, 4)
    y, h = ts.selective_scan(*_args(t), initial_state=h0)
    for a in (1, 16, 33, 49):
        first = {k: (v[:, :a] if v.dim() == 3 else v) for k, v in t.items()}
        rest = {k: (v[:, a:] if v.dim() == 3 else v) for k, v in t.items()}
        y1, s = ts.selective_scan(*_args(first), initial_state=h0)
        y2, h2 = ts.selective_scan(*_args(rest), initial_state=s)
        both = torch.cat([y1, y2], 1)
        assert rel(both, y) < 1e-5 and rel(h2, h) < 1e-5, (a, rel(both, y), rel(h2, h))


def check_left_padding():
    """Padded tokens read 0 and leave the state alone; each row equals its real tokens read alone."""
    ts, naive = _modules()
    pads = (0, 13, 29)
    t = inputs(3, 30, 8, 4, seed=6)
    mask = left_pad_mask(3, 30, pads)
    h0 = start_state(3, 8, 4)
    y, h = ts.selective_scan(*_args(t), initial_state=h0, mask=mask)
    ry, rh = naive.selective_scan(*_args(t), initial_state=h0, mask=mask)
    assert rel(y, ry) < 1e-5 and rel(h, rh) < 1e-5, (rel(y, ry), rel(h, rh))
    assert torch.all(y[~mask] == 0), "padded positions must read 0"
    for b, p in enumerate(pads):
        row = {k: (v[b:b + 1, p:] if v.dim() == 3 else v) for k, v in t.items()}
        yb, hb = ts.selective_scan(*_args(row), initial_state=h0[b:b + 1])
        assert rel(y[b:b + 1, p:], yb) < 1e-5 and rel(h[b:b + 1], hb) < 1e-5, b


def check_padding_mid_stream_leaves_state():
    """After a prefilled state, an all-padded piece returns that state bit for bit, and reads 0."""
    ts, naive = _modules()
    t = inputs(2, 18, 8, 4, seed=7)
    h0 = start_state(2, 8, 4)
    mask = torch.zeros(2, 18, dtype=torch.bool)
    y, h = ts.selective_scan(*_args(t), initial_state=h0, mask=mask)
    assert torch.all(y == 0) and torch.equal(h, h0)
    mask[0, 17] = True  # one real token in row 0: row 1, still all pads, keeps its state exactly
    y, h = ts.selective_scan(*_args(t), initial_state=h0, mask=mask)
    assert torch.equal(h[1], h0[1]) and not torch.equal(h[0], h0[0])
    ry, rh = naive.selective_scan(*_args(t), initial_state=h0, mask=mask)
    assert rel(y, ry) < 1e-5 and rel(h, rh) < 1e-5


def check_block_sizes():
    """Other (BLOCK_L, BLOCK_C) than the default: blocks longer than the sequence, one channel block short."""
    ts, naive = _modules()
    t = inputs(1, 37, 12, 4, seed=8)
    h0 = start_state(1, 12, 4)
    mask = left_pad_mask(1, 37, (5,))
    ry, rh = naive.selective_scan(*_args(t), initial_state=h0, mask=mask)
    for bl, bc in ((64, 16), (8, 4), (32, 8)):
        with interpret_config(BLOCK_L=bl, BLOCK_C=bc):
            y, h = ts.selective_scan(*_args(t), initial_state=h0, mask=mask)
        assert rel(y, ry) < 1e-5 and rel(h, rh) < 1e-5, (bl, bc, rel(y, ry))


def check_strided_inputs_as_the_layer_passes_them():
    """x and z halves of one projection, dt/B/C slices of another, a transposed A: strides are honoured."""
    ts, naive = _modules()
    g = torch.Generator().manual_seed(9)
    Bn, L, C, N, R = 2, 21, 8, 4, 3
    xz = torch.randn(Bn, L, 2 * C, generator=g)
    x, z = xz.chunk(2, dim=-1)
    proj = torch.randn(Bn, L, R + 2 * N, generator=g)
    _, B, Cm = proj.split([R, N, N], dim=-1)
    delta = torch.randn(Bn, C, L, generator=g).transpose(1, 2)
    A = (-torch.exp(torch.rand(N, C, generator=g))).t()
    D, bias = torch.randn(2 * C, generator=g)[::2], torch.randn(3 * C, generator=g)[1::3]
    mask = left_pad_mask(Bn, L, (0, 4))
    h0 = start_state(Bn, N, C).transpose(1, 2)  # a non-contiguous start state
    assert not (x.is_contiguous() or B.is_contiguous() or A.is_contiguous() or delta.is_contiguous())
    y, h = ts.selective_scan(x, delta, A, B, Cm, D, z, bias, True, h0, mask)
    ry, rh = naive.selective_scan(x, delta, A, B, Cm, D, z, bias, True, h0, mask)
    assert rel(y, ry) < 1e-5 and rel(h, rh) < 1e-5, (rel(y, ry), rel(h, rh))
    assert y.is_contiguous()


def check_sixteen_bit_inputs():
    """bf16 / fp16 inputs load as such and y comes back in their dtype; the state stays float32."""
    ts, naive = _modules()
    for dtype in (torch.bfloat16, torch.float16):
        t = inputs(2, 20, 8, 4, dtype=dtype, seed=10)
        h0 = start_state(2, 8, 4)
        mask = left_pad_mask(2, 20, (0, 6))
        y, h = ts.selective_scan(*_args(t), initial_state=h0, mask=mask)
        ry, rh = naive.selective_scan(*_args(t), initial_state=h0, mask=mask)
        assert y.dtype == dtype and h.dtype == torch.float32
        assert rel(y, ry) < 1e-2 and rel(h, rh) < 1e-5, (dtype, rel(y, ry), rel(h, rh))


def check_empty_inputs():
    ts, _ = _modules()
    t = inputs(2, 0, 8, 4)
    h0 = start_state(2, 8, 4)
    y, h = ts.selective_scan(*_args(t), initial_state=h0)
    assert y.shape == (2, 0, 8) and torch.equal(h, h0) and h.data_ptr() != h0.data_ptr()
    y, h = ts.selective_scan(*_args(t))
    assert torch.all(h == 0) and h.shape == (2, 8, 4)
    t = inputs(0, 5, 8, 4)
    y, h = ts.selective_scan(*_args(t))
    assert y.shape == (0, 5, 8) and h.shape == (0, 8, 4)


def check_errors():
    """Bad shapes and dtypes raise a JRTError whose message names the argument."""
    from jrt_prompt.errors import JRTError
    ts, _ = _modules()
    t = inputs(1, 6, 8, 4)
    a = _args(t)
    one = [x[:, 0] if x.dim() == 3 else x for x in a]  # a single token's x, dt, A, B, C, D, z, bias
    state = torch.zeros(1, 8, 4)
    bad = {
        "u": lambda: ts.selective_scan(a[0][0], *a[1:]),  # 2-D
        "delta": lambda: ts.selective_scan(a[0], a[1][:, :5], *a[2:]),
        "A": lambda: ts.selective_scan(*a[:2], a[2][:7], *a[3:]),
        "B": lambda: ts.selective_scan(*a[:3], a[3][..., :3], *a[4:]),
        "D": lambda: ts.selective_scan(*a[:5], a[5][:7], *a[6:]),
        "mask must be bool": lambda: ts.selective_scan(*a, mask=torch.ones(1, 6)),
        "mask": lambda: ts.selective_scan(*a, mask=torch.ones(1, 5, dtype=torch.bool)),
        "initial_state": lambda: ts.selective_scan(*a, initial_state=torch.zeros(1, 8, 5)),
        "float64": lambda: ts.selective_scan(a[0].double(), *a[1:]),
        "state must be float32": lambda: ts.selective_state_update(state.double(), *one[:5]),
        "B has shape": lambda: ts.selective_state_update(state, *one[:3], one[3][:, :3], one[4]),
    }
    for word, call in bad.items():
        try:
            call()
        except JRTError as e:
            assert word in str(e), (word, str(e))
        else:
            raise AssertionError(f"{word}: the bad call did not raise JRTError")


def check_step_matches_naive_step():
    """In place (same storage), strided x/z/B/C as the layer slices them, every option on and off."""
    ts, naive = _modules()
    g = torch.Generator().manual_seed(11)
    Bn, C, N = 2, 12, 6
    xz = torch.randn(Bn, 2 * C, generator=g)
    x, z = xz.chunk(2, -1)
    dtBC = torch.randn(Bn, C + 2 * N, generator=g)
    dt, B, Cm = dtBC.split([C, N, N], -1)
    A = -torch.exp(torch.rand(C, N, generator=g) * 2)
    D, bias = torch.randn(C, generator=g), torch.randn(C, generator=g)
    for use_d, use_z, use_bias, softplus in ((True, True, True, True), (False, False, False, True),
                                             (True, False, True, False)):
        dd = dt if softplus else F.softplus(dt)
        s0 = start_state(Bn, C, N)
        s, s_ref = s0.clone(), s0.clone()
        ptr = s.data_ptr()
        y = ts.selective_state_update(s, x, dd, A, B, Cm, D if use_d else None, z if use_z else None,
                                      bias if use_bias else None, softplus)
        ry = naive.selective_state_update(s_ref, x, dd, A, B, Cm, D if use_d else None, z if use_z else None,
                                          bias if use_bias else None, softplus)
        assert s.data_ptr() == ptr and y.shape == (Bn, C)
        assert rel(y, ry) < 1e-5 and rel(s, s_ref) < 1e-5, (use_d, use_z, use_bias, softplus, rel(y, ry))
    yh = ts.selective_state_update(s, x.bfloat16(), dt.bfloat16(), A, B.bfloat16(), Cm.bfloat16(), D, z.bfloat16(),
                                   bias)
    assert yh.dtype == torch.bfloat16 and s.dtype == torch.float32


def check_steps_equal_scan():
    ts, _ = _modules()
    t = inputs(2, 12, 8, 4, seed=12)
    h0 = start_state(2, 8, 4)
    y, h = ts.selective_scan(*_args(t), initial_state=h0)
    s = h0.clone()
    ys = [ts.selective_state_update(s, t["u"][:, i], t["delta"][:, i], t["A"], t["B"][:, i], t["C"][:, i], t["D"],
                                    t["z"][:, i], t["delta_bias"]) for i in range(12)]
    assert rel(torch.stack(ys, 1), y) < 1e-5 and rel(s, h) < 1e-5


@contextlib.contextmanager
def fast_path_on_cpu():
    """The package's dispatch treats CPU tensors as the fast path's (the interpreter runs the kernels)."""
    import jrt_prompt.ops.selective_scan as sel
    from jrt_prompt.ops import backend
    old = sel.use_fast_path, backend.use_fast_path  # mamba_ssm's check, and the one our kernels' dispatch shares
    sel.use_fast_path = backend.use_fast_path = lambda *tensors: not backend.reference_forced()
    try:
        yield sel
    finally:
        sel.use_fast_path, backend.use_fast_path = old


@contextlib.contextmanager
def counting(module, name):
    """Counts calls of ``module.name``."""
    calls = []
    real = getattr(module, name)

    def spy(*a, **k):
        calls.append(name)
        return real(*a, **k)

    setattr(module, name, spy)
    try:
        yield calls
    finally:
        setattr(module, name, real)


def fake_mamba_ssm_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        return_last_state=False):
    """mamba_ssm's documented contract: u, delta, z [B, C, L]; B, C [B, N, L] in u's dtype; A, D, delta_bias
    fp32; returns (out [B, C, L] in u's dtype, last_state [B, C, N]). Computed by the float64 definition."""
    assert u.shape == delta.shape and B.shape == (u.shape[0], A.shape[1], u.shape[2]), (u.shape, B.shape)
    assert B.dtype == C.dtype == delta.dtype == u.dtype and A.dtype == torch.float32
    assert (D is None or D.dtype == torch.float32) and (delta_bias is None or delta_bias.dtype == torch.float32)
    assert return_last_state
    tr = (lambda t: None if t is None else t.transpose(1, 2))
    y, h = direct(tr(u), tr(delta), A, tr(B), tr(C), D, tr(z), delta_bias, delta_softplus)
    return tr(y).to(u.dtype), h.float()


@contextlib.contextmanager
def fake_mamba_ssm():
    names = ["mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.selective_scan_interface"]
    saved = {n: sys.modules.get(n) for n in names}
    for n in names:
        sys.modules[n] = types.ModuleType(n)
    sys.modules[names[-1]].selective_scan_fn = fake_mamba_ssm_scan
    from jrt_prompt.ops.backend import importable
    importable.cache_clear()
    try:
        yield sys.modules[names[-1]]
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
        importable.cache_clear()


def check_dispatch():
    """Fast path -> Triton (with a state or a mask; mamba_ssm when it imports and neither is given); reference
    when forced, when a gradient is needed, or when the fast path does not apply."""
    from jrt_prompt.ops.backend import reference_ops
    ts, naive = _modules()
    t = inputs(2, 10, 8, 4, seed=13)
    h0 = start_state(2, 8, 4)
    mask = left_pad_mask(2, 10, (0, 3))
    ry, rh = naive.selective_scan(*_args(t), initial_state=h0, mask=mask)
    with fast_path_on_cpu() as sel, counting(ts, "selective_scan") as calls, \
            counting(ts, "selective_state_update") as steps:
        y, h = sel.selective_scan(*_args(t), initial_state=h0, mask=mask)
        assert calls == ["selective_scan"] and rel(y, ry) < 1e-5 and rel(h, rh) < 1e-5
        with reference_ops():
            y2, _ = sel.selective_scan(*_args(t), initial_state=h0, mask=mask)
        assert len(calls) == 1 and rel(y2, ry) < 1e-6
        u = t["u"].clone().requires_grad_()
        yg, _ = sel.selective_scan(u, *_args(t)[1:], initial_state=h0)
        assert len(calls) == 1 and yg.grad_fn is not None, "a gradient is needed: the reference must run"
        with torch.no_grad():
            sel.selective_scan(u, *_args(t)[1:], initial_state=h0)
        assert len(calls) == 2
        s = h0.clone()
        sel.selective_state_update(s, t["u"][:, 0], t["delta"][:, 0], t["A"], t["B"][:, 0], t["C"][:, 0])
        assert steps == ["selective_state_update"]
        with fake_mamba_ssm() as fake, counting(fake, "selective_scan_fn") as ssm_calls:
            y3, h3 = sel.selective_scan(*_args(t))
            assert ssm_calls == ["selective_scan_fn"] and len(calls) == 2
            ry3, rh3 = naive.selective_scan(*_args(t))
            assert rel(y3, ry3) < 1e-5 and rel(h3, rh3) < 1e-5 and h3.dtype == torch.float32
            sel.selective_scan(*_args(t), initial_state=h0)  # it has no initial state: ours runs
            sel.selective_scan(*_args(t), mask=mask)  # nor a mask
            assert len(ssm_calls) == 1 and len(calls) == 4
    # without the patch, CPU tensors take the reference
    import jrt_prompt.ops.selective_scan as sel
    with counting(ts, "selective_scan") as calls:
        sel.selective_scan(*_args(t), initial_state=h0)
    assert calls == []


@torch.no_grad()
def read_then_steps(lm, pre, ids, mask, nxt):
    """Reads ``pre``, then the left-padded ``ids`` from that state, then decodes ``nxt`` one token at a time:
    (prefill logits, step logits [B, steps, V], final state)."""
    _, s = lm(pre)
    logits, s = lm(ids, s, attention_mask=mask)
    steps = []
    for i in range(nxt.shape[1]):
        step_logits, s = lm.step(nxt[:, i], s)
        steps.append(step_logits)
    return logits, torch.stack(steps, 1), s


def tiny_lm():
    from jrt_prompt.adapters import mamba
    from tests.checkpoints_mamba import tiny_mamba
    return mamba.from_model(tiny_mamba(seed=3, hidden_size=8, num_hidden_layers=1))


def check_mamba_model_fast_path_equals_reference():
    """A Mamba model through the dispatch with the Triton kernels: logits of a left-padded batch read after a
    prefilled state, then decode steps, equal the reference's; the model passes the shared property checks."""
    from jrt_prompt.ops.backend import reference_ops
    from tests.properties import _close, check_all
    lm = tiny_lm()
    vocab = lm.config.vocab_size
    g = torch.Generator().manual_seed(0)
    pre = torch.randint(0, vocab, (2, 9), generator=g)
    ids = torch.randint(0, vocab, (2, 14), generator=g)
    mask = torch.ones(2, 14, dtype=torch.long)
    mask[1, :5] = 0
    nxt = torch.randint(0, vocab, (2, 3), generator=g)
    ts, _ = _modules()
    with interpret_config(BLOCK_L=8, BLOCK_C=16), fast_path_on_cpu():
        with counting(ts, "selective_scan") as calls, counting(ts, "selective_state_update") as steps:
            fast = read_then_steps(lm, pre, ids, mask, nxt)
        assert len(calls) == 2 and len(steps) == 3, (calls, steps)
        with reference_ops():
            ref = read_then_steps(lm, pre, ids, mask, nxt)
        for a, b, what in ((fast[0], ref[0], "prefill logits"), (fast[1], ref[1], "step logits")):
            _close(a, b, 1e-5, what)
        for x, y in zip(fast[2].tensors(), ref[2].tensors()):
            _close(x, y, 1e-5, "state")
        check_all(lm, vocab)


CHECKS = collect_checks(globals())


# ---------------------------------------------------------------------------------------------
# pytest, CPU: one interpreter child for all checks


interpreter_results, test_under_triton_interpreter = interpreter_tests(__file__, CHECKS)


# ---------------------------------------------------------------------------------------------
# pytest, GPU: compiled kernels, bf16 and fp32, outputs poisoned first


@contextlib.contextmanager
def poisoned_outputs(ts):
    """y and the final state are allocated NaN-filled, so that an element the kernel misses cannot pass."""
    real = ts._new_output, ts._new_state
    ts._new_output = lambda u: torch.full(u.shape, float("nan"), dtype=u.dtype, device=u.device)
    ts._new_state = lambda b, c, n, device: torch.full((b, c, n), float("nan"), device=device)
    try:
        yield
    finally:
        ts._new_output, ts._new_state = real


GPU_TOL = {torch.bfloat16: 1e-2, torch.float32: 1e-3}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("Bn,L,C,N", [(2, 2048, 1536, 16), (1, 333, 200, 16), (3, 130, 64, 8)])
def test_gpu_scan_matches_reference(dtype, Bn, L, C, N):
    ts, naive = _modules()
    t = inputs(Bn, L, C, N, dtype=dtype, device="cuda", seed=L)
    h0 = start_state(Bn, C, N, device="cuda")
    mask = left_pad_mask(Bn, L, [min(b * 37, L - 1) for b in range(Bn)], device="cuda")
    every = dict()
    none = dict(D=True, z=True, delta_bias=True)
    for kw, drop in ((dict(initial_state=h0, mask=mask), every), (dict(), none), (dict(initial_state=h0), every)):
        with poisoned_outputs(ts):
            y, h = ts.selective_scan(*_args(t, **drop), **kw)
        torch.cuda.synchronize()
        assert not torch.isnan(y).any() and not torch.isnan(h).any()
        ry, rh = naive.selective_scan(*_args(t, **drop), **kw)
        tol = GPU_TOL[dtype]
        assert y.dtype == dtype and h.dtype == torch.float32
        assert rel(y, ry) < tol and rel(h, rh) < tol, (kw.keys(), drop, rel(y, ry), rel(h, rh))


@pytest.mark.gpu
def test_gpu_split_and_padding_mid_stream():
    ts, _ = _modules()
    t = inputs(2, 1000, 256, 16, dtype=torch.bfloat16, device="cuda", seed=1)
    h0 = start_state(2, 256, 16, device="cuda")
    y, h = ts.selective_scan(*_args(t), initial_state=h0)
    a = 437
    y1, s = ts.selective_scan(*_args({k: (v[:, :a] if v.dim() == 3 else v) for k, v in t.items()}), initial_state=h0)
    y2, h2 = ts.selective_scan(*_args({k: (v[:, a:] if v.dim() == 3 else v) for k, v in t.items()}), initial_state=s)
    assert rel(torch.cat([y1, y2], 1), y) < 1e-2 and rel(h2, h) < 1e-4
    pads = torch.zeros(2, 1000, dtype=torch.bool, device="cuda")
    yp, hp = ts.selective_scan(*_args(t), initial_state=h0, mask=pads)
    assert torch.equal(hp, h0) and torch.all(yp == 0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_step_matches_reference(dtype):
    ts, naive = _modules()
    t = inputs(4, 1, 1536, 16, dtype=dtype, device="cuda", seed=3)
    s0 = start_state(4, 1536, 16, device="cuda")
    s, s_ref = s0.clone(), s0.clone()
    one = [x[:, 0] if x.dim() == 3 else x for x in _args(t)]
    y = ts.selective_state_update(s, *one)
    ry = naive.selective_state_update(s_ref, *one)
    assert rel(y, ry) < GPU_TOL[dtype] and rel(s, s_ref) < 1e-5


@pytest.mark.gpu
def test_gpu_step_is_graph_capturable():
    ts, _ = _modules()
    t = inputs(2, 1, 1536, 16, dtype=torch.bfloat16, device="cuda", seed=4)
    one = [x[:, 0] if x.dim() == 3 else x for x in _args(t)]
    s0 = start_state(2, 1536, 16, device="cuda")
    s_eager = s0.clone()
    y_eager = ts.selective_state_update(s_eager, *one)
    s_g = s0.clone()
    ts.selective_state_update(s0.clone(), *one)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_g = ts.selective_state_update(s_g, *one)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y_g, y_eager) and torch.equal(s_g, s_eager)


@pytest.mark.gpu
def test_gpu_dispatch_picks_a_fast_path():
    """With a start state the package runs our kernel on CUDA; without one, mamba_ssm if installed, else ours."""
    import jrt_prompt.ops.selective_scan as sel
    from jrt_prompt.ops.backend import importable
    ts, naive = _modules()
    t = inputs(2, 300, 256, 16, dtype=torch.bfloat16, device="cuda", seed=5)
    h0 = start_state(2, 256, 16, device="cuda")
    with counting(ts, "selective_scan") as calls:
        y, h = sel.selective_scan(*_args(t), initial_state=h0)
        y0, h_0 = sel.selective_scan(*_args(t))
    assert len(calls) == (1 if importable(sel.MAMBA_SSM_SCAN) else 2)
    for got, kw in (((y, h), dict(initial_state=h0)), ((y0, h_0), dict())):
        ry, rh = naive.selective_scan(*_args(t), **kw)
        assert rel(got[0], ry) < 1e-2 and rel(got[1], rh) < 1e-2 and got[1].dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_gpu_mamba_model_fast_path_equals_reference(dtype, tol):
    from jrt_prompt.adapters import mamba
    from jrt_prompt.ops.backend import reference_ops
    from tests.checkpoints_mamba import tiny_mamba
    from tests.properties import _close
    lm = mamba.from_model(tiny_mamba(seed=4, hidden_size=64, state_size=16)).to("cuda", dtype)
    vocab = lm.config.vocab_size
    g = torch.Generator().manual_seed(0)
    pre, ids, nxt = (torch.randint(0, vocab, shape, generator=g).cuda() for shape in ((2, 40), (2, 300), (2, 4)))
    mask = torch.ones(2, 300, dtype=torch.long, device="cuda")
    mask[1, :120] = 0
    ts, _ = _modules()
    with counting(ts, "selective_scan") as calls:
        fast = read_then_steps(lm, pre, ids, mask, nxt)
    assert calls, "the Triton scan did not run"
    with reference_ops():
        ref = read_then_steps(lm, pre, ids, mask, nxt)
    _close(fast[0][mask.bool()], ref[0][mask.bool()], tol, "prefill logits")
    _close(fast[1], ref[1], tol, "step logits")


# ---------------------------------------------------------------------------------------------
# CPU: the kernels compile for Hopper (sm_90a) with Triton's bundled ptxas; no GPU needed


def compile_for_hopper() -> dict[str, dict]:
    """Compiles the scan (bf16, every option on, each autotuning config for N = 16) and the step to cubins."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ts, _ = _modules()

    def build(fn, consts, num_warps, num_stages=1):
        sig = {}
        for name in fn.arg_names:
            if name in consts:
                sig[name] = "constexpr"
            elif name.endswith("_ptr"):
                sig[name] = ("*fp32" if name in ("A_ptr", "h0_ptr", "hT_ptr", "state_ptr") else
                             "*u8" if name == "mask_ptr" else "*bf16")
            else:
                sig[name] = "i32"
        kernel = triton.compile(ASTSource(fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": num_warps, "num_stages": num_stages})
        return {"cubin_bytes": len(kernel.asm["cubin"]), "shared": kernel.metadata.shared}

    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, HAS_MASK=True, HAS_INIT=True, SOFTPLUS=True, BLOCK_N=16)
    built = {}
    for bl, bc, warps, stages in ts._CONFIGS:
        if bl * bc * 16 <= ts._MAX_BLOCK:
            built[f"scan_{bl}x{bc}_w{warps}_s{stages}"] = build(ts._scan_kernel, dict(flags, BLOCK_L=bl, BLOCK_C=bc),
                                                                warps, stages)
    built["step"] = build(ts._step_kernel, dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, BLOCK_C=32,
                                                BLOCK_N=16), 4)
    return built


def test_kernels_compile_for_hopper():
    pytest.importorskip("triton.backends.nvidia")
    built = child_results(__file__, "--compile", interpret=False)
    assert "step" in built and any(k.startswith("scan_") for k in built)
    assert all(b["cubin_bytes"] > 0 for b in built.values())


if __name__ == "__main__":
    child_main(CHECKS, compile_for_hopper)
