"""Token generation over a RecurrentLM: prefill (left-padded, chunked), sampling, the decode loop.

gpt-fast style: sampling stays on the device (no host sync inside `sample`), the state is one set of
buffers advanced in place by ``model.step``, and the loop yields device tensors; the caller decides
when to look at them (stop checks, streaming).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .model import RecurrentLM
from .state import RecurrentState


class GenerationConfig(BaseModel):
    """How to pick tokens and when to stop. Greedy unless ``do_sample`` (or a temperature/top-k/top-p)."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(64, ge=0)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0)  # 0: off
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)  # stop strings; the returned text ends before the first one
    stop_at_eos: bool = True

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, v):
        if v is None:
            return []
        if isinstance(v, str):
            v = [v]
        if any(not s for s in v):
            raise ValueError("stop strings must be non-empty")
        return v


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids [B, L], mask [B, L]) padded on the left, the only padding recurrent state survives."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, L - len(p):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def prefill(model: RecurrentLM, prompts: Sequence[Sequence[int]], state: RecurrentState | None = None, *,
            pad_id: int = 0, chunk_size: int | None = None, progress=None, graph=None
            ) -> tuple[torch.Tensor, RecurrentState]:
    """Read token lists (one per row, left-padded together) after ``state``; return the last logits [B, V]
    and the new state. With ``chunk_size`` the prompt is read in pieces of that many tokens, carrying the
    state, so memory stays bounded for any length. ``progress(n)`` is called with tokens read so far.
    ``graph``: a ``cuda_graph.GraphedPrefill`` for this batch size, which replays its pieces from CUDA graphs
    (its own piece length replaces ``chunk_size``)."""
    ids, mask = left_pad(prompts, pad_id, model.device)
    masked = len({len(p) for p in prompts}) > 1  # padding iff lengths differ: no host sync on the device mask
    if graph is not None:
        return graph(ids, mask.bool() if masked else None, state, progress)
    L = ids.shape[1]
    step = chunk_size or L
    logits = None
    for start in range(0, L, step):
        end = min(L, start + step)
        logits, state = model(ids[:, start:end], state, attention_mask=mask[:, start:end] if masked else None,
                              last_only=True)
        if progress is not None:
            progress(end)
    return logits[:, -1], state


def sample(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next tokens [B] from logits [B, V], without a host sync (exponential race instead of multinomial)."""
    if not config.do_sample:
        return logits.argmax(-1)
    logits = logits.float() / config.temperature
    if config.top_k:
        kth = torch.topk(logits, min(config.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if config.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > config.top_p  # keep the smallest prefix reaching top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / noise).argmax(-1)


def make_generator(config: GenerationConfig, device: torch.device) -> torch.Generator | None:
    if not config.do_sample:
        return None
    g = torch.Generator(device=device)
    if config.seed is not None:
        g.manual_seed(config.seed)
    else:
        g.seed()
    return g


@torch.no_grad()
def decode(model: RecurrentLM, logits: torch.Tensor, state: RecurrentState, config: GenerationConfig,
           step=None) -> Iterator[torch.Tensor]:
    """Yield up to ``max_new_tokens`` next-token tensors [B] (on the device), advancing ``state`` in place.

    ``step(tokens, state) -> (logits, state)`` defaults to ``model.step`` (a CUDA-graph replay can stand in).
    The caller stops iterating when every row is done; rows that finish early keep being fed their last
    token (their outputs are discarded by the caller)."""
    step = step or model.step
    generator = make_generator(config, logits.device)
    for i in range(config.max_new_tokens):
        tokens = sample(logits, config, generator)
        yield tokens
        if i + 1 < config.max_new_tokens:
            logits, state = step(tokens, state)
