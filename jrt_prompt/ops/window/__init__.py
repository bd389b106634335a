"""Causal sliding-window attention with a ring-buffer cache (Based's local attention), and rotary.

Only the reference exists: the window is short (128 keys), so its cost is small next to the projections;
a fused kernel would be chosen here, behind the same signatures, when ``use_fast_path`` holds.
"""

from .naive import (
    apply_rotary,
    empty_cache,
    rotary_cos_sin,
    sliding_window_attention,
    sliding_window_attention_full,
    sliding_window_attention_step,
)

__all__ = [
    "apply_rotary",
    "empty_cache",
    "rotary_cos_sin",
    "sliding_window_attention",
    "sliding_window_attention_full",
    "sliding_window_attention_step",
]
