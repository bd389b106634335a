"""The Triton kernels around fla's chunk_simple_gla in Mamba-2's SSD (``jrt_prompt.ops.ssd.triton_prep``) against
their references (``jrt_prompt.ops.ssd.naive.fla_inputs`` / ``skip_out``).

Inputs are strided views as in the layer: x, B and C are column slices of one [B, L, H*P + 2*G*N] conv output, dt a
slice of a wider projection. The checks cover float32 and bfloat16, one or two groups, D per head, per channel or
none, dt_bias or none, the default and a clamping dt limit, no mask and left-padded rows, and inputs past softplus's
threshold. CPU: under Triton's interpreter in one child process (see tests/triton_child.py). GPU (``pytest -m gpu``):
the same checks compiled, and ``ssd_fla`` (these kernels, fla with ``state_v_first``) against ``ssd_chunked`` at
Mamba-2 370M's shape.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

if __package__ in (None, ""):  # run as a script (the interpreter child): make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.triton_child import child_main, collect_checks, interpreter_tests, on_device  # noqa: E402

DEVICE = "cpu"  # the checks' device (the GPU tests set "cuda")
BF16 = torch.bfloat16
LIMIT = (0.001, 0.1)


def rel(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def tol(dtype) -> float:
    """float32: a few ulps; compiled, Triton's float32 exp is ex2.approx(x * log2(e)), up to ~1e-6 relative for the
    |x| <= 30 here. 16 bits: the interpreter rounds float32 to bf16 by truncation where torch rounds to nearest (up
    to one ulp, 2^-8); compiled, only the rare values whose dt differs across a rounding boundary."""
    if dtype == torch.float32:
        return 1e-6 if DEVICE == "cpu" else 1e-5
    return 1e-2 if DEVICE == "cpu" else 1e-3


def _mods():
    from jrt_prompt.ops.ssd import naive, triton_prep
    return triton_prep, naive


def left_pad_mask(lengths, L):
    return torch.stack([torch.arange(L) >= L - n for n in lengths]).to(DEVICE)


def layer_inputs(batch=2, L=5, heads=4, head_dim=8, d_state=16, groups=2, dtype=torch.float32, d_mode="head",
                 bias=True, seed=0, realistic=False):
    """Mamba-2 layer-shaped ``ssd`` arguments: x, B, C slices of one conv output, dt a slice of a wider tensor.
    ``realistic``: dt_bias and A in a released model's ranges (softplus(dt + bias) around 0.001 to 0.1, A -1..-H)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    hp, gn = heads * head_dim, groups * d_state
    xbc = r(batch, L, hp + 2 * gn).to(DEVICE, dtype)
    x = xbc[..., :hp].unflatten(-1, (heads, head_dim))
    B = xbc[..., hp:hp + gn].unflatten(-1, (groups, d_state))
    C = xbc[..., hp + gn:].unflatten(-1, (groups, d_state))
    wide = r(batch, L, heads + 7, scale=0.5 if realistic else 2.0)
    if not realistic:  # past softplus's threshold (20) and deep in its tail
        wide[0, 0, 3], wide[-1, -1, 3 + heads - 1] = 25.0, -30.0
    dt = wide.to(DEVICE, dtype)[..., 3:3 + heads]
    if realistic:
        step = torch.exp(torch.rand(heads, generator=g) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
        dt_bias = step + torch.log(-torch.expm1(-step))  # softplus^-1
        A = -torch.arange(1, heads + 1, dtype=torch.float32)
    else:
        dt_bias = r(heads, scale=0.5)
        A = -torch.rand(heads, generator=g) * 3 - 0.1
    D = {"head": r(heads), "channel": r(heads, head_dim), None: None}[d_mode]
    return dict(x=x, dt=dt, A=A.to(DEVICE), B=B, C=C, D=D.to(DEVICE, dtype) if D is not None else None,
                dt_bias=dt_bias.to(DEVICE, dtype) if bias else None)


def prep_case(*, limit=(0.0, math.inf), lengths=None, softplus=True, **shape):
    k, r = _mods()
    kw = layer_inputs(**shape)
    x, dt = kw["x"], kw["dt"]
    assert x.stride(-1) == 1 and not x.is_contiguous() and not dt.is_contiguous()
    mask = left_pad_mask(lengths, x.shape[1]) if lengths else None
    args = (x, dt, kw["A"], kw["B"], kw["C"])
    opts = dict(dt_bias=kw["dt_bias"], dt_softplus=softplus, dt_limit=limit, mask=mask)
    assert k.supported(*args, kw["D"], kw["dt_bias"], mask)
    got, want = k.fla_inputs(*args, **opts), r.fla_inputs(*args, **opts)
    for name, a, e in zip("qkvg", got, want):
        assert a.shape == e.shape and a.dtype == e.dtype and a.is_contiguous(), (name, a.shape, a.dtype)
    q, kk, v, g = got
    assert torch.equal(q, want[0]) and torch.equal(kk, want[1]), "q/k are copies of C/B over heads"
    assert rel(g, want[3]) < tol(torch.float32), (shape, limit, rel(g, want[3]))
    assert rel(v, want[2]) < tol(x.dtype), (shape, limit, rel(v, want[2]))
    if mask is not None:
        assert not g[~mask].any() and not v[~mask].any(), "masked tokens must get dt = 0"
    return kw, opts


def skip_case(lengths=None, **shape):
    k, r = _mods()
    kw = layer_inputs(**shape)
    x, D = kw["x"], kw["D"]
    g = torch.Generator().manual_seed(99)
    o = torch.randn(x.shape, generator=g).to(DEVICE, x.dtype)  # fla's output: contiguous, x's dtype
    mask = left_pad_mask(lengths, x.shape[1]) if lengths else None
    a, e = k.skip_out(o, x, D, mask), r.skip_out(o, x, D, mask)
    assert a.shape == e.shape == x.shape and a.dtype == e.dtype == x.dtype
    assert rel(a, e) < tol(x.dtype), (shape, lengths, rel(a, e))
    if mask is not None:
        assert not a[~mask].any()


# ---------------------------------------------------------------------------------------------
# Checks: plain functions, run in the interpreter child on CPU (and reused on the GPU)


def check_fla_inputs():
    for dtype in (torch.float32, BF16):
        for groups, heads in ((1, 4), (2, 4), (2, 6)):
            for bias in (True, False):
                prep_case(dtype=dtype, groups=groups, heads=heads, bias=bias, seed=groups + heads)
    prep_case(head_dim=12, d_state=10, heads=3, groups=1)  # sizes that are not powers of two
    prep_case(batch=1, L=40, heads=16, groups=2, head_dim=4, d_state=8)  # several token and head blocks


def check_fla_inputs_limit_mask_softplus():
    _, r = _mods()
    for dtype in (torch.float32, BF16):
        kw, opts = prep_case(dtype=dtype, limit=LIMIT, seed=3)
        args = (kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"])
        free = r.fla_inputs(*args, **{**opts, "dt_limit": (0.0, math.inf)})[3]
        assert rel(free, r.fla_inputs(*args, **opts)[3]) > 1e-1, "the limit must change these inputs' dt"
        prep_case(dtype=dtype, batch=3, L=7, lengths=[7, 2, 0], seed=4)
        prep_case(dtype=dtype, batch=3, L=7, lengths=[5, 7, 1], limit=LIMIT, bias=False, seed=5)
    prep_case(softplus=False, seed=6)
    prep_case(realistic=True, heads=8, groups=1, lengths=[5, 3], seed=7)


def check_skip_out():
    for dtype in (torch.float32, BF16):
        for d_mode in ("head", "channel", None):
            skip_case(dtype=dtype, d_mode=d_mode)
            skip_case(dtype=dtype, d_mode=d_mode, batch=3, L=6, lengths=[6, 1, 3], groups=1)
    skip_case(heads=3, head_dim=12, groups=1, d_mode="channel")
    skip_case(batch=1, L=9, heads=64, head_dim=32, groups=1)  # H * P = 2048: two channel blocks


def check_supported():
    k, _ = _mods()
    kw = layer_inputs()
    args = (kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"])
    mask = torch.ones(2, 5, dtype=torch.bool, device=DEVICE)
    assert k.supported(*args, kw["D"], kw["dt_bias"], mask)
    assert not k.supported(kw["x"].double(), *args[1:])
    assert not k.supported(*args, kw["D"], kw["dt_bias"], mask.float())
    assert not k.supported(*args, kw["D"][:3])
    assert not k.supported(kw["x"], kw["dt"], kw["A"], kw["B"][:, :, :1], kw["C"])


CHECKS = collect_checks(globals())


# ---------------------------------------------------------------------------------------------
# pytest, CPU: one interpreter child for all checks


interpreter_results, test_under_triton_interpreter = interpreter_tests(__file__, CHECKS)


def test_cpu_takes_the_reference_twins():
    """No kernels on CPU tensors: ``ssd_fla`` would use ``naive``'s twins (the same ones ssd_chunked ends with)."""
    from jrt_prompt.ops.backend import inference_kernels
    from jrt_prompt.ops.ssd import PREP_MODULE
    kw = layer_inputs()
    assert inference_kernels(PREP_MODULE, kw["x"], kw["dt"], kw["B"]) is None


# ---------------------------------------------------------------------------------------------
# pytest, GPU: compiled kernels, and ssd_fla against the chunked reference


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CHECKS))
def test_gpu_compiled(name):
    """Each interpreter check again, compiled on CUDA (one test per check, as on the CPU side)."""
    with on_device(globals(), "cuda"):
        CHECKS[name]()


@pytest.mark.gpu
@pytest.mark.parametrize("batch,lengths", [(1, None), (3, [2048, 100, 1500])], ids=["b1", "b3-left-padded"])
def test_gpu_ssd_fla_370m(batch, lengths, monkeypatch):
    """Mamba-2 370M's SSD prefill (L=2048, H=32, P=64, N=128, G=1, bf16, random initial state): ``ssd_fla`` with the
    kernels and state_v_first against the float32 chunked reference (bf16 tolerance as tests/test_ops_ssm.py's fla
    test), and against ``ssd_fla`` with the reference twins (the same fla call: only the kernels differ)."""
    pytest.importorskip("fla.ops.simple_gla", reason="flash-linear-attention is not installed (pip install '.[cuda]')")
    import jrt_prompt.ops.ssd as ssd_mod
    from jrt_prompt.ops.backend import reference_ops

    with on_device(globals(), "cuda"):
        kw = layer_inputs(batch=batch, L=2048, heads=32, head_dim=64, d_state=128, groups=1, dtype=BF16,
                          realistic=True, seed=11)
        mask = left_pad_mask(lengths, 2048) if lengths else None
    g = torch.Generator().manual_seed(12)
    h0 = (torch.randn(batch, 32, 64, 128, generator=g) * 0.3).cuda()
    opts = dict(dt_bias=kw.pop("dt_bias"), initial_state=h0, mask=mask)
    with reference_ops():
        ry, rh = ssd_mod.ssd_chunked(**kw, **opts, chunk_size=64)
        ty, th = ssd_mod.ssd_fla(**kw, **opts)  # the reference twins around the same fla call
    calls = []
    for name in ("fla_inputs", "skip_out"):
        fn = getattr(ssd_mod.naive, name)
        monkeypatch.setattr(ssd_mod.naive, name, lambda *a, _fn=fn, _n=name, **k: calls.append(_n) or _fn(*a, **k))
    y, h = ssd_mod.ssd_fla(**kw, **opts)
    assert not calls, f"ssd_fla took the reference twins {calls}, not the kernels"
    assert y.dtype == BF16 and h.dtype == torch.float32 and h.shape == h0.shape and h.is_contiguous()
    assert rel(y, ry) < 1e-2 and rel(h, rh) < 1e-2, (rel(y, ry), rel(h, rh))
    assert rel(y, ty) < 2e-3 and rel(h, th) < 2e-3, (rel(y, ty), rel(h, th))
    if mask is not None:
        assert not y[~mask].any()
        ay, ah = ssd_mod.ssd(**kw, **opts)  # the layer's entry point takes this path for bf16 on CUDA
        assert rel(ay, y) < 1e-6 and rel(ah, h) < 1e-6


if __name__ == "__main__":
    child_main(CHECKS)
