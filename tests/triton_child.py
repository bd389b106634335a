"""Running a test file's kernel checks in a child process: Triton's interpreter (CPU) must be switched on
before triton is imported, and a compile-only child must run without it.

A test file defines plain ``check_*`` functions, runs itself as ``python <file>`` (see ``child_main``), and
asks ``child_results`` for a dict check name -> "ok" / "skipped: ..." / traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULT_TAG = "TRITON_CHILD_RESULTS "


def collect_checks(namespace: dict) -> dict[str, Callable]:
    return {name: fn for name, fn in sorted(namespace.items()) if name.startswith("check_") and callable(fn)}


def run_checks(checks: dict[str, Callable]) -> dict[str, str]:
    """Each check's outcome: "ok", the string it returned (a skip reason), or its traceback."""
    results = {}
    for name, fn in checks.items():
        try:
            out = fn()
            results[name] = out if isinstance(out, str) else "ok"
        except Exception:  # reported to the parent, which fails that one test
            results[name] = traceback.format_exc()
    return results


def child_results(test_file: str, *args: str, interpret: bool = True, timeout: int = 600) -> dict | None:
    """Runs ``python test_file *args`` (with TRITON_INTERPRET=1 when ``interpret``, without it otherwise) and
    returns the JSON it printed after RESULT_TAG; raises AssertionError with the child's output if none."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env.update(TRITON_INTERPRET="1", JRT_PROMPT_OPS="auto")
    proc = subprocess.run([sys.executable, str(Path(test_file).resolve()), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=str(ROOT))
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise AssertionError(f"child {Path(test_file).name} {' '.join(args)} failed (exit {proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def child_main(checks: dict[str, Callable], compile_fn: Callable[[], dict] | None = None) -> None:
    """The child's entry point: ``--compile`` prints compile_fn()'s dict; otherwise (under the interpreter)
    runs the checks on one thread and prints their results."""
    sys.path.insert(0, str(ROOT))
    if sys.argv[1:] == ["--compile"] and compile_fn is not None:
        print(RESULT_TAG + json.dumps(compile_fn()), flush=True)
        return
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("run with TRITON_INTERPRET=1 (pytest does this for you)")
    import torch
    torch.set_num_threads(1)
    print(RESULT_TAG + json.dumps(run_checks(checks)), flush=True)


@contextmanager
def on_device(namespace: dict, device: str):
    """Inside the block a test file's checks run on ``device`` (they read the module global DEVICE)."""
    prev = namespace["DEVICE"]
    namespace["DEVICE"] = device
    try:
        yield
    finally:
        namespace["DEVICE"] = prev


def interpreter_tests(test_file: str, checks: dict[str, Callable]):
    """The pytest side of a kernel test file: a module fixture that runs every check in one interpreter child, and
    one test per check. In the file: ``interpreter_results, test_under_triton_interpreter = interpreter_tests(
    __file__, CHECKS)``."""
    import pytest

    @pytest.fixture(scope="module")
    def interpreter_results() -> dict[str, str]:
        pytest.importorskip("triton")
        return child_results(test_file)

    @pytest.mark.parametrize("name", list(checks))
    def test_under_triton_interpreter(name, interpreter_results):
        result = interpreter_results[name]
        if result.startswith("skipped"):
            pytest.skip(result)
        assert result == "ok", result

    return interpreter_results, test_under_triton_interpreter


def gpu_checks_test(namespace: dict, checks: dict[str, Callable]):
    """The same checks compiled (``pytest -m gpu``): one test running every check on CUDA tensors. In the file:
    ``test_gpu_checks = gpu_checks_test(globals(), CHECKS)``."""
    import pytest

    @pytest.mark.gpu
    def test_gpu_checks():
        with on_device(namespace, "cuda"):
            for fn in checks.values():
                fn()

    return test_gpu_checks
