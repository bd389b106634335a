"""Choosing between an op's reference and its fast paths.

Automatic: a fast path runs when every tensor is on CUDA and its kernel imports. Forced: set
``JRT_PROMPT_OPS=reference`` in the environment, or run inside ``with reference_ops():``.
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
from contextlib import contextmanager

import torch

_local = threading.local()


def reference_forced() -> bool:
    return getattr(_local, "force", None) or os.environ.get("JRT_PROMPT_OPS", "auto").lower() == "reference"


@contextmanager
def reference_ops(enabled: bool = True):
    """Run the plain PyTorch references inside this block, whatever the device."""
    prev = getattr(_local, "force", None)
    _local.force = enabled
    try:
        yield
    finally:
        _local.force = prev


def use_fast_path(*tensors: torch.Tensor | None) -> bool:
    """True when no reference is forced and every given tensor is on a CUDA device."""
    if reference_forced():
        return False
    return all(t is None or t.is_cuda for t in tensors)


def inference_kernels(module: str, *tensors: torch.Tensor | None):
    """``module`` (imported) when its kernels may run on these tensors, else None: no reference forced, every
    tensor on CUDA, no gradient needed (our kernels have no backward: training takes the reference), and the
    module imports."""
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if grad or not use_fast_path(*tensors) or not importable(module):
        return None
    return importlib.import_module(module)


@functools.cache
def importable(module: str) -> bool:
    """Whether ``module`` imports (checked once; an optional extra may be missing)."""
    try:
        importlib.import_module(module)
    except Exception:  # an extra that is installed but broken counts as missing
        return False
    return True
