"""jrt-prompt: "Just read twice" for recurrent language models.

Public API: ``wrap`` (a loaded HF model), ``load`` (a checkpoint folder or "demo"), ``JRTPrompt`` (the
prompt format), ``RecurrentState`` (the explicit state), and the ``jrt-ask`` command.
"""

from .engine import Engine, ReadDocument
from .loading import load, wrap
from . import pipeline_registration  # noqa: F401 - registers the "jrt-question-answering" pipeline task
from .prompt import JRTPrompt
from .state import RecurrentState

__all__ = ["wrap", "load", "JRTPrompt", "RecurrentState", "Engine", "ReadDocument"]
__version__ = "0.1.0"
