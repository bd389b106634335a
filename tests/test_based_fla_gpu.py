"""On a GPU: our Based linear attention (Triton kernel and PyTorch reference) equals fla's own Based kernels
(parallel_based, fused_chunk_based) on the same inputs: same feature map (1 + s + s^2/2, s = q.k/4), same
normaliser (eps 1e-6)."""

from __future__ import annotations

import pytest
import torch

from jrt_prompt.ops.backend import reference_ops
from jrt_prompt.ops.based import taylor_linear_attention
from jrt_prompt.ops.based.naive import taylor_linear_attention_quadratic

pytestmark = pytest.mark.gpu


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float32, 1e-3)])
@pytest.mark.parametrize("T", [256, 1000])
def test_ours_equals_fla_based_kernels(dtype, tol, T):
    based = pytest.importorskip("fla.ops.based", reason="flash-linear-attention is not installed")
    g = torch.Generator().manual_seed(T)
    B, H, Dv = 2, 4, 64
    q, k = (torch.randn(B, T, H, 16, generator=g) * 0.5 for _ in range(2))
    v = torch.randn(B, T, H, Dv, generator=g)
    exact, _ = taylor_linear_attention_quadratic(q.double(), k.double(), v.double())
    qc, kc, vc = (t.cuda().to(dtype) for t in (q, k, v))
    fla_par = based.parallel_based(qc, kc, vc).float().cpu()
    ours_fast, _ = taylor_linear_attention(qc, kc, vc)
    with reference_ops():
        ours_ref, _ = taylor_linear_attention(qc, kc, vc)
    # each against the float64 definition, then against each other
    for name, got in (("fla parallel_based", fla_par), ("ours (fast)", ours_fast.float().cpu()),
                      ("ours (reference)", ours_ref.float().cpu())):
        assert rel(got, exact) < tol, f"{name} vs the definition: {rel(got, exact):.2e}"
    assert rel(ours_fast.float().cpu(), fla_par) < 2 * tol
    if T % 16 == 0:  # fla's fused_chunk_based has no state, chunk 16
        fla_chunk = based.fused_chunk_based(qc, kc, vc).float().cpu()
        assert rel(ours_fast.float().cpu(), fla_chunk) < 2 * tol
