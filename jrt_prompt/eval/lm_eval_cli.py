"""jrt-lm-eval: lm-eval's own command line, with the ``jrt`` model registered and our tasks on its search path.

    jrt-lm-eval --model jrt --model_args pretrained=PATH --tasks swde_once,swde_twice --device cuda
    jrt-lm-eval ls tasks            # lists swde_twice, fda_twice, squad_completion_twice, ...

Every lm-eval argument works as with ``lm-eval``; ``--include_path`` adds to our task folder instead of
replacing it. (lm-eval discovers models only in its own registry, hence this wrapper.)
"""

from __future__ import annotations

import inspect
import sys


def _add_our_tasks() -> None:
    """Make every TaskManager also search our task folder (the CLI builds its own TaskManager)."""
    from lm_eval.tasks import TaskManager

    from .lm_eval_model import TASKS_DIR

    original = TaskManager.__init__
    if getattr(original, "_jrt", False):
        return
    signature = inspect.signature(original)

    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        paths = bound.arguments.get("include_path") or []
        paths = list(paths) if isinstance(paths, (list, tuple)) else [paths]
        if str(TASKS_DIR) not in map(str, paths):
            paths.append(str(TASKS_DIR))
        bound.arguments["include_path"] = paths
        original(*bound.args, **bound.kwargs)

    __init__._jrt = True
    TaskManager.__init__ = __init__


def main(argv: list[str] | None = None) -> None:
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        print("jrt-lm-eval: error: lm-eval is not installed: pip install 'jrt-prompt[eval]'", file=sys.stderr)
        sys.exit(2)
    from . import lm_eval_model  # noqa: F401 - registers the "jrt" model

    _add_our_tasks()
    if argv is not None:
        sys.argv = ["jrt-lm-eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
