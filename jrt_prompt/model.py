"""One small recurrent LM over interchangeable mixers, with the state passed explicitly.

Every supported architecture (Mamba, Mamba-2, GLA, Based) is this class: an embedding, a stack
of pre-norm blocks (norm -> mixer -> residual, optionally norm -> MLP -> residual), a final norm
and an LM head. Adapters (``jrt_prompt.adapters``) build one from a loaded HF model or a checkpoint
folder; the layers in ``jrt_prompt.layers`` do the math.

Mixer contract (every module in ``jrt_prompt.layers`` that mixes along time follows it):

- ``init_state(batch_size, device) -> dict[str, Tensor]``: the zero state of one layer;
- ``forward(x, state, mask=None, positions=None) -> (y, new_state)``: any number of tokens
  ``x [B, L, D]`` from any state; ``mask [B, L]`` bool marks real tokens (padded ones, always on the
  left, must leave the state exactly unchanged); ``positions [B, L]`` long absolute positions of the
  tokens (only rotary layers read them). ``forward`` never modifies ``state``;
- ``step(x, state, positions) -> y``: one token ``x [B, D]``; updates ``state``'s tensors in place
  (static buffers, so a decode step can be captured in a CUDA graph).
"""

from __future__ import annotations

from typing import Protocol

import torch
from pydantic import BaseModel, ConfigDict, PrivateAttr
from torch import nn

from .state import LayerState, RecurrentState


class Mixer(Protocol):
    def init_state(self, batch_size: int, device: torch.device) -> LayerState: ...

    def forward(
        self, x: torch.Tensor, state: LayerState, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, LayerState]: ...

    def step(self, x: torch.Tensor, state: LayerState, positions: torch.Tensor) -> torch.Tensor: ...


class LMConfig(BaseModel):
    """What the engine needs to know of a model beyond its weights."""

    model_config = ConfigDict(extra="forbid")

    arch: str  # "mamba", "mamba2", "gla", "based"
    vocab_size: int  # rows of the embedding (may be padded past the tokenizer's vocabulary)
    d_model: int
    n_layer: int
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    residual_in_fp32: bool = True
    max_length: int | None = None  # the token budget a prompt may use (None: no limit)
    # transformers 5.17's pipeline() reads model.config._commit_hash of any model it is given (5.18 on do not)
    _commit_hash: str | None = PrivateAttr(default=None)


def check_left_padded(mask: torch.Tensor) -> None:
    """Recurrent state is only right when padding is on the left: each row must be 0...0 1...1."""
    if mask.dim() != 2:
        raise ValueError(f"attention_mask must be [batch, length], got shape {tuple(mask.shape)}")
    m = mask.to(torch.int8)
    if (m[:, 1:] < m[:, :-1]).any():
        raise ValueError(
            "attention_mask has padding after a real token: pad on the left "
            "(tokenizer.padding_side = 'left'); right padding corrupts recurrent state"
        )


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then optionally h + mlp(norm2(h))."""

    def __init__(self, norm: nn.Module, mixer: nn.Module, norm2: nn.Module | None = None, mlp: nn.Module | None = None,
                 residual_in_fp32: bool = True):
        super().__init__()
        self.norm, self.mixer, self.norm2, self.mlp = norm, mixer, norm2, mlp
        self.residual_in_fp32 = residual_in_fp32

    def _residual(self, h: torch.Tensor) -> torch.Tensor:
        return h.float() if self.residual_in_fp32 else h

    @staticmethod
    def _normed(norm: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """norm(h cast to the norm's dtype); our norms fold the cast into their kernel."""
        if getattr(norm, "fuses_cast", False):
            return norm(h, cast=norm.weight.dtype)
        return norm(h.to(norm.weight.dtype))

    def forward(self, h, state, mask=None, positions=None):
        h, y, state = self.forward_unadded(h, None, state, mask, positions)
        return self._residual(h) + y, state

    def forward_unadded(self, h, y, state, mask=None, positions=None):
        """A sequence, with the residual adds moved one norm later as in ``step_unadded``: (h, y) in, (h, this
        block's output, new state) out, so that every add runs inside the next norm's kernel."""
        h, x = self._add_normed(self.norm, h, y)
        y, state = self.mixer(x, state, mask=mask, positions=positions)
        if self.mlp is not None:
            h, x = self._add_normed(self.norm2, h, y)
            y = self.mlp(x)
        return h, y, state

    def _add_normed(self, norm: nn.Module, h: torch.Tensor, y: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(residual(h) + y, its norm); y None: (h, norm of h). Our norms do both in one kernel."""
        if y is None:
            return h, self._normed(norm, h)
        if getattr(norm, "fuses_cast", False):
            return norm.add_forward(h, y, self.residual_in_fp32, cast=norm.weight.dtype)
        h = self._residual(h) + y
        return h, self._normed(norm, h)

    def step(self, h, state, positions):
        h, y = self.step_unadded(h, None, state, positions)
        return self._residual(h) + y

    def step_unadded(self, h, y, state, positions):
        """One token, with the residual adds moved one norm later: takes the previous block's output ``y`` not
        yet added to ``h`` and returns (h, this block's output) the same way, so that every add runs inside the
        next norm's kernel. ``h + y`` after the last block equals ``step``'s result."""
        proj = getattr(self.mixer, "step_in_proj", None)
        if proj is not None and getattr(self.norm, "fuses_cast", False):  # norm and in_proj in one kernel
            h, zx = self.norm.add_forward_linear(h, y, self.residual_in_fp32, proj, cast=self.norm.weight.dtype)
            y = self.mixer.step_projected(zx, state, positions)
        else:
            h, x = self._add_normed(self.norm, h, y)
            y = self.mixer.step(x, state, positions)
        if self.mlp is not None:
            h, x = self._add_normed(self.norm2, h, y)
            y = self.mlp(x)
        return h, y


class RecurrentLM(nn.Module):
    """Embedding -> blocks -> final norm -> LM head, with the recurrent state in and out."""

    def __init__(self, config: LMConfig, embedding: nn.Embedding, blocks: list[Block], norm_f: nn.Module,
                 lm_head: nn.Linear):
        super().__init__()
        self.config = config
        self.embedding = embedding
        self.blocks = nn.ModuleList(blocks)
        self.norm_f = norm_f
        self.lm_head = lm_head

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> RecurrentState:
        """The empty state: what the model holds before reading anything."""
        device = torch.device(device) if device is not None else self.device
        layers = [block.mixer.init_state(batch_size, device) for block in self.blocks]
        return RecurrentState(layers, torch.zeros(batch_size, dtype=torch.long, device=device))

    def _check_state(self, state: RecurrentState, batch_size: int) -> None:
        if len(state.layers) != len(self.blocks):
            raise ValueError(f"state has {len(state.layers)} layers, the model has {len(self.blocks)}")
        if state.batch_size != batch_size:
            raise ValueError(f"state has batch {state.batch_size}, the input has batch {batch_size}")

    def forward(self, input_ids: torch.Tensor, state: RecurrentState | None = None,
                attention_mask: torch.Tensor | None = None, *, last_only: bool = False
                ) -> tuple[torch.Tensor, RecurrentState]:
        """Read ``input_ids [B, L]`` (any L >= 1) after ``state`` (None: the empty state).

        Returns logits ``[B, L, V]`` (``[B, 1, V]`` with ``last_only``) and the new state; ``state`` itself is
        left unchanged. Padded tokens (``attention_mask`` 0, left padding only) leave the state unchanged.
        Differentiable (training uses it); generation wraps it in ``torch.no_grad``.
        """
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [batch, length>0], got shape {tuple(input_ids.shape)}")
        B, L = input_ids.shape
        if state is None:
            state = self.init_state(B, input_ids.device)
        self._check_state(state, B)
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError("attention_mask must have the shape of input_ids")
            check_left_padded(attention_mask)
            mask = attention_mask.to(device=input_ids.device, dtype=torch.bool)
            if bool(mask.all()):
                mask = None
        return self.forward_unchecked(input_ids, state, mask, last_only=last_only)

    def forward_unchecked(self, input_ids: torch.Tensor, state: RecurrentState, mask: torch.Tensor | None, *,
                          last_only: bool = False) -> tuple[torch.Tensor, RecurrentState]:
        """``forward`` after its checks: ``state`` given, ``mask`` a bool [B, L] tensor (left padding only) or
        None. No host synchronisation: this is what a CUDA graph of a prefill captures."""
        real = mask.long() if mask is not None else torch.ones_like(input_ids)
        positions = state.seen[:, None] + real.cumsum(1) - 1  # padded tokens repeat the last position; unused
        h, y = self.embedding(input_ids), None
        new_layers = []
        for block, layer_state in zip(self.blocks, state.layers):
            h, y, layer_state = block.forward_unadded(h, y, layer_state, mask, positions)
            new_layers.append(layer_state)
        if last_only:
            h, y = h[:, -1:], y[:, -1:]
        return self._head(h, y), RecurrentState(new_layers, state.seen + real.sum(1))

    def _head(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Logits after the last block's residual add (inside the final norm's kernel when it fuses it); the
        final norm reads the (float32) residual stream as it is, like transformers and mamba-ssm."""
        last = self.blocks[-1]
        if getattr(self.norm_f, "fuses_cast", False):
            _, x = self.norm_f.add_forward(h, y, last.residual_in_fp32)
        else:
            x = self.norm_f(last._residual(h) + y)
        return self.lm_head(x.to(self.lm_head.weight.dtype))

    def step(self, token_ids: torch.Tensor, state: RecurrentState) -> tuple[torch.Tensor, RecurrentState]:
        """Read one token per row (``token_ids [B]``) and return logits ``[B, V]``; ``state`` is updated in place."""
        if token_ids.dim() != 1:
            raise ValueError(f"step takes one token per row, shape [batch], got {tuple(token_ids.shape)}")
        self._check_state(state, token_ids.shape[0])
        positions = state.seen
        h, y = self.embedding(token_ids), None
        for block, layer_state in zip(self.blocks, state.layers):
            h, y = block.step_unadded(h, y, layer_state, positions)
        state.seen.add_(1)
        return self._head(h, y), state
