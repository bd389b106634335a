"""On a GPU: decoding through a captured CUDA graph gives the tokens of plain steps, for every architecture."""

from __future__ import annotations

import pytest

import jrt_prompt
from jrt_prompt import JRTPrompt
from tests.properties import check_graphed_prefill
from tests.tokenizer_fixture import tiny_tokenizer

pytestmark = pytest.mark.gpu
DOC = "Alice was born in Paris in 1990. Bob works at the bakery on Main Street."


def models():
    from tests.checkpoints_mamba import tiny_mamba, tiny_mamba2

    tok = tiny_tokenizer()
    v = len(tok) + (-len(tok) % 8)
    yield "mamba", tiny_mamba(0, vocab_size=v, hidden_size=32)
    yield "mamba2", tiny_mamba2(0, vocab_size=v, hidden_size=32, num_heads=8)


@pytest.mark.parametrize("compile", [False, True])
def test_graphed_decode_equals_plain_steps(compile):
    tok = tiny_tokenizer()
    for name, model in models():
        model = model.cuda()
        plain = jrt_prompt.wrap(model, tok, prompt=JRTPrompt(repeats=2), cuda_graphs=False)
        graphed = jrt_prompt.wrap(model, tok, prompt=JRTPrompt(repeats=2), compile=compile)
        assert graphed._graphs is not None
        qs = ["Where was Alice born?", "Where does Bob work?", "Who works at the bakery?"]
        for batch in (qs[:1], qs):
            a = plain.generate(DOC, batch, max_new_tokens=20, stop_at_eos=False)
            b = graphed.generate(DOC, batch, max_new_tokens=20, stop_at_eos=False)
            assert a == b, f"{name}, compile={compile}"
        doc = graphed.read(DOC)
        assert graphed.generate(doc, qs, max_new_tokens=20, stop_at_eos=False) == plain.generate(
            DOC, qs, max_new_tokens=20, stop_at_eos=False)


def test_graphed_prefill_equals_eager_prefill():
    """Prompts replayed from CUDA graphs (``Engine(graph_prefill=True)``) read like eager ones: the property for
    Mamba and Mamba-2 here (Based and GLA: their GPU tests), and the engine's answers."""
    tok = tiny_tokenizer()
    for name, model in models():
        model = model.cuda()
        plain = jrt_prompt.wrap(model, tok, prompt=JRTPrompt(repeats=2), cuda_graphs=False)
        check_graphed_prefill(plain.model, model.config.vocab_size)
        graphed = jrt_prompt.wrap(model, tok, prompt=JRTPrompt(repeats=2), graph_prefill=True, chunk_size=32)
        qs = ["Where was Alice born?", "Where does Bob work?", "Who works at the bakery?"]
        for batch in (qs[:1], qs):
            assert graphed.generate(DOC, batch, max_new_tokens=12, stop_at_eos=False) == plain.generate(
                DOC, batch, max_new_tokens=12, stop_at_eos=False), name
        doc = graphed.read(DOC)
        assert graphed.generate(doc, qs, max_new_tokens=12, stop_at_eos=False) == plain.generate(
            DOC, qs, max_new_tokens=12, stop_at_eos=False), name
