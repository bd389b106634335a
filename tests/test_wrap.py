"""wrap / load end to end on real transformers models: greedy tokens equal transformers' own generate,
read+generate equals the full JRT prompt, checkpoint folders with their tokenizer, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import jrt_prompt
from jrt_prompt import JRTPrompt
from jrt_prompt.errors import CheckpointError, JRTError, UnsupportedModelError
from tests.checkpoints_mamba import tiny_mamba, tiny_mamba2
from tests.tokenizer_fixture import tiny_tokenizer

DOC = "Alice was born in Paris in 1990. Bob works at the bakery on Main Street."
QUESTIONS = ["Where was Alice born?", "Where does Bob work?", "When was Alice born?"]
MODELS = {"mamba": tiny_mamba, "mamba2": tiny_mamba2}


def make(name: str, seed: int = 0):
    tok = tiny_tokenizer()
    vocab = len(tok) + (-len(tok) % 8)
    extra = {"num_heads": 8} if name == "mamba2" else {}
    return MODELS[name](seed, vocab_size=vocab, hidden_size=32, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, **extra), tok


@pytest.mark.parametrize("name", MODELS)
def test_greedy_equals_transformers_generate(name):
    model, tok = make(name)
    engine = jrt_prompt.wrap(model, tok, prompt=JRTPrompt(repeats=1))
    for q in QUESTIONS[:2]:
        ids = engine.encode(DOC, q).ids
        want = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              max_new_tokens=12, do_sample=False, min_new_tokens=12,
                              pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
        got = engine.generate_ids([ids], max_new_tokens=12, stop_at_eos=False)[0]
        assert got == want, f"{name}: {got} != transformers {want}"


@pytest.mark.parametrize("name", MODELS)
def test_read_reuse_equals_full_prompt(name):
    model, tok = make(name, seed=1)
    engine = jrt_prompt.wrap(model, tok)
    assert engine.prompt == JRTPrompt(template="generic", repeats=2)
    full = engine.generate(DOC, QUESTIONS, max_new_tokens=10, stop_at_eos=False)
    doc = engine.read(DOC)
    assert [engine.generate(doc, q, max_new_tokens=10, stop_at_eos=False) for q in QUESTIONS] == full
    for q in QUESTIONS:
        enc = engine.encode(DOC, q)
        assert (engine.generate_ids([enc.ids[enc.shared:]], doc.state, max_new_tokens=10, stop_at_eos=False)
                == engine.generate_ids([enc.ids], max_new_tokens=10, stop_at_eos=False))


@pytest.mark.parametrize("name", MODELS)
def test_load_folder_with_tokenizer(tmp_path, name):
    model, tok = make(name, seed=2)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = jrt_prompt.load(tmp_path)
    wrapped = jrt_prompt.wrap(model, tok)
    kw = dict(max_new_tokens=8, stop_at_eos=False)
    assert loaded.generate(DOC, QUESTIONS[0], **kw) == wrapped.generate(DOC, QUESTIONS[0], **kw)
    assert loaded.tokenizer.padding_side == "left"
    # the tokenizer beside the weights is found by wrap too, through name_or_path
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert jrt_prompt.wrap(again).generate(DOC, QUESTIONS[0], **kw) == wrapped.generate(DOC, QUESTIONS[0], **kw)


def test_load_dtype(tmp_path):
    model, tok = make("mamba2", seed=3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    engine = jrt_prompt.load(tmp_path, dtype="bfloat16")
    assert engine.model.dtype == torch.bfloat16
    assert isinstance(engine.generate(DOC, QUESTIONS[0], max_new_tokens=4), str)
    with pytest.raises(JRTError, match="unknown dtype"):
        jrt_prompt.load(tmp_path, dtype="float8")


def test_errors(tmp_path):
    model, tok = make("mamba", seed=4)
    with pytest.raises(UnsupportedModelError, match="MambaForCausalLM"):
        jrt_prompt.wrap(nn.Linear(2, 2), tok)
    with pytest.raises(JRTError, match="no tokenizer"):
        jrt_prompt.wrap(model)
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(JRTError, match="no tokenizer found in"):
        jrt_prompt.load(tmp_path / "m")
    assert isinstance(jrt_prompt.load(tmp_path / "m", tokenizer=tok).generate(DOC, "q?", max_new_tokens=2), str)
    with pytest.raises(CheckpointError, match="no such model folder"):
        jrt_prompt.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        jrt_prompt.load(tmp_path / "empty")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        jrt_prompt.load(tmp_path / "f.txt")
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(CheckpointError, match="unsupported kind \\(llama\\)"):
        jrt_prompt.load(tmp_path / "llama")
