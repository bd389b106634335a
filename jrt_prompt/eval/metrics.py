"""The paper's recall metric: an answer counts if any gold label occurs in the generated text.

Matching is case-insensitive and literal (the label is not a pattern), the same test the paper's
lm-eval tasks use (``re.search(re.escape(label), prediction, re.IGNORECASE)``). Empty labels are
ignored: they would match every prediction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence


def contains(prediction: str, labels: str | Iterable[str]) -> bool:
    """True when some non-empty label occurs in ``prediction``, ignoring case."""
    if isinstance(labels, str):
        labels = [labels]
    return any(re.search(re.escape(label), prediction, re.IGNORECASE) for label in labels if label)


def accuracy(scores: Sequence[bool | float]) -> float:
    """Mean of per-example scores, in [0, 1]; NaN when there are none (shown as '-' in tables)."""
    if not scores:
        return float("nan")
    return sum(float(s) for s in scores) / len(scores)
