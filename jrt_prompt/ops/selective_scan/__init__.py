"""Mamba 1 selective scan with explicit state: ``selective_scan`` over a sequence, ``selective_state_update``
for one token in place.

Which implementation runs (all tensors on CUDA and no reference forced, see ``ops.backend``):

- mamba_ssm's CUDA ``selective_scan_fn`` when it imports and the call has no ``initial_state`` and no
  ``mask`` (it can neither start from a state nor skip padding);
- else our Triton scan (``triton_scan``), which takes an initial state and a left-padding mask, when
  no gradient is needed (it has no backward);
- else the PyTorch reference (``naive``), which is also what runs on CPU.

The step uses ``triton_scan.selective_state_update`` (one kernel, CUDA-graph capturable) on the same terms.
All paths return the final state as float32.
"""

from __future__ import annotations

import importlib

import torch

from ..backend import importable, inference_kernels, use_fast_path
from . import naive
from .naive import prepare_dt

FAST_SCAN = "jrt_prompt.ops.selective_scan.triton_scan"
MAMBA_SSM_SCAN = "mamba_ssm.ops.selective_scan_interface"


def _triton(name: str, *tensors):
    """Our Triton function ``name`` when the fast path applies to these tensors, else None."""
    kernels = inference_kernels(FAST_SCAN, *tensors)
    return getattr(kernels, name) if kernels is not None else None


def _mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """mamba_ssm's layout ([B, C, L]; B, C as [B, N, L] in u's dtype; A, D, delta_bias float32) and back."""
    fn = importlib.import_module(MAMBA_SSM_SCAN).selective_scan_fn
    dtype = u.dtype

    def channels_first(t):
        return None if t is None else t.to(dtype).transpose(1, 2)

    out, last = fn(channels_first(u), channels_first(delta), A.float(), channels_first(B), channels_first(C),
                   None if D is None else D.float(), channels_first(z),
                   None if delta_bias is None else delta_bias.float(), delta_softplus, return_last_state=True)
    return out.transpose(1, 2).contiguous(), last.float()


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                   delta_softplus: bool = True, initial_state: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None, chunk_size: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the scan over ``L`` tokens from ``initial_state`` (see ``naive.selective_scan`` for the contract).

    u, delta, z: [B, L, C]; A: [C, N]; B, C: [B, L, N]; D, delta_bias: [C]; initial_state: [B, C, N]
    (None: zeros); mask: [B, L] bool, left padding. Returns y [B, L, C] (u's dtype) and the final state
    [B, C, N] float32.
    """
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state, mask)
    if initial_state is None and mask is None and use_fast_path(*tensors) and importable(MAMBA_SSM_SCAN):
        return _mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    fast = _triton("selective_scan", *tensors)
    if fast is not None:
        return fast(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, mask)
    return naive.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, mask, chunk_size)


def selective_state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                           dt_bias: torch.Tensor | None = None, dt_softplus: bool = True) -> torch.Tensor:
    """One token: ``state`` [B, C, N] float32 is updated in place; returns y [B, C] in x's dtype.

    x, dt, z: [B, C]; A: [C, N]; B, C: [B, N]; D, dt_bias: [C].
    """
    fast = _triton("selective_state_update", state, x, dt, A, B, C, D, z, dt_bias)
    if fast is not None:
        return fast(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return naive.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


__all__ = ["prepare_dt", "selective_scan", "selective_state_update", "naive"]
