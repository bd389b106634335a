"""Adapters: turn a loaded HF model or a checkpoint folder into a ``jrt_prompt.model.RecurrentLM``.

Installed as ``jrt_prompt.adapters``. Each module here (mamba, mamba2, gla, based) provides

- ``NAME``: the architecture name, as in error messages;
- ``accepts_model(model) -> bool`` and ``from_model(model) -> RecurrentLM``: wrap a loaded
  ``transformers`` model; the RecurrentLM shares the model's weight tensors (no copy);
- ``accepts_folder(config: dict, files: set[str]) -> bool`` and
  ``from_folder(path, config, *, device=None, dtype=None) -> RecurrentLM``: read a checkpoint folder
  (``config`` is its parsed config.json, ``files`` the names in the folder).

The modules are imported lazily, so a missing optional dependency of one never breaks another.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType

ADAPTER_MODULES = ("mamba", "mamba2", "gla", "based")


def adapter_modules() -> Iterator[ModuleType]:
    """The adapter modules in order, each imported only when the previous ones did not match."""
    for name in ADAPTER_MODULES:
        yield importlib.import_module(f"{__name__}.{name}")


def supported_names() -> str:
    return ", ".join(ADAPTER_MODULES)
