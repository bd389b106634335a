"""Mamba (1) adapter: logits equal transformers' own forward (no cache) over several configs, the shared
property checks, shared (not copied) weights, HF and mamba_ssm checkpoint folders, and clear errors."""

from __future__ import annotations

import copy
import json
from functools import partial

import pytest
import torch

from jrt_prompt.adapters import mamba, mamba2
from jrt_prompt.checkpoint import read_config
from jrt_prompt.errors import CheckpointError
from jrt_prompt.ops.backend import reference_ops
from tests.checkpoints_mamba import (assert_differentiable, expect_error, hf_logits, ids_for, load_folder,
                                     mamba1_ssm_cfg, mamba_ssm_weights, tiny_mamba, use_layer_norms,
                                     write_hf_folder, write_mamba_ssm_folder)
from tests.properties import _close, check_all

CONFIGS = {
    "odd-sizes-bias-no-conv-bias": dict(hidden_size=19, state_size=5, conv_kernel=3, time_step_rank=3, use_bias=True,
                                        use_conv_bias=False),
    "defaults-residual-in-model-dtype": dict(hidden_size=16, residual_in_fp32=False),
    "gelu-wide-expand-eps": dict(hidden_size=12, state_size=3, expand=3, hidden_act="gelu", time_step_rank=5,
                                 layer_norm_epsilon=1e-6, num_hidden_layers=3),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_equal_transformers(name):
    hf = tiny_mamba(seed=1, **CONFIGS[name])
    assert mamba.accepts_model(hf) and not mamba2.accepts_model(hf)
    lm = mamba.from_model(hf)
    ids = ids_for(hf.config.vocab_size)
    logits, state = lm(ids)
    _close(logits, hf_logits(hf, ids), 1e-4, f"{name}: logits vs transformers")
    layer = state.layers[0]
    d_inner = hf.config.intermediate_size
    assert layer["conv"].shape == (2, hf.config.conv_kernel - 1, d_inner)
    assert layer["ssm"].shape == (2, d_inner, hf.config.state_size) and layer["ssm"].dtype == torch.float32
    assert lm.config.arch == "mamba" and lm.config.eos_token_id == 1 and lm.config.pad_token_id == 0


@pytest.mark.parametrize("name", ["odd-sizes-bias-no-conv-bias", "defaults-residual-in-model-dtype"])
def test_properties(name):
    lm = mamba.from_model(tiny_mamba(seed=2, **CONFIGS[name]))
    check_all(lm, lm.config.vocab_size)


def test_forward_is_differentiable():
    lm = mamba.from_model(tiny_mamba(seed=9, **CONFIGS["odd-sizes-bias-no-conv-bias"]))
    assert_differentiable(lm)


def test_weights_are_shared_not_copied():
    hf = tiny_mamba(seed=3)
    lm = mamba.from_model(hf)
    pairs = [(lm.embedding.weight, hf.backbone.embeddings.weight), (lm.lm_head.weight, hf.lm_head.weight),
             (lm.blocks[1].mixer.A_log, hf.backbone.layers[1].mixer.A_log),
             (lm.blocks[0].mixer.conv1d.weight, hf.backbone.layers[0].mixer.conv1d.weight)]
    for ours, theirs in pairs:
        assert ours.data_ptr() == theirs.data_ptr()
    ids = ids_for(48, length=7)
    before, _ = lm(ids)
    with torch.no_grad():
        hf.backbone.layers[0].mixer.out_proj.weight.mul_(2)
    after, _ = lm(ids)
    _close(after, hf_logits(hf, ids), 1e-4, "after changing the HF weights in place")
    assert not torch.allclose(before, after)


def test_hf_folder(tmp_path):
    hf = tiny_mamba(seed=4, **CONFIGS["odd-sizes-bias-no-conv-bias"])
    lm = load_folder(write_hf_folder(hf, tmp_path / "hf"), "mamba")
    ids = ids_for(48)
    _close(lm(ids)[0], hf_logits(hf, ids), 1e-4, "HF folder")
    assert lm.lm_head.weight.data_ptr() == lm.embedding.weight.data_ptr(), "tied head must stay tied"
    lm16 = mamba.from_folder(tmp_path / "hf", read_config(tmp_path / "hf"), dtype=torch.bfloat16)
    assert {p.dtype for p in lm16.parameters()} == {torch.bfloat16}
    logits16, state16 = lm16(ids)
    assert state16.layers[0]["ssm"].dtype == torch.float32
    err = ((logits16.float() - hf_logits(hf, ids)).norm() / hf_logits(hf, ids).norm()).item()
    assert err < 0.05, f"bfloat16 logits relative error {err}"


@pytest.mark.parametrize("variant", ["legacy-config-defaults", "explicit-ssm-cfg", "no-head-key", "untied",
                                     "layer-norm"])
def test_mamba_ssm_folder(tmp_path, variant):
    if variant == "legacy-config-defaults":  # like state-spaces/mamba-130m: ssm_cfg {} and the old field set
        hf = tiny_mamba(seed=5, hidden_size=20, state_size=16, vocab_size=56)
        path = write_mamba_ssm_folder(hf, tmp_path / variant, mamba1_ssm_cfg(hf.config, defaults=True),
                                      vocab_size=50, legacy=True)
    else:
        hf = tiny_mamba(seed=5, **CONFIGS["odd-sizes-bias-no-conv-bias"],
                        tie_word_embeddings=variant != "untied")
        if variant == "layer-norm":
            hf = use_layer_norms(hf, seed=6)
        path = write_mamba_ssm_folder(hf, tmp_path / variant, mamba1_ssm_cfg(hf.config), vocab_size=45,
                                      write_head=variant != "no-head-key", rms_norm=variant != "layer-norm")
    config = json.loads((path / "config.json").read_text())
    assert "model_type" not in config
    lm = load_folder(path, "mamba")
    assert lm.config.vocab_size == hf.config.vocab_size  # padded up to the multiple
    ids = ids_for(hf.config.vocab_size)
    _close(lm(ids)[0], hf_logits(hf, ids), 1e-4, f"mamba_ssm folder ({variant})")
    if variant == "layer-norm":
        check_all(lm, lm.config.vocab_size)


def test_errors(tmp_path):
    check = partial(expect_error, mamba.from_folder)
    hf = tiny_mamba(seed=7)
    good = write_mamba_ssm_folder(hf, tmp_path / "good", mamba1_ssm_cfg(hf.config))
    base = read_config(good)
    # Not a checkpoint at all.
    with pytest.raises(CheckpointError, match="config.json"):
        read_config(tmp_path)
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps(base))
    check(tmp_path / "noweights", read_config(tmp_path / "noweights"), "no weights")
    # A config of an unknown kind is taken by neither Mamba adapter.
    for other in ({"model_type": "llama", "hidden_size": 8}, {"n_embd": 8, "n_layer": 2, "vocab_size": 10}):
        assert not mamba.accepts_folder(other, set()) and not mamba2.accepts_folder(other, set())
    # Unsupported field values name the field and the value.
    check(good, {**base, "d_intermediate": 64}, "d_intermediate", "64")
    check(good, {**base, "attn_layer_idx": [1]}, "attn_layer_idx", "[1]")
    check(good, {**base, "ssm_cfg": {**base["ssm_cfg"], "layer": "Mamba3"}}, "ssm_cfg.layer", "Mamba3")
    check(good, {**base, "norm_epsilon": 1e-6}, "norm_epsilon")
    check(good, {**base, "ssm_cfg": {**base["ssm_cfg"], "headdim": 4}}, "headdim")
    check(good, {**base, "ssm_cfg": {**base["ssm_cfg"], "d_state": 5}}, "shape")
    hf_cfg = json.loads(write_hf_folder(hf, tmp_path / "hf").joinpath("config.json").read_text())
    check(tmp_path / "hf", {**hf_cfg, "hidden_act": "mish"}, "hidden_act", "mish")
    # Weights that disagree with the config: a missing head (untied), an extra tensor.
    nohead = write_mamba_ssm_folder(hf, tmp_path / "nohead", mamba1_ssm_cfg(hf.config), tie=False, write_head=False)
    check(nohead, read_config(nohead), "lack", "lm_head.weight")
    torch.save({**mamba_ssm_weights(hf), "backbone.layers.0.mlp.fc1.weight": torch.zeros(2, 2)},
               good / "pytorch_model.bin")
    check(good, base, "mlp.fc1")


@pytest.mark.gpu
@torch.no_grad()
def test_cuda_matches_cpu():
    hf = tiny_mamba(seed=8, hidden_size=64, state_size=16, vocab_size=64)
    cpu = mamba.from_model(copy.deepcopy(hf))
    ids = ids_for(64, batch=3, length=150)
    ref, _ = cpu(ids)
    rel = lambda a, b: ((a.cpu().double() - b.double()).norm() / b.double().norm()).item()  # noqa: E731
    def pieces_and_steps(gpu):
        _, s = gpu(ids[:, :100].cuda())
        l2, s = gpu(ids[:, 100:140].cuda(), s)
        steps = [gpu.step(ids[:, t].cuda(), s)[0][:, None] for t in range(140, 150)]
        return rel(torch.cat([l2, *steps], 1).float(), ref[:, 100:])

    assert pieces_and_steps(mamba.from_model(copy.deepcopy(hf).cuda())) < 2e-3  # cuDNN convs may use TF32
    # bfloat16: the fast paths are as close to the float32 answer as the bf16 reference path on the GPU is (bf16
    # rounding alone is ~3% on these random weights; the fused conv + SiLU rounds once where the reference rounds
    # twice, so the two differ by a hair either way)
    gpu16 = mamba.from_model(copy.deepcopy(hf).to("cuda", torch.bfloat16))
    fast16 = pieces_and_steps(gpu16)
    with reference_ops():
        ref16 = pieces_and_steps(gpu16)
    assert fast16 < 1.25 * ref16 + 1e-3, (fast16, ref16)
