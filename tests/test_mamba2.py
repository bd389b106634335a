"""Mamba-2 adapter: logits equal transformers' own forward (no cache) over several configs, the shared
property checks, HF and mamba_ssm checkpoint folders (with the mamba_ssm-only variants), and clear errors.
The GPU test runs the fla kernel path against the CPU reference."""

from __future__ import annotations

import copy
import json
from functools import partial

import pytest
import torch

from jrt_prompt.ops.backend import reference_ops

from jrt_prompt.adapters import mamba, mamba2
from jrt_prompt.checkpoint import read_config
from jrt_prompt.errors import CheckpointError
from jrt_prompt.layers.mamba2 import Mamba2Mixer
from tests.checkpoints_mamba import (assert_differentiable, expect_error, hf_logits, ids_for, load_folder,
                                     mamba1_ssm_cfg, mamba2_norm_before_gate, mamba2_ssm_cfg, mamba2_without_gated_norm,
                                     mamba_ssm_weights, randomize, tiny_mamba, tiny_mamba2,
                                     transformers_norms_over_groups, use_layer_norms, write_hf_folder,
                                     write_mamba_ssm_folder, TINY_MAMBA2)
from tests.properties import _close, check_all

CONFIGS = {
    "groups-bias-no-conv-bias": dict(use_bias=True, use_conv_bias=False),
    "odd-sizes-group-per-head-dt-limit": dict(hidden_size=21, num_heads=7, head_dim=6, n_groups=7, conv_kernel=3,
                                              state_size=5, time_step_limit=(0.2, 0.9), chunk_size=5),
    "one-group-tied-residual-in-model-dtype": dict(hidden_size=12, num_heads=3, head_dim=8, n_groups=1, state_size=4,
                                                   residual_in_fp32=False, tie_word_embeddings=True,
                                                   num_hidden_layers=3, layer_norm_epsilon=1e-6),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_equal_transformers(name):
    hf = tiny_mamba2(seed=1, **CONFIGS[name])
    assert mamba2.accepts_model(hf) and not mamba.accepts_model(hf)
    lm = mamba2.from_model(hf)
    ids = ids_for(hf.config.vocab_size)
    logits, state = lm(ids)
    _close(logits, hf_logits(hf, ids), 1e-4, f"{name}: logits vs transformers")
    c = hf.config
    assert state.layers[0]["ssm"].shape == (2, c.num_heads, c.head_dim, c.state_size)
    conv_dim = c.num_heads * c.head_dim + 2 * c.n_groups * c.state_size
    assert state.layers[0]["conv"].shape == (2, c.conv_kernel - 1, conv_dim)
    assert lm.config.arch == "mamba2" and lm.config.eos_token_id == 1


def test_transformers_gated_norm_ignores_groups():
    """The reference above carries mamba_ssm's per-group gated norm on every transformers version; this checks the
    reason: transformers < 5.23's own norm (over all channels) gives other logits once n_groups > 1."""
    if transformers_norms_over_groups():
        pytest.skip("this transformers normalises Mamba-2's gated norm per group (>= 5.23): nothing to show")
    from transformers import Mamba2Config, Mamba2ForCausalLM

    for n_groups, differs in ((2, True), (1, False)):
        torch.manual_seed(1)
        own = randomize(Mamba2ForCausalLM(Mamba2Config(**{**TINY_MAMBA2, "n_groups": n_groups})), seed=1)
        lm = mamba2.from_model(own)
        ids = ids_for(own.config.vocab_size)
        gap = (lm(ids)[0] - hf_logits(own, ids)).abs().max().item()
        assert (gap > 1e-2) == differs, (n_groups, gap)


def test_dt_limit_is_applied():
    """The clamped config must differ from the unclamped one, or the comparison above proves nothing about it."""
    hf = tiny_mamba2(seed=1, **CONFIGS["odd-sizes-group-per-head-dt-limit"])
    lm = mamba2.from_model(hf)
    ids = ids_for(hf.config.vocab_size)
    clamped, _ = lm(ids)
    for block in lm.blocks:
        block.mixer.dt_limit = (0.0, float("inf"))
    assert (lm(ids)[0] - clamped).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["groups-bias-no-conv-bias", "odd-sizes-group-per-head-dt-limit"])
def test_properties(name):
    lm = mamba2.from_model(tiny_mamba2(seed=2, **CONFIGS[name]))
    check_all(lm, lm.config.vocab_size)


def test_forward_is_differentiable():
    lm = mamba2.from_model(tiny_mamba2(seed=9, **CONFIGS["groups-bias-no-conv-bias"]))
    assert_differentiable(lm)


def test_weights_are_shared_not_copied():
    hf = tiny_mamba2(seed=3)
    lm = mamba2.from_model(hf)
    for ours, theirs in [(lm.embedding.weight, hf.backbone.embeddings.weight), (lm.lm_head.weight, hf.lm_head.weight),
                         (lm.blocks[1].mixer.dt_bias, hf.backbone.layers[1].mixer.dt_bias),
                         (lm.blocks[0].mixer.norm.weight, hf.backbone.layers[0].mixer.norm.weight)]:
        assert ours.data_ptr() == theirs.data_ptr()


@pytest.mark.parametrize("name", ["groups-bias-no-conv-bias", "odd-sizes-group-per-head-dt-limit"])
def test_hf_folder(tmp_path, name):
    """transformers 5 writes the default time_step_limit (0, inf) as [0.0, {"__float__": "Infinity"}]."""
    hf = tiny_mamba2(seed=4, **CONFIGS[name])
    lm = load_folder(write_hf_folder(hf, tmp_path / "hf"), "mamba2")
    ids = ids_for(48)
    _close(lm(ids)[0], hf_logits(hf, ids), 1e-4, "HF folder")
    lm16 = mamba2.from_folder(tmp_path / "hf", read_config(tmp_path / "hf"), dtype=torch.bfloat16)
    assert {p.dtype for p in lm16.parameters()} == {torch.bfloat16}
    logits16, state16 = lm16(ids)
    lm16.step(ids[:, 0], state16)
    ref = hf_logits(hf, ids)
    err = ((logits16.float() - ref).norm() / ref.norm()).item()
    assert err < 0.05, f"bfloat16 logits relative error {err}"


VARIANTS = ["tied-no-head-key", "untied-with-head", "d-has-hdim", "no-gated-norm", "norm-before-gate", "layer-norm",
            "dt-limit-odd-sizes"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_mamba_ssm_folder(tmp_path, variant):
    odd = variant == "dt-limit-odd-sizes"
    config = CONFIGS["odd-sizes-group-per-head-dt-limit" if odd else "groups-bias-no-conv-bias"]
    hf = tiny_mamba2(seed=5, **config, vocab_size=64, tie_word_embeddings=variant != "untied-with-head")
    extra, weights = {}, None
    if variant == "d-has-hdim":  # D per channel, mamba_ssm's (h p) order; the same value across a head's channels
        extra = {"D_has_hdim": True}
        weights = mamba_ssm_weights(hf)
        for i in range(hf.config.num_hidden_layers):
            key = f"backbone.layers.{i}.mixer.D"
            weights[key] = weights[key].repeat_interleave(hf.config.head_dim)
    elif variant == "no-gated-norm":
        hf, extra = mamba2_without_gated_norm(hf), {"rmsnorm": False}
    elif variant == "norm-before-gate":
        hf, extra = mamba2_norm_before_gate(hf), {"norm_before_gate": True}
    elif variant == "layer-norm":
        hf = use_layer_norms(hf, seed=6)
    path = write_mamba_ssm_folder(hf, tmp_path / variant, mamba2_ssm_cfg(hf.config, **extra), vocab_size=50,
                                  pad_multiple=16, write_head=variant != "tied-no-head-key",
                                  rms_norm=variant != "layer-norm", weights=weights)
    lm = load_folder(path, "mamba2")
    assert lm.config.vocab_size == 64
    ids = ids_for(64)
    _close(lm(ids)[0], hf_logits(hf, ids), 1e-4, f"mamba_ssm folder ({variant})")
    if variant in ("d-has-hdim", "no-gated-norm"):
        check_all(lm, 64)


def test_mamba_ssm_defaults_match_the_released_checkpoints():
    """{"layer": "Mamba2"} alone means d_state 128, d_conv 4, expand 2, headdim 64, ngroups 1 (mamba2-130m)."""
    config = {"d_model": 128, "d_intermediate": 0, "n_layer": 1, "vocab_size": 50277, "ssm_cfg": {"layer": "Mamba2"},
              "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
              "fused_add_norm": True, "pad_vocab_size_multiple": 16, "tie_embeddings": True}
    assert mamba2.accepts_folder(config, set()) and not mamba.accepts_folder(config, set())
    lm, tie = mamba2._skeleton_from_mamba_ssm(config)
    m = lm.blocks[0].mixer
    assert isinstance(m, Mamba2Mixer) and tie and lm.config.vocab_size == 50288
    assert (m.d_state, m.d_conv, m.n_heads, m.head_dim, m.n_groups) == (128, 4, 4, 64, 1)
    assert m.norm is not None and not m.norm.norm_before_gate and m.norm.eps == 1e-5
    assert tuple(m.in_proj.weight.shape) == (2 * 256 + 2 * 128 + 4, 128)


def test_errors(tmp_path):
    check = partial(expect_error, mamba2.from_folder)
    hf = tiny_mamba2(seed=7)
    good = write_mamba_ssm_folder(hf, tmp_path / "good", mamba2_ssm_cfg(hf.config))
    base = read_config(good)
    ssm = base["ssm_cfg"]
    check(good, {**base, "ssm_cfg": {**ssm, "d_ssm": 16}}, "d_ssm", "16")
    check(good, {**base, "ssm_cfg": {**ssm, "headdim": 5}}, "headdim", "5")
    check(good, {**base, "ssm_cfg": {**ssm, "ngroups": 3}}, "ngroups", "3")
    check(good, {**base, "ssm_cfg": {**ssm, "dt_limit": [0.5, 0.1]}}, "dt_limit")
    check(good, {**base, "ssm_cfg": {**ssm, "dt_rank": 4}}, "dt_rank")
    check(good, {**base, "d_intermediate": 32}, "d_intermediate", "32")
    hf_cfg = read_config(write_hf_folder(hf, tmp_path / "hf"))
    check(tmp_path / "hf", {**hf_cfg, "num_heads": 3}, "num_heads")
    check(tmp_path / "hf", {**hf_cfg, "hidden_act": "mish"}, "hidden_act", "mish")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**hf_cfg, "n_groups": 3}))
    check(tmp_path / "hf", read_config(tmp_path / "hf"), "n_groups")


@pytest.mark.gpu
@torch.no_grad()
def test_cuda_fast_path_matches_cpu_reference():
    pytest.importorskip("fla.ops.simple_gla", reason="flash-linear-attention is not installed (pip install '.[cuda]')")
    hf = tiny_mamba2(seed=8, hidden_size=64, num_heads=4, head_dim=32, state_size=16, n_groups=2, vocab_size=64,
                     num_hidden_layers=2)
    cpu = mamba2.from_model(copy.deepcopy(hf))
    gpu = mamba2.from_model(hf.cuda())
    ids = ids_for(64, batch=3, length=150)
    mask = torch.ones_like(ids)
    mask[1, :40] = 0
    ref, ref_state = cpu(ids, attention_mask=mask)
    got, got_state = gpu(ids.cuda(), attention_mask=mask.cuda())
    rel = lambda a, b: ((a.cpu().double() - b.double()).norm() / b.double().norm()).item()  # noqa: E731
    assert rel(got.cpu()[mask.bool()], ref[mask.bool()]) < 5e-3  # fla's fp32 matmuls may run in TF32
    for a, b in zip(got_state.tensors()[1:], ref_state.tensors()[1:]):
        assert rel(a, b) < 5e-3
    # Prefill in two pieces on the kernel path, then decode steps: equals one CPU pass.
    _, s = gpu(ids[:, :70].cuda())
    l2, s = gpu(ids[:, 70:140].cuda(), s)
    steps = [gpu.step(ids[:, t].cuda(), s)[0][:, None] for t in range(140, 150)]
    full, _ = cpu(ids)
    assert rel(torch.cat([l2, *steps], 1), full[:, 70:]) < 5e-3
    # bfloat16 weights on the kernel path are as close to the float32 answer as the bf16 reference path is
    # (bf16 rounding alone is several percent on these random weights: 4.8% measured on an H100)
    lm16 = mamba2.from_model(copy.deepcopy(hf).to(torch.bfloat16).cuda())
    fast16 = rel(lm16(ids.cuda())[0].float(), full)
    with reference_ops():
        ref16 = rel(lm16(ids.cuda())[0].float(), full)
    assert fast16 < 1.25 * ref16 + 1e-3, (fast16, ref16)


def test_the_loader_picks_these_adapters(tmp_path):
    """Through jrt_prompt.loading (what ``jrt_prompt.load`` runs): each folder goes to the right adapter."""
    from jrt_prompt.loading import load_model

    hf1 = tiny_mamba(seed=10)
    lm, _ = load_model(write_mamba_ssm_folder(hf1, tmp_path / "m1", mamba1_ssm_cfg(hf1.config)))
    assert lm.config.arch == "mamba"
    hf2 = tiny_mamba2(seed=10)
    lm, _ = load_model(write_mamba_ssm_folder(hf2, tmp_path / "m2", mamba2_ssm_cfg(hf2.config)))
    assert lm.config.arch == "mamba2"
    _close(lm(ids_for(48))[0], hf_logits(hf2, ids_for(48)), 1e-4, "mamba_ssm Mamba-2 folder through load_model")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    for folder, words in ((tmp_path / "other", "unsupported kind"), (tmp_path / "empty", "no such model folder")):
        with pytest.raises(CheckpointError, match=words):
            load_model(folder)
