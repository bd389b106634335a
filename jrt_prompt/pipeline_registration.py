"""Register "jrt-question-answering" with transformers' ``pipeline()`` without slowing ``import jrt_prompt``.

The registry lives in ``transformers.pipelines``, whose import takes 2+ s (it loads transformers' modeling
code); jrt-ask must start in well under 5 s. So the registration runs right after that module is first
imported (a one-shot import hook), or at once when it already is.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings

REGISTRY_MODULE = "transformers.pipelines"


def register_now() -> None:
    try:
        from .pipeline import register

        register()
    except Exception as e:  # noqa: BLE001 - never break transformers' own import
        warnings.warn(f"jrt_prompt could not register the jrt-question-answering pipeline: {type(e).__name__}: {e}",
                      stacklevel=2)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds ``transformers.pipelines`` through the other finders and registers once its code has run."""

    def find_spec(self, name, path, target=None):
        if name != REGISTRY_MODULE:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            register_now()

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if REGISTRY_MODULE in sys.modules:
        register_now()
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())


install()
