"""The paper's six recall tasks and the synthetic suite: dataset rows -> examples (document, question, answers).

Each task reads rows in its hub dataset's schema (the columns the paper's lm-eval tasks read), turns a row
into the arguments of ``JRTPrompt(template)`` (REFERENCE.md section 2), and cuts the document to the paper's
window around the answer (see window.py). Rows are cleaned as the paper's task code does before prompting:

- swde, fda: ``text`` is the document (for swde, only what comes before "Summary of information above...");
  a trailing "key:" (any case, repeated) is removed; the question is the attribute name ``key``; the
  window anchors on the earliest of ``key`` and ``value``, as the paper's runs did.
- squad: ``context`` (before any "Question:") is the passage; the cloze statement is what ``text`` (the
  paper's default prompt, passage then cloze) holds after the passage; ``question`` is the original one.
  The window cuts the passage only, so the cloze statement is never lost.
- nq, triviaqa, drop: ``context`` is the document with a trailing copy of the cloze ``question`` removed;
  ``orig_question`` is the original question; ``answers`` (a list) are the gold labels.
- Rows whose answer is empty or one character long are dropped (as in the paper), and so are rows that
  cannot be turned into a prompt; ``TaskData.skipped`` counts both, by reason.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import JRTError
from . import data, synthetic
from .window import ANSWER_TOKENS, CONTEXT_TOKENS, Window, answer_window

SWDE_SUMMARY = "Summary of information above..."
_TRIVIAQA_MARKS = re.compile(r"\[PAR\]|\[DOC\]|\[TLE\]")


@dataclass(frozen=True)
class Example:
    task: str
    id: str
    context: str  # the document as JRTPrompt's ``context`` (windowed)
    question: str  # JRTPrompt's ``question``: cloze statement, attribute name, or a plain question
    answers: tuple[str, ...]  # gold labels for ``contains``
    original_question: str | None = None
    window: Window | None = None


@dataclass(frozen=True)
class Draft:
    """A row turned into prompt arguments, before the window."""

    id: str
    context: str
    question: str
    answers: tuple[str, ...]
    original_question: str | None
    anchors: tuple[str, ...]  # what the window centres on (earliest occurrence of any)


class Skip(Exception):
    """A row that does not make an example; the message is the reason counted in TaskData.skipped."""


SHORT_ANSWER = "answer empty or one character"


@dataclass(frozen=True)
class Task:
    name: str
    template: str  # JRTPrompt template
    hub_id: str | None
    columns: tuple[str, ...]  # columns a row must have
    convert: Callable[[dict, int], Draft] | None
    about: str

    def rows(self, source: str | Path | None) -> tuple[list[dict], str]:
        """Rows from ``source`` (a local file or folder) or, without one, from the hub."""
        if source is not None:
            return data.read_rows(source, self.columns, self.name), str(source)
        return data.hub_rows(self.hub_id, self.columns, self.name), self.hub_id


@dataclass
class TaskData:
    task: Task
    examples: list[Example]
    source: str
    skipped: Counter = field(default_factory=Counter)
    rows: int = 0


def _text(row: dict, col: str) -> str:
    value = row.get(col)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Skip(f"{col} is not text")
    return value


def _strip_tail(text: str, tail: str) -> str:
    """Remove trailing copies of ``tail`` (case-insensitive), as the paper does with the question."""
    text = text.strip()
    tail = tail.strip()
    while tail and text.lower().endswith(tail.lower()):
        text = text[: -len(tail)].strip()
    return text


def _answers(row: dict) -> tuple[str, ...]:
    value = row.get("answers")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise Skip("answers is not a list")
    return tuple(a.strip() for a in value if isinstance(a, str))


def _check(anchors: tuple[str, ...]) -> None:
    if not anchors or any(len(a) <= 1 for a in anchors):
        raise Skip(SHORT_ANSWER)


def _row_id(row: dict, index: int) -> str:
    for key in ("doc_id", "id", "new_id"):
        if row.get(key) not in (None, ""):
            return str(row[key])
    return str(index)


def _attribute_row(row: dict, index: int, summary_marker: bool) -> Draft:
    text, key, value = _text(row, "text"), _text(row, "key").strip(), _text(row, "value").strip()
    _check((key, value))
    if summary_marker:
        text = text.split(SWDE_SUMMARY)[0]
    text = _strip_tail(text, key + ":")
    if not text:
        raise Skip("empty document")
    return Draft(_row_id(row, index), text, key, (value,), None, (key, value))


def _squad_row(row: dict, index: int) -> Draft:
    value = _text(row, "value").strip()
    _check((value,))
    passage = _text(row, "context").split("Question:")[0].strip()
    text = _text(row, "text").strip()
    at = text.find(passage) if passage else -1
    if at < 0:
        raise Skip("text does not contain the context passage")
    cloze = text[at + len(passage):].strip()
    if not cloze:
        raise Skip("no cloze statement after the passage")
    return Draft(_row_id(row, index), passage, cloze, (value,), _text(row, "question").strip(), (value,))


def _cloze_row(row: dict, index: int, clean: Callable[[str], str] = lambda s: s) -> Draft:
    answers = _answers(row)
    _check(answers[:1])
    question = _text(row, "question").strip()
    if not question:
        raise Skip("empty question")
    context = _strip_tail(clean(_text(row, "context")), question)
    if not context:
        raise Skip("empty document")
    return Draft(_row_id(row, index), context, question, answers, _text(row, "orig_question").strip(), answers[:1])


_ATTR_COLUMNS = ("key", "value", "text")
_CLOZE_COLUMNS = ("context", "question", "answers", "orig_question")

TASKS: dict[str, Task] = {
    "swde": Task("swde", "swde", "hazyresearch/based-swde", _ATTR_COLUMNS,
                 lambda r, i: _attribute_row(r, i, True), "SWDE: attributes of web pages"),
    "fda": Task("fda", "fda", "hazyresearch/based-fda", _ATTR_COLUMNS,
                lambda r, i: _attribute_row(r, i, False), "FDA: attributes of FDA device reports"),
    "squad": Task("squad", "squad", "hazyresearch/based-squad", ("text", "value", "context", "question"),
                  _squad_row, "SQuAD completion: Wikipedia passages, cloze questions"),
    "triviaqa": Task("triviaqa", "triviaqa", "hazyresearch/based_triviaqa", _CLOZE_COLUMNS,
                     lambda r, i: _cloze_row(r, i, lambda s: _TRIVIAQA_MARKS.sub("", s)), "TriviaQA, cloze form"),
    "nq": Task("nq", "nq", "hazyresearch/based_nq_1024", _CLOZE_COLUMNS, _cloze_row,
               "Natural Questions, cloze form"),
    "drop": Task("drop", "drop", "hazyresearch/based_drop", _CLOZE_COLUMNS, _cloze_row, "DROP, cloze form"),
    "synthetic": Task("synthetic", "generic", None, (), None,
                      "offline synthetic recall: records of facts, one question per fact (see synthetic.py)"),
}
PAPER_TASKS = ("swde", "fda", "squad", "triviaqa", "nq", "drop")


def get_task(name: str) -> Task:
    task = TASKS.get(name.strip().lower())
    if task is None:
        raise JRTError(f"unknown task {name!r}: choose from {', '.join(TASKS)} "
                       "(or run a paper task on local files with --data TASK=PATH)")
    return task


def build_examples(task: Task, rows: list[dict], tokenizer, *, limit: int | None = None, window: bool = True,
                   context_tokens: int = CONTEXT_TOKENS, answer_tokens: int = ANSWER_TOKENS
                   ) -> tuple[list[Example], Counter]:
    """Rows -> examples (at most ``limit``), windowed around the answer; and the skipped rows by reason."""
    examples: list[Example] = []
    skipped: Counter = Counter()
    for i, row in enumerate(rows):
        if limit is not None and len(examples) >= limit:
            break
        try:
            d = task.convert(row, i)
        except Skip as why:
            skipped[str(why)] += 1
            continue
        w = None
        context = d.context
        if window:
            w = answer_window(tokenizer, d.context, d.anchors, context_tokens=context_tokens,
                              answer_tokens=answer_tokens)
            context = w.text
        examples.append(Example(task.name, d.id, context, d.question, d.answers, d.original_question, w))
    return examples, skipped


@dataclass(frozen=True)
class SyntheticOptions:
    """What ``jrt-eval --tasks synthetic`` generates: test-split documents of ``records`` x ``attributes``
    facts (the difficulty knob), ``questions`` questions per document."""

    documents: int = 50
    records: int = 16
    attributes: int = 3
    questions: int = 4
    seed: int | None = None  # None: the test split's default seed


def synthetic_examples(options: SyntheticOptions, limit: int | None = None) -> list[Example]:
    gen = synthetic.Generator("test", options.seed, records=options.records, attributes=options.attributes,
                              questions=options.questions)
    examples: list[Example] = []
    for d in range(options.documents):
        doc = gen.document()
        for q, fact in enumerate(doc.asked):
            if limit is not None and len(examples) >= limit:
                return examples
            examples.append(Example("synthetic", f"{d}.{q}", doc.text, fact.question, (fact.value,)))
    return examples


def load_task(name: str, tokenizer, *, source: str | Path | None = None, limit: int | None = None,
              window: bool = True, synthetic_options: SyntheticOptions | None = None) -> TaskData:
    """A task's examples: from ``source`` (local file/folder), else the hub; synthetic ones are generated."""
    task = get_task(name)
    if task.name == "synthetic":
        if source is not None:
            raise JRTError("the synthetic task is generated, it takes no --data file")
        options = synthetic_options or SyntheticOptions()
        examples = synthetic_examples(options, limit)
        return TaskData(task, examples, f"generated (seed {options.seed if options.seed is not None else 'default'}, "
                        f"{options.records} records x {options.attributes} attributes)", rows=len(examples))
    rows, where = task.rows(source)
    examples, skipped = build_examples(task, rows, tokenizer, limit=limit, window=window)
    return TaskData(task, examples, where, skipped, len(rows))
