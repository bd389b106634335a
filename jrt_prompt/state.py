"""The recurrent state of a batch: every layer's tensors, explicit and movable.

A recurrent LM's whole memory of what it has read is this object. It can be forked
(an independent copy that is reused for many continuations), cut to some batch rows,
moved between devices and dtypes, and measured in bytes. Batch is dim 0 of every tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

LayerState = dict[str, torch.Tensor]


class RecurrentState:
    """Per-layer tensors plus ``seen``, the number of real (unpadded) tokens read per row.

    ``layers[i]`` is a dict of tensors owned by layer ``i`` (for example ``{"conv": ..., "ssm": ...}``);
    a layer without recurrent memory (an MLP) has an empty dict. ``seen`` is a long tensor ``[B]``;
    layers that need absolute positions (rotary) derive them from it.
    """

    __slots__ = ("layers", "seen")

    def __init__(self, layers: list[LayerState], seen: torch.Tensor):
        if seen.dim() != 1:
            raise ValueError(f"seen must be a 1-d tensor of per-row token counts, got shape {tuple(seen.shape)}")
        self.layers = layers
        self.seen = seen

    # --- shape and size -------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.seen.shape[0]

    @property
    def device(self) -> torch.device:
        return self.seen.device

    def tensors(self) -> list[torch.Tensor]:
        return [self.seen] + [t for layer in self.layers for t in layer.values()]

    @property
    def nbytes(self) -> int:
        """Bytes held by all tensors of the state (what a batch row costs times the batch)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    # --- copies and views -----------------------------------------------------------------
    def _map(self, fn) -> "RecurrentState":
        return RecurrentState([{k: fn(v) for k, v in layer.items()} for layer in self.layers], fn(self.seen))

    def fork(self) -> "RecurrentState":
        """An independent copy: continuing from the fork never changes this state."""
        if any(t.requires_grad for t in self.tensors()):  # a state in training: copies that keep the graph
            return self._map(lambda t: t.clone())
        out = self._map(torch.empty_like)
        torch._foreach_copy_(out.tensors(), self.tensors())  # one launch, not one per tensor
        return out

    def select(self, rows: Sequence[int] | torch.Tensor | slice) -> "RecurrentState":
        """The state of some batch rows only (a copy), e.g. ``state.select([2])`` or ``state.select(slice(0, 4))``."""
        if isinstance(rows, slice):
            return self._map(lambda t: t[rows].clone())
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        if idx.dim() != 1:
            raise ValueError("rows must be a 1-d list of batch indices")
        return self._map(lambda t: t.index_select(0, idx))

    def expand(self, batch_size: int) -> "RecurrentState":
        """Repeat a one-row state to ``batch_size`` rows (a copy), e.g. one document read, many questions."""
        if self.batch_size != 1:
            raise ValueError(f"expand needs a state of batch 1, got {self.batch_size}")
        return self._map(lambda t: t.expand(batch_size, *t.shape[1:]).clone())

    @staticmethod
    def cat(states: Sequence["RecurrentState"]) -> "RecurrentState":
        """Stack the rows of several states of the same model into one batch."""
        if not states:
            raise ValueError("cat needs at least one state")
        first = states[0]
        for s in states[1:]:
            if len(s.layers) != len(first.layers) or any(a.keys() != b.keys() for a, b in zip(s.layers, first.layers)):
                raise ValueError("cannot cat states of different models")
        layers = [{k: torch.cat([s.layers[i][k] for s in states]) for k in layer} for i, layer in enumerate(first.layers)]
        return RecurrentState(layers, torch.cat([s.seen for s in states]))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "RecurrentState":
        """Move to a device and/or cast floating tensors to ``dtype`` (counters stay integer)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            return t.to(device) if device is not None else t

        return self._map(move)

    def copy_(self, other: "RecurrentState") -> "RecurrentState":
        """Overwrite this state's buffers with ``other``'s values, keeping addresses (static buffers, CUDA graphs)."""
        mine, theirs = self.paired(other)
        for a, b in zip(mine, theirs):
            if a.shape != b.shape:
                raise ValueError(f"state shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
        torch._foreach_copy_(mine, theirs)  # one launch, not one per tensor
        return self

    def paired(self, other: "RecurrentState") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """This state's tensors and ``other``'s matching ones, paired by layer and name (a layer's forward may
        return its tensors in another order than ``init_state``)."""
        if len(other.layers) != len(self.layers) or any(a.keys() != b.keys() for a, b in zip(self.layers, other.layers)):
            raise ValueError("cannot pair the state of a different model")
        mine = [self.seen] + [a[k] for a in self.layers for k in a]
        return mine, [other.seen] + [b[k] for a, b in zip(self.layers, other.layers) for k in a]

    def __repr__(self) -> str:
        kinds = {}
        for layer in self.layers:
            key = ",".join(sorted(layer))
            kinds[key] = kinds.get(key, 0) + 1
        parts = ", ".join(f"{n}x[{k}]" for k, n in kinds.items() if k)
        return f"RecurrentState(batch={self.batch_size}, layers={len(self.layers)} ({parts}), bytes={self.nbytes})"
