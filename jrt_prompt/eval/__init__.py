"""Recall evaluation: the paper's six tasks (SWDE, FDA, SQuAD, TriviaQA, NQ, Drop), an offline synthetic
suite, the ``jrt-eval`` command, and an lm-evaluation-harness model and tasks (``lm_eval_model``).

    from jrt_prompt.eval import load_task, evaluate
    result = evaluate(engine, [load_task("synthetic", engine.tokenizer)], ["default", "jrt"])
"""

from .metrics import accuracy, contains
from .runner import EvalResult, evaluate
from .tasks import PAPER_TASKS, TASKS, Example, SyntheticOptions, load_task
from .window import answer_window

__all__ = ["contains", "accuracy", "answer_window", "load_task", "evaluate", "EvalResult", "Example",
           "SyntheticOptions", "TASKS", "PAPER_TASKS"]
