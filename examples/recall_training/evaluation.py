"""Plain vs JRT accuracy on the synthetic suite's TEST split, at several document sizes.

Recurrent models are scored as a user would run them: the saved folder loaded with ``jrt_prompt.load`` and
answered through the engine (``jrt_prompt.eval.runner.run_mode``: greedy, stop at the first newline, the
``contains`` metric, the first read of a document shared by its questions). The attention baseline, which the
engine does not run, is scored on the very same examples and prompt ids with transformers' ``generate``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from jrt_prompt.eval.metrics import accuracy, contains
from jrt_prompt.eval.runner import run_mode
from jrt_prompt.eval.tasks import Example, SyntheticOptions, synthetic_examples
from jrt_prompt.prompt import JRTPrompt

MODES = {"default": 1, "jrt": 2}  # jrt-eval's names: default = the plain prompt (C, Q), jrt = (C, Q, C, Q)
MAX_NEW_TOKENS = 8  # answers are one word; generation stops at the newline anyway


def test_examples(records: int, documents: int, questions: int = 4, attributes: int = 3) -> list[Example]:
    """What ``jrt-eval --tasks synthetic --synthetic-records N`` scores (test split, its fixed seed)."""
    return synthetic_examples(SyntheticOptions(documents=documents, records=records, attributes=attributes,
                                               questions=questions))


class OutOfTime(Exception):
    """The evaluation's hard deadline passed in the middle of a document size."""


def no_limit() -> None:
    return None


def engine_answers(lm, tokenizer, examples: list[Example], repeats: int, batch_size: int,
                   cuda_graphs: bool = True, check: Callable[[], None] = no_limit) -> list[str]:
    from jrt_prompt.engine import Engine

    engine = Engine(lm, tokenizer, JRTPrompt("generic", repeats), cuda_graphs=cuda_graphs)
    rows = run_mode(engine, examples, batch_size=batch_size, max_new_tokens=MAX_NEW_TOKENS,
                    on_batch=lambda _: check())
    return [out for _, out, *_ in rows]


@torch.no_grad()
def hf_answers(model, tokenizer, examples: list[Example], repeats: int, batch_size: int,
               check: Callable[[], None] = no_limit) -> list[str]:
    """Greedy answers of a transformers model to the same prompt ids, left-padded, cut at the first newline."""
    prompt = JRTPrompt("generic", repeats)
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    out: list[str] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        ids = [prompt.encode(tokenizer, ex.context, ex.question).ids for ex in batch]
        width = max(len(i) for i in ids)
        input_ids = torch.full((len(ids), width), eos, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for r, row in enumerate(ids):
            input_ids[r, width - len(row):] = torch.tensor(row)
            mask[r, width - len(row):] = 1
        gen = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=eos)
        for row in gen[:, width:].tolist():
            out.append(tokenizer.decode(row, skip_special_tokens=True).split("\n")[0])
        check()
    return out


def score(examples: list[Example], answers: list[str]) -> float:
    return accuracy([contains(a, ex.answers) for ex, a in zip(examples, answers)])


def evaluate_sizes(answer: Callable[..., list[str]], sizes: list[int], documents: int, deadline: float,
                   log: Callable[[str], None] = print, on_size: Callable[[dict], None] | None = None,
                   overrun_s: float = 60.0) -> dict:
    """{records: {"default": acc, "jrt": acc, "examples": n, "seconds": s}} for each size started before
    ``deadline`` (time.time()). ``answer(examples, repeats, check)`` must call ``check()`` between batches: a size
    still running ``overrun_s`` past the deadline is cut off (recorded as out of time). A size that raises is
    recorded with its error and the next one is tried."""
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
            for mode, repeats in MODES.items():
                row[mode] = score(examples, answer(examples, repeats, check))
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
