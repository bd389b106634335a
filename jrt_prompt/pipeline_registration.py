"""Register jrt_prompt with transformers without slowing ``import jrt_prompt``: each registration runs right after
a transformers module that holds its registry is first imported (a one-shot import hook), or at once when it
already is. jrt-ask must start in well under 5 s; transformers' pipelines and modeling code take seconds to import.

- ``transformers.pipelines`` -> the "jrt-question-answering" pipeline task (jrt_prompt.pipeline.register);
- transformers' AutoConfig module (or its AutoModel module, which imports it) -> AutoConfig knows model_type
  "based" (BasedConfig). Creating a BasedConfig then registers BasedForCausalLM with AutoModelForCausalLM (see
  jrt_prompt.adapters.based_config), so only those who build a Based model with transformers import its modeling
  code.

A registration waits while one of its trigger modules is still being imported (the AutoModel module imports the
AutoConfig one first, and BasedConfig's import needs the AutoModel one whole), and while its own module is (``import
jrt_prompt.pipeline`` imports transformers.pipelines before ``register`` exists): it runs when that trigger's import
ends, or at the next import after its module's.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings

REGISTRY_MODULE = "transformers.pipelines"
AUTO_CONFIG_MODULE = "transformers.models.auto.configuration_auto"
AUTO_MODEL_MODULE = "transformers.models.auto.modeling_auto"
# "module:function" to call -> the transformers modules after whose import it is called
REGISTRATIONS = {
    "jrt_prompt.pipeline:register": (REGISTRY_MODULE,),
    "jrt_prompt.adapters.based_config:register_config": (AUTO_CONFIG_MODULE, AUTO_MODEL_MODULE),
}
_pending: dict[str, list[str]] = {}  # transformers module not imported yet -> registrations to run after it
_hooked: set[str] = set()  # modules whose import runs through our hook (their registrations run when it ends)
_executed: set[str] = set()  # hooked modules whose code has run (their import is ending)
_deferred: list[str] = []  # registrations whose own module was still being imported when they were due


def _initializing(module: str) -> bool:
    """``module`` is being imported right now (its code has not finished running)."""
    spec = getattr(sys.modules.get(module), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _call(target: str) -> None:
    """Run one registration now, or later when now is too early; a failure is a warning, never an error inside
    transformers' own import."""
    module, _, function = target.partition(":")
    busy = [m for m in REGISTRATIONS.get(target, ()) if _initializing(m) and m not in _executed]
    if busy and all(m in _hooked for m in busy):
        return  # the hook runs it again when that import ends
    if busy or _initializing(module):
        _deferred.append(target)
        return
    try:
        getattr(importlib.import_module(module), function)()
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"jrt_prompt could not run {target} to register with transformers: {type(e).__name__}: {e}",
                      stacklevel=2)


def _run_deferred() -> None:
    for target in list(_deferred):
        _deferred.remove(target)
        _call(target)  # deferred again if still too early


def register_now() -> None:
    """The pipeline task's registration (kept for callers of the earlier, pipeline-only version)."""
    _call("jrt_prompt.pipeline:register")


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds a pending module through the other finders and runs its registrations once the module's code has run;
    at every import it also retries the deferred registrations."""

    def find_spec(self, name, path, target=None):
        if _deferred:
            _run_deferred()
        if name not in _pending:
            return None
        for finder in list(sys.meta_path):
            if isinstance(finder, _AfterImport) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # not a plain module: leave it alone (its registrations stay pending)
        registrations = _pending.pop(name)
        _hooked.add(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _executed.add(name)
            for registration in registrations:
                _call(registration)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Run each registration now if a trigger module is imported, else when one is (idempotent)."""
    for target, modules in REGISTRATIONS.items():
        if any(m in sys.modules for m in modules):
            for m in modules:
                if target in _pending.get(m, ()):
                    _pending[m].remove(target)
            _call(target)
        else:
            for m in modules:
                if target not in _pending.setdefault(m, []):
                    _pending[m].append(target)
    for m in [m for m, targets in _pending.items() if not targets]:
        del _pending[m]
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())


install()
