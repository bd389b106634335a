"""jrt-ask starts fast: ``jrt_prompt.load`` of a Based folder, generation and the CLI never import transformers'
modeling code (PreTrainedModel, GenerationMixin) nor torch._dynamo, while transformers users still get
AutoConfig / AutoModelForCausalLM for model_type "based" and the pipeline task, whatever they import first.

The import checks run in fresh interpreters (this one has imported everything by now); they check which modules
got imported, not how long it took.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import jrt_prompt
from jrt_prompt.adapters import based
from jrt_prompt.adapters.skeleton import skeleton, skip_init
from jrt_prompt.loading import plain_fast_tokenizer, resolve_tokenizer
from tests.checkpoints_based import based_config, random_weights, write_checkpoint
from tests.tokenizer_fixture import tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("transformers.modeling_utils", "transformers.generation.utils", "torch._dynamo")
DOC = "Alice was born in Paris in 1990. Bob works at the bakery on Main Street."
QUESTION = "Where was Alice born?"
NEW = 6


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    """A tiny Based folder as the demo is saved: config.json with model_type "based", weights, and a tokenizer."""
    path = tmp_path_factory.mktemp("based")
    tok = tiny_tokenizer()
    cfg = based_config(model_type="based", vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                       bos_token_id=tok.eos_token_id)
    write_checkpoint(path, cfg, random_weights(cfg), fmt="safetensors")
    tok.save_pretrained(path)
    return str(path)


def run_python(code: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # tiny model: one thread is fastest
    assert done.returncode == 0, done.stderr[-3000:]
    assert "jrt_prompt could not" not in done.stderr and "is not registered" not in done.stderr, done.stderr
    return done


def last_json(done: subprocess.CompletedProcess) -> dict:
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the jrt-ask path -------------------------------------------------------------------------------

def test_load_and_generate_import_no_modeling_code(folder):
    code = f"""
import json, sys
import jrt_prompt
engine = jrt_prompt.load({folder!r})
doc = engine.read({DOC!r})
answer = engine.generate(doc, {QUESTION!r}, max_new_tokens={NEW})
print(json.dumps({{"answer": answer, "arch": engine.model.config.arch, "tokenizer": type(engine.tokenizer).__name__,
                   "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    out = last_json(run_python(code))
    assert out["heavy"] == [], f"jrt_prompt.load + generate imported {out['heavy']}"
    assert out["arch"] == "based" and out["tokenizer"] == "TokenizersBackend"
    here = jrt_prompt.load(folder)
    assert out["answer"] == here.generate(DOC, QUESTION, max_new_tokens=NEW)  # same answer as the full path


def test_cli_imports_no_modeling_code(folder, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    code = f"""
import contextlib, io, json, sys
from jrt_prompt.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main([{str(doc)!r}, {QUESTION!r}, "--model", {folder!r}, "--max-new-tokens", "{NEW}"])
print(json.dumps({{"code": code, "stdout": out.getvalue(), "heavy": [m for m in {HEAVY!r} if m in sys.modules],
                   "auto_tokenizer": "transformers.models.auto.tokenization_auto" in sys.modules}}))
"""
    out = last_json(run_python(code))
    assert out["code"] == 0
    assert out["heavy"] == [], f"jrt-ask imported {out['heavy']}"
    assert not out["auto_tokenizer"], "a TokenizersBackend folder should not need AutoTokenizer"
    expected = jrt_prompt.load(folder).generate(DOC, QUESTION, max_new_tokens=NEW, stop=["\n"]).strip()
    assert out["stdout"] == expected + "\n"


# --- transformers users: registration on first use -----------------------------------------------------

@pytest.mark.parametrize("prelude, light", [
    ("import jrt_prompt\nfrom transformers import AutoConfig, AutoModelForCausalLM", True),
    ("from transformers import AutoConfig, AutoModelForCausalLM\nimport jrt_prompt", True),
    # transformers.pipelines imports the modeling code itself; jrt_prompt.pipeline's import runs it before
    # the module defines its register(): the registration waits for it
    ("import jrt_prompt.pipeline\nfrom transformers import AutoConfig, AutoModelForCausalLM", False),
], ids=["jrt_prompt-first", "transformers-first", "pipeline-module-first"])
def test_auto_classes_and_pipeline_are_registered_lazily(folder, prelude, light):
    code = f"""
import json, sys
{prelude}
light = "transformers.modeling_utils" not in sys.modules
config = AutoConfig.from_pretrained({folder!r})
model = AutoModelForCausalLM.from_pretrained({folder!r})
engine = jrt_prompt.wrap(model)
from transformers import pipeline
qa = pipeline("jrt-question-answering", model={folder!r}, device="cpu")
print(json.dumps({{"light": light, "config": type(config).__name__, "model": type(model).__name__,
                   "shares": engine.model is model.lm, "pipeline": type(qa).__name__}}))
"""
    out = last_json(run_python(code))
    assert out == {"light": light, "config": "BasedConfig", "model": "BasedForCausalLM", "shares": True,
                   "pipeline": "JRTQuestionAnsweringPipeline"}


def test_based_module_names_stay_importable():
    from jrt_prompt.adapters import based_config, based_hf

    assert based.BasedConfig is based_config.BasedConfig
    assert based.BasedForCausalLM is based_hf.BasedForCausalLM and based.register is based_hf.register
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        based.Nothing  # noqa: B018


def test_accepts_model_by_class_name_and_module():
    from jrt_prompt.adapters.based_hf import BasedForCausalLM

    class Derived(BasedForCausalLM):
        pass

    class Impostor(nn.Module):
        pass

    Impostor.__name__ = "BasedForCausalLM"  # same name, another module: not ours
    config = based.BasedConfig(**based_config(vocab_size=64))
    assert based.accepts_model(BasedForCausalLM(config)) and based.accepts_model(Derived(config))
    assert not based.accepts_model(Impostor())


# --- the tokenizer's shortcut ---------------------------------------------------------------------------

def test_plain_fast_tokenizer_is_what_auto_tokenizer_builds(folder):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    ours, auto = resolve_tokenizer(None, Path(folder)), AutoTokenizer.from_pretrained(folder)
    assert type(ours) is PreTrainedTokenizerFast and type(ours) is type(auto)
    assert ours.padding_side == "left"
    for text in (DOC, "Les élèves naïfs à Zürich; 東京", "  two  spaces\nand a line<|endoftext|>"):
        assert ours(text)["input_ids"] == auto(text)["input_ids"]
        ids = auto(text)["input_ids"]
        assert ours.decode(ids, skip_special_tokens=True) == auto.decode(ids, skip_special_tokens=True)
    assert (ours.eos_token_id, ours.pad_token_id, ours.bos_token_id) == \
        (auto.eos_token_id, auto.pad_token_id, auto.bos_token_id)


@pytest.mark.parametrize("tokenizer_config, has_json, plain", [
    ({"tokenizer_class": "TokenizersBackend"}, True, True),
    ({"tokenizer_class": "PreTrainedTokenizerFast"}, True, True),
    ({"tokenizer_class": "GPT2Tokenizer"}, True, False),  # a model's own class: AutoTokenizer decides
    ({}, True, False),  # no class: AutoTokenizer would look at config.json
    ({"tokenizer_class": "TokenizersBackend"}, False, False),  # nothing to build it from
    ([1, 2], True, False),
    ("not json {", True, False),
    (None, True, False),  # no tokenizer_config.json
])
def test_plain_fast_tokenizer_only_for_the_generic_class(tmp_path, tokenizer_config, has_json, plain):
    if has_json:
        (tmp_path / "tokenizer.json").write_text("{}")
    if isinstance(tokenizer_config, str):
        (tmp_path / "tokenizer_config.json").write_text(tokenizer_config)
    elif tokenizer_config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    assert plain_fast_tokenizer(tmp_path) is plain


# --- skeletons without initialisation --------------------------------------------------------------------

def test_skip_init_builds_on_meta_and_leaves_real_tensors_alone():
    with skip_init():
        emb, lin = nn.Embedding(50, 8), nn.Linear(8, 4)
        real = torch.zeros(16, device="cpu")
        nn.init.normal_(real)  # not a meta tensor: filled as usual
        also_real = torch.zeros(16, device="cpu").uniform_()
    assert emb.weight.is_meta and lin.weight.is_meta and lin.bias.is_meta
    assert emb.weight.shape == (50, 8) and lin.weight.shape == (4, 8)
    assert real.abs().sum() > 0 and also_real.abs().sum() > 0
    after = nn.Linear(2, 2)  # outside: the default device and initialisation are back
    assert after.weight.device.type == "cpu" and after.weight.abs().sum() > 0


def test_skeleton_of_a_based_folder_has_the_config_shapes(folder):
    s = based.settings_from_config(json.loads((Path(folder) / "config.json").read_text()))
    tree = skeleton(based.BasedWeights, s)
    assert all(p.is_meta for p in tree.parameters())
    assert tree.transformer.embeddings.word_embeddings.weight.shape == (s.vocab_size, s.d_model)
    assert len(tree.transformer.layers) == s.n_layer
