"""Recall evaluation without a model: the contains metric, the answer window, the task prompts against
REFERENCE section 2, data loading and its errors, and the synthetic generator."""

from __future__ import annotations

import json
import re
import time

import pytest

from jrt_prompt.prompt import JRTPrompt
from jrt_prompt.errors import JRTError
from jrt_prompt.eval import data, synthetic
from jrt_prompt.eval.fixtures import ROWS, write_fixtures
from jrt_prompt.eval.metrics import accuracy, contains
from jrt_prompt.eval.tasks import SHORT_ANSWER, TASKS, SyntheticOptions, get_task, load_task
from jrt_prompt.eval.window import answer_window, first_occurrence
from tests.tokenizer_fixture import tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture()
def fixtures(tmp_path):
    return write_fixtures(tmp_path)


# --- metric ---------------------------------------------------------------------------------------------

def test_contains_is_case_insensitive_substring():
    assert contains(" Paris, France", ["paris"])
    assert contains("PARIS", "Paris")
    assert not contains(" Lyon", ["Paris", "Nice"])
    assert contains(" it is Nice", ["Paris", "nice"])  # any label


def test_contains_treats_labels_literally_and_handles_unicode():
    assert contains("the C++ standard", ["c++"])
    assert not contains("the C standard", ["c++"])  # '+' is not a regex quantifier here
    assert contains("answer (a)", ["(A)"])
    assert not contains("answer a", ["(a)"])
    assert contains("Les crêpes à ZÜRICH", ["zürich"])
    assert contains("東京 is Tokyo", ["東京"])
    assert not contains("anything", [""])  # an empty label would match everything: ignored
    assert not contains("", ["x"])


def test_accuracy():
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy([]) != accuracy([])  # NaN: no examples is not 0%


# --- window ---------------------------------------------------------------------------------------------

def _words(n: int, offset: int = 0) -> list[str]:
    vocab = ["fox", "dog", "quick", "brown", "lazy", "the", "over", "jumps", "Bob", "works"]
    return [vocab[(i + offset) % len(vocab)] for i in range(n)]


def _ntok(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


KEEP = 40  # context_tokens 50 - answer_tokens 10


def _window(tok, text, answer, **kw):
    return answer_window(tok, text, [answer], context_tokens=50, answer_tokens=10, **kw)


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_window_keeps_the_answer_and_the_paper_bounds(tok, where):
    words = _words(200)
    at = {"start": 0, "middle": 100, "end": 199}[where]
    words[at] = "Zürich"
    text = " ".join(words)
    w = _window(tok, text, "zürich")  # case-insensitive
    assert w.found and w.total == _ntok(tok, text)
    assert "Zürich" in w.text and w.text in text  # a slice of the original text
    a = w.anchor_token
    assert w.start == max(0, a - KEEP // 2)
    assert w.end == min(w.total, w.start + KEEP)
    if where == "start":
        assert (w.start, w.end) == (0, KEEP) and w.text.startswith("Zürich")
    if where == "end":
        assert w.end == w.total and w.end - w.start < KEEP and w.text.endswith("Zürich")
    if where == "middle":
        assert w.end - w.start == KEEP
    assert abs(_ntok(tok, w.text) - (w.end - w.start)) <= 1  # the kept text is the kept tokens


def test_window_keeps_a_short_document_whole(tok):
    text = "  Alice was born in Paris in 1990.  "
    w = _window(tok, text, "Paris")
    assert w.text == text.strip() and not w.trimmed and w.found


def test_window_first_occurrence_and_earliest_anchor(tok):
    words = _words(300)
    words[50], words[250] = "Paris", "Paris"
    words[150] = "Rome"
    text = " ".join(words)
    w = answer_window(tok, text, ["Rome", "paris"], context_tokens=50, answer_tokens=10)
    assert w.start <= _ntok(tok, " ".join(words[:50])) <= w.end  # the first Paris, not Rome or the last Paris
    assert first_occurrence(text, ["Rome", "paris"]) == text.index("Paris")
    assert first_occurrence(text, ["", "absent"]) == -1


def test_window_unicode_boundaries_stay_whole(tok):
    words = []
    for i in range(150):
        words.append(["東京", "crêpes", "élèves", "naïfs", "Zürich", "été"][i % 6])
    words[90] = "Tokyo"
    text = " ".join(words)
    for ctx in (37, 50, 61):  # different cut points
        w = answer_window(tok, text, ["tokyo"], context_tokens=ctx, answer_tokens=10)
        assert "\ufffd" not in w.text and w.text in text and "Tokyo" in w.text


def test_window_when_the_answer_is_absent_keeps_the_head(tok):
    text = " ".join(_words(200))
    w = _window(tok, text, "Atlantis")
    assert not w.found and w.start == 0 and w.end == KEEP and text.startswith(w.text)


def test_window_slow_tokenizer_path_matches_fast(tok):
    class Slow:
        is_fast = False

        def __call__(self, text, add_special_tokens=False):
            return tok(text, add_special_tokens=add_special_tokens)

        def decode(self, ids, skip_special_tokens=True):
            return tok.decode(ids, skip_special_tokens=skip_special_tokens)

    words = _words(200)
    words[120] = "Paris"
    text = " ".join(words)
    fast, slow = _window(tok, text, "Paris"), _window(Slow(), text, "Paris")
    assert "Paris" in slow.text and slow.total == fast.total
    assert abs(slow.start - fast.start) <= 1 and abs(slow.end - fast.end) <= 1
    with pytest.raises(ValueError, match="must exceed"):
        answer_window(tok, text, ["Paris"], context_tokens=10, answer_tokens=10)


# --- task prompts vs REFERENCE section 2 -------------------------------------------------------------------

EXPECTED = {  # (task, row index) -> (default prompt, twice prompt), written out from REFERENCE section 2
    ("swde", 0): (
        "Blue Sky (1999)\nDirector: Jane Doe\nGenre: drama\nRuntime: 98 min. Director:",
        "Information about Director. Blue Sky (1999)\nDirector: Jane Doe\nGenre: drama\nRuntime: 98 min.\n"
        "Blue Sky (1999)\nDirector: Jane Doe\nGenre: drama\nRuntime: 98 min. Director:"),
    ("fda", 0): (
        "510(k) SUMMARY. Device name: CardioFlow. Applicant: Acme Medical Inc. Predicate device: K998877. Applicant:",
        "Information about Applicant. 510(k) SUMMARY. Device name: CardioFlow. Applicant: Acme Medical Inc. "
        "Predicate device: K998877.\n510(k) SUMMARY. Device name: CardioFlow. Applicant: Acme Medical Inc. "
        "Predicate device: K998877. Applicant:"),
    ("fda", 1): (
        "Summary of safety. The predicate device name is ThermoScan. Intended use: ear thermometry. "
        "Predicate device name:",
        "Information about Predicate device name. Summary of safety. The predicate device name is ThermoScan. "
        "Intended use: ear thermometry.\nSummary of safety. The predicate device name is ThermoScan. "
        "Intended use: ear thermometry. Predicate device name:"),
    ("squad", 0): (
        "Paris is the capital of France. The city lies on the river Seine. The river that flows through Paris is the",
        "Which river flows through Paris? Paris is the capital of France. The city lies on the river Seine.\n"
        "Paris is the capital of France. The city lies on the river Seine. The river that flows through Paris is the"),
    ("triviaqa", 0): (
        "Planets  Mercury is the closest planet to the sun. Venus comes next. The planet closest to the sun is",
        "Which planet is closest to the sun? Planets  Mercury is the closest planet to the sun. Venus comes next.\n"
        "Planets  Mercury is the closest planet to the sun. Venus comes next. The planet closest to the sun is"),
    ("nq", 0): (
        "Alice was born in Paris in 1990. Bob works at a bakery. Alice was born in the year",
        "when was alice born Alice was born in Paris in 1990. Bob works at a bakery.\n"
        "Alice was born in Paris in 1990. Bob works at a bakery. Alice was born in the year"),
    ("drop", 1): (
        "A dozen is twelve. Bakers sell eggs by the dozen. A dozen holds this many eggs:",
        "How many eggs are in a dozen? A dozen is twelve. Bakers sell eggs by the dozen.\n"
        "A dozen is twelve. Bakers sell eggs by the dozen. A dozen holds this many eggs:"),
}


def _prompts(task, example):
    spec = TASKS[task]
    return tuple(JRTPrompt(spec.template, r).text(example.context, example.question, example.original_question)
                 for r in (1, 2))


@pytest.mark.parametrize("task,row", sorted(EXPECTED))
def test_task_prompts_equal_the_reference(task, row, tok, tmp_path):
    path = data.write_jsonl(tmp_path / f"{task}.jsonl", [ROWS[task][row]])
    (example,) = load_task(task, tok, source=path).examples
    assert _prompts(task, example) == EXPECTED[(task, row)]


def _paper_prompts(task, row):
    """The paper's prompt texts (its lm-eval tasks' doc_to_text, restated) for an oracle comparison."""
    def chop(text, tail):
        while tail and text.lower().endswith(tail.lower()):
            text = text[: -len(tail)]
        return text

    if task in ("swde", "fda"):
        text = row["text"].split("Summary of information above...")[0] if task == "swde" else row["text"]
        text = chop(text.strip(), row["key"] + ":")
        key = row["key"][0].upper() + row["key"][1:]
        c = text.strip().strip(".") + "."
        return c + " " + key + ":", f"Information about {key}. " + c + "\n" + c + " " + key + ":"
    if task == "squad":
        text = row["text"].strip()
        return text, row["question"] + " " + row["context"].split("Question:")[0].strip() + "\n" + text
    context = row["context"].strip()
    if task == "triviaqa":
        context = re.sub(r"\[PAR\]|\[DOC\]|\[TLE\]", "", context)
    c = chop(context, row["question"].strip()).strip().strip(".").strip()
    return c + ". " + row["question"].strip(), row["orig_question"] + " " + c + ".\n" + c + ". " + row["question"].strip()


@pytest.mark.parametrize("task", sorted(ROWS))
def test_every_fixture_row_matches_the_paper_code(task, tok, fixtures):
    d = load_task(task, tok, source=fixtures[task])
    kept = [row for row in ROWS[task] if not any(len(a.strip()) <= 1 for a in _anchor_values(task, row))]
    assert len(d.examples) == len(kept) > 0
    assert d.skipped.get(SHORT_ANSWER, 0) == len(ROWS[task]) - len(kept)
    for ex, row in zip(d.examples, kept):
        assert _prompts(task, ex) == _paper_prompts(task, row)


def _anchor_values(task, row):
    if task in ("swde", "fda"):
        return [row["key"], row["value"]]
    if task == "squad":
        return [row["value"]]
    return row["answers"][:1]


def test_short_answers_are_dropped(tok, fixtures):
    for task, dropped in (("swde", 1), ("nq", 1), ("drop", 1)):
        d = load_task(task, tok, source=fixtures[task])
        assert d.skipped == {SHORT_ANSWER: dropped}
        assert all(len(ex.answers[0]) > 1 for ex in d.examples)


def test_answers_and_original_questions_come_from_the_rows(tok, fixtures):
    d = load_task("triviaqa", tok, source=fixtures["triviaqa"])
    (ex,) = d.examples
    assert ex.answers == ("Mercury", "Hg") and ex.original_question == "Which planet is closest to the sun?"
    assert "[PAR]" not in ex.context and ex.window is not None and ex.window.found


def test_long_documents_are_windowed_around_the_answer(tok, tmp_path):
    filler = " ".join(_words(3000))
    row = {"doc_id": "long", "file_name": "x", "key": "city", "value": "Oslo",
           "text": filler + " City: Oslo. " + filler + " city:"}
    path = data.write_jsonl(tmp_path / "swde.jsonl", [row])
    (ex,) = load_task("swde", tok, source=path).examples
    assert ex.window.trimmed and ex.window.end - ex.window.start == 950
    assert "Oslo" in ex.context and _ntok(tok, ex.context) <= 951
    (whole,) = load_task("swde", tok, source=path, window=False).examples
    assert whole.window is None and len(whole.context) > len(ex.context)


def test_limit(tok, fixtures):
    assert len(load_task("swde", tok, source=fixtures["swde"], limit=1).examples) == 1


# --- data loading and its errors ---------------------------------------------------------------------------

def test_parquet_and_folders(tok, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    folder = tmp_path / "based-fda" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS["fda"]), folder / "validation-00000-of-00001.parquet")
    (folder / "notes.txt").write_text("not data")
    from_parquet = load_task("fda", tok, source=tmp_path / "based-fda")
    from_jsonl = load_task("fda", tok, source=write_fixtures(tmp_path / "j")["fda"])
    assert [(e.context, e.question, e.answers) for e in from_parquet.examples] == \
           [(e.context, e.question, e.answers) for e in from_jsonl.examples]


def test_json_array_files(tok, tmp_path):
    path = tmp_path / "nq.json"
    path.write_text(json.dumps(ROWS["nq"]))
    assert len(load_task("nq", tok, source=path).examples) == 1


def _one_line(e: Exception) -> str:
    msg = str(e)
    assert "\n" not in msg
    return msg


def test_missing_file_and_missing_columns_are_one_line_errors(tok, tmp_path):
    with pytest.raises(JRTError) as e:
        load_task("swde", tok, source=tmp_path / "nope.jsonl")
    assert "--data swde=PATH" in _one_line(e.value)
    bad = data.write_jsonl(tmp_path / "bad.jsonl", [{"text": "x", "value": "y"}])
    with pytest.raises(JRTError) as e:
        load_task("swde", tok, source=bad)
    assert "lacks column(s) key" in _one_line(e.value) and "--data swde=PATH" in str(e.value)
    junk = tmp_path / "junk.jsonl"
    junk.write_text("{not json\n")
    with pytest.raises(JRTError, match="could not read"):
        load_task("swde", tok, source=junk)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(JRTError, match="holds no"):
        load_task("swde", tok, source=empty)


def test_unreachable_hub_names_the_local_alternative(tok, monkeypatch):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(JRTError) as e:
        load_task("nq", tok)
    msg = _one_line(e.value)
    assert "hazyresearch/based_nq_1024" in msg and "--data nq=PATH" in msg and "orig_question" in msg


def test_unknown_task(tok):
    with pytest.raises(JRTError) as e:
        get_task("hotpotqa")
    assert "unknown task 'hotpotqa'" in _one_line(e.value) and "synthetic" in str(e.value)
    with pytest.raises(JRTError, match="takes no --data"):
        load_task("synthetic", tok, source="x.jsonl")


def test_every_paper_task_has_its_hub_dataset():
    assert {n: t.hub_id for n, t in TASKS.items() if t.hub_id} == {
        "swde": "hazyresearch/based-swde", "fda": "hazyresearch/based-fda", "squad": "hazyresearch/based-squad",
        "triviaqa": "hazyresearch/based_triviaqa", "nq": "hazyresearch/based_nq_1024", "drop": "hazyresearch/based_drop"}


# --- synthetic suite ----------------------------------------------------------------------------------------

def test_synthetic_is_seeded_and_answerable():
    a = synthetic.documents(20, "test", seed=7, records=12, questions=3)
    b = synthetic.documents(20, "test", seed=7, records=12, questions=3)
    c = synthetic.documents(20, "test", seed=8, records=12, questions=3)
    assert a == b and a != c
    for doc in a:
        lines = doc.text.split("\n")
        assert len(lines) == doc.records == 12 and doc.facts == 36 and len(doc.asked) == 3
        names = [line.split(".")[0].removeprefix("Name: ") for line in lines]
        assert len(set(names)) == len(names)  # an entity is named once per document
        for fact in doc.asked:
            line = lines[names.index(fact.entity)]
            assert f"{fact.attribute.capitalize()}: {fact.value}." in line
            assert fact.question == f"What is {fact.entity}'s {fact.attribute}?"


def test_synthetic_difficulty_knob_and_ranges():
    short, long = synthetic.documents(5, records=4), synthetic.documents(5, records=64)
    assert all(d.records == 4 for d in short) and all(d.records == 64 for d in long)
    ranged = synthetic.documents(50, records=(2, 9))
    assert {d.records for d in ranged} <= set(range(2, 10)) and len({d.records for d in ranged}) > 3
    for bad in ({"records": 0}, {"records": 10_000}, {"attributes": 7}, {"questions": 0}):
        with pytest.raises(ValueError):
            synthetic.Generator("test", **bad)
    with pytest.raises(ValueError, match="split"):
        synthetic.Generator("dev")


def test_synthetic_train_and_test_never_share_a_fact():
    assert not set(synthetic.names("train")) & set(synthetic.names("test"))
    facts = {s: {(f.entity, f.attribute, f.value)
                 for d in synthetic.documents(200, s, seed=0, records=16) for f in d.asked}
             for s in synthetic.SPLITS}
    assert facts["train"] and facts["test"] and not facts["train"] & facts["test"]
    train_text = "\n".join(d.text for d in synthetic.documents(50, "train", seed=0, records=16))
    assert not any(name in train_text for name in synthetic.names("test"))


def test_synthetic_answers_are_unambiguous_for_contains():
    values = [v for vs in synthetic.ATTRIBUTES.values() for v in vs]
    assert len(set(v.lower() for v in values)) == len(values)
    assert not [(a, b) for a in values for b in values if a != b and a.lower() in b.lower()]
    assert set(values) <= set(synthetic.vocabulary())


def test_synthetic_generator_is_fast():
    start = time.perf_counter()
    n = sum(len(d.asked) for d in synthetic.documents(1000, records=16, questions=4))
    assert n == 4000 and time.perf_counter() - start < 2.0  # thousands of examples per second


def test_training_samples_use_the_inference_prompts():
    samples = list(synthetic.training_samples(600, seed=3, records=(2, 6)))
    assert len(samples) == 600
    counts = {f: sum(s.format == f for s in samples) for f in synthetic.FORMATS}
    assert counts["plain"] > 150 and counts["jrt"] > 150 and counts["question_first"] > 50
    for s in samples[:50]:
        assert s.completion.startswith(" ") and s.completion.endswith("\n")
        context = s.prompt.split("\n\n")[0] if s.format != "question_first" else None
        if s.format == "plain":
            q = s.prompt.split("\n\n")[-1]
            assert s.prompt == JRTPrompt("generic", 1).text(context, _question(q))
        elif s.format == "jrt":
            assert s.prompt == JRTPrompt("generic", 2).text(context, _question(s.prompt.split("\n\n")[-1]))
        else:
            twice_tail = s.prompt
            assert not twice_tail.startswith("Name:")  # the question comes first
            assert twice_tail.endswith(JRTPrompt("generic", 1).text(_doc_of(twice_tail), _question(twice_tail)))
    assert list(synthetic.training_samples(20, seed=3)) == list(synthetic.training_samples(20, seed=3))
    train_facts = {(s.completion.strip()) for s in synthetic.training_samples(200)}
    assert train_facts  # answers come from the value lists
    with pytest.raises(ValueError, match="mix"):
        list(synthetic.training_samples(1, mix={"chat": 1.0}))
    only_jrt = list(synthetic.training_samples(30, mix={"jrt": 1.0}))
    assert {s.format for s in only_jrt} == {"jrt"}


def _question(prompt_tail: str) -> str:
    m = re.search(r"(What is [^?]+\?)\nAnswer:$", prompt_tail)
    assert m, prompt_tail
    return m.group(1)


def _doc_of(question_first_prompt: str) -> str:
    lines = [line for line in question_first_prompt.split("\n") if line.startswith("Name:")]
    return "\n".join(lines)


def test_synthetic_task_examples(tok):
    d = load_task("synthetic", tok, synthetic_options=SyntheticOptions(documents=3, records=5, questions=2), limit=5)
    assert len(d.examples) == 5 and d.examples[0].context == d.examples[1].context
    assert all(ex.answers[0] in ex.context for ex in d.examples)
    again = load_task("synthetic", tok, synthetic_options=SyntheticOptions(documents=3, records=5, questions=2), limit=5)
    assert again.examples == d.examples
