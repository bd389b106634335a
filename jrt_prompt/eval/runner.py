"""Score an engine on recall tasks in the default and JRT prompt modes, side by side.

Every example is answered greedily, stopping at the first newline, with at most 48 new tokens (the
paper's settings), and scored with ``contains``. Rows are batched (left-padded by the engine). In a mode
whose prompt starts with the document (the generic template: the synthetic suite), a document asked
several questions is read once with ``engine.read`` and every question continues from that state; the
paper's twice prompts start with the question (or, for swde/fda, with "Information about K."), so there
each prompt is read whole.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from ..engine import Engine, ReadDocument
from ..errors import JRTError
from ..prompt import JRTPrompt
from .metrics import accuracy, contains
from .tasks import Example, TaskData

MODES = {"default": 1, "jrt": 2}
MODE_ALIASES = {"twice": "jrt", "plain": "default"}
MAX_NEW_TOKENS = 48
STOP = ("\n",)


def parse_modes(modes: str | Sequence[str]) -> list[str]:
    names = modes.split(",") if isinstance(modes, str) else list(modes)
    out: list[str] = []
    for name in (n.strip().lower() for n in names if n.strip()):
        name = MODE_ALIASES.get(name, name)
        if name not in MODES:
            raise JRTError(f"unknown mode {name!r}: choose from {', '.join(MODES)}")
        if name not in out:
            out.append(name)
    if not out:
        raise JRTError("no modes given: use --modes default,jrt")
    return out


@dataclass
class Prediction:
    task: str
    id: str
    mode: str
    question: str
    answers: list[str]
    prediction: str
    correct: bool
    prompt_tokens: int
    trimmed: int  # context tokens cut per copy to fit the model's budget (0 normally)
    read_reused: bool  # the first read of the document was shared with other questions


@dataclass
class TaskScore:
    task: str
    source: str
    examples: int
    skipped: dict[str, int]
    accuracy: dict[str, float]  # mode -> fraction correct

    @property
    def gap(self) -> float | None:
        if "default" in self.accuracy and "jrt" in self.accuracy:
            return self.accuracy["jrt"] - self.accuracy["default"]
        return None


@dataclass
class EvalResult:
    modes: list[str]
    tasks: list[TaskScore]
    predictions: list[Prediction] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def average(self) -> dict[str, float]:
        """Mean over tasks of each mode's accuracy (tasks weigh alike, as in the paper's averages)."""
        out = {}
        for mode in self.modes:
            values = [t.accuracy[mode] for t in self.tasks if not math.isnan(t.accuracy.get(mode, math.nan))]
            out[mode] = sum(values) / len(values) if values else math.nan
        return out

    def average_gap(self) -> float | None:
        avg = self.average()
        if "default" in avg and "jrt" in avg:
            return avg["jrt"] - avg["default"]
        return None

    def to_json(self) -> dict:
        def num(x):
            return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

        return {
            "settings": self.settings,
            "modes": self.modes,
            "tasks": {t.task: {"source": t.source, "examples": t.examples, "skipped": t.skipped,
                               "accuracy": {m: num(a) for m, a in t.accuracy.items()}, "gap": num(t.gap)}
                      for t in self.tasks},
            "average": {**{m: num(a) for m, a in self.average().items()}, "gap": num(self.average_gap())},
            "predictions": [asdict(p) for p in self.predictions],
        }


def mode_engine(engine: Engine, template: str, mode: str) -> Engine:
    """The engine with the task's prompt in this mode (a shallow copy: same model, tokenizer and CUDA graphs,
    which every task and mode share). A prompt over the model's budget is trimmed (the engine's own policy,
    else the context's head) and the cut is recorded."""
    e = copy.copy(engine)
    e.prompt, e.trim = JRTPrompt(template, MODES[mode]), engine.trim or "head"
    return e


def _by_document(examples: Sequence[Example]) -> list[Example]:
    """Examples reordered so that questions about one document are adjacent (first-seen order kept)."""
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex.context, []).append(ex)
    return [ex for group in groups.values() for ex in group]


def run_mode(engine: Engine, examples: Sequence[Example], *, batch_size: int = 8,
             max_new_tokens: int = MAX_NEW_TOKENS, stop: Sequence[str] = STOP, reuse_reads: bool = True,
             on_batch: Callable[[int], None] | None = None) -> list[tuple[Example, str, int, int, bool]]:
    """Answer ``examples`` with ``engine``: (example, prediction, prompt tokens, trimmed, read reused) each,
    in the order given."""
    if batch_size < 1:
        raise JRTError(f"batch size must be at least 1 (got {batch_size})")
    ordered = _by_document(examples)
    questions_left: dict[str, int] = {}
    for ex in ordered:
        questions_left[ex.context] = questions_left.get(ex.context, 0) + 1
    asked = dict(questions_left)
    can_reuse = reuse_reads and engine.prompt.starts_with_context
    reads: dict[str, ReadDocument] = {}
    answers: dict[int, tuple[str, int, int, bool]] = {}
    for start in range(0, len(ordered), batch_size):
        batch = ordered[start:start + batch_size]
        contexts, reused, encoded = [], [], []
        for ex in batch:
            enc = engine.encode(ex.context, ex.question, ex.original_question)
            encoded.append(enc)
            share = can_reuse and asked[ex.context] > 1 and enc.shared > 0 and enc.trimmed == 0
            if share and ex.context not in reads:
                reads[ex.context] = engine.read(ex.context)
            contexts.append(reads[ex.context] if share else ex.context)
            reused.append(share)
        outputs = engine.generate(contexts, [ex.question for ex in batch], [ex.original_question for ex in batch],
                                  max_new_tokens=max_new_tokens, stop=list(stop))
        for ex, enc, out, share in zip(batch, encoded, outputs, reused):
            answers[id(ex)] = (out, len(enc.ids), enc.trimmed, share)
            questions_left[ex.context] -= 1
            if questions_left[ex.context] == 0:
                reads.pop(ex.context, None)
        if on_batch is not None:
            on_batch(len(batch))
    return [(ex, *answers[id(ex)]) for ex in examples]


def evaluate(engine: Engine, tasks: Sequence[TaskData], modes: Sequence[str] = ("default", "jrt"), *,
             batch_size: int = 8, max_new_tokens: int = MAX_NEW_TOKENS, reuse_reads: bool = True,
             on_batch: Callable[[int], None] | None = None) -> EvalResult:
    """Score every task in every mode; predictions are kept per example."""
    modes = parse_modes(modes)
    scores: list[TaskScore] = []
    predictions: list[Prediction] = []
    for data in tasks:
        acc: dict[str, float] = {}
        for mode in modes:
            eng = mode_engine(engine, data.task.template, mode)
            rows = run_mode(eng, data.examples, batch_size=batch_size, max_new_tokens=max_new_tokens,
                            reuse_reads=reuse_reads, on_batch=on_batch)
            preds = [Prediction(data.task.name, ex.id, mode, ex.question, list(ex.answers), out,
                                contains(out, ex.answers), tokens, trimmed, shared)
                     for ex, out, tokens, trimmed, shared in rows]
            acc[mode] = accuracy([p.correct for p in preds])
            predictions += preds
        scores.append(TaskScore(data.task.name, data.source, len(data.examples), dict(data.skipped), acc))
    settings = {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "stop": list(STOP),
                "decoding": "greedy", "metric": "contains", "budget": engine.budget}
    return EvalResult(modes, scores, predictions, settings)
