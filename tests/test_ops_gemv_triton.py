"""The one-row matrix-vector kernel (``jrt_prompt.ops.gemv.triton_gemv``) against ``F.linear``.

CPU: under Triton's interpreter in one child process (see tests/triton_child.py). GPU (``pytest -m gpu``): the same
checks compiled, and the Mamba-2 370M projection shapes in bf16.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script (the interpreter child): make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.triton_child import child_main, child_results, collect_checks  # noqa: E402

DEVICE = "cpu"


def rel(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check_matches_linear():
    from jrt_prompt.ops.gemv import triton_gemv
    g = torch.Generator().manual_seed(0)
    for rows, N, K in ((1, 37, 50), (2, 300, 64), (1, 8, 1000), (1, 1030, 16)):
        for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
            x = torch.randn(rows, K, generator=g).to(DEVICE, dtype)
            w = (torch.randn(N, K, generator=g) / K ** 0.5).to(DEVICE, dtype)
            b = torch.randn(N, generator=g).to(DEVICE, dtype)
            for bias in (None, b):
                y = triton_gemv.linear(x, w, bias)
                ref = F.linear(x.float(), w.float(), bias.float() if bias is not None else None)
                assert y.dtype == dtype and y.shape == (rows, N)
                assert rel(y, ref) < tol, (rows, N, K, dtype, rel(y, ref))
    x3 = torch.randn(1, 1, 50, generator=g).to(DEVICE)  # leading dims kept
    assert triton_gemv.linear(x3, torch.randn(7, 50, generator=g).to(DEVICE)).shape == (1, 1, 7)


CHECKS = collect_checks(globals())


@pytest.fixture(scope="module")
def interpreter_results() -> dict[str, str]:
    return child_results(__file__)


@pytest.mark.parametrize("name", list(CHECKS))
def test_under_triton_interpreter(name, interpreter_results):
    assert interpreter_results[name] == "ok", interpreter_results[name]


def test_dispatch_is_f_linear_by_default_and_on_cpu(monkeypatch):
    from jrt_prompt.ops.gemv import linear
    x, w = torch.randn(1, 16), torch.randn(8, 16)
    assert torch.equal(linear(x, w), F.linear(x, w))
    monkeypatch.setenv("JRT_PROMPT_GEMV", "1")  # opted in, still the reference on CPU
    assert torch.equal(linear(x, w), F.linear(x, w))


@pytest.mark.gpu
def test_gpu_checks_and_370m_shapes():
    global DEVICE
    DEVICE = "cuda"
    try:
        check_matches_linear()
    finally:
        DEVICE = "cpu"
    from jrt_prompt.ops.gemv import triton_gemv
    for N, K in ((4384, 1024), (1024, 2048), (50288, 1024)):
        x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K ** 0.5
        assert rel(triton_gemv.linear(x, w), F.linear(x.float(), w.float())) < 1e-2


if __name__ == "__main__":
    child_main(CHECKS)
