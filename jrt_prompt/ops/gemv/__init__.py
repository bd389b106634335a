"""``linear(x, weight, bias)`` for decode steps: our Triton matrix-vector kernel (``triton_gemv``) for one or two
rows on CUDA when no gradient is needed, else ``F.linear`` (``naive``). Opt out with JRT_PROMPT_GEMV=0."""

from __future__ import annotations

import importlib
import os

import torch

from ..backend import importable, use_fast_path
from . import naive

FAST = "jrt_prompt.ops.gemv.triton_gemv"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if (not grad and os.environ.get("JRT_PROMPT_GEMV", "1") != "0" and use_fast_path(x, weight, bias)
            and importable(FAST)):
        fast = importlib.import_module(FAST)
        if fast.supported(x, weight):
            return fast.linear(x, weight, bias)
    return naive.linear(x, weight, bias)


__all__ = ["linear", "naive"]
