"""The eval runner and jrt-eval over tiny random models: both modes scored side by side, per-example
predictions, read reuse where the template allows (with answers unchanged), one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jrt_prompt.engine import Engine
from jrt_prompt.errors import JRTError
from jrt_prompt.eval import cli, runner
from jrt_prompt.eval.fixtures import save_tiny_mamba, write_fixtures
from jrt_prompt.eval.metrics import contains
from jrt_prompt.eval.runner import evaluate, parse_modes
from jrt_prompt.eval.tasks import SyntheticOptions, load_task
from jrt_prompt.prompt import JRTPrompt
from tests.tokenizer_fixture import tiny_tokenizer
from tests.toy_model import toy_lm

ROOT = Path(__file__).resolve().parents[1]
SMALL = SyntheticOptions(documents=3, records=4, attributes=2, questions=3)


@pytest.fixture(scope="module")
def engine():
    tok = tiny_tokenizer()
    return Engine(toy_lm(len(tok), eos=tok.eos_token_id), tok)


@pytest.fixture()
def fixtures(tmp_path):
    return write_fixtures(tmp_path)


def _tasks(engine, fixtures):
    return [load_task("swde", engine.tokenizer, source=fixtures["swde"]),
            load_task("squad", engine.tokenizer, source=fixtures["squad"]),
            load_task("synthetic", engine.tokenizer, synthetic_options=SMALL)]


def test_both_modes_scored_with_per_example_predictions(engine, fixtures):
    tasks = _tasks(engine, fixtures)
    result = evaluate(engine, tasks, ["default", "jrt"], batch_size=4, max_new_tokens=6)
    n = sum(len(t.examples) for t in tasks)
    assert len(result.predictions) == 2 * n
    for score in result.tasks:
        for mode in ("default", "jrt"):
            preds = [p for p in result.predictions if p.task == score.task and p.mode == mode]
            assert len(preds) == score.examples
            assert all(p.correct == contains(p.prediction, p.answers) for p in preds)
            assert score.accuracy[mode] == sum(p.correct for p in preds) / len(preds)
        assert score.gap == score.accuracy["jrt"] - score.accuracy["default"]
    avg = result.average()
    assert avg["jrt"] == pytest.approx(sum(t.accuracy["jrt"] for t in result.tasks) / 3)
    js = json.loads(json.dumps(result.to_json()))
    assert set(js["tasks"]) == {"swde", "squad", "synthetic"} and len(js["predictions"]) == 2 * n
    assert {"prediction", "answers", "correct", "prompt_tokens", "read_reused"} <= set(js["predictions"][0])


def test_prompts_are_the_task_prompts(engine, fixtures):
    (swde,) = [load_task("swde", engine.tokenizer, source=fixtures["swde"])]
    result = evaluate(engine, [swde], ["default", "jrt"], max_new_tokens=2)
    for p in result.predictions:
        ex = next(e for e in swde.examples if e.id == p.id and e.question == p.question)
        enc = JRTPrompt("swde", 1 if p.mode == "default" else 2).encode(engine.tokenizer, ex.context, ex.question)
        assert p.prompt_tokens == len(enc.ids) and p.trimmed == 0


def test_first_read_is_reused_only_where_the_template_allows(engine, fixtures, monkeypatch):
    reads = []
    real_read = Engine.read
    monkeypatch.setattr(Engine, "read", lambda self, ctx, **kw: reads.append(ctx) or real_read(self, ctx, **kw))
    tasks = _tasks(engine, fixtures)
    shared = evaluate(engine, tasks, ["jrt"], batch_size=2, max_new_tokens=6)
    synth = [p for p in shared.predictions if p.task == "synthetic"]
    assert synth and all(p.read_reused for p in synth)
    assert len(reads) == SMALL.documents  # one read per document, shared by its 3 questions across batches
    assert not any(p.read_reused for p in shared.predictions if p.task != "synthetic")  # twice prompts start with Q
    whole = evaluate(engine, tasks, ["jrt"], batch_size=2, max_new_tokens=6, reuse_reads=False)
    assert [p.prediction for p in whole.predictions] == [p.prediction for p in shared.predictions]


def test_batch_size_does_not_change_answers(engine, fixtures):
    tasks = _tasks(engine, fixtures)
    one = evaluate(engine, tasks, ["default", "jrt"], batch_size=1, max_new_tokens=5)
    five = evaluate(engine, tasks, ["default", "jrt"], batch_size=5, max_new_tokens=5)
    assert [p.prediction for p in one.predictions] == [p.prediction for p in five.predictions]


def test_scores_follow_the_answers(engine, fixtures, monkeypatch):
    """A stand-in engine that answers right only with the JRT prompt: 0% default, 100% jrt, +100 gap."""
    tasks = [load_task("synthetic", engine.tokenizer, synthetic_options=SMALL)]
    gold = {ex.question: ex.answers[0] for ex in tasks[0].examples}

    def generate(self, contexts, questions, originals=None, **gen):
        assert gen["max_new_tokens"] == 48 and gen["stop"] == ["\n"]  # the paper's decoding settings
        return [f" {gold[q].upper()} I think" if self.prompt.repeats == 2 else " no idea" for q in questions]

    monkeypatch.setattr(Engine, "generate", generate)
    result = evaluate(engine, tasks, "default,jrt")
    (score,) = result.tasks
    assert score.accuracy == {"default": 0.0, "jrt": 1.0} and score.gap == 1.0 and result.average_gap() == 1.0


def test_modes():
    assert parse_modes("default,jrt") == ["default", "jrt"]
    assert parse_modes(["twice", "jrt", "plain"]) == ["jrt", "default"]
    with pytest.raises(JRTError, match="unknown mode 'thrice'"):
        parse_modes("default,thrice")
    with pytest.raises(JRTError, match="batch size"):
        runner.run_mode(Engine(toy_lm(10), tiny_tokenizer()), [], batch_size=0)


# --- the jrt-eval command ------------------------------------------------------------------------------------

@pytest.fixture()
def cli_engine(engine, monkeypatch):
    monkeypatch.setattr(cli, "load_engine", lambda *a: engine)
    return engine


def _run(*args):
    return CliRunner().invoke(cli.app, list(args))


def test_jrt_eval_prints_both_modes_and_writes_json(cli_engine, fixtures, tmp_path):
    out = tmp_path / "out" / "eval.json"
    r = _run("--model", "toy", "--tasks", "swde,fda,synthetic", "--modes", "default,jrt", "--limit", "4",
             "--data", f"swde={fixtures['swde']}", "--data", f"fda={fixtures['fda']}", "--batch-size", "3",
             "--max-new-tokens", "4", "--synthetic-documents", "2", "--synthetic-records", "3", "--json", str(out))
    assert r.exit_code == 0, r.output
    for word in ("default", "jrt", "gap", "average", "swde", "fda", "synthetic"):
        assert word in r.stdout
    js = json.loads(out.read_text())
    assert js["settings"]["model"] == "toy" and js["settings"]["limit"] == 4
    assert set(js["tasks"]) == {"swde", "fda", "synthetic"} and js["tasks"]["synthetic"]["examples"] == 4
    assert js["tasks"]["swde"]["skipped"] == {"answer empty or one character": 1}
    assert len(js["predictions"]) == 2 * (2 + 2 + 4) and "gap" in js["average"]


@pytest.mark.parametrize("args,needle", [
    (["--tasks", "hotpotqa"], "unknown task 'hotpotqa'"),
    (["--tasks", "swde", "--data", "swde=/no/such/file.jsonl"], "--data swde=PATH"),
    (["--tasks", "swde", "--data", "swde"], "must be TASK=PATH"),
    (["--tasks", "synthetic", "--modes", "thrice"], "unknown mode"),
])
def test_jrt_eval_errors_are_one_line(cli_engine, args, needle):
    r = _run("--model", "toy", *args)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jrt-eval: error:") and needle in lines[0], r.stderr


def test_jrt_eval_unreachable_hub(cli_engine, monkeypatch):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("couldn't connect to the hub\nsecond line")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    r = _run("--model", "toy", "--tasks", "fda")
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1
    assert "hazyresearch/based-fda" in lines[0] and "--data fda=PATH" in lines[0]


def test_jrt_eval_end_to_end_on_a_checkpoint_folder(tmp_path, monkeypatch):
    """A real run: a tiny random MambaForCausalLM saved to a folder with its tokenizer, loaded by
    jrt_prompt.load, the fixture files, no network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_tiny_mamba(tmp_path / "tiny", tiny_tokenizer())
    files = write_fixtures(tmp_path / "data")
    r = _run("--model", str(tmp_path / "tiny"), "--tasks", "fda,nq,synthetic", "--data", f"fda={files['fda']}",
             "--data", f"nq={files['nq']}", "--limit", "2", "--synthetic-documents", "1", "--synthetic-records", "2",
             "--max-new-tokens", "3", "--json", str(tmp_path / "out.json"))
    assert r.exit_code == 0, r.output
    assert "gap" in r.stdout and "average" in r.stdout
    js = json.loads((tmp_path / "out.json").read_text())
    assert {p["mode"] for p in js["predictions"]} == {"default", "jrt"}
    assert js["tasks"]["nq"]["skipped"] == {"answer empty or one character": 1}


def test_jrt_eval_command_usage_errors_are_one_line():
    """The console entry point (``jrt-eval`` runs ``cli.run``) turns usage errors into one line, exit 2."""
    cmd = [sys.executable, "-c", "from jrt_prompt.eval.cli import run; run()", "--model", "x", "--batch-size", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--batch-size" in lines[0] and "jrt-eval --help" in lines[0]


def test_jrt_eval_graph_prefill_reaches_the_loader(engine, monkeypatch):
    """--graph-prefill is passed to the loader (CUDA graphs for prompts; on the CPU the engine has none)."""
    seen = []
    monkeypatch.setattr(cli, "load_engine", lambda *a: seen.append(a) or engine)
    for flag, want in ((["--graph-prefill"], True), ([], False)):
        r = _run("--model", "toy", "--tasks", "synthetic", "--limit", "2", "--synthetic-documents", "1",
                 "--synthetic-records", "2", "--max-new-tokens", "2", "--no-progress", *flag)
        assert r.exit_code == 0, r.output
        assert seen[-1][-1] is want


def test_mode_engines_share_the_model_and_graphs(engine):
    """Each task and mode gets the engine with its prompt, sharing the model, tokenizer and graph cache."""
    e = runner.mode_engine(engine, "generic", "jrt")
    assert e.model is engine.model and e.tokenizer is engine.tokenizer and e._graphs is engine._graphs
    assert e.prompt.repeats == 2 and engine.prompt is not e.prompt and e.trim == (engine.trim or "head")
