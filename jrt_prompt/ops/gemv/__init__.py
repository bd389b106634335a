"""``linear(x, weight, bias)`` for decode steps: ``F.linear`` (``naive``; cuBLAS on CUDA), or with JRT_PROMPT_GEMV=1
our Triton matrix-vector kernel (``triton_gemv``) for one or two rows on CUDA when no gradient is needed.

Opt-in because it is slower today: on an H100 (2026-11-24) Mamba-2 370M's 96 projections of a decode step took
690 us in it against cuBLAS's 554 us, and batch-1 decode ran at 815 tokens/s against 936 (BENCHMARKS.md)."""

from __future__ import annotations

import importlib
import os

import torch

from ..backend import importable, use_fast_path
from . import naive

FAST = "jrt_prompt.ops.gemv.triton_gemv"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if (not grad and os.environ.get("JRT_PROMPT_GEMV", "0") == "1" and use_fast_path(x, weight, bias)
            and importable(FAST)):
        fast = importlib.import_module(FAST)
        if fast.supported(x, weight):
            return fast.linear(x, weight, bias)
    return naive.linear(x, weight, bias)


__all__ = ["linear", "naive"]
