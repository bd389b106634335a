"""jrt-ask end to end: answers equal Engine.generate's for the same inputs, several questions share one read,
--no-jrt/--repeats change the prompt, --stream/--json/stdin/--truncate, the progress bar, and every error
is one line on stderr with a non-zero exit code and no traceback (in-process and through a real process)."""

from __future__ import annotations

import importlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

import jrt_prompt
from jrt_prompt import JRTPrompt, cli
from jrt_prompt.engine import Engine
from jrt_prompt.loading import DEMO_DIR
from tests.checkpoints_mamba import tiny_mamba
from tests.tokenizer_fixture import tiny_tokenizer

# Records in the format the demo model was trained on (names from the synthetic suite's test split)
DOC = ("Name: Dev Hunt. City: Lima. Pet: owl. Food: nuts.\nName: Kai Cruz. City: Miami. Pet: eel. Food: jam.\n"
       "Name: Nia Vale. City: Perth. Pet: cow. Food: curry.\nName: Xia Hunt. City: Rome. Pet: eel. Food: beans.")
QUESTIONS = ["What is Dev Hunt's city?", "What is Nia Vale's pet?", "What is Xia Hunt's food?"]
NEW = 12  # --max-new-tokens in these tests (short: fast)
REPO = Path(__file__).resolve().parents[1]


def write_model_folder(path: Path, seed: int = 0) -> str:
    """A tiny random transformers Mamba saved with the test tokenizer. Its state decays slowly (A_log - 4), so
    it still remembers the document when it answers: its answers depend on the number of reads."""
    tok = tiny_tokenizer()
    vocab = len(tok) + (-len(tok) % 8)
    model = tiny_mamba(seed, vocab_size=vocab, hidden_size=32, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.mixer.A_log.sub_(4)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is faster, and far faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """The --model every test runs: the demo model shipped in the package."""
    return "demo"


@pytest.fixture(scope="module")
def engines(model):
    """Reference engines over the same checkpoint, by number of reads."""
    return {r: jrt_prompt.load(model, prompt=JRTPrompt(repeats=r)) for r in (1, 2, 3)}


@pytest.fixture
def doc_file(tmp_path) -> str:
    path = tmp_path / "doc.txt"
    path.write_text(DOC + "\n", encoding="utf-8")
    return str(path)


def reference(engine: Engine, question: str, **kw) -> str:
    """What jrt-ask must print for one question: Engine.generate with its settings, stripped."""
    return engine.generate(DOC, question, max_new_tokens=NEW, stop=list(cli.STOP), **kw).strip()


def ask(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys, *argv) -> str:
    code, out, err = ask(capsys, *argv)
    assert code == 0, err
    return out


# --- answers --------------------------------------------------------------------------------------

def test_answer_equals_engine_generate(capsys, model, engines, doc_file):
    out = ok(capsys, doc_file, QUESTIONS[0], "--model", model, "--max-new-tokens", NEW)
    want = reference(engines[2], QUESTIONS[0])
    assert want, "the fixture model must give a non-empty answer for the comparison to mean something"
    assert out == want + "\n"


def test_several_questions_read_once_and_equal_separate_calls(capsys, monkeypatch, model, engines, doc_file):
    reads = []
    real_read = Engine.read

    def counting_read(self, context, **kw):
        reads.append(context)
        return real_read(self, context, **kw)

    monkeypatch.setattr(Engine, "read", counting_read)
    out = ok(capsys, doc_file, *QUESTIONS, "--model", model, "--max-new-tokens", NEW)
    assert len(reads) == 1
    lines = out.split("\n")
    assert lines[-1] == "" and len(lines) == len(QUESTIONS) + 1
    separate = [reference(engines[2], q) for q in QUESTIONS]
    assert lines[:-1] == [f"{q}\t{a}" for q, a in zip(QUESTIONS, separate)]
    assert len(set(separate)) > 1  # the questions really reach the model
    for q, a in zip(QUESTIONS, separate):  # and one question per call gives the same answers
        assert ok(capsys, doc_file, q, "--model", model, "--max-new-tokens", NEW) == a + "\n"


def test_no_jrt_and_repeats_change_the_prompt(capsys, model, engines, doc_file):
    def run_json(*flags):
        return json.loads(ok(capsys, doc_file, *QUESTIONS[:2], "--model", model, "--max-new-tokens", NEW,
                             "--json", *flags))

    twice, once, thrice = run_json(), run_json("--no-jrt"), run_json("--repeats", 3)
    assert run_json("--repeats", 1)["answers"] == once["answers"]
    for result, r in ((twice, 2), (once, 1), (thrice, 3)):
        assert result["repeats"] == r
        for item, q in zip(result["answers"], QUESTIONS):
            assert item["answer"] == reference(engines[r], q)
            assert item["prompt_tokens"] == len(engines[r].encode(DOC, q).ids)
    assert [a["prompt_tokens"] for a in once["answers"]] < [a["prompt_tokens"] for a in twice["answers"]]
    # the reads show in the answers: on the example document the demo misses this fact on one read
    example = str(REPO / "examples" / "records.txt")
    question = "What is Xia Hunt's city?"
    assert ok(capsys, example, question, "--model", model).strip() == "Rome"
    assert ok(capsys, example, question, "--model", model, "--no-jrt").strip() != "Rome"


def test_json_statistics(capsys, model, engines, doc_file):
    result = json.loads(ok(capsys, doc_file, *QUESTIONS, "--model", model, "--max-new-tokens", NEW, "--json"))
    engine = engines[2]
    prompts = [engine.encode(DOC, q) for q in QUESTIONS]
    shared = prompts[0].shared
    assert result["model"] == model and result["arch"] == engine.model.config.arch
    assert result["document_tokens"] == prompts[0].context_tokens > 0
    # one shared first read, then each question's rest of the prompt
    assert result["tokens_read"] == shared + sum(len(p.ids) - shared for p in prompts)
    assert result["trimmed"] is False and result["trimmed_tokens"] == 0
    assert 0 < result["seconds"] < 600
    assert [a["question"] for a in result["answers"]] == QUESTIONS


def test_stream_prints_the_same_answers(capsys, model, doc_file):
    plain = ok(capsys, doc_file, *QUESTIONS, "--model", model, "--max-new-tokens", NEW)
    assert ok(capsys, doc_file, *QUESTIONS, "--model", model, "--max-new-tokens", NEW, "--stream") == plain
    one = ok(capsys, doc_file, QUESTIONS[1], "--model", model, "--max-new-tokens", NEW)
    assert ok(capsys, doc_file, QUESTIONS[1], "--model", model, "--max-new-tokens", NEW, "--stream") == one


def test_stream_strips_like_plain_output(capsys):
    assert cli.stream_answer(iter([" ", " Par", "is ", " \t", "x", "  "]), "q\t") == "Paris  \tx"
    assert capsys.readouterr().out == "q\tParis  \tx\n"


def test_document_from_stdin(capsys, monkeypatch, model, engines):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(("\ufeff" + DOC).encode("utf-8"))))
    out = ok(capsys, "-", QUESTIONS[2], "--model", model, "--max-new-tokens", NEW)
    assert out == reference(engines[2], QUESTIONS[2]) + "\n"


def test_truncate_cuts_to_the_budget(capsys, model, doc_file):
    budget = 40
    result = json.loads(ok(capsys, doc_file, QUESTIONS[0], "--model", model, "--max-new-tokens", NEW,
                           "--budget", budget, "--truncate", "tail", "--json"))
    engine = jrt_prompt.load(model, budget=budget, trim="tail")
    enc = engine.encode(DOC, QUESTIONS[0])
    assert result["trimmed"] is True and result["trimmed_tokens"] == enc.trimmed > 0
    assert result["answers"][0]["prompt_tokens"] == len(enc.ids) <= budget
    assert result["answers"][0]["answer"] == reference(engine, QUESTIONS[0])


# --- progress bar ---------------------------------------------------------------------------------

def render_progress_into(monkeypatch) -> io.StringIO:
    buffer = io.StringIO()
    monkeypatch.setattr(cli, "stderr_console", lambda: Console(file=buffer, force_terminal=True, width=120))
    return buffer


def test_progress_bar_while_reading_a_long_document(capsys, monkeypatch, model, engines, doc_file):
    buffer = render_progress_into(monkeypatch)
    monkeypatch.setattr(cli, "PROGRESS_MIN_TOKENS", 8)  # our document counts as long
    ok(capsys, doc_file, QUESTIONS[0], "--model", model, "--max-new-tokens", 2)
    read_tokens = engines[2].encode(DOC, QUESTIONS[0]).shared
    assert "reading the document" in buffer.getvalue()
    assert f"{read_tokens}/{read_tokens}" in buffer.getvalue()  # the callback reached the end of the read


def test_no_progress_bar_for_a_short_document(capsys, monkeypatch, model, doc_file):
    buffer = render_progress_into(monkeypatch)
    ok(capsys, doc_file, QUESTIONS[0], "--model", model, "--max-new-tokens", 2)
    assert buffer.getvalue() == ""


# --- errors ---------------------------------------------------------------------------------------

def assert_one_line_error(code: int, out: str, err: str, expected_code: int, fragment: str) -> None:
    assert code == expected_code, err
    assert out == ""
    assert err.startswith("jrt-ask: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert fragment in err, err


@pytest.fixture
def no_model_loading(monkeypatch):
    """Input errors must be found before the model is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("jrt_prompt.loading.load", refuse)


@pytest.mark.parametrize("content, fragment", [
    (b"", "is empty"),
    (b"  \n\t \n", "only whitespace"),
    (b"text\x00with a NUL", "binary file"),
    (b"caf\xe9 latin-1", "not UTF-8 text"),
])
def test_bad_documents(capsys, tmp_path, no_model_loading, content, fragment):
    path = tmp_path / "doc.bin"
    path.write_bytes(content)
    assert_one_line_error(*ask(capsys, path, "Who?", "--model", "whatever"), 2, fragment)


def test_missing_file_directory_and_empty_question(capsys, tmp_path, no_model_loading, doc_file):
    assert_one_line_error(*ask(capsys, tmp_path / "nope.txt", "Who?"), 2, "no such file")
    assert_one_line_error(*ask(capsys, tmp_path, "Who?"), 2, "is a directory")
    assert_one_line_error(*ask(capsys, doc_file, "Who?", "  "), 2, "question 2 is empty")
    assert_one_line_error(*ask(capsys, doc_file, ""), 2, "the question is empty")


def test_option_conflicts(capsys, no_model_loading, doc_file):
    assert_one_line_error(*ask(capsys, doc_file, "Who?", "--no-jrt", "--repeats", 2), 2, "--no-jrt")
    assert_one_line_error(*ask(capsys, doc_file, "Who?", "--stream", "--json"), 2, "cannot be combined")
    assert_one_line_error(*ask(capsys, doc_file, "Who?", "--truncate", "window"), 2, "head or tail")
    assert_one_line_error(*ask(capsys, doc_file, "Who?", "--truncate", "middle"), 2, "head or tail")
    bad_device = "cuda:99" if torch.cuda.is_available() else "cuda"
    assert_one_line_error(*ask(capsys, doc_file, "Who?", "--device", bad_device), 2, "--device")
    assert_one_line_error(*ask(capsys, doc_file, "Who?", "--device", "potato"), 2, "not a device name")


def test_help(capsys):
    code, out, err = ask(capsys, "--help")
    assert code == 0 and err == ""
    assert all(flag in out for flag in ("--model", "--no-jrt", "--repeats", "--truncate", "--stream", "--json"))


def test_usage_errors(capsys):
    assert_one_line_error(*ask(capsys), 2, "Missing argument")
    assert_one_line_error(*ask(capsys, "doc.txt"), 2, "Missing argument")
    assert_one_line_error(*ask(capsys, "doc.txt", "Who?", "--bogus"), 2, "--bogus")
    assert_one_line_error(*ask(capsys, "doc.txt", "Who?", "--repeats", 0), 2, "--repeats")


def test_unknown_model_and_dtype(capsys, tmp_path, model, doc_file):
    assert_one_line_error(*ask(capsys, doc_file, "Who?", "--model", tmp_path / "no-such-model"), 2, "no-such-model")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert_one_line_error(*ask(capsys, doc_file, "Who?", "--model", tmp_path), 2, "unsupported kind")
    assert_one_line_error(*ask(capsys, doc_file, "Who?", "--model", model, "--dtype", "float8"), 2, "unknown dtype")


def test_demo_model_missing_is_one_line_error(capsys, monkeypatch, tmp_path, doc_file):
    monkeypatch.setattr("jrt_prompt.loading.DEMO_DIR", tmp_path / "not-installed")
    assert_one_line_error(*ask(capsys, doc_file, "Who?"), 2, "demo model is not bundled")


def test_document_over_budget_needs_truncate(capsys, model, doc_file):
    assert_one_line_error(*ask(capsys, doc_file, "Who?", "--model", model, "--budget", 30), 2,
                          "over the model's budget")


def test_runtime_failure_exits_1(capsys, monkeypatch, model, doc_file):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    monkeypatch.setattr(Engine, "generate", broken)
    assert_one_line_error(*ask(capsys, doc_file, "Who?", "--model", model), 1,
                          "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB")


@pytest.mark.gpu
def test_cuda_device(capsys, model, doc_file):
    engine = jrt_prompt.load(model, device="cuda")
    assert engine.model.device.type == "cuda"
    want = engine.generate(engine.read(DOC), QUESTIONS, max_new_tokens=NEW, stop=list(cli.STOP))
    out = ok(capsys, doc_file, *QUESTIONS, "--model", model, "--device", "cuda", "--max-new-tokens", NEW)
    assert out.split("\n")[:-1] == [f"{q}\t{a.strip()}" for q, a in zip(QUESTIONS, want)]


# --- a real process -------------------------------------------------------------------------------

def jrt_ask_process(*argv, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jrt_prompt.cli", *map(str, argv)], input=stdin,
                          capture_output=True, cwd=REPO, timeout=120)


def test_process_answers_and_fails_in_one_line(model, engines, tmp_path):
    done = jrt_ask_process("-", QUESTIONS[0], "--model", model, "--max-new-tokens", NEW, stdin=DOC.encode())
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == reference(engines[2], QUESTIONS[0]) + "\n"
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    done = jrt_ask_process(binary, "What is in the picture?")
    err = done.stderr.decode()
    assert done.returncode == 2 and done.stdout == b""
    assert err.startswith("jrt-ask: error: ") and err.count("\n") == 1 and "binary file" in err, err


def test_console_script_entry_point():
    declared = re.search(r'^jrt-ask = "([\w.]+):(\w+)"$', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert declared, "pyproject.toml [project.scripts] must declare jrt-ask"
    module, name = declared.groups()
    assert getattr(importlib.import_module(module), name) is cli.main
