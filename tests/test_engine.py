"""The engine over any RecurrentLM: greedy equals a plain argmax loop, read+generate equals the full prompt,
batches equal single rows, stops, sampling, streaming, errors."""

from __future__ import annotations

import pytest
import torch

from jrt_prompt import JRTPrompt, RecurrentState
from jrt_prompt.engine import Engine, _held_back
from jrt_prompt.errors import JRTError, PromptTooLongError
from jrt_prompt.generate import GenerationConfig, prefill, sample
from tests.tokenizer_fixture import tiny_tokenizer
from tests.toy_model import toy_lm

DOC = "Alice was born in Paris in 1990. Bob works at the bakery on Main Street. The fox is quick."
QUESTIONS = ["Where was Alice born?", "Where does Bob work?", "Which animal is quick?"]


@pytest.fixture(scope="module")
def engine():
    tok = tiny_tokenizer()
    return Engine(toy_lm(len(tok), eos=tok.eos_token_id), tok, JRTPrompt(repeats=2))


def argmax_loop(lm, ids, n, eos=None):
    """Reference greedy decoding: a full forward over everything so far, every step."""
    ids = list(ids)
    out = []
    for _ in range(n):
        logits, _ = lm(torch.tensor([ids]))
        t = int(logits[0, -1].argmax())
        if t == eos:
            break
        out.append(t)
        ids.append(t)
    return out


def test_greedy_equals_full_forward_argmax(engine):
    enc = engine.encode(DOC, QUESTIONS[0])
    got = engine.generate_ids([enc.ids], max_new_tokens=12, stop_at_eos=False)[0]
    assert got == argmax_loop(engine.model, enc.ids, 12)


def test_read_then_generate_equals_full_prompt(engine):
    doc = engine.read(DOC)
    assert doc.tokens == engine.encode(DOC, QUESTIONS[0]).shared > 0
    full = [engine.generate(DOC, q, max_new_tokens=10, stop_at_eos=False) for q in QUESTIONS]
    for q, want in zip(QUESTIONS, full):
        assert engine.generate(doc, q, max_new_tokens=10, stop_at_eos=False) == want
    # one batch of questions over the one read, twice (the read state must not be consumed)
    assert engine.generate(doc, QUESTIONS, max_new_tokens=10, stop_at_eos=False) == full
    assert engine.generate(doc, QUESTIONS, max_new_tokens=10, stop_at_eos=False) == full
    # the tokens, not just the text
    for q in QUESTIONS:
        enc = engine.encode(DOC, q)
        direct = engine.generate_ids([enc.ids], max_new_tokens=8, stop_at_eos=False)[0]
        via_read = engine.generate_ids([enc.ids[enc.shared:]], doc.state, max_new_tokens=8, stop_at_eos=False)[0]
        assert via_read == direct


def test_batch_equals_rows(engine):
    contexts = [DOC, "The fox is quick.", DOC + " Carol lives in Rome."]
    questions = ["Who is quick?", "Where was Alice born?", "Where does Carol live?"]
    batch = engine.generate(contexts, questions, max_new_tokens=8, stop_at_eos=False)
    rows = [engine.generate(c, q, max_new_tokens=8, stop_at_eos=False) for c, q in zip(contexts, questions)]
    assert batch == rows


def test_chunked_prefill_equals_whole(engine):
    ids = engine.encode(DOC, QUESTIONS[1]).ids
    whole, s1 = prefill(engine.model, [ids])
    chunked, s2 = prefill(engine.model, [ids], chunk_size=7)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    for a, b in zip(s1.tensors(), s2.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_stop_strings_and_max_tokens(engine):
    free = engine.generate(DOC, QUESTIONS[0], max_new_tokens=20, stop_at_eos=False)
    assert len(engine.generate_ids([engine.encode(DOC, QUESTIONS[0]).ids], max_new_tokens=20,
                                   stop_at_eos=False)[0]) == 20
    # pick a stop string from inside the free-running text: the answer must end right before it
    assert len(free) > 4
    stop = free[3:5]
    cut = engine.generate(DOC, QUESTIONS[0], max_new_tokens=20, stop_at_eos=False, stop=[stop])
    assert cut == free[:free.find(stop)]
    assert engine.generate(DOC, QUESTIONS[0], max_new_tokens=0) == ""


def test_eos_stops(engine):
    tok = engine.tokenizer
    free_ids = engine.generate_ids([engine.encode(DOC, QUESTIONS[0]).ids], max_new_tokens=6, stop_at_eos=False)[0]
    # make the third generated token an EOS for this engine: generation must stop before it
    eng = Engine(engine.model, tok, engine.prompt)
    eng.eos_ids = {free_ids[2]}
    got = eng.generate_ids([engine.encode(DOC, QUESTIONS[0]).ids], max_new_tokens=6)[0]
    assert got == free_ids[:free_ids.index(free_ids[2])]


def test_stream_pieces_join_to_generate(engine):
    want = engine.generate(DOC, QUESTIONS[2], max_new_tokens=15, stop_at_eos=False)
    pieces = list(engine.stream(DOC, QUESTIONS[2], max_new_tokens=15, stop_at_eos=False))
    assert "".join(pieces) == want and len(pieces) > 1
    doc = engine.read(DOC)
    assert "".join(engine.stream(doc, QUESTIONS[2], max_new_tokens=15, stop_at_eos=False)) == want


def test_held_back_text():
    assert _held_back("abc\ufffd", []) == 1
    assert _held_back("the end\nQ", ["\nQuestion"]) == 2
    assert _held_back("plain", ["\n"]) == 0


def test_sampling_seeded_and_limits(engine):
    kw = dict(max_new_tokens=10, stop_at_eos=False, do_sample=True)
    a = engine.generate(DOC, QUESTIONS[0], seed=3, **kw)
    assert a == engine.generate(DOC, QUESTIONS[0], seed=3, **kw)
    greedy = engine.generate(DOC, QUESTIONS[0], max_new_tokens=10, stop_at_eos=False)
    assert engine.generate(DOC, QUESTIONS[0], seed=4, top_k=1, **kw) == greedy
    assert engine.generate(DOC, QUESTIONS[0], seed=5, top_p=1e-6, **kw) == greedy
    outs = {engine.generate(DOC, QUESTIONS[0], seed=s, temperature=5.0, **kw) for s in range(6)}
    assert len(outs) > 1, "sampling at a high temperature never varied"


def test_sample_matches_distribution():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1, 0.0]]))
    cfg = GenerationConfig(do_sample=True)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(logits, cfg, g) for _ in range(4000)]).flatten()
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert torch.allclose(freq, torch.tensor([0.6, 0.3, 0.1, 0.0]), atol=0.03), freq
    top_p = GenerationConfig(do_sample=True, top_p=0.7)
    draws = torch.stack([sample(logits, top_p, g) for _ in range(2000)]).flatten()
    assert set(draws.tolist()) == {0, 1}


def test_generation_config_validation():
    with pytest.raises(ValueError):
        GenerationConfig(temperature=0)
    with pytest.raises(ValueError):
        GenerationConfig(top_p=1.5)
    with pytest.raises(ValueError):
        GenerationConfig(unknown_option=1)
    assert GenerationConfig(stop="\n").stop == ["\n"]


def test_errors(engine):
    with pytest.raises(JRTError, match="context is empty"):
        engine.generate("  ", "q?")
    with pytest.raises(JRTError, match="question is empty"):
        engine.generate(DOC, "")
    with pytest.raises(JRTError, match="must match"):
        engine.generate([DOC, DOC], ["a?"])
    small = Engine(engine.model, engine.tokenizer, engine.prompt, budget=30)
    with pytest.raises(PromptTooLongError, match="budget of 30"):
        small.generate(DOC, QUESTIONS[0])
    trimmed = Engine(engine.model, engine.tokenizer, engine.prompt, budget=30, trim="tail")
    enc = trimmed.encode(DOC, QUESTIONS[0])
    assert len(enc.ids) <= 30 and enc.trimmed > 0
    assert isinstance(trimmed.generate(DOC, QUESTIONS[0], max_new_tokens=3), str)


def test_read_state_is_reusable_and_sized(engine):
    doc = engine.read(DOC)
    before = [t.clone() for t in doc.state.tensors()]
    engine.generate(doc, QUESTIONS, max_new_tokens=5)
    assert all(torch.equal(a, b) for a, b in zip(doc.state.tensors(), before))
    assert isinstance(doc.state, RecurrentState) and doc.state.nbytes > 0


def test_eos_answer_text_is_decoded(engine):
    """Rows that end at EOS (no stop strings, so the host looks at tokens in blocks) still get their text."""
    ids = engine.encode(DOC, QUESTIONS[0]).ids
    free = engine.generate_ids([ids], max_new_tokens=6, stop_at_eos=False)[0]
    eng = Engine(engine.model, engine.tokenizer, engine.prompt)
    eng.eos_ids = {free[3]}
    want = engine.tokenizer.decode(free[:free.index(free[3])], skip_special_tokens=True)
    assert eng.generate(DOC, QUESTIONS[0], max_new_tokens=40) == want


def test_right_padding_is_refused(engine):
    """Right padding would feed pads into the state after the real tokens (REFERENCE section 4): an error."""
    ids = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with pytest.raises(ValueError, match="pad on the left"):
        engine.model(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="shape of input_ids"):
        engine.model(ids, attention_mask=mask[:, :3])


def test_several_tokens_after_a_state_equal_one_read(engine):
    """transformers 5.24's Mamba restarts from a zero state when several tokens follow a cache (REFERENCE
    section 4); here any number of tokens after any state equals one full read, with or without a fork."""
    ids = torch.tensor([engine.encode(DOC, QUESTIONS[0]).ids])
    full, _ = engine.model(ids)
    for cut in (1, 7, ids.shape[1] - 3):
        _, state = engine.model(ids[:, :cut])
        for start in (state, state.fork()):
            rest, _ = engine.model(ids[:, cut:], start)
            torch.testing.assert_close(rest, full[:, cut:], rtol=1e-5, atol=1e-5)


def test_progress_reports_tokens_read(engine):
    seen = []
    engine.generate(DOC, QUESTIONS[0], max_new_tokens=2, progress=seen.append)
    assert seen and seen[-1] == len(engine.encode(DOC, QUESTIONS[0]).ids)
    doc, seen = engine.read(DOC), []
    list(engine.stream(doc, QUESTIONS[1], max_new_tokens=2, progress=seen.append))
    enc = engine.encode(DOC, QUESTIONS[1])
    assert seen[-1] == len(enc.ids) - enc.shared


def test_prefill_lengths_cover_every_length_with_few_shapes():
    """A graphed prefill's pieces: full chunks after one first piece of a bucket length (a power of two up to
    256 tokens, then at most 1/8 padding), and few distinct first-piece lengths."""
    from jrt_prompt.cuda_graph import prefill_lengths
    firsts = set()
    for chunk in (64, 4096):
        for n in range(1, 3 * chunk + 2):
            pieces = prefill_lengths(n, chunk)
            assert all(p == chunk for p in pieces[1:]) and 0 < pieces[0] <= chunk, (n, chunk, pieces)
            pad = sum(pieces) - n
            rest = n % chunk or chunk
            assert 0 <= pad < (max(16, rest) if rest <= 256 else rest / 8 + 1), (n, chunk, pieces)
            assert len(pieces) == -(-n // chunk)
            if chunk == 4096:
                firsts.add(pieces[0])
    assert len(firsts) <= 40, sorted(firsts)


def test_fork_copies_and_keeps_gradients():
    """fork: independent copies (one foreach copy); a state that needs gradients keeps its graph through it."""
    w = torch.randn(2, 3, requires_grad=True)
    s = RecurrentState([{"kv": w * 2}, {}], torch.tensor([4, 5]))
    f = s.fork()
    f.layers[0]["kv"].sum().backward()
    assert torch.equal(w.grad, torch.full_like(w, 2.0))
    with torch.no_grad():
        g = RecurrentState([{"kv": torch.randn(2, 3)}, {}], torch.tensor([1, 2]))
        h = g.fork()
        h.layers[0]["kv"].add_(1)
        h.seen.add_(1)
    assert not torch.equal(h.layers[0]["kv"], g.layers[0]["kv"]) and g.seen.tolist() == [1, 2]
