"""The wheel ships every package: pyproject's hand-written package list matches the source tree."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "jrt_prompt").rglob("__init__.py")}
    found |= {"jrt_prompt.adapters" + "".join("." + x for x in p.parent.relative_to(ROOT / "adapters").parts)
              for p in (ROOT / "adapters").rglob("__init__.py")}
    assert found == listed, f"missing from pyproject: {sorted(found - listed)}; listed but absent: {sorted(listed - found)}"
