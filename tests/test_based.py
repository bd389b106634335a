"""Based models: hazyresearch-format folders load (from_folder, jrt_prompt.load, AutoModelForCausalLM) and match an
independent transcription of hazyresearch's forward; the RecurrentLM passes the split / left-padding / fork checks;
BasedForCausalLM saves, reloads, generates (greedy = argmax loop, with and without its cache) and runs in pipelines;
unsupported checkpoints fail with the field and value named."""

from __future__ import annotations

import json

import pytest
import torch

import jrt_prompt
from jrt_prompt.adapters import based
from jrt_prompt.adapters.based import BasedConfig, BasedForCausalLM
from jrt_prompt.errors import CheckpointError
from tests.checkpoints_based import (VARIANT, based_config, hazyresearch_shapes, random_weights, reference_logits,
                                     write_checkpoint)
from tests.properties import check_all, check_graphed_prefill, check_split_points
from tests.tokenizer_fixture import tiny_tokenizer

torch.manual_seed(0)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def cfg(tok):
    return based_config(vocab_size=len(tok), eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)


@pytest.fixture(scope="module")
def weights(cfg):
    return random_weights(cfg, seed=1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, cfg, weights):
    return write_checkpoint(tmp_path_factory.mktemp("based-bin"), cfg, weights, fmt="bin")


@pytest.fixture(scope="module")
def lm(folder, cfg):
    return based.from_folder(folder, cfg)


@pytest.fixture(scope="module")
def hf_model(folder):
    return BasedForCausalLM.from_pretrained(folder, config=BasedConfig.from_pretrained(folder)).eval()


def _ids(vocab, shape, seed=0):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _close(a, b, tol=1e-4):
    err = (a.double() - b.double()).abs().max().item()
    assert err <= tol * max(1.0, b.double().abs().max().item()), err


# --------------------------------------------------------------------------- reading the format
@torch.no_grad()
def test_folder_matches_hazyresearch_forward(lm, cfg, weights):
    ids = _ids(cfg["vocab_size"], (2, 40))  # 40 tokens: several windows of 4, linear attention chunks
    _close(lm(ids)[0], reference_logits(cfg, weights, ids))
    kinds = [type(b.mixer).__name__ for b in lm.blocks]
    assert kinds == ["BaseConv", "TaylorLinearAttention", "SlidingWindowAttention", "TaylorLinearAttention",
                     "SlidingWindowAttention"]
    assert lm.lm_head.weight is lm.embedding.weight  # tied, as gpt.py ties it


def test_recurrent_lm_properties(lm, cfg):
    check_all(lm, cfg["vocab_size"])


def test_variant_config(tmp_path, cfg):
    """Biases, kernel 4, expand 2, partial rotary, per-layer scale, overlapping layer lists: still hazyresearch's."""
    variant = {**cfg, **VARIANT}
    sd = random_weights(variant, seed=11)
    model = based.from_folder(write_checkpoint(tmp_path / "v", variant, sd), variant)
    assert [type(b.mixer).__name__ for b in model.blocks] == [
        "TaylorLinearAttention", "SlidingWindowAttention", "BaseConv", "SlidingWindowAttention"]
    ids = _ids(cfg["vocab_size"], (2, 33), seed=12)
    with torch.no_grad():
        _close(model(ids)[0], reference_logits(variant, sd, ids))
    check_all(model, cfg["vocab_size"])


@torch.no_grad()
def test_safetensors_folder_and_load(tmp_path, lm, cfg, weights, tok):
    path = write_checkpoint(tmp_path / "st", {**cfg, "model_type": "gpt2"}, weights, fmt="safetensors")
    ids = _ids(cfg["vocab_size"], (1, 17), seed=2)
    engine = jrt_prompt.load(path, tokenizer=tok)
    assert engine.model.config.arch == "based"
    _close(engine.model(ids)[0], lm(ids)[0], tol=1e-6)
    assert isinstance(engine.generate("Alice was born in Paris.", "Where was Alice born?", max_new_tokens=4), str)


def test_decode_state_per_layer_kind(lm):
    state = lm.init_state(3)
    shapes = [{k: tuple(v.shape) for k, v in layer.items()} for layer in state.layers]
    assert shapes[0] == {"conv": (3, 2, 64)}  # kernel 3 -> the last 2 inputs of the 2d = 64 conv channels
    assert shapes[1] == {"kv": (3, 2, 273, 16), "ksum": (3, 2, 273)}
    assert shapes[2] == {"k": (3, 4, 4, 8), "v": (3, 4, 4, 8), "seen": (3, 4)}  # window_size 8 -> 4 keys back
    assert state.layers[1]["kv"].dtype == torch.float32


# --------------------------------------------------------------------------- the transformers model
@torch.no_grad()
def test_auto_model_loads_both_ways(tmp_path, folder, hf_model, cfg, weights):
    from transformers import AutoConfig, AutoModelForCausalLM

    ids = _ids(cfg["vocab_size"], (2, 19), seed=3)
    want = reference_logits(cfg, weights, ids)
    auto = AutoModelForCausalLM.from_pretrained(folder, config=BasedConfig.from_pretrained(folder))
    assert type(auto) is BasedForCausalLM
    _close(auto(ids).logits, want)
    assert set(hf_model.state_dict()) == set(hazyresearch_shapes(cfg))
    hf_model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["model_type"] == "based"
    assert {k: saved[k] for k in cfg} == cfg  # every hazyresearch field written back unchanged
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "saved"), BasedConfig)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    _close(again(ids).logits, want)
    assert again.lm_head.weight.data_ptr() == again.transformer.embeddings.word_embeddings.weight.data_ptr()
    assert based.accepts_folder(saved, set())
    _close(based.from_folder(tmp_path / "saved", saved)(ids)[0], want)


def test_register_is_idempotent():
    from transformers import AutoConfig, AutoModelForCausalLM

    based.register()
    based.register()
    config = AutoConfig.for_model("based", **based_config())
    assert type(config) is BasedConfig
    assert AutoModelForCausalLM._model_mapping[BasedConfig] is BasedForCausalLM


def _argmax_loop(model, ids, n):
    for _ in range(n):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


@torch.no_grad()
def test_generate_equals_argmax_loop(hf_model, cfg):
    ids = _ids(cfg["vocab_size"], (1, 9), seed=4)
    want = _argmax_loop(hf_model, ids, 12)
    read = []  # tokens per forward: with the cache, one per new token after the prompt
    forward = hf_model.lm.forward
    hf_model.lm.forward = lambda x, *a, **k: read.append(x.shape[1]) or forward(x, *a, **k)
    try:
        for use_cache in (True, False):
            got = hf_model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=use_cache, eos_token_id=None)
            assert torch.equal(got, want), use_cache
    finally:
        del hf_model.lm.forward
    assert read == [9] + [1] * 11 + list(range(9, 21))
    # several new tokens after a cache, twice from the same cache (forward never mutates it)
    out = hf_model(ids, use_cache=True)
    full = hf_model(want).logits
    for _ in range(2):
        more = hf_model(want[:, 9:14], cache=out.cache, attention_mask=torch.ones(1, 14, dtype=torch.long))
        _close(more.logits, full[:, 9:14])


@torch.no_grad()
def test_generate_left_padded_batch_and_beams(hf_model, cfg):
    a, b = _ids(cfg["vocab_size"], (1, 5), seed=5), _ids(cfg["vocab_size"], (1, 9), seed=6)
    batch = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.long)
    batch[0, 4:], mask[0, 4:] = a, 1
    batch[1], mask[1] = b, 1
    got = hf_model.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=None,
                            pad_token_id=0)
    assert torch.equal(got[0, 9:], _argmax_loop(hf_model, a, 8)[0, 5:])
    assert torch.equal(got[1, 9:], _argmax_loop(hf_model, b, 8)[0, 9:])
    beams = [hf_model.generate(b, max_new_tokens=6, num_beams=3, do_sample=False, eos_token_id=None, use_cache=c)
             for c in (True, False)]
    assert torch.equal(beams[0], beams[1])


def test_pipeline_and_wrap(hf_model, tok):
    from transformers import pipeline

    pipe = pipeline("text-generation", model=hf_model, tokenizer=tok)
    out = pipe("Alice was born in", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("Alice was born in")
    engine = jrt_prompt.wrap(hf_model, tok)
    assert engine.model is hf_model.lm
    assert based.from_model(hf_model).lm_head.weight.data_ptr() == hf_model.lm_head.weight.data_ptr()
    enc = engine.encode("Alice was born in Paris.", "Where?")
    got = engine.generate_ids([enc.ids], max_new_tokens=5, stop_at_eos=False)[0]
    with torch.no_grad():
        want = _argmax_loop(hf_model, torch.tensor([enc.ids]), 5)[0, len(enc.ids):].tolist()
    assert got == want


def test_training_loss_backpropagates(hf_model, cfg):
    ids = _ids(cfg["vocab_size"], (2, 12), seed=7)
    out = hf_model(ids, labels=ids)
    out.loss.backward()
    grads = [p.grad for p in hf_model.parameters()]
    assert torch.isfinite(out.loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    hf_model.zero_grad(set_to_none=True)


@torch.no_grad()
def test_untied_head(tmp_path, cfg, weights):
    untied = {**cfg, "tie_word_embeddings": False}
    sd = {**weights, "lm_head.weight": torch.randn_like(weights["lm_head.weight"])}
    path = write_checkpoint(tmp_path / "untied", untied, sd)
    ids = _ids(cfg["vocab_size"], (1, 11), seed=10)
    want = reference_logits(untied, sd, ids)
    model = based.from_folder(path, untied)
    assert model.lm_head.weight is not model.embedding.weight
    _close(model(ids)[0], want)
    hf = BasedForCausalLM.from_pretrained(path, config=BasedConfig.from_pretrained(path))
    _close(hf(ids).logits, want)


# --------------------------------------------------------------------------- what is refused
def _write(tmp_path, cfg, sd):
    return write_checkpoint(tmp_path / "bad", cfg, sd)


@pytest.mark.parametrize("change, field, value", [
    ({"alt_mixer": {**based_config()["alt_mixer"], "feature_dim": 32}}, "alt_mixer.feature_dim", "32"),
    ({"alt_mixer": {**based_config()["alt_mixer"], "feature_map": {"_target_": "x.TaylorExp", "input_dim": 8}}},
     "alt_mixer.feature_map.input_dim", "8"),
    ({"alt_mixer": {**based_config()["alt_mixer"], "_target_": "based.models.mixers.hedgehog.Hedgehog"}},
     "alt_mixer._target_", "Hedgehog"),
    ({"alt_mixer_2": {**based_config()["alt_mixer_2"], "window_size": None}}, "alt_mixer_2.window_size", "None"),
    ({"alt_mixer_2": {**based_config()["alt_mixer_2"], "window_size": 1}}, "alt_mixer_2.window_size", "1"),
    ({"alt_mixer_layers": [1, 3, 7]}, "alt_mixer_layers", "[1, 3, 7]"),
    ({"alt_mixer_2": None}, "alt_mixer_2", "None"),
    ({"rms_norm": False}, "rms_norm", "False"),
    ({"activation_function": "gelu"}, "activation_function", "gelu"),
    ({"rotary_emb_interleaved": True}, "rotary_emb_interleaved", "True"),
])
def test_unsupported_configs_name_field_and_value(tmp_path, weights, change, field, value):
    cfg = based_config(**change)
    path = _write(tmp_path, cfg, weights)
    for load in (lambda: based.from_folder(path, cfg), lambda: BasedForCausalLM(BasedConfig(**cfg))):
        with pytest.raises(CheckpointError) as err:
            load()
        assert field in str(err.value) and value in str(err.value), str(err.value)


def test_jrt_rnn_checkpoint_is_refused(tmp_path, cfg, weights):
    sd = dict(weights)
    sd["transformer.layers.1.mixer.proj_k_enc.weight"] = torch.zeros(32, 32)
    sd["transformer.layers.1.mixer.proj_v_enc.weight"] = torch.zeros(32, 32)
    path = _write(tmp_path, cfg, sd)
    for load in (lambda: based.from_folder(path, cfg),
                 lambda: BasedForCausalLM.from_pretrained(path, config=BasedConfig.from_pretrained(path))):
        with pytest.raises(CheckpointError, match="JRT-RNN"):
            load()
    with pytest.raises(CheckpointError, match="JRT-RNN"):
        jrt_prompt.load(path, tokenizer=tiny_tokenizer())


def test_weights_that_disagree_with_the_config_are_refused(tmp_path, cfg, weights):
    missing = {k: v for k, v in weights.items() if k != "transformer.layers.2.mixer.Wqkv.weight"}
    path = _write(tmp_path, cfg, missing)
    with pytest.raises(CheckpointError, match="missing transformer.layers.2.mixer.Wqkv.weight"):
        based.from_folder(path, cfg)
    with pytest.raises(CheckpointError, match="Wqkv"):
        BasedForCausalLM.from_pretrained(path, config=BasedConfig.from_pretrained(path))
    positions = {**weights, based.POSITION_KEY: torch.zeros(8, 32)}
    with pytest.raises(CheckpointError, match="position embeddings"):
        based.from_folder(_write(tmp_path / "p", cfg, positions), cfg)
    with pytest.raises(CheckpointError, match="max_position_embeddings"):
        BasedConfig(**{**cfg, "max_position_embeddings": 2048})


# --------------------------------------------------------------------------- GPU
class _OnCuda:
    """Feeds a CUDA model the CPU token tensors that the property checks make."""

    def __init__(self, model):
        self.model = model

    def __call__(self, ids, state=None, attention_mask=None):
        mask = attention_mask.cuda() if attention_mask is not None else None
        return self.model(ids.cuda(), state, mask)

    def step(self, ids, state):
        return self.model.step(ids.cuda(), state)

    def init_state(self, batch_size):
        return self.model.init_state(batch_size)


@pytest.mark.gpu
@torch.no_grad()
def test_on_gpu_matches_the_reference_and_keeps_the_properties(folder, cfg, weights):
    """On CUDA (Triton kernels where they import): the reference logits, and the split/pad/fork checks."""
    model = based.from_folder(folder, cfg, device="cuda")
    ids = _ids(cfg["vocab_size"], (2, 300), seed=8)
    _close(model(ids.cuda())[0].cpu(), reference_logits(cfg, weights, ids), tol=1e-3)
    check_all(_OnCuda(model), cfg["vocab_size"], tol=1e-3, pieces=False)
    check_graphed_prefill(model, cfg["vocab_size"])
    # bf16: the Triton prefill kernels (float32 takes the reference), masked pieces inside a CUDA graph
    check_graphed_prefill(based.from_folder(folder, cfg, device="cuda", dtype=torch.bfloat16), cfg["vocab_size"],
                          tol=3e-2)


@torch.no_grad()
def test_bfloat16_weights(folder, cfg, weights):
    """Model math in bf16 (the recurrent states stay float32): close to the float32 reference, same properties."""
    model = based.from_folder(folder, cfg, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.init_state(1).layers[1]["kv"].dtype == torch.float32
    ids = _ids(cfg["vocab_size"], (2, 30), seed=9)
    _close(model(ids)[0].float(), reference_logits(cfg, weights, ids), tol=1e-1)
    check_split_points(model, cfg["vocab_size"], tol=3e-2)
