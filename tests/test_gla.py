"""GLA models: the recurrent-model properties, format-faithful fla checkpoints through from_folder, load and
AutoModelForCausalLM, clear errors for unsupported configs, and (when fla is installed) fla's own
GLAForCausalLM: same weights through from_model (shared, not copied), and the same logits as fla's forward run
on CPU by Triton's interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import jrt_prompt.adapters as adapters
from jrt_prompt.adapters import gla as adapter
from jrt_prompt.errors import CheckpointError, UnsupportedModelError
from tests.checkpoints_gla import (VARIANTS, fla_gla_model, fla_shapes, gla_config, random_weights, require,
                                   write_gla_checkpoint)
from tests.properties import check_all
from tests.tokenizer_fixture import tiny_tokenizer


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("gla")
    return {name: write_gla_checkpoint(root / name, gla_config(**ov), random_weights(gla_config(**ov), seed=i))
            for i, (name, ov) in enumerate(VARIANTS.items())}


def load_folder(folder, **kw):
    return adapter.from_folder(folder, json.loads((folder / "config.json").read_text()), **kw)


# --- the recurrent-model properties ---------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_properties(folders, variant):
    lm = load_folder(folders[variant])
    check_all(lm, lm.config.vocab_size)


@pytest.mark.parametrize("variant", ["default", "conv_gqa_featuremap"])
def test_long_read_in_pieces_crosses_chunks(folders, variant):
    """150 tokens (three 64-token chunks) read at once, in two pieces, and the tail one token at a time."""
    lm = load_folder(folders[variant])
    ids = torch.randint(0, 64, (2, 150), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, _ = lm(ids)
        a, s = lm(ids[:, :70])
        b, s = lm(ids[:, 70:140], s)
        steps = [lm.step(ids[:, t], s)[0][:, None] for t in range(140, 150)]
    assert rel_err(torch.cat([a, b, *steps], 1), full) < 1e-5


def test_state_layout(folders):
    lm = load_folder(folders["conv_gqa_featuremap"])
    state = lm.init_state(3)
    layer = state.layers[0]
    assert set(layer) == {"kv", "conv_q", "conv_k", "conv_v"}
    assert layer["kv"].shape == (3, 4, 8, 8) and layer["kv"].dtype == torch.float32  # heads, K = 32/4, V = 32/4
    assert layer["conv_q"].shape == (3, 2, 32) and layer["conv_k"].shape == (3, 2, 16)  # GQA: 2 kv heads
    assert set(load_folder(folders["default"]).init_state(1).layers[0]) == {"kv"}


# --- the folder format ----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_from_folder_reads_every_weight(folders, variant):
    folder = folders[variant]
    cfg = json.loads((folder / "config.json").read_text())
    sd = random_weights(cfg, seed=list(VARIANTS).index(variant))
    lm = load_folder(folder)
    seen = set()
    for name, p in lm.named_parameters(remove_duplicate=False):
        key = adapter.fla_name(name)
        if key == "lm_head.weight" and cfg["tie_word_embeddings"]:
            key = "model.embeddings.weight"
        assert torch.equal(p, sd[key]), name
        seen.add(key)
    assert seen == set(sd)
    assert lm.config.arch == "gla" and lm.config.n_layer == 2 and lm.config.vocab_size == 64
    assert lm.config.eos_token_id == 2


def test_tied_embeddings_share_one_tensor(folders):
    lm = load_folder(folders["tied"])
    assert lm.lm_head.weight is lm.embedding.weight


def test_dtype_and_precision(folders):
    lm32 = load_folder(folders["conv_gqa_featuremap"])
    lm16 = load_folder(folders["conv_gqa_featuremap"], dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in lm16.parameters())
    ids = torch.randint(0, 64, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        l32, s32 = lm32(ids)
        l16, s16 = lm16(ids)
    assert s16.layers[0]["kv"].dtype == torch.float32
    assert rel_err(l16.float(), l32) < 5e-2


def test_accepts_folder():
    assert adapter.accepts_folder({"model_type": "gla"}, {"config.json", "model.safetensors"})
    assert not adapter.accepts_folder({"model_type": "mamba"}, {"config.json"})
    assert not adapter.accepts_folder({"d_model": 768, "ssm_cfg": {}}, {"config.json"})


def _only_importable_adapters(monkeypatch):
    """Other architectures' adapters may not exist yet in this tree; load must still reach ours."""
    names = []
    for name in adapters.ADAPTER_MODULES:
        try:
            __import__(f"jrt_prompt.adapters.{name}")
            names.append(name)
        except ImportError:
            pass
    monkeypatch.setattr(adapters, "ADAPTER_MODULES", tuple(names))


def test_load_through_jrt_prompt_load(folders, tmp_path, monkeypatch):
    from jrt_prompt.loading import load

    _only_importable_adapters(monkeypatch)
    cfg = gla_config()
    folder = write_gla_checkpoint(tmp_path / "ckpt", cfg, random_weights(cfg, seed=0), tokenizer=tiny_tokenizer())
    engine = load(folder)
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(engine.model(ids)[0], load_folder(folders["default"])(ids)[0])
    assert engine.model.config.arch == "gla"
    assert load(folder, dtype="bfloat16").model.dtype == torch.bfloat16


def test_legacy_fused_gate_up_mlp_loads(folders, tmp_path):
    """fla's 2024 layout (the fla-hub GLA era): one gate_proj [2I, d] chunked into (gate, up) in that order."""
    cfg = gla_config()
    sd = random_weights(cfg, seed=0)
    legacy = {k: v for k, v in sd.items() if ".up_proj." not in k}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}.mlp."
        legacy[p + "gate_proj.weight"] = torch.cat([sd[p + "gate_proj.weight"], sd[p + "up_proj.weight"]])
    lm = load_folder(write_gla_checkpoint(tmp_path / "legacy", cfg, legacy))
    ids = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(lm(ids)[0], load_folder(folders["default"])(ids)[0])


# --- clear errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, field", [
    ({"attn": {"layers": [1], "num_heads": 2, "num_kv_heads": None, "qkv_bias": False, "window_size": None,
               "rope_theta": 10000.0}}, "attn"),
    ({"hidden_act": "powlu"}, "hidden_act"),
    ({"feature_map": "elu_p1"}, "feature_map"),
    ({"attnres_block_size": 2}, "attnres_block_size"),
    ({"attn_mode": "parallel"}, "attn_mode"),
])
def test_unsupported_configs_name_the_field(overrides, field):
    with pytest.raises(UnsupportedModelError, match=field):
        adapter.build(gla_config(**overrides))


def test_softmax_attention_outside_the_model_is_fine():
    adapter.build(gla_config(attn={"layers": [7], "num_heads": 2}))  # no layer 7 in a 2-layer model


@pytest.mark.parametrize("overrides, message", [
    ({"expand_k": 0.3}, "expand_k"),
    ({"num_heads": 3}, "num_heads=3"),
    ({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads=3"),
])
def test_inconsistent_configs_raise_checkpoint_error(overrides, message):
    with pytest.raises(CheckpointError, match=message):
        adapter.build(gla_config(**overrides))


def test_bad_weights_raise_checkpoint_error(tmp_path):
    cfg = gla_config()
    sd = random_weights(cfg)
    missing = dict(sd)
    del missing["model.layers.1.attn.gk_proj.1.bias"]
    with pytest.raises(CheckpointError, match="gk_proj.1.bias"):
        load_folder(write_gla_checkpoint(tmp_path / "missing", cfg, missing))
    wrong = dict(sd, **{"model.layers.0.attn.q_proj.weight": torch.zeros(8, 32)})
    with pytest.raises(CheckpointError, match=r"q_proj.weight.*\(8, 32\)"):
        load_folder(write_gla_checkpoint(tmp_path / "shape", cfg, wrong))
    extra = dict(sd, **{"model.layers.0.attn.gv_proj.weight": torch.zeros(32, 32)})
    with pytest.raises(CheckpointError, match="gv_proj"):
        load_folder(write_gla_checkpoint(tmp_path / "extra", cfg, extra))
    no_head = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        load_folder(write_gla_checkpoint(tmp_path / "nohead", cfg, no_head))


# --- against fla itself (skipped visibly without flash-linear-attention) ------------------------
def fla_model(cfg, sd=None):
    require("fla.models")
    return fla_gla_model(cfg, sd)


@pytest.mark.parametrize("variant", VARIANTS)
def test_test_checkpoints_are_what_fla_writes(variant, tmp_path):
    from safetensors.torch import load_file

    cfg = gla_config(**VARIANTS[variant])
    fla_model(cfg).save_pretrained(tmp_path)
    import transformers

    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved.pop("transformers_version") == transformers.__version__  # the fixture's own: 5.24.0
    assert saved == {k: v for k, v in cfg.items() if k != "transformers_version"}
    written = load_file(str(tmp_path / "model.safetensors"))
    assert {k: tuple(v.shape) for k, v in written.items()} == fla_shapes(cfg)


@pytest.mark.parametrize("variant", VARIANTS)
def test_from_model_shares_fla_weights_and_equals_from_folder(variant, tmp_path):
    cfg = gla_config(**VARIANTS[variant])
    model = fla_model(cfg, random_weights(cfg, seed=5))
    assert adapter.accepts_model(model) and not adapter.accepts_model(torch.nn.Linear(2, 2))
    lm = adapter.from_model(model)
    theirs = {id(p) for p in model.parameters()}
    assert all(id(p) in theirs for p in lm.parameters())  # the very same tensors: no copy
    model.save_pretrained(tmp_path)
    from_disk = load_folder(tmp_path)
    mine = dict(lm.named_parameters(remove_duplicate=False))
    for name, p in from_disk.named_parameters(remove_duplicate=False):
        assert torch.equal(p, mine[name]), name


def test_wrap_picks_the_gla_adapter(monkeypatch):
    from jrt_prompt.loading import as_model

    _only_importable_adapters(monkeypatch)
    cfg = gla_config()
    model = fla_model(cfg, random_weights(cfg))
    lm = as_model(model)
    assert lm.config.arch == "gla" and lm.embedding.weight is model.model.embeddings.weight


def test_fla_model_with_another_mixer_is_refused():
    """(fla cannot build a real hybrid without flash-attn; a swapped-in module stands for its Attention layer.)"""
    model = fla_model(gla_config())
    model.model.layers[1].attn = torch.nn.Identity()
    with pytest.raises(UnsupportedModelError, match="layer 1 is a Identity"):
        adapter.from_model(model)


@pytest.mark.parametrize("variant", VARIANTS)
def test_automodel_loads_the_test_checkpoints(folders, variant):
    require("fla")  # importing fla registers GLA with the Auto classes
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(str(folders[variant]), output_loading_info=True)
    assert type(model).__name__ == "GLAForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ours = load_folder(folders[variant])
    theirs = model.state_dict()
    for name, p in ours.named_parameters(remove_duplicate=False):
        assert torch.equal(p, theirs[adapter.fla_name(name)]), name


# fla's kernels are Triton; with TRITON_INTERPRET=1 they run on CPU (the recurrent one fla's layer uses for
# <= 64 tokens; the chunk kernels use loop forms the interpreter rejects). Autotuning needs a GPU benchmarker,
# so each kernel keeps its first config. A fresh process: the variable must be set before Triton is imported.
FLA_INTERPRETED = textwrap.dedent("""
    import sys, warnings
    warnings.filterwarnings("ignore")
    import torch
    import triton.runtime.autotuner as autotuner
    prune = autotuner.Autotuner.prune_configs
    autotuner.Autotuner.prune_configs = lambda self, kwargs: prune(self, kwargs)[:1]
    from fla.models import GLAForCausalLM
    inputs = torch.load(sys.argv[1])
    out = {}
    for name, folder in inputs["folders"].items():
        model = GLAForCausalLM.from_pretrained(folder).eval()
        with torch.no_grad():  # unpadded: fla's plain kernel path; padded: its varlen path
            plain = model(inputs["ids"]).logits if name == "default" else None
            out[name] = (plain, model(inputs["ids"], attention_mask=inputs["mask"]).logits)
    torch.save(out, sys.argv[2])
""")


@pytest.mark.slow  # about 15 s: a fresh process imports fla under the interpreter
def test_logits_equal_fla_forward_interpreted_on_cpu(folders, tmp_path):
    require("fla.models")
    require("triton")
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 64, (3, 16), generator=gen)
    mask = torch.ones(3, 16, dtype=torch.long)
    mask[1, :6] = 0
    mask[2, :13] = 0
    torch.save({"folders": {k: str(v) for k, v in folders.items()}, "ids": ids, "mask": mask}, tmp_path / "in.pt")
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-c", FLA_INTERPRETED, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = torch.load(tmp_path / "out.pt")
    real = mask.bool()
    for name, folder in folders.items():
        lm = load_folder(folder)
        with torch.no_grad():
            plain, _ = lm(ids)
            padded, _ = lm(ids, attention_mask=mask)
        if theirs[name][0] is not None:
            assert rel_err(plain, theirs[name][0]) < 1e-5, name
        assert rel_err(padded[real], theirs[name][1][real]) < 1e-5, name
