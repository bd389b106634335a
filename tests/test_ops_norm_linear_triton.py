"""The norm + projection kernels (``jrt_prompt.ops.norm_linear.triton_norm_linear``) against their references:
``add_rms_norm_linear`` (residual add, RMSNorm in both roundings, in_proj) and ``gated_rms_norm_linear``
(Mamba-2's grouped gated norm and out_proj).

CPU: under Triton's interpreter in one child process (see tests/triton_child.py). GPU (``pytest -m gpu``): the
same checks compiled, and Mamba-2 370M's projections at 1 to 4 rows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

if __package__ in (None, ""):  # run as a script (the interpreter child): make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.triton_child import child_main, collect_checks, gpu_checks_test, interpreter_tests, on_device  # noqa: E402

DEVICE = "cpu"
BF16 = torch.bfloat16


def bf16_tol() -> float:
    """Triton's interpreter converts float32 to bf16 by truncation (measured: 481 of 1024 values differ from
    torch's round-to-nearest), which doubles the error of a rounded dot product; the GPU rounds to nearest."""
    return 2e-2 if DEVICE == "cpu" else 1e-2


def rel(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _mods():
    from jrt_prompt.ops.norm_linear import naive, triton_norm_linear
    return triton_norm_linear, naive


def _rand(g, *shape, scale=1.0, shift=0.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=g) * scale + shift).to(DEVICE, dtype)


def add_case(rows, K, N, h_dtype, w_dtype, *, add=True, residual_fp32=True, hf=True, bias=False, norm_w=True,
             seed=0, tol=None, **launch):
    k, r = _mods()
    g = torch.Generator().manual_seed(seed)
    h = _rand(g, rows, K, scale=2.0, shift=0.3, dtype=h_dtype)
    y = _rand(g, rows, K, dtype=w_dtype) if add else None
    nw = _rand(g, K, scale=0.1, shift=1.0, dtype=w_dtype) if norm_w else None
    W = _rand(g, N, K, scale=K ** -0.5, dtype=w_dtype)
    b = _rand(g, N, scale=0.1, dtype=w_dtype) if bias else None
    kw = dict(hf_rounding=hf, residual_fp32=residual_fp32, cast=w_dtype)
    hk, ok = k.add_rms_norm_linear(h, y, nw, 1e-5, W, b, **kw, **launch)
    hr, orf = r.add_rms_norm_linear(h, y, nw, 1e-5, W, b, **kw)
    assert hk.dtype == hr.dtype and ok.dtype == orf.dtype and ok.shape == orf.shape == (rows, N)
    assert rel(hk, hr) < (1e-6 if hr.dtype == torch.float32 else bf16_tol()), rel(hk, hr)  # the residual sum
    exact = w_dtype == torch.float32
    err = rel(ok, orf)
    assert err < (tol or (1e-5 if exact else bf16_tol())), (rows, K, N, h_dtype, w_dtype, add, hf, err)


def gated_case(rows, groups, group_size, N, dtype, *, norm_before_gate=False, norm_w=True, bias=False, seed=0,
               tol=None, **launch):
    k, r = _mods()
    g = torch.Generator().manual_seed(seed)
    D = groups * group_size
    zx = _rand(g, rows, D + 7, dtype=dtype)  # z as a strided view, like Mamba-2's zxbcdt[:, :d_inner]
    z = zx[:, :D]
    y = _rand(g, rows, D, dtype=dtype)
    nw = _rand(g, D, scale=0.1, shift=1.0, dtype=dtype) if norm_w else None
    W = _rand(g, N, D, scale=D ** -0.5, dtype=dtype)
    b = _rand(g, N, scale=0.1, dtype=dtype) if bias else None
    a = k.gated_rms_norm_linear(y, z, nw, group_size, 1e-5, norm_before_gate, W, b, **launch)
    e = r.gated_rms_norm_linear(y, z, nw, group_size, 1e-5, norm_before_gate, W, b)
    assert a.dtype == e.dtype and a.shape == e.shape == (rows, N)
    err = rel(a, e)
    assert err < (tol or (1e-5 if dtype == torch.float32 else bf16_tol())), (rows, groups, group_size, N, dtype, err)


# ---------------------------------------------------------------------------------------------
# Checks: plain functions, run in the interpreter child on CPU (and reused on the GPU)


def check_add_norm_linear_fp32():
    for rows, K, N in ((1, 32, 40), (3, 48, 17), (4, 100, 9)):
        for add in (True, False):
            for hf in (True, False):
                add_case(rows, K, N, torch.float32, torch.float32, add=add, hf=hf)
    add_case(2, 32, 24, torch.float32, torch.float32, bias=True, norm_w=False)
    add_case(2, 32, 24, torch.float32, torch.float32, block_n=2)  # several programs, one writes the residual


def check_add_norm_linear_bf16():
    """bf16 weights with the float32 residual stream (a model's decode), a bf16 stream, and the first block's
    bf16 embedding (no add)."""
    add_case(2, 64, 40, torch.float32, BF16)
    add_case(2, 64, 40, BF16, BF16, residual_fp32=False)
    add_case(1, 64, 40, BF16, BF16, add=False)
    add_case(3, 64, 40, torch.float32, BF16, hf=False, bias=True)


def check_gated_norm_linear():
    for rows, groups, gs, N in ((1, 1, 32, 24), (2, 2, 16, 9), (3, 3, 12, 20), (4, 4, 8, 33)):
        for nbg in (False, True):
            gated_case(rows, groups, gs, N, torch.float32, norm_before_gate=nbg)
    gated_case(2, 2, 16, 24, torch.float32, norm_w=False)
    gated_case(2, 2, 16, 24, torch.float32, bias=True, block_n=4)
    gated_case(2, 1, 64, 24, BF16)
    gated_case(2, 2, 32, 24, BF16, norm_before_gate=True)


def check_dispatch_limits():
    """More rows than MAX_ROWS, or an input dtype the projection does not take, is not the kernel's."""
    k, _ = _mods()
    w = torch.zeros(8, 16, device=DEVICE)
    h = torch.zeros(k.MAX_ROWS + 1, 16, device=DEVICE)
    assert not k.supported_add(h, h, None, w, None, None, residual_fp32=True, hf_rounding=True, out_dtype=None)
    assert k.supported_add(h[:1], h[:1], None, w, None, None, residual_fp32=True, hf_rounding=True, out_dtype=None)
    assert not k.supported_add(h[:1], h[:1], None, w.to(BF16), None, None, residual_fp32=True, hf_rounding=True,
                               out_dtype=None)
    assert not k.supported_gated(h, h, None, 16, w, None)
    assert not k.supported_gated(h[:1], h[:1], None, 5, w, None)


CHECKS = collect_checks(globals())


# ---------------------------------------------------------------------------------------------
# pytest, CPU: one interpreter child for all checks


interpreter_results, test_under_triton_interpreter = interpreter_tests(__file__, CHECKS)


def test_dispatch_takes_reference_on_cpu():
    from jrt_prompt.ops.norm_linear import add_rms_norm_linear, gated_rms_norm_linear, naive
    g = torch.Generator().manual_seed(0)
    h, y, w, nw = (torch.randn(2, 16, generator=g), torch.randn(2, 16, generator=g), torch.randn(8, 16, generator=g),
                   torch.rand(16, generator=g) + 0.5)
    a = add_rms_norm_linear(h, y, nw, 1e-5, w, hf_rounding=True, residual_fp32=True)
    b = naive.add_rms_norm_linear(h, y, nw, 1e-5, w, hf_rounding=True, residual_fp32=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(gated_rms_norm_linear(y, h, nw, 8, 1e-5, False, w),
                       naive.gated_rms_norm_linear(y, h, nw, 8, 1e-5, False, w))


# ---------------------------------------------------------------------------------------------
# pytest, GPU: compiled kernels


test_gpu_checks = gpu_checks_test(globals(), CHECKS)


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 2, 4])
def test_gpu_370m_projections(rows):
    """Mamba-2 370M: norm + in_proj 1024 -> 4384 and gated norm + out_proj 2048 -> 1024, bf16."""
    with on_device(globals(), "cuda"):
        add_case(rows, 1024, 4384, torch.float32, BF16)
        gated_case(rows, 1, 2048, 1024, BF16)
        gated_case(rows, 8, 256, 1024, BF16)


if __name__ == "__main__":
    child_main(CHECKS)
