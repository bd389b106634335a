"""The paper's document window: about 950 tokens of a document around the first occurrence of its answer.

The paper evaluates every task with a 1000-token context budget minus a 50-token answer budget, so a
document keeps ``context_tokens - answer_tokens`` = 950 tokens: up to half of them before the token
where the answer first occurs (earliest of the task's anchors, case-insensitive) and the rest after it.
An answer near the start keeps more text after it; one near the end keeps what is left (the window is not
shifted back, as in the paper). A document shorter than the window is kept whole. When no anchor occurs in
the document the window keeps its head and says so (``found=False``).

Token positions come from the tokenizer's character offsets (fast tokenizers), so the window's text is a
slice of the original string: no re-decoding, so a multi-byte character at a boundary stays whole. Slow
tokenizers fall back to the paper's way: the answer's token is the length of the tokenised prefix, and the
window is the decoded token slice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

CONTEXT_TOKENS = 1000
ANSWER_TOKENS = 50


@dataclass(frozen=True)
class Window:
    text: str  # the kept part of the document
    start: int  # first kept token (of the whole document's tokens)
    end: int  # one past the last kept token
    total: int  # tokens in the whole document
    anchor_token: int  # token where the answer first occurs (0 when not found)
    found: bool  # whether any anchor occurs in the document

    @property
    def trimmed(self) -> bool:
        return self.start > 0 or self.end < self.total


def first_occurrence(text: str, anchors: Sequence[str]) -> int:
    """Character position of the earliest case-insensitive occurrence of any non-empty anchor; -1 if none."""
    best = -1
    for anchor in anchors:
        if not anchor:
            continue
        m = re.search(re.escape(anchor), text, re.IGNORECASE)
        if m and (best < 0 or m.start() < best):
            best = m.start()
    return best


def _bounds(anchor_token: int, total: int, keep: int) -> tuple[int, int]:
    start = max(0, anchor_token - keep // 2)
    return start, min(total, start + keep)


def answer_window(tokenizer, text: str, anchors: Sequence[str], *, context_tokens: int = CONTEXT_TOKENS,
                  answer_tokens: int = ANSWER_TOKENS) -> Window:
    """The window of ``text`` (stripped first, as the paper does) around the first occurrence of ``anchors``."""
    keep = context_tokens - answer_tokens
    if keep <= 0:
        raise ValueError(f"context_tokens ({context_tokens}) must exceed answer_tokens ({answer_tokens})")
    text = text.strip()
    pos = first_occurrence(text, anchors)
    found = pos >= 0
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        total = len(offsets)
        anchor = next((i for i, (_, e) in enumerate(offsets) if e > pos), total) if found else 0
        start, end = _bounds(anchor, total, keep)
        if total == 0 or (start == 0 and end == total):
            return Window(text, 0, total, total, anchor, found)
        lo = 0 if start == 0 else offsets[start][0]
        hi = len(text) if end == total else offsets[end - 1][1]
        return Window(text[lo:hi].strip(), start, end, total, anchor, found)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    total = len(ids)
    anchor = len(tokenizer(text[:pos], add_special_tokens=False)["input_ids"]) if found else 0
    start, end = _bounds(anchor, total, keep)
    if start == 0 and end == total:
        return Window(text, 0, total, total, anchor, found)
    piece = tokenizer.decode(ids[start:end], skip_special_tokens=True).strip("\ufffd").strip()
    return Window(piece, start, end, total, anchor, found)
