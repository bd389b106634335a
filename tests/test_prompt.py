"""JRTPrompt: template texts character-exact with REFERENCE section 2, token ids built from parts (the
question-independent prefix is the same for every question), budget trimming, errors."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest
from tokenizers import ByteLevelBPETokenizer, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from jrt_prompt.errors import JRTError, PromptTooLongError
from jrt_prompt.prompt import TEMPLATES, EncodedPrompt, JRTPrompt, PromptError, piece_ids
from tests.tokenizer_fixture import CORPUS, tiny_tokenizer

DOC = "Alice was born in Paris in 1990. Bob works at the bakery on Main Street. The fox is quick."
QUESTIONS = ["Where was Alice born?", "Where does Bob work?", "Which animal is quick, and why is it so quick?"]
UNICODE_DOC = "Les élèves naïfs mangent des crêpes à Zürich; 東京 is Tokyo. Alice was born in Paris. 東京 été"


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@functools.cache
def newline_merging_tokenizer():
    """Byte-level BPE that has learned "\\n\\n" as one token (as GPT-2 and GPT-NeoX have)."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([c + "\n\n" for c in CORPUS] * 3, vocab_size=400, min_frequency=1,
                            special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")


@functools.cache
def sentencepiece_like_tokenizer():
    """Llama-style: a word-start marker prepended to every call's text, byte fallback, strip-on-decode."""
    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=400, min_frequency=1,
                                  special_tokens=["<unk>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)])
    tk.train_from_iterator([c.replace(". ", ".\n") for c in CORPUS], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", unk_token="<unk>")


# --- texts, character-exact with REFERENCE section 2 ---------------------------------------------------

def test_generic_texts_for_one_two_three_reads():
    c, q = "  Alice was born in Paris.\n", " Where was Alice born? "
    assert JRTPrompt(repeats=1).text(c, q) == "Alice was born in Paris.\n\nQuestion: Where was Alice born?\nAnswer:"
    assert JRTPrompt(repeats=2).text(c, q) == (
        "Alice was born in Paris.\n\nQuestion: Where was Alice born?\n\n"
        "Alice was born in Paris.\n\nQuestion: Where was Alice born?\nAnswer:")
    assert JRTPrompt(repeats=3).text(c, q) == (
        "Alice was born in Paris.\n\nQuestion: Where was Alice born?\n\n"
        "Alice was born in Paris.\n\nQuestion: Where was Alice born?\n\n"
        "Alice was born in Paris.\n\nQuestion: Where was Alice born?\nAnswer:")
    assert JRTPrompt() == JRTPrompt("generic", 2) and "generic" in repr(JRTPrompt())


@pytest.mark.parametrize("task", ["swde", "fda"])
def test_attribute_templates(task):
    # C stripped of trailing '.', plus '.', then ' K:'; twice 'Information about K. ' + C + '\n' + C + ' K:'
    c, k = "\n Name: Acme. Founded: 1950.. \n", "headquarters"
    assert JRTPrompt(task, 1).text(c, k) == "Name: Acme. Founded: 1950. Headquarters:"
    assert JRTPrompt(task, 2).text(c, k) == (
        "Information about Headquarters. Name: Acme. Founded: 1950.\nName: Acme. Founded: 1950. Headquarters:")


@pytest.mark.parametrize("task", ["nq", "drop"])
def test_cloze_templates(task):
    # Default: C stripped, trailing '.' removed, '. ' + Q; twice: Qo + ' ' + C + '.\n' + C + '. ' + Q
    c, q, qo = " Alice was born in Paris in 1990.  ", "Alice was born in", "Where was Alice born?"
    assert JRTPrompt(task, 1).text(c, q, qo) == "Alice was born in Paris in 1990. Alice was born in"
    assert JRTPrompt(task, 1).text(c, q) == "Alice was born in Paris in 1990. Alice was born in"
    assert JRTPrompt(task, 2).text(c, q, qo) == (
        "Where was Alice born? Alice was born in Paris in 1990.\nAlice was born in Paris in 1990. Alice was born in")


def test_triviaqa_drops_its_marks():
    c, q, qo = "[DOC] [TLE] Alice [PAR] Alice was born in Paris.", "Alice was born in", "Where was Alice born?"
    assert JRTPrompt("triviaqa", 1).text(c, q) == "Alice  Alice was born in Paris. Alice was born in"
    assert JRTPrompt("triviaqa", 2).text(c, q, qo) == (
        "Where was Alice born? Alice  Alice was born in Paris.\nAlice  Alice was born in Paris. Alice was born in")


def test_squad_text_field_is_context_space_cloze():
    # Default: the text field (context + ' ' + cloze); twice: Qo + ' ' + context + '\n' + text field
    c, q = "The Normans gave their name to Normandy.", "The Normans gave their name to"
    qo = "To what did the Normans give their name?"
    assert JRTPrompt("squad", 1).text(c, q) == "The Normans gave their name to Normandy. The Normans gave their name to"
    assert JRTPrompt("squad", 2).text(c, q, qo) == (
        "To what did the Normans give their name? The Normans gave their name to Normandy.\n"
        "The Normans gave their name to Normandy. The Normans gave their name to")


# --- token ids ---------------------------------------------------------------------------------------

ALL_PROMPTS = [JRTPrompt("generic", r) for r in (1, 2, 3)] + [JRTPrompt(t, r) for t in TEMPLATES[1:] for r in (1, 2)]


@pytest.mark.parametrize("prompt", ALL_PROMPTS, ids=repr)
def test_ids_are_the_text_and_the_prefix_is_shared(prompt):
    tok = tiny_tokenizer()
    encs = [prompt.encode(tok, DOC, q, "Original " + q) for q in QUESTIONS]
    for q, enc in zip(QUESTIONS, encs):
        assert isinstance(enc, EncodedPrompt)
        assert enc.text == prompt.text(DOC, q, "Original " + q)
        assert tok.decode(enc.ids) == enc.text  # byte-level BPE: the parts' ids spell the text exactly
        assert enc.trimmed == 0 and enc.policy is None and enc.budget is None
        assert enc.context_tokens == len(ids_of(tok, prompt._context(DOC)))
        assert enc.question_ids == enc.ids[enc.shared:]
    if prompt.starts_with_context:
        prefix = prompt.read_ids(tok, DOC)
        assert len(prefix) >= encs[0].context_tokens
        assert all(enc.ids[:enc.shared] == prefix for enc in encs)
        assert encs[0].text.startswith(tok.decode(prefix))
        assert QUESTIONS[0] not in tok.decode(prefix)
    else:  # twice prompts that open with the (original) question: nothing to read first
        assert all(enc.shared == 0 for enc in encs)
        with pytest.raises(ValueError, match="starts with the question"):
            prompt.read_ids(tok, DOC)


def test_generic_shared_prefix_is_first_context_and_its_separator():
    tok = tiny_tokenizer()
    enc = JRTPrompt().encode(tok, DOC, QUESTIONS[0])
    assert tok.decode(enc.ids[:enc.shared]) == DOC + "\n\nQuestion:"
    assert tok.decode(enc.ids[enc.shared:]).startswith(" " + QUESTIONS[0])
    assert tok.decode(enc.ids).endswith("\nAnswer:")


def test_ids_match_whole_text_tokenisation_for_byte_level_bpe():
    # "\n\n" alone is one token here, but "\n\nThe" is two newlines and a word: the parts must follow the latter
    tok = newline_merging_tokenizer()
    assert len(ids_of(tok, "\n\n")) == 1 and piece_ids(tok, "\n\n") == ids_of(tok, "a\n\nThe")[1:3]
    for repeats in (1, 2, 3):
        enc = JRTPrompt(repeats=repeats).encode(tok, DOC, QUESTIONS[1])
        assert enc.ids == ids_of(tok, enc.text)


def test_sentencepiece_tokeniser_adds_no_marker_per_part():
    tok = sentencepiece_like_tokenizer()
    assert piece_ids(tok, "\n\nQuestion:") != ids_of(tok, "\n\nQuestion:")  # plain calls prepend a marker
    prompt = JRTPrompt()
    encs = [prompt.encode(tok, DOC, q) for q in QUESTIONS]
    for enc in encs:
        assert tok.decode(enc.ids) == enc.text
        assert enc.ids[:enc.shared] == prompt.read_ids(tok, DOC)


# --- budget ------------------------------------------------------------------------------------------

def fixed_tokens(prompt, tok, context, question):
    enc = prompt.encode(tok, context, question)
    return len(enc.ids) - prompt.repeats * enc.context_tokens, enc.context_tokens


@pytest.mark.parametrize("trim", ["head", "tail", "window"])
@pytest.mark.parametrize("repeats", [1, 2, 3])
def test_budget_trims_every_copy_alike_and_keeps_the_question(trim, repeats):
    tok, prompt, q = tiny_tokenizer(), JRTPrompt(repeats=repeats), QUESTIONS[2]
    fixed, full = fixed_tokens(prompt, tok, DOC, q)
    around = "bakery" if trim == "window" else None
    ctx_ids = ids_of(tok, DOC)
    for room in (1, 5, 11, full - 1):
        budget = fixed + repeats * room
        enc = prompt.encode(tok, DOC, q, budget=budget, trim=trim, around=around)
        assert len(enc.ids) == budget and enc.budget == budget
        assert enc.context_tokens == room and enc.trimmed == full - room and enc.policy == trim
        lo, hi = enc.kept
        assert hi - lo == room and ctx_ids[lo:hi] == enc.ids[:room]  # sliced in token space
        kept = tok.decode(ctx_ids[lo:hi])
        assert enc.text == prompt.text(DOC, q).replace(DOC, kept)
        assert enc.text.count(kept + "\n\nQuestion: " + q) == repeats  # the question whole after every copy
        assert enc.text.endswith("Question: " + q + "\nAnswer:")
        if trim == "head":
            assert lo == 0 and DOC.startswith(kept)
        elif trim == "tail":
            assert hi == full and DOC.endswith(kept)
        elif room >= 5:
            assert "bakery" in kept and enc.around_found is True
        # one token of budget less than an exact fit: every copy loses a token, the remainder stays unused
        short = prompt.encode(tok, DOC, q, budget=budget - 1, trim=trim, around=around)
        assert short.context_tokens == room - 1 and len(short.ids) == budget - repeats


def test_window_is_centred_and_falls_back_to_head():
    tok, prompt = tiny_tokenizer(), JRTPrompt(repeats=2)
    fixed, full = fixed_tokens(prompt, tok, DOC, QUESTIONS[0])
    budget = fixed + 2 * 9
    enc = prompt.encode(tok, DOC, QUESTIONS[0], budget=budget, trim="window", around="Main Street")
    lo, hi = enc.kept
    start = len(ids_of(tok, DOC[:DOC.index("Main Street")]))
    end = len(ids_of(tok, DOC[:DOC.index("Main Street") + len("Main Street")]))
    assert lo < start and end < hi and abs((lo + hi) - (start + end)) <= 1
    assert enc.around_found is True and enc.policy == "window"
    # case-insensitive second try
    assert prompt.encode(tok, DOC, QUESTIONS[0], budget=budget, trim="window", around="main street").kept == (lo, hi)
    missing = prompt.encode(tok, DOC, QUESTIONS[0], budget=budget, trim="window", around="Zanzibar")
    assert missing.kept == (0, 9) and missing.policy == "head" and missing.around_found is False
    nothing = prompt.encode(tok, DOC, QUESTIONS[0], budget=budget, trim="window")
    assert nothing.policy == "head" and nothing.around_found is False
    # near the end of the document the window is pushed back inside it
    last = prompt.encode(tok, DOC, QUESTIONS[0], budget=budget, trim="window", around="quick.")
    assert last.kept == (full - 9, full)


def test_context_within_budget_is_not_trimmed():
    tok, prompt = tiny_tokenizer(), JRTPrompt()
    plain = prompt.encode(tok, DOC, QUESTIONS[0])
    for trim in ("head", "tail", None):
        enc = prompt.encode(tok, DOC, QUESTIONS[0], budget=len(plain.ids), trim=trim)
        assert enc.ids == plain.ids and enc.trimmed == 0 and enc.policy is None and enc.budget == len(plain.ids)
    enc = prompt.encode(tok, DOC, QUESTIONS[0], budget=10_000)
    assert enc.ids == plain.ids and enc.kept == (0, plain.context_tokens)


@pytest.mark.parametrize("trim", ["head", "tail", "window"])
def test_unicode_cuts_never_split_a_character(trim):
    tok, prompt, q = tiny_tokenizer(), JRTPrompt(repeats=2), "Where was Alice born?"
    fixed, full = fixed_tokens(prompt, tok, UNICODE_DOC, q)
    around = "Tokyo" if trim == "window" else None
    moved = 0
    for budget in range(fixed + 2, fixed + 2 * full):
        enc = prompt.encode(tok, UNICODE_DOC, q, budget=budget, trim=trim, around=around)
        assert len(enc.ids) <= budget and enc.context_tokens >= 1
        assert "\ufffd" not in enc.text and enc.text.count(q) == 2
        assert tok.decode(enc.ids) == enc.text
        moved += enc.context_tokens < (budget - fixed) // 2
    assert moved > 0  # some budgets did fall inside a character (this document has multi-token characters)


def test_read_ids_with_budget_and_reserve_match_every_short_question():
    tok, prompt = tiny_tokenizer(), JRTPrompt(repeats=2)
    asked = [2 * len(piece_ids(tok, " " + q)) for q in QUESTIONS]  # the question parts: " {q}" twice
    assert len(set(asked)) > 1
    fixed, full = fixed_tokens(prompt, tok, DOC, QUESTIONS[0])
    fixed -= asked[0]
    reserve = max(asked)
    budget = fixed + reserve + 2 * (full - 5)  # every question needs its context cut
    prefix = prompt.read_ids(tok, DOC, budget=budget, trim="tail", reserve=reserve)
    for q in QUESTIONS:
        enc = prompt.encode(tok, DOC, q, budget=budget, trim="tail", reserve=reserve)
        assert enc.ids[:enc.shared] == prefix and enc.trimmed > 0 and len(enc.ids) <= budget
    # without the reserve the trim follows each question's own length, and the prefixes differ
    prefixes = {tuple(prompt.encode(tok, DOC, q, budget=budget, trim="tail").ids[:10]) for q in QUESTIONS}
    assert len(prefixes) > 1


def test_budget_too_small_for_the_question_raises_one_line():
    tok, prompt = tiny_tokenizer(), JRTPrompt()
    fixed, full = fixed_tokens(prompt, tok, DOC, QUESTIONS[0])
    for budget in (1, fixed - 1):
        with pytest.raises(PromptTooLongError, match=f"take {fixed} tokens, over the budget of {budget}") as err:
            prompt.encode(tok, DOC, QUESTIONS[0], budget=budget)
        assert "\n" not in str(err.value) and isinstance(err.value, JRTError)
    # the question and fixed text fit but no context token does: every copy is cut to nothing, and says so
    bare = prompt.encode(tok, DOC, QUESTIONS[0], budget=fixed + 1)
    assert len(bare.ids) == fixed and bare.context_tokens == 0 and bare.trimmed == full
    assert bare.text == JRTPrompt().text("x", QUESTIONS[0]).replace("x", "")
    with pytest.raises(PromptTooLongError, match="trim=None"):
        prompt.encode(tok, DOC, QUESTIONS[0], budget=fixed + 20, trim=None)


# --- errors and the no-torch rule --------------------------------------------------------------------

def test_errors_are_clear():
    tok = tiny_tokenizer()
    with pytest.raises(PromptError, match="unknown template='mmlu'.*generic, swde"):
        JRTPrompt("mmlu")
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(PromptError, match="repeats="):
            JRTPrompt(repeats=bad)
    with pytest.raises(PromptError, match="repeats=3 is not available for template='nq'"):
        JRTPrompt("nq", 3)
    with pytest.raises(PromptError, match="original_question"):
        JRTPrompt("nq", 2).text(DOC, "Alice was born in")
    with pytest.raises(PromptError, match="question is empty"):
        JRTPrompt().encode(tok, DOC, "  ")
    with pytest.raises(PromptError, match="context is empty"):
        JRTPrompt("swde").text(" .. ", "name")
    with pytest.raises(PromptError, match="trim='middle'"):
        JRTPrompt().encode(tok, DOC, "q?", budget=50, trim="middle")
    with pytest.raises(PromptError, match="around="):
        JRTPrompt().encode(tok, DOC, "q?", budget=50, trim="head", around="Paris")
    for budget in (0, -3, 2.5, True):
        with pytest.raises(PromptError, match="budget="):
            JRTPrompt().encode(tok, DOC, "q?", budget=budget)
    with pytest.raises(PromptError, match="reserve="):
        JRTPrompt().read_ids(tok, DOC, reserve=-1)
    assert issubclass(PromptError, ValueError) and issubclass(PromptError, JRTError)


def test_prompt_module_does_not_import_torch():
    source = Path(__file__).parents[1] / "jrt_prompt" / "prompt.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or "").split(".")[0])
    assert imported <= {"__future__", "re", "dataclasses", "typing", ".errors"}, imported
