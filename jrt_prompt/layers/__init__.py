"""Layers: mixers (one per architecture, following the contract in ``jrt_prompt.model``), norms, MLPs."""
