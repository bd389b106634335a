"""Causal depthwise conv1d over time with its last ``K-1`` inputs carried as state."""

from .naive import causal_conv1d, causal_conv1d_step

__all__ = ["causal_conv1d", "causal_conv1d_step"]
