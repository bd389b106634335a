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


@functools.cache
def importable(module: str) -> bool:
    """Whether ``module`` imports (checked once; an optional extra may be missing)."""
    try:
        importlib.import_module(module)
    except Exception:  # an extra that is installed but broken counts as missing
        return False
    return True
