"""Plain vs JRT accuracy on the synthetic suite's TEST split, at several document sizes.

Recurrent models are scored as a user would run them: the saved folder loaded with ``jrt_prompt.load`` and
answered through the engine (``jrt_prompt.eval.runner.run_mode``: greedy, stop at the first newline, the
``contains`` metric, the first read of a document shared by its questions). The attention baseline, which the
engine does not run, is scored on the very same examples and prompt ids with transformers' ``generate``.

Modes (``MODES``): "default" (the plain prompt) and "jrt", which the JRT target compares, and two diagnostic
prompts built as the training rows are (data.py's ``SampleEncoder.prompt_ids``): "question_first" (Q, C, Q), with
"Question" the sequence's first token, and "question_first_sep", "\\n\\n" + (Q, C, Q): the JRT prompt without its
first context copy. A model that answers (Q, C, Q) but not "\\n\\n" + (Q, C, Q) keys its selection on the start of
the sequence (run 6's Mamba-2); one that answers both but not JRT, on the state being empty. Those two are fed as
token ids through ``Engine.generate_ids`` (same greedy decoding, stop and metric; no read to share).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from jrt_prompt.eval.metrics import accuracy, contains
from jrt_prompt.eval.runner import run_mode
from jrt_prompt.eval.tasks import Example, SyntheticOptions, synthetic_examples
from jrt_prompt.prompt import JRTPrompt

from .data import SampleEncoder

# name (results.json's key) -> (training format whose prompt ids it feeds, question-first lead); default and jrt
# are jrt-eval's names: default = the plain prompt (C, Q), jrt = (C, Q, C, Q)
MODES = {
    "default": ("plain", "question"),
    "jrt": ("jrt", "question"),
    "question_first": ("question_first", "question"),  # (Q, C, Q): "Question" is the first token
    "question_first_sep": ("question_first", "separator"),  # "\n\n" + (Q, C, Q): JRT minus its first copy
}
DEFAULT_MODES = ("default", "jrt")  # the JRT target compares these two
REPEATS = {"default": 1, "jrt": 2}  # the modes the engine's own prompt (JRTPrompt) builds
MAX_NEW_TOKENS = 8  # answers are one word; generation stops at the newline anyway


def test_examples(records: int, documents: int, questions: int = 4, attributes: int = 3) -> list[Example]:
    """What ``jrt-eval --tasks synthetic --synthetic-records N`` scores (test split, its fixed seed)."""
    return synthetic_examples(SyntheticOptions(documents=documents, records=records, attributes=attributes,
                                               questions=questions))


class OutOfTime(Exception):
    """The evaluation's hard deadline passed in the middle of a document size."""


def no_limit() -> None:
    return None


def check_modes(modes) -> tuple[str, ...]:
    """The modes in MODES order; ValueError for unknown ones or without both default and jrt."""
    modes = tuple(modes)
    unknown = set(modes) - set(MODES)
    if unknown or not set(DEFAULT_MODES) <= set(modes):
        raise ValueError(f"evaluation modes must be among {', '.join(MODES)} and include "
                         f"{' and '.join(DEFAULT_MODES)} (the JRT target compares them), got {', '.join(modes)}")
    return tuple(m for m in MODES if m in modes)


def prompt_ids(tokenizer, example: Example, mode: str, encoder: SampleEncoder | None = None) -> list[int]:
    """The token ids ``mode`` feeds for ``example``: for default and jrt exactly the engine's (JRTPrompt's)."""
    fmt, lead = MODES[mode]
    encoder = encoder or SampleEncoder(tokenizer, check_every=0)
    return encoder.prompt_ids(fmt, example.context, example.question, tokenizer=tokenizer, lead=lead)[0]


def first_line(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True).split("\n")[0]


def engine_answers(lm, tokenizer, examples: list[Example], mode: str, batch_size: int,
                   cuda_graphs: bool = True, check: Callable[[], None] = no_limit) -> list[str]:
    from jrt_prompt.engine import Engine

    engine = Engine(lm, tokenizer, JRTPrompt("generic", REPEATS.get(mode, 2)), cuda_graphs=cuda_graphs)
    if mode in REPEATS:  # jrt-eval's own path: the document's first read shared by its questions
        rows = run_mode(engine, examples, batch_size=batch_size, max_new_tokens=MAX_NEW_TOKENS,
                        on_batch=lambda _: check())
        return [out for _, out, *_ in rows]
    return ids_answers(engine, examples, mode, batch_size, check)


def ids_answers(engine, examples: list[Example], mode: str, batch_size: int,
                check: Callable[[], None] = no_limit) -> list[str]:
    """The engine's greedy answers to ``mode``'s prompt ids (``prompt_ids``), left-padded batches in the given order,
    cut at the first newline: the modes that JRTPrompt does not build."""
    tokenizer = engine.tokenizer
    encoder = SampleEncoder(tokenizer, check_every=0)
    out: list[str] = []
    for start in range(0, len(examples), batch_size):
        ids = [prompt_ids(tokenizer, ex, mode, encoder) for ex in examples[start:start + batch_size]]
        out += [first_line(tokenizer, row) for row in engine.generate_ids(
            ids, max_new_tokens=MAX_NEW_TOKENS, stop=["\n"])]
        check()
    return out


@torch.no_grad()
def hf_answers(model, tokenizer, examples: list[Example], mode: str, batch_size: int,
               check: Callable[[], None] = no_limit) -> list[str]:
    """Greedy answers of a transformers model to the same prompt ids, left-padded, cut at the first newline."""
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    encoder = SampleEncoder(tokenizer, check_every=0)
    out: list[str] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        ids = [prompt_ids(tokenizer, ex, mode, encoder) for ex in batch]
        width = max(len(i) for i in ids)
        input_ids = torch.full((len(ids), width), eos, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for r, row in enumerate(ids):
            input_ids[r, width - len(row):] = torch.tensor(row)
            mask[r, width - len(row):] = 1
        gen = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=eos)
        out += [first_line(tokenizer, row) for row in gen[:, width:].tolist()]
        check()
    return out


def score(examples: list[Example], answers: list[str]) -> float:
    return accuracy([contains(a, ex.answers) for ex, a in zip(examples, answers)])


def evaluate_sizes(answer: Callable[..., list[str]], sizes: list[int], documents: int, deadline: float,
                   log: Callable[[str], None] = print, on_size: Callable[[dict], None] | None = None,
                   overrun_s: float = 60.0, modes: tuple[str, ...] = DEFAULT_MODES) -> dict:
    """{records: {"default": acc, "jrt": acc, (other modes), "examples": n, "seconds": s}} for each size started
    before ``deadline`` (time.time()). ``answer(examples, mode, check)`` must call ``check()`` between batches: a
    size still running ``overrun_s`` past the deadline is cut off (recorded as out of time). A size that raises is
    recorded with its error and the next one is tried."""
    modes = check_modes(modes)
    table: dict = {}

    def check() -> None:
        if time.time() > deadline + overrun_s:
            raise OutOfTime(f"evaluation ran {overrun_s:.0f} s past its deadline")

    for records in sizes:
        if time.time() >= deadline:
            log(f"evaluation: out of time before {records} records")
            break
        examples = test_examples(records, documents)
        row: dict = {"examples": len(examples)}
        start = time.time()
        try:
            for mode in modes:
                row[mode] = score(examples, answer(examples, mode, check))
        except Exception as e:  # noqa: BLE001 - one size failing must not lose the others
            row["error"] = f"{type(e).__name__}: {e}"
        row["seconds"] = round(time.time() - start, 1)
        table[str(records)] = row
        log(f"evaluation: {records} records: " + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        if on_size is not None:
            on_size(table)
        if isinstance(row.get("error"), str) and row["error"].startswith("OutOfTime"):
            break
    return table
