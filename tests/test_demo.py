"""The demo model shipped in the package: within its size limits, and it answers the example questions in
examples/ correctly with the JRT prompt, through the Python API and jrt-ask."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

import jrt_prompt
from jrt_prompt.loading import DEMO_DIR

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "records.txt"
MiB = 2**20


def examples() -> list[tuple[str, str]]:
    with open(REPO / "examples" / "records_questions.tsv", newline="") as f:
        return [(row["question"], row["answer"]) for row in csv.DictReader(f, delimiter="\t")]


def test_demo_weights_fit_the_limits():
    weights = [p for p in DEMO_DIR.iterdir() if p.suffix in (".safetensors", ".bin")]
    assert weights, "no weights in the demo folder"
    assert all(p.stat().st_size <= 16 * MiB for p in DEMO_DIR.iterdir())
    assert sum(p.stat().st_size for p in weights) <= 16 * MiB


def test_demo_answers_every_example_question_with_jrt():
    engine = jrt_prompt.load("demo")
    doc = engine.read(EXAMPLE.read_text())
    pairs = examples()
    assert len(pairs) >= 20
    answers = engine.generate(doc, [q for q, _ in pairs], max_new_tokens=8, stop=["\n"])
    wrong = [(q, want, got) for (q, want), got in zip(pairs, answers) if want.lower() not in got.lower()]
    assert not wrong, wrong


@pytest.mark.slow
def test_jrt_ask_on_the_example():
    out = subprocess.run([sys.executable, "-m", "jrt_prompt.cli", str(EXAMPLE), "What is Xia Hunt's city?"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Rome"
