"""Decode steps captured in a CUDA graph over static state buffers (gpt-fast style).

A one-token step of a 48-layer model is hundreds of small kernels; launching them one by one from Python
costs more than running them. Captured once per batch size, a step replays with one launch. The state
lives in buffers allocated at capture time; a prefilled state is copied into them before decoding.
Optionally the step is compiled first (``torch.compile``) to fuse its elementwise work.
"""

from __future__ import annotations

import torch

from .model import RecurrentLM
from .state import RecurrentState


class GraphedStep:
    """``model.step`` for one batch size, as a CUDA graph replay. Call ``load(state)`` then ``step(tokens)``."""

    def __init__(self, model: RecurrentLM, batch_size: int, *, compile: bool = False, warmup: int = 3):
        if model.device.type != "cuda":
            raise ValueError("CUDA graphs need a model on a CUDA device")
        self.batch_size = batch_size
        step = model.step
        if compile:
            step = torch.compile(model.step, mode="max-autotune-no-cudagraphs", fullgraph=False, dynamic=False)
        self.state = model.init_state(batch_size)
        self.tokens = torch.zeros(batch_size, dtype=torch.long, device=model.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(warmup):  # compile / autotune / allocate outside the capture
                step(self.tokens, self.state)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.logits, _ = step(self.tokens, self.state)

    def load(self, state: RecurrentState) -> RecurrentState:
        """Copy a (prefilled) state into the static buffers; returns the buffers' state object."""
        return self.state.copy_(state)

    def step(self, tokens: torch.Tensor, state: RecurrentState | None = None) -> tuple[torch.Tensor, RecurrentState]:
        """Same contract as ``RecurrentLM.step`` on the static state (``state``, if given, must be it)."""
        if state is not None and state is not self.state:
            raise ValueError("a graphed step runs on its own static state: call load(state) first")
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.logits, self.state


class GraphCache:
    """One GraphedStep, and one GraphedPrefill if asked for, per batch size, built on first use."""

    def __init__(self, model: RecurrentLM, *, compile: bool = False, prefill_chunk: int | None = None):
        self.model, self.compile, self.prefill_chunk = model, compile, prefill_chunk
        self._graphs: dict[int, GraphedStep] = {}
        self._prefills: dict[int, GraphedPrefill] = {}

    def get(self, batch_size: int) -> GraphedStep:
        if batch_size not in self._graphs:
            self._graphs[batch_size] = GraphedStep(self.model, batch_size, compile=self.compile)
        return self._graphs[batch_size]

    def prefill(self, batch_size: int) -> "GraphedPrefill | None":
        """The graphed prefill for this batch size (None unless built with ``prefill_chunk``)."""
        if self.prefill_chunk is None:
            return None
        if batch_size not in self._prefills:
            self._prefills[batch_size] = GraphedPrefill(self.model, batch_size, self.prefill_chunk)
        return self._prefills[batch_size]


def prefill_lengths(length: int, chunk_size: int) -> list[int]:
    """The piece lengths a graphed prefill reads ``length`` tokens in: full ``chunk_size`` pieces, after a
    first piece of the remainder rounded up to a bucket (powers of two up to 256, then eighths of the next
    power of two: at most 1/8 padding), so that a few captured shapes serve every length."""
    full, rest = divmod(length, chunk_size)
    if rest == 0:
        return [chunk_size] * full
    if rest <= 256:
        first = max(16, 1 << (rest - 1).bit_length())
    else:
        step = (1 << (rest - 1).bit_length()) // 16  # an eighth of the power of two below the next one
        first = -(-rest // step) * step
    return [min(first, chunk_size)] + [chunk_size] * full


class GraphedPrefill:
    """Prefills of one batch size replayed from CUDA graphs, one per piece length (``prefill_lengths``).

    A prefill of a 48-layer model launches hundreds of kernels per piece; from Python that costs more than
    running them (Mamba-2 370M, 2048 tokens: 49 ms eager, 9.6 ms replayed, for 6.9 ms of kernels; H200).
    Every graph reads and updates one static state in place and reads static ids and a left-padding mask, so
    the pieces of one prompt chain without copies. The graphs of one batch size share a memory pool and are
    captured on first use of a length (a few forwards each: the first prompt of a new length pays that once).
    ``capture=False`` runs the same pieces on the same buffers without graphs (any device: how CPU tests check
    the piece logic)."""

    def __init__(self, model: RecurrentLM, batch_size: int, chunk_size: int, warmup: int = 2, *,
                 capture: bool = True):
        if capture and model.device.type != "cuda":
            raise ValueError("CUDA graphs need a model on a CUDA device")
        self.model, self.batch_size, self.chunk_size, self.warmup = model, batch_size, chunk_size, warmup
        self.capture = capture
        self.state = model.init_state(batch_size)
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        self._pieces: dict[int, _Piece] = {}

    def _run(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One piece over the static state, which it advances in place; returns the last logits."""
        logits, new = self.model.forward_unchecked(ids, self.state, mask, last_only=True)
        torch._foreach_copy_(*self.state.paired(new))
        return logits

    def _piece(self, length: int) -> "_Piece":
        if length in self._pieces:
            return self._pieces[length]
        model, dev = self.model, self.model.device
        piece = _Piece(torch.zeros(self.batch_size, length, dtype=torch.long, device=dev),
                       torch.ones(self.batch_size, length, dtype=torch.bool, device=dev))
        if self.capture:
            scratch = model.init_state(self.batch_size)  # warm-up runs must not touch the live state
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.no_grad(), torch.cuda.stream(side):
                for _ in range(self.warmup):  # autotune / allocate outside the capture
                    model.forward_unchecked(piece.ids, scratch, piece.mask, last_only=True)
            torch.cuda.current_stream().wait_stream(side)
            piece.graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(piece.graph, pool=self.pool):
                piece.logits = self._run(piece.ids, piece.mask)
        self._pieces[length] = piece
        return piece

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor | None, state: RecurrentState | None, progress=None
                 ) -> tuple[torch.Tensor, RecurrentState]:
        """Read ``ids [B, L]`` (left padding where ``mask`` is False) after ``state`` (None: empty); returns the
        last logits [B, V] and a new state, as ``generate.prefill`` does (``progress(n)`` after each piece)."""
        B, L = ids.shape
        if B != self.batch_size:
            raise ValueError(f"this prefill graph is for batch {self.batch_size}, got {B}")
        pieces = prefill_lengths(L, self.chunk_size)
        pad = sum(pieces) - L
        if state is None:
            torch._foreach_zero_(self.state.tensors())
        else:
            self.state.copy_(state)
        start, logits = -pad, None
        for n in pieces:
            piece = self._piece(n)
            sids, smask = piece.ids, piece.mask
            lo = max(start, 0)
            if lo > start:  # the first piece: left padding in front of the prompt
                sids[:, :lo - start].zero_()
                smask[:, :lo - start].zero_()
            sids[:, lo - start:].copy_(ids[:, lo:start + n])
            if mask is not None:
                smask[:, lo - start:].copy_(mask[:, lo:start + n])
            else:
                smask[:, lo - start:].fill_(True)
            if piece.graph is not None:
                piece.graph.replay()
            else:
                with torch.no_grad():
                    piece.logits = self._run(sids, smask)
            logits = piece.logits
            start += n
            if progress is not None:
                progress(start)
        return logits[:, -1].clone(), self.state.fork()


class _Piece:
    """One piece length's static ids and mask, its graph (None without capture) and its logits."""

    __slots__ = ("ids", "mask", "graph", "logits")

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor):
        self.ids, self.mask, self.graph, self.logits = ids, mask, None, None
