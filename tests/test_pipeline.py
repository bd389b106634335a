"""transformers.pipeline("jrt-question-answering"): registered on import without importing transformers.pipelines,
built from a checkpoint path, a loaded model or an Engine; answers equal Engine.generate's; batches equal
one input at a time; repeats, trim, budget and generation arguments reach the prompt and the generation."""

from __future__ import annotations

import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
from transformers.pipelines import PIPELINE_REGISTRY

import jrt_prompt
from jrt_prompt import JRTPrompt, pipeline_registration
from jrt_prompt.errors import JRTError, PromptTooLongError
from jrt_prompt.loading import DEMO_DIR
from jrt_prompt.model import RecurrentLM
from jrt_prompt.pipeline import TASK, JRTCheckpoint, JRTQuestionAnsweringPipeline
from tests.test_cli import REPO, one_thread, write_model_folder  # noqa: F401 - one_thread: autouse fixture

CONTEXTS = [  # records in the format the demo model was trained on
    "Name: Dev Hunt. City: Lima. Pet: owl. Food: nuts.\nName: Kai Cruz. City: Miami. Pet: eel. Food: jam.",
    "Name: Nia Vale. City: Perth. Pet: cow. Food: curry.",
    "Name: Gia Quill. City: Cairo. Pet: ape. Food: beans.\nName: Xia Hunt. City: Rome. Pet: dog. Food: rice.",
]
ITEMS = [{"context": c, "question": q} for c, q in zip(
    [CONTEXTS[0], CONTEXTS[1], CONTEXTS[2], CONTEXTS[0]],
    ["What is Dev Hunt's pet?", "What is Nia Vale's food?", "What is Xia Hunt's city?", "What is Kai Cruz's food?"])]
NEW = 10


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    """The checkpoint the pipeline runs on: the demo model shipped in the package."""
    return str(DEMO_DIR)


@pytest.fixture(scope="module")
def qa(folder):
    return pipeline(TASK, model=folder, device="cpu")


def expected(engine, item, **gen) -> str:
    return engine.generate(item["context"], item["question"], **{"max_new_tokens": NEW, "stop": "\n", **gen}).strip()


# --- registration ---------------------------------------------------------------------------------

def test_registered_with_transformers():
    impl = PIPELINE_REGISTRY.supported_tasks[TASK]
    assert impl["impl"] is JRTQuestionAnsweringPipeline and impl["pt"] == (JRTCheckpoint,)
    assert impl["default"]["model"] == (str(DEMO_DIR), None)  # pipeline(TASK) with no model: the demo
    assert TASK in PIPELINE_REGISTRY.get_supported_tasks()


def test_registration_when_transformers_pipelines_is_already_imported():
    del PIPELINE_REGISTRY.supported_tasks[TASK]
    pipeline_registration.install()
    assert PIPELINE_REGISTRY.supported_tasks[TASK]["impl"] is JRTQuestionAnsweringPipeline


def test_import_stays_light_and_registers_on_first_use():
    code = ("import sys, jrt_prompt\n"
            "assert 'transformers.pipelines' not in sys.modules, 'import jrt_prompt loaded transformers.pipelines'\n"
            "from transformers import pipeline\n"
            "from transformers.pipelines import PIPELINE_REGISTRY\n"
            "print(PIPELINE_REGISTRY.supported_tasks['jrt-question-answering']['impl'].__name__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "JRTQuestionAnsweringPipeline"


# --- models given three ways ----------------------------------------------------------------------

def test_path_answers_equal_engine_generate(qa, folder):
    assert isinstance(qa.model, RecurrentLM)  # loaded by JRTCheckpoint, not by transformers' own class
    engine = jrt_prompt.load(folder)
    for item in ITEMS:
        out = qa(item, max_new_tokens=NEW)
        enc = engine.encode(item["context"], item["question"])
        assert out == {"answer": expected(engine, item), "tokens_read": len(enc.ids), "trimmed": False,
                       "context_tokens": enc.context_tokens, "repeats": 2}
    assert any(qa(item, max_new_tokens=NEW)["answer"] for item in ITEMS)


def test_loaded_model_and_engine(folder, qa):
    model = AutoModelForCausalLM.from_pretrained(folder)
    want = qa(ITEMS, max_new_tokens=NEW)
    with_tokenizer = pipeline(TASK, model=model, tokenizer=AutoTokenizer.from_pretrained(folder), device="cpu")
    assert with_tokenizer(ITEMS, max_new_tokens=NEW) == want
    beside_weights = pipeline(TASK, model=model, device="cpu")  # the tokenizer saved in the model's folder
    assert beside_weights(ITEMS, max_new_tokens=NEW) == want
    engine = jrt_prompt.load(folder, prompt=JRTPrompt(repeats=1))
    from_engine = pipeline(TASK, model=engine, device="cpu")
    assert from_engine.engine is engine  # same device: the Engine is used as it is
    assert [o["answer"] for o in from_engine(ITEMS, max_new_tokens=NEW)] == [expected(engine, i) for i in ITEMS]


def test_loaded_model_without_tokenizer_is_a_clear_error(folder):
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.name_or_path = ""
    with pytest.raises(JRTError, match="tokenizer"):
        pipeline(TASK, model=model, device="cpu")


# --- inputs and batching --------------------------------------------------------------------------

def test_batches_equal_one_at_a_time(qa):
    one_by_one = [qa(item, max_new_tokens=NEW) for item in ITEMS]
    assert len({len(qa.engine.encode(i["context"], i["question"]).ids) for i in ITEMS}) > 1  # padding is exercised
    for batch_size in (2, 3, 4):
        assert qa(ITEMS, batch_size=batch_size, max_new_tokens=NEW) == one_by_one
    assert qa(ITEMS, max_new_tokens=NEW) == one_by_one


def test_keyword_inputs(qa):
    item = ITEMS[0]
    assert qa(context=item["context"], question=item["question"], max_new_tokens=NEW) == qa(item, max_new_tokens=NEW)
    questions = [ITEMS[0]["question"], ITEMS[3]["question"]]
    assert (qa(context=CONTEXTS[0], question=questions, max_new_tokens=NEW)
            == qa([ITEMS[0], ITEMS[3]], max_new_tokens=NEW))


@pytest.mark.parametrize("bad, match", [
    ("just a string", "each input is a dict"),
    ({"context": "C"}, "missing: \\['question'\\]"),
    ({"context": "C", "question": "Q", "answer": "A"}, "unknown: \\['answer'\\]"),
    ({"context": "C", "question": 3}, "'question' must be a string"),
    ({"context": "   ", "question": "Q"}, "context is empty"),
])
def test_bad_inputs(qa, bad, match):
    with pytest.raises(JRTError, match=match):
        qa(bad)


def test_bad_arguments(qa):
    with pytest.raises(JRTError, match="unknown argument.*num_beams"):
        qa(ITEMS[0], num_beams=4)
    with pytest.raises(JRTError, match="trim='middle'"):
        qa(ITEMS[0], trim="middle")
    with pytest.raises(JRTError, match="budget=0"):
        qa(ITEMS[0], budget=0)
    with pytest.raises(JRTError, match="context=..., question=..."):
        qa(context=CONTEXTS[0])
    with pytest.raises(JRTError, match="2 contexts and 3 questions"):
        qa(context=CONTEXTS[:2], question=["a", "b", "c"])


# --- parameters -----------------------------------------------------------------------------------

def test_repeats(qa, folder):
    for repeats in (1, 3):
        engine = jrt_prompt.load(folder, prompt=JRTPrompt(repeats=repeats))
        outs = qa(ITEMS, repeats=repeats, max_new_tokens=NEW, batch_size=2)
        for item, out in zip(ITEMS, outs):
            assert out["repeats"] == repeats
            assert out["tokens_read"] == len(engine.encode(item["context"], item["question"]).ids)
            assert out["answer"] == expected(engine, item)
    once = [o["answer"] for o in qa(ITEMS, repeats=1, max_new_tokens=NEW)]
    # the reads show in the answers: on the example document the demo misses this fact on one read
    example = {"context": (REPO / "examples" / "records.txt").read_text(), "question": "What is Xia Hunt's city?"}
    assert qa(example, max_new_tokens=NEW)["answer"] == "Rome" != qa(example, repeats=1, max_new_tokens=NEW)["answer"]
    defaults = pipeline(TASK, model=folder, device="cpu", repeats=1, max_new_tokens=NEW)  # construction defaults
    assert [o["answer"] for o in defaults(ITEMS)] == once


def test_budget_and_trim(qa, folder):
    item = ITEMS[2]
    with pytest.raises(PromptTooLongError):
        qa(item, budget=30)
    for trim in ("head", "tail"):
        engine = jrt_prompt.load(folder, budget=30, trim=trim)
        enc = engine.encode(item["context"], item["question"])
        out = qa(item, budget=30, trim=trim, max_new_tokens=NEW)
        assert out["trimmed"] is True and out["tokens_read"] == len(enc.ids) <= 30
        assert out["context_tokens"] == enc.context_tokens < qa(item, max_new_tokens=1)["context_tokens"]
        assert out["answer"] == expected(engine, item)


def test_generation_arguments(qa, folder):
    engine = jrt_prompt.load(folder)
    item = ITEMS[1]
    assert qa(item, max_new_tokens=3)["answer"] == expected(engine, item, max_new_tokens=3)
    no_stop = qa(item, max_new_tokens=40, stop=None)["answer"]
    assert no_stop == engine.generate(item["context"], item["question"], max_new_tokens=40).strip()
    sampled = qa(item, do_sample=True, seed=7, temperature=0.8, max_new_tokens=NEW)["answer"]
    assert sampled == expected(engine, item, do_sample=True, seed=7, temperature=0.8)
    greedy = qa(item, max_new_tokens=NEW)["answer"]
    hot = {qa(item, do_sample=True, seed=s, temperature=5.0, max_new_tokens=NEW)["answer"] for s in range(6)}
    assert hot - {greedy}, "sampling at a high temperature never left the greedy answer"


@pytest.mark.gpu
def test_engine_moves_to_the_pipeline_device(folder):
    engine = jrt_prompt.load(folder, graph_prefill=True)  # on the CPU
    qa = pipeline(TASK, model=engine, device=0)
    assert qa.model.device.type == "cuda" and qa.engine.model.device.type == "cuda"
    assert qa.engine is not engine  # rebuilt for the new device (CUDA graphs of its own), with its options
    assert qa.engine.graph_prefill and qa.engine._graphs.prefill(1) is not None
    on_cuda = jrt_prompt.load(folder, device="cuda")
    want = on_cuda.generate([i["context"] for i in ITEMS], [i["question"] for i in ITEMS], max_new_tokens=NEW,
                            stop="\n")
    assert [o["answer"] for o in qa(ITEMS, batch_size=len(ITEMS), max_new_tokens=NEW)] == [a.strip() for a in want]
