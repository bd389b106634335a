"""Mamba 1 selective scan with explicit state: ``selective_scan`` over a sequence, ``selective_state_update``
for one token in place.

Only the PyTorch reference exists: mamba_ssm's CUDA scan cannot start from a given state (it has no
initial-state input), so it could not continue a prefilled state, which JRT's reuse of a read document needs.
"""

from .naive import prepare_dt, selective_scan, selective_state_update

__all__ = ["prepare_dt", "selective_scan", "selective_state_update"]
