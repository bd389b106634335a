"""Programmatic dependent launch (PDL, Hopper and later) for the decode kernels.

A kernel launched with PDL may start while the previous kernel on the stream is finishing; it must read that
kernel's outputs only after ``gdc_wait``. At batch 1 a decode step is ~150 short kernels, each of which spends a
microsecond or two before its first load returns: our decode kernels load their weights (which no kernel writes)
before the wait, so that time overlaps the previous kernel. Each kernel signals its dependents only after its
own wait, so a kernel past its wait knows every earlier launch has finished.

On where the GPU (sm_90+) and Triton (``launch_pdl``, ``gdc_wait``) support it, off under Triton's interpreter;
``JRT_PROMPT_PDL=0`` turns it off. CUDA graphs capture it.
"""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def _supported(index: int) -> bool:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return False
    try:
        import triton.language.extra.cuda as tl_cuda
        from triton.backends.nvidia.compiler import CUDAOptions
    except Exception:  # no CUDA backend
        return False
    if "launch_pdl" not in getattr(CUDAOptions, "__dataclass_fields__", {}) or not hasattr(tl_cuda, "gdc_wait"):
        return False
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_launch(device: torch.device) -> dict:
    """The launch arguments of a kernel with a ``PDL`` constexpr: PDL on (and ``launch_pdl``) or off."""
    on = (device.type == "cuda" and os.environ.get("JRT_PROMPT_PDL", "1") != "0"
          and _supported(device.index if device.index is not None else torch.cuda.current_device()))
    return {"PDL": True, "launch_pdl": True} if on else {"PDL": False}
