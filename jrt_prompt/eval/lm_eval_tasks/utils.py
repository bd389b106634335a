"""Functions the task yaml files here name with ``!function utils.NAME`` (lm-eval imports this file by path).

Rows are turned into prompt arguments by jrt_prompt.eval.tasks (the same cleaning and dropping as
``jrt-eval``), and the prompts come from JRTPrompt: ``*_once`` is the paper's default prompt, ``*_twice`` its
JRT prompt, over the same documents. No window is applied here (lm-eval's own swde, fda and squad_completion
use whole documents too); ``jrt-eval`` applies the paper's 950-token window.
"""

from __future__ import annotations

from jrt_prompt.eval.metrics import contains
from jrt_prompt.eval.tasks import TASKS, Skip
from jrt_prompt.prompt import JRTPrompt


def _convertible(task: str):
    def ok(row) -> bool:
        try:
            TASKS[task].convert(dict(row), 0)
        except Skip:
            return False
        return True

    return ok


def _fields(task: str):
    def add(row, index):
        d = TASKS[task].convert(dict(row), index)
        return {"jrt_context": d.context, "jrt_question": d.question, "jrt_original": d.original_question or "",
                "jrt_answers": list(d.answers)}

    return add


def _process(task: str, dataset):
    """Drop rows the paper drops (one-character answers) and add the prompt arguments as columns."""
    return dataset.filter(_convertible(task)).map(_fields(task), with_indices=True)


def process_swde(dataset):
    return _process("swde", dataset)


def process_fda(dataset):
    return _process("fda", dataset)


def process_squad(dataset):
    return _process("squad", dataset)


def _text(template: str, repeats: int, doc: dict) -> str:
    return JRTPrompt(template, repeats).text(doc["jrt_context"], doc["jrt_question"], doc["jrt_original"] or None)


def swde_once(doc):
    return _text("swde", 1, doc)


def swde_twice(doc):
    return _text("swde", 2, doc)


def fda_once(doc):
    return _text("fda", 1, doc)


def fda_twice(doc):
    return _text("fda", 2, doc)


def squad_once(doc):
    return _text("squad", 1, doc)


def squad_twice(doc):
    return _text("squad", 2, doc)


def gold(doc):
    return doc["jrt_answers"][0]


def process_results(doc, results):
    return {"contains": float(contains(results[0], doc["jrt_answers"]))}
