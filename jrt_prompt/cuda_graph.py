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
    """One GraphedStep per batch size, built on first use."""

    def __init__(self, model: RecurrentLM, *, compile: bool = False):
        self.model, self.compile = model, compile
        self._graphs: dict[int, GraphedStep] = {}

    def get(self, batch_size: int) -> GraphedStep:
        if batch_size not in self._graphs:
            self._graphs[batch_size] = GraphedStep(self.model, batch_size, compile=self.compile)
        return self._graphs[batch_size]
