"""Which Based prefill runs: the Triton kernel only for bf16 inputs (the dtype verified on a GPU) and never when
gradients are needed (it has no backward); everything else takes the reference."""

from __future__ import annotations

import types

import pytest
import torch

import jrt_prompt.ops.based as based
from jrt_prompt.ops import backend


@pytest.fixture
def fake_kernel(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(taylor_linear_attention=lambda *a, **k: calls.append("kernel") or ("kernel", None))
    monkeypatch.setattr(backend, "use_fast_path", lambda *t: True)  # the dispatch's checks live in ops.backend
    monkeypatch.setattr(backend, "importable", lambda m: True)
    monkeypatch.setattr(backend.importlib, "import_module", lambda m: fake)
    return calls


def _qkv(dtype, grad=False):
    q, k = (torch.randn(1, 5, 2, 16, dtype=dtype, requires_grad=grad) for _ in range(2))
    return q, k, torch.randn(1, 5, 2, 8, dtype=dtype, requires_grad=grad)


def test_bf16_takes_the_kernel(fake_kernel):
    assert based.taylor_linear_attention(*_qkv(torch.bfloat16))[0] == "kernel"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_unverified_dtypes_take_the_reference(fake_kernel, dtype):
    o, _ = based.taylor_linear_attention(*_qkv(dtype))
    assert isinstance(o, torch.Tensor) and fake_kernel == []


def test_gradients_take_the_reference(fake_kernel):
    q, k, v = _qkv(torch.bfloat16, grad=True)
    o, _ = based.taylor_linear_attention(q, k, v)
    assert isinstance(o, torch.Tensor) and fake_kernel == []
    o.float().sum().backward()
    assert q.grad is not None
    with torch.no_grad():
        assert based.taylor_linear_attention(q, k, v)[0] == "kernel"
