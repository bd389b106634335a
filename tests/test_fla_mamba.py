"""fla's own Mamba / Mamba-2 (flash-linear-attention 0.6.0): ``wrap`` of its MambaForCausalLM and
Mamba2ForCausalLM and ``load`` of the folders its save_pretrained writes.

- from_model shares fla's tensors and reads fla's config fields (norm_eps, dt_rank, dt_limit, rmsnorm,
  norm_before_gate, D_has_hdim, residual_in_fp32 with fla's dtype rule);
- logits equal transformers' forward over the same weights where the math is the same (fast, in process), and
  fla's own forward (prefill, left-padded prefill, then cached one-token steps) run on CPU under Triton's
  interpreter, in fp32 and in the two bfloat16 layouts fla users get (from_pretrained(dtype=bf16): float32 norms
  and A_log; model.to(bf16));
- the shared property checks; save_pretrained -> jrt_prompt.load round trips (also in bf16, tensor by tensor as
  fla's from_pretrained builds the model); transformers' folders stay transformers'; clear errors.
GPU tests compare against fla's forward on CUDA. Everything skips visibly when fla is not installed.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import jrt_prompt
from jrt_prompt.adapters import fla_mamba, mamba, mamba2
from jrt_prompt.checkpoint import read_config
from jrt_prompt.errors import CheckpointError, UnsupportedModelError
from jrt_prompt.layers.fla_norm import FlaRMSNorm
from jrt_prompt.loading import as_model
from jrt_prompt.ops.backend import importable
from tests.checkpoints_gla import require
from tests.checkpoints_mamba import grouped_gated_norms, ids_for, load_folder, randomize, tiny_mamba, tiny_mamba2
from tests.properties import _close, check_all
from tests.tokenizer_fixture import tiny_tokenizer

ADAPTERS = {"mamba": mamba, "mamba2": mamba2}
BASE = {"mamba": dict(vocab_size=48, hidden_size=16, state_size=4, num_hidden_layers=2, pad_token_id=0,
                      eos_token_id=1),
        "mamba2": dict(vocab_size=48, hidden_size=16, head_dim=8, state_size=6, n_groups=2, num_hidden_layers=2,
                       chunk_size=8, pad_token_id=0, eos_token_id=1)}
# name -> (arch, overrides of fla's config); every field that changes the math is off its default somewhere
VARIANTS = {
    "mamba-defaults": ("mamba", {}),  # fla's Mamba defaults: residual stream in the model dtype, untied head
    "mamba-fp32-residual-bias-tied-eps": ("mamba", dict(residual_in_fp32=True, use_bias=True, use_conv_bias=False,
                                                        tie_word_embeddings=True, norm_eps=1e-2, dt_rank=3,
                                                        conv_kernel=3, num_hidden_layers=3)),
    "mamba2-groups": ("mamba2", {}),
    "mamba2-no-gated-norm-dhdim-dt-limit": ("mamba2", dict(rmsnorm=False, D_has_hdim=True, dt_limit=(0.2, 0.9),
                                                           use_bias=True, n_groups=1)),
    "mamba2-norm-before-gate-eps-tied": ("mamba2", dict(norm_before_gate=True, norm_eps=1e-2, hidden_size=12,
                                                        head_dim=6, n_groups=4, state_size=5, conv_kernel=3,
                                                        use_conv_bias=False, residual_in_fp32=False,
                                                        tie_word_embeddings=True)),
}
# representable in transformers' config (same math there): name -> transformers config fields
AS_TRANSFORMERS = {
    "mamba-defaults": dict(residual_in_fp32=False, tie_word_embeddings=False),
    "mamba-fp32-residual-bias-tied-eps": dict(residual_in_fp32=True, use_bias=True, use_conv_bias=False,
                                              tie_word_embeddings=True, layer_norm_epsilon=1e-2, time_step_rank=3,
                                              conv_kernel=3, num_hidden_layers=3),
    "mamba2-groups": dict(num_heads=4),
}


@pytest.fixture(scope="module", autouse=True)
def needs_fla():
    require("fla.models")


def fla_config(name: str):
    from fla.models import Mamba2Config, MambaConfig

    arch, overrides = VARIANTS[name]
    return (MambaConfig if arch == "mamba" else Mamba2Config)(**{**BASE[arch], **overrides})


def fla_model(name: str, seed: int = 0, **extra):
    """fla's model of a variant, every parameter random (fla's init leaves D = 1, norms = 1 ...). Builds on CPU."""
    from fla.models import Mamba2ForCausalLM, MambaForCausalLM

    config = fla_config(name)
    for k, v in extra.items():
        setattr(config, k, v)
    cls = MambaForCausalLM if VARIANTS[name][0] == "mamba" else Mamba2ForCausalLM
    torch.manual_seed(seed)
    return randomize(cls(config), seed)


def wrapped(model):
    """What wrap() builds for ``model``: the loader's adapter dispatch."""
    return as_model(model)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


# --- wrapping fla's models ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", VARIANTS)
def test_wrap_shares_fla_tensors(name):
    model = fla_model(name)
    arch = VARIANTS[name][0]
    assert ADAPTERS[arch].accepts_model(model)
    assert fla_mamba.is_fla_model(model, type(model).__name__)
    lm = wrapped(model)
    assert lm.config.arch == arch
    theirs = {t.data_ptr() for t in model.state_dict().values()}
    assert all(p.data_ptr() in theirs for p in lm.state_dict().values())  # the very same storage: no copy
    assert lm.embedding.weight.data_ptr() == model.backbone.embeddings.weight.data_ptr()
    tied = model.config.tie_word_embeddings
    assert (lm.lm_head.weight.data_ptr() == lm.embedding.weight.data_ptr()) == tied


def test_transformers_models_still_take_the_transformers_path():
    for model in (tiny_mamba(), tiny_mamba2()):
        assert not fla_mamba.is_fla_model(model, type(model).__name__)
        assert all(type(b.norm).__name__ == "RMSNorm" for b in wrapped(model).blocks)


@pytest.mark.parametrize("name", VARIANTS)
def test_fla_config_fields_are_mapped(name):
    """The fields transformers' config lacks (or names otherwise) reach our layers with fla's values."""
    model = fla_model(name)
    c, lm = model.config, wrapped(model)
    assert isinstance(lm.norm_f, FlaRMSNorm) and lm.norm_f.eps == c.norm_eps
    assert all(isinstance(b.norm, FlaRMSNorm) and b.norm.eps == c.norm_eps for b in lm.blocks)
    assert lm.config.residual_in_fp32 == c.residual_in_fp32  # all-fp32 model: fla's stream is fp32 iff this
    assert (lm.config.eos_token_id, lm.config.pad_token_id, lm.config.n_layer) == (1, 0, c.num_hidden_layers)
    mixer = lm.blocks[0].mixer
    if VARIANTS[name][0] == "mamba":
        assert (mixer.dt_rank, mixer.d_conv, mixer.d_inner) == (c.dt_rank, c.conv_kernel, c.intermediate_size)
        return
    assert mixer.dt_limit == tuple(c.dt_limit)
    assert (mixer.norm is None) == (not c.rmsnorm)
    if mixer.norm is not None:
        assert mixer.norm.eps == c.norm_eps and mixer.norm.norm_before_gate == c.norm_before_gate
        assert mixer.norm.group_size == c.num_heads * c.head_dim // c.n_groups
    assert mixer.D.shape[0] == (c.num_heads * c.head_dim if c.D_has_hdim else c.num_heads)


@pytest.mark.parametrize("name", AS_TRANSFORMERS)
def test_logits_equal_transformers_on_the_same_weights(name):
    import transformers

    model = fla_model(name, seed=1)
    arch = VARIANTS[name][0]
    cls = transformers.MambaForCausalLM if arch == "mamba" else transformers.Mamba2ForCausalLM
    cfg = (transformers.MambaConfig if arch == "mamba" else transformers.Mamba2Config)(
        **{**BASE[arch], **AS_TRANSFORMERS[name]})
    hf = cls(cfg).eval() if arch == "mamba" else grouped_gated_norms(cls(cfg).eval())
    hf.load_state_dict(model.state_dict(), strict=True)
    ids = ids_for(48, batch=2, length=19)
    with torch.no_grad():
        want = hf(ids, use_cache=False).logits
        got, _ = wrapped(model)(ids)
    _close(got, want, 1e-4, f"{name}: wrapped fla model vs transformers over the same weights")


@pytest.mark.parametrize("name", ["mamba-defaults", "mamba-fp32-residual-bias-tied-eps",
                                  "mamba2-no-gated-norm-dhdim-dt-limit", "mamba2-norm-before-gate-eps-tied"])
def test_properties(name):
    """(mamba2-groups has transformers' math, checked in test_mamba2.py.)"""
    lm = wrapped(fla_model(name, seed=2))
    check_all(lm, lm.config.vocab_size)


def test_properties_bfloat16_with_float32_norms():
    """fla's from_pretrained(dtype=bf16) layout: norms and A_log float32, the rest bf16; fp32 residual stream."""
    model = fla_model("mamba2-groups", seed=3).to(torch.bfloat16)
    for module in [*[layer.norm for layer in model.backbone.layers], model.backbone.norm_f]:
        module.float()
    for layer in model.backbone.layers:
        layer.mixer.A_log.data = layer.mixer.A_log.data.float()
    lm = wrapped(model)
    assert lm.config.residual_in_fp32 and lm.blocks[0].norm.out_dtype == torch.bfloat16
    logits, _ = lm(ids_for(48, length=9))
    assert logits.dtype == torch.bfloat16
    check_all(lm, lm.config.vocab_size, tol=3e-2)


def test_model_cast_whole_to_bfloat16_keeps_its_stream_in_bfloat16():
    """fla casts the residual sum back to the norm weight's dtype: after model.to(bf16) that is bf16, even with
    residual_in_fp32; our blocks then add in bf16 too (one rounding of the same fp32 sum)."""
    model = fla_model("mamba2-groups", seed=3).to(torch.bfloat16)
    lm = wrapped(model)
    assert model.config.residual_in_fp32 and not lm.config.residual_in_fp32
    assert not any(b.residual_in_fp32 for b in lm.blocks)


def test_fla_rms_norm_rounds_once_and_follows_casts():
    torch.manual_seed(0)
    x = torch.randn(3, 16).bfloat16()
    norm = FlaRMSNorm(16, eps=1e-5, out_dtype=torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(1 + torch.randn(16))
    want = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight).bfloat16()
    assert torch.equal(norm(x.float()), want)
    norm.half()
    assert norm.out_dtype == torch.float16 and norm.weight.dtype == torch.float16
    assert FlaRMSNorm(16)(x).dtype == torch.bfloat16  # out_dtype None: the input's


def test_wrap_generates_with_the_fla_model():
    tok = tiny_tokenizer()
    vocab = len(tok) + (-len(tok) % 8)
    model = fla_model("mamba2-groups", seed=4, vocab_size=vocab, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    engine = jrt_prompt.wrap(model, tok)
    assert engine.model.embedding.weight.data_ptr() == model.backbone.embeddings.weight.data_ptr()
    text = "Alice was born in Paris."
    ids = engine.encode(text, "Where?").ids
    got = engine.generate_ids([ids], max_new_tokens=6, stop_at_eos=False)[0]
    lm, seq = engine.model, list(ids)
    with torch.no_grad():  # greedy by hand, one full forward per token
        for _ in range(6):
            seq.append(int(lm(torch.tensor([seq]))[0][0, -1].argmax()))
    assert got == seq[len(ids):]


def test_automodel_after_importing_fla_builds_fla_models_that_wrap_reads(tmp_path):
    """With fla imported, AutoModelForCausalLM gives fla's class for transformers' own mamba folders; fla reads
    the fields both libraries share (these models keep transformers' defaults for the others), so the wrapped
    fla model computes what transformers' model does."""
    import fla  # noqa: F401 - registers fla's Mamba classes with the Auto classes
    from transformers import AutoModelForCausalLM

    for make in (tiny_mamba, tiny_mamba2):
        hf = make(seed=5)
        hf.save_pretrained(tmp_path / make.__name__)
        auto = AutoModelForCausalLM.from_pretrained(tmp_path / make.__name__)
        assert fla_mamba.is_fla_model(auto, type(hf).__name__)
        ids = ids_for(hf.config.vocab_size, length=13)
        with torch.no_grad():
            _close(wrapped(auto)(ids)[0], hf(ids, use_cache=False).logits, 1e-4, make.__name__)


# --- folders fla's save_pretrained writes ------------------------------------------------------------------
@pytest.mark.parametrize("name", VARIANTS)
def test_save_pretrained_then_load_round_trip(name, tmp_path):
    tok = tiny_tokenizer()
    model = fla_model(name, seed=6)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    arch = VARIANTS[name][0]
    loaded = load_folder(tmp_path, arch)
    assert isinstance(loaded.norm_f, FlaRMSNorm)  # read as fla's
    engine = jrt_prompt.load(tmp_path)
    lm = wrapped(model)
    for ours in (loaded, engine.model):
        mine = dict(ours.named_parameters(remove_duplicate=False))
        for k, p in lm.named_parameters(remove_duplicate=False):
            assert torch.equal(mine[k], p), k
        assert ours.config == lm.config
    ids = ids_for(48, length=11)
    with torch.no_grad():
        assert torch.equal(loaded(ids)[0], lm(ids)[0])


@pytest.mark.parametrize("name", ["mamba-defaults", "mamba2-groups"])
def test_load_in_bfloat16_builds_what_fla_from_pretrained_builds(name, tmp_path):
    """Tensor by tensor (values and dtypes) the model fla's from_pretrained(dtype=bf16) builds; same config."""
    model = fla_model(name, seed=7)
    model.save_pretrained(tmp_path)
    theirs = type(model).from_pretrained(tmp_path, dtype=torch.bfloat16)
    from_theirs = wrapped(theirs)
    ours = jrt_prompt.load(tmp_path, tokenizer=tiny_tokenizer(), dtype="bf16").model
    assert ours.blocks[0].norm.weight.dtype == torch.float32 and ours.blocks[0].mixer.A_log.dtype == torch.float32
    assert ours.blocks[0].mixer.in_proj.weight.dtype == torch.bfloat16
    mine = dict(ours.named_parameters(remove_duplicate=False))
    for k, p in from_theirs.named_parameters(remove_duplicate=False):
        assert mine[k].dtype == p.dtype and torch.equal(mine[k], p), k
    assert ours.config == from_theirs.config
    ids = ids_for(48, length=11)
    with torch.no_grad():
        assert torch.equal(ours(ids)[0], from_theirs(ids)[0])


def test_fla_fields_are_not_read_by_transformers_config(tmp_path):
    """transformers' MambaConfig would take fla's config.json silently with its own eps (1e-5) and residual
    default; the loader reads fla's norm_eps = 1e-2 and residual_in_fp32 = False."""
    model = fla_model("mamba-defaults", seed=8, norm_eps=1e-2)
    model.save_pretrained(tmp_path)
    lm = load_folder(tmp_path, "mamba")
    assert lm.norm_f.eps == 1e-2 and not lm.config.residual_in_fp32
    hf = tiny_mamba(seed=8)
    hf.save_pretrained(tmp_path / "hf")
    assert type(load_folder(tmp_path / "hf", "mamba").norm_f).__name__ == "RMSNorm"  # read as transformers'


def test_folder_fla_saved_from_a_transformers_folder_loads_when_both_readings_agree(tmp_path):
    """fla imported, AutoModelForCausalLM on a transformers folder, save_pretrained: config.json holds both
    libraries' fields. Same values: it loads (as fla's model, which it is). Edited so that they disagree: refused."""
    import fla  # noqa: F401
    from transformers import AutoModelForCausalLM

    for make, arch in ((tiny_mamba, "mamba"), (tiny_mamba2, "mamba2")):
        hf = make(seed=9)
        hf.save_pretrained(tmp_path / arch)
        AutoModelForCausalLM.from_pretrained(tmp_path / arch).save_pretrained(tmp_path / f"{arch}-by-fla")
        config = json.loads((tmp_path / f"{arch}-by-fla" / "config.json").read_text())
        assert "norm_eps" in config and "layer_norm_epsilon" in config
        lm = load_folder(tmp_path / f"{arch}-by-fla", arch)
        assert isinstance(lm.norm_f, FlaRMSNorm)
        ids = ids_for(hf.config.vocab_size, length=9)
        with torch.no_grad():
            _close(lm(ids)[0], hf(ids, use_cache=False).logits, 1e-4, arch)
        config["layer_norm_epsilon"] = 1e-3
        (tmp_path / f"{arch}-by-fla" / "config.json").write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match="would build different models") as e:
            load_folder(tmp_path / f"{arch}-by-fla", arch)
        assert "blocks.*.norm.eps: fla 1e-05, transformers 0.001" in str(e.value)


def _write(tmp_path, name, **config_edits):
    model = fla_model(name)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(config_edits)
    config = {k: v for k, v in config.items() if v is not None}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return read_config(tmp_path)  # as the loader reads it (transformers' {"__float__": ...} tags decoded)


@pytest.mark.parametrize("name, edits, words", [
    ("mamba2-groups", dict(layer_norm_epsilon=1e-6), ["different models", "layer_norm_epsilon", "eps: fla 1e-05"]),
    ("mamba2-no-gated-norm-dhdim-dt-limit", dict(time_step_limit=[0.0, 1.0]),
     ["different models", "dt_limit: fla (0.2, 0.9), transformers (0.0, 1.0)"]),
    ("mamba-defaults", dict(time_step_rank=3), ["different models", "mixer.dt_rank: fla 1, transformers 3"]),
    ("mamba2-groups", dict(num_heads=5), ["num_heads = 5"]),
    ("mamba2-groups", dict(n_groups=3), ["n_groups = 3"]),
    ("mamba2-groups", dict(dt_limit=[0.5, 0.1]), ["dt_limit"]),
    ("mamba2-groups", dict(hidden_act="gelu"), ["hidden_act = 'gelu'"]),
    ("mamba-defaults", dict(hidden_act="relu"), ["hidden_act = 'relu'"]),
    ("mamba-defaults", dict(dt_rank=0), ["dt_rank = 0"]),
    ("mamba-defaults", dict(state_size=7), ["shape"]),  # the weights were written for state_size 4
])
def test_folder_errors_name_the_field(tmp_path, name, edits, words):
    config = _write(tmp_path, name, **edits)
    with pytest.raises(CheckpointError) as e:
        ADAPTERS[VARIANTS[name][0]].from_folder(tmp_path, config)
    for w in words:
        assert w in str(e.value), f"{w!r} not in: {e.value}"


def test_defaults_fill_missing_fields_as_fla_does(tmp_path):
    """A hand-trimmed fla config: the missing fields take fla's defaults (Mamba-2: residual_in_fp32 True)."""
    config = _write(tmp_path, "mamba2-groups", residual_in_fp32=None, rmsnorm=None, dt_limit=None, num_heads=None)
    assert "residual_in_fp32" not in config
    lm = mamba2.from_folder(tmp_path, config)
    assert lm.config.residual_in_fp32 and lm.blocks[0].mixer.norm is not None
    assert lm.blocks[0].mixer.dt_limit == (0.0, float("inf")) and lm.blocks[0].mixer.n_heads == 4


def test_wrap_warns_when_fla_ignored_transformers_fields(tmp_path):
    import fla  # noqa: F401
    from transformers import AutoModelForCausalLM

    tiny_mamba2(seed=10, layer_norm_epsilon=1e-3).save_pretrained(tmp_path)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path)  # fla's class: norm_eps stays 1e-5
    with pytest.warns(UserWarning, match="fla ignores .*norm_f.eps: fla 1e-05, transformers 0.001"):
        lm = wrapped(auto)
    assert lm.norm_f.eps == 1e-5  # what the fla model computes


def test_unsupported_models_raise_naming_the_field():
    with pytest.raises(UnsupportedModelError, match="hidden_act = 'relu'"):
        wrapped(fla_model("mamba-defaults", hidden_act="relu"))
    model = fla_model("mamba2-groups")
    model.backbone.layers[1].norm.to(torch.float64)
    with pytest.raises(UnsupportedModelError, match="several dtypes"):
        wrapped(model)
    model = fla_model("mamba-defaults")
    model.backbone.layers[1].norm = torch.nn.LayerNorm(16, bias=False)  # same weight name, other math
    with pytest.raises(UnsupportedModelError, match="backbone.layers.1.norm is a torch.nn.modules.normalization"):
        wrapped(model)


# --- against fla's own forward, on CPU under Triton's interpreter ------------------------------------------
# fla's one-token (cached) path over a whole sequence from the zero state: a one-token prefill makes the cache,
# its states are zeroed, then every token goes through the step path. (Mamba-2: with 1 < n_groups < num_heads,
# fla 0.6.0's PyTorch prefill tiles the B/C groups over the heads (B.repeat: head h reads group h % n_groups);
# its step path, mamba_ssm's kernels and transformers give head h group h // (num_heads / n_groups). We compute
# the latter, so for such configs fla's step path is the reference.) Also run inside the interpreted script.
def stepped_from_zero(model, ids):
    cache = model(ids[:, :1], use_cache=True).past_key_values
    for i in range(len(cache)):
        for v in cache[i].values():
            if torch.is_tensor(v):
                v.zero_()
    logits = []
    for t in range(ids.shape[1]):
        r = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
        cache = r.past_key_values
        logits.append(r.logits[:, -1])
    return torch.stack(logits, 1)


# fla's Mamba models run their PyTorch paths on CPU (mamba_ssm is not installed) except the RMSNorm kernels, which
# are Triton: TRITON_INTERPRET=1 runs them on CPU. Autotuning needs a GPU benchmarker, so each kernel keeps its
# first config. A fresh process: the variable must be set before Triton is imported.
FLA_INTERPRETED = textwrap.dedent("""
    import sys, warnings
    warnings.filterwarnings("ignore")
    import torch
    import triton.runtime.autotuner as autotuner
    prune = autotuner.Autotuner.prune_configs
    autotuner.Autotuner.prune_configs = lambda self, kwargs: prune(self, kwargs)[:1]
    from transformers.utils import logging
    logging.set_verbosity_error()
    from fla.models import Mamba2ForCausalLM, MambaForCausalLM
    {stepped_from_zero}
    job = torch.load(sys.argv[1])
    ids, mask, cut = job["ids"], job["mask"], job["cut"]
    out = {}
    for name, (arch, folder, layout, step_from_zero) in job["models"].items():
        cls = MambaForCausalLM if arch == "mamba" else Mamba2ForCausalLM
        if layout == "from_pretrained_bf16":
            model = cls.from_pretrained(folder, dtype=torch.bfloat16)
        else:
            model = cls.from_pretrained(folder)
            if layout == "cast_bf16":
                model = model.to(torch.bfloat16)
        model.eval()
        with torch.no_grad():
            plain = model(ids).logits
            padded = model(ids, attention_mask=mask).logits if layout == "fp32" else plain
            pre = model(ids[:, :cut], attention_mask=mask[:, :cut], use_cache=True)
            cache, steps = pre.past_key_values, [pre.logits[:, -1]]
            for t in range(cut, ids.shape[1]):
                r = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
                cache = r.past_key_values
                steps.append(r.logits[:, -1])
        out[name] = {"plain": plain.float(), "padded": padded.float(), "steps": torch.stack(steps, 1).float()}
        if step_from_zero:
            with torch.no_grad():
                out[name]["stepped"] = stepped_from_zero(model, ids).float()
    torch.save(out, sys.argv[2])
""").replace("{stepped_from_zero}", inspect.getsource(stepped_from_zero))


def groups_tiled_by_fla_prefill(name: str) -> bool:
    """fla's PyTorch Mamba-2 prefill (used without mamba_ssm) computes these configs otherwise (see above)."""
    arch, c = VARIANTS[name][0], fla_config(name)
    return arch == "mamba2" and 1 < c.n_groups < c.num_heads


# bfloat16 runs: fla's two layouts, each on a variant where fla's own forward works in it (from_pretrained(bf16)
# with residual_in_fp32 = True fails inside fla: its float32 residual stream meets bfloat16 weights)
BF16_RUNS = {"mamba-defaults@from_pretrained_bf16": ("mamba-defaults", "from_pretrained_bf16"),
             "mamba2-norm-before-gate-eps-tied@from_pretrained_bf16": ("mamba2-norm-before-gate-eps-tied",
                                                                       "from_pretrained_bf16"),
             "mamba2-no-gated-norm-dhdim-dt-limit@cast_bf16": ("mamba2-no-gated-norm-dhdim-dt-limit", "cast_bf16")}


def _ours(model, ids, mask, cut):
    lm = wrapped(model)
    with torch.no_grad():
        plain, _ = lm(ids)
        padded, _ = lm(ids, attention_mask=mask)
        pre, state = lm(ids[:, :cut], attention_mask=mask[:, :cut])
        steps = [pre[:, -1]]
        for t in range(cut, ids.shape[1]):
            steps.append(lm.step(ids[:, t], state)[0])
    return {"plain": plain.float(), "padded": padded.float(), "steps": torch.stack(steps, 1).float()}


@pytest.mark.slow  # about 30 s: a fresh process imports fla under the interpreter
def test_logits_equal_fla_forward_interpreted_on_cpu(tmp_path):
    require("triton")
    gen = torch.Generator().manual_seed(9)
    ids = torch.randint(2, 48, (3, 12), generator=gen)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, :8] = 0
    cut = 9
    models, folders = {}, {}
    for i, name in enumerate(VARIANTS):
        model = fla_model(name, seed=10 + i)
        model.save_pretrained(tmp_path / name)
        folders[name] = str(tmp_path / name)
        models[name] = (VARIANTS[name][0], folders[name], "fp32", groups_tiled_by_fla_prefill(name))
    for run, (name, layout) in BF16_RUNS.items():
        models[run] = (VARIANTS[name][0], folders[name], layout, False)
    torch.save({"models": models, "ids": ids, "mask": mask, "cut": cut}, tmp_path / "in.pt")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", FLA_INTERPRETED, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = torch.load(tmp_path / "out.pt")
    real = mask.bool()
    for name in VARIANTS:
        cls = type(fla_model(name))
        ours, fla = _ours(cls.from_pretrained(folders[name]), ids, mask, cut), theirs[name]
        if groups_tiled_by_fla_prefill(name):  # fla's prefill and its own step path disagree: see above
            assert rel_err(ours["plain"], fla["stepped"]) < 1e-4, name
            assert rel_err(fla["plain"], fla["stepped"]) > 0.1, f"{name}: fla's prefill now groups as its step does"
            continue
        assert rel_err(ours["plain"], fla["plain"]) < 1e-4, name
        assert rel_err(ours["padded"][real], fla["padded"][real]) < 1e-4, name
        assert rel_err(ours["steps"], fla["steps"]) < 1e-4, name
    for run, (name, layout) in BF16_RUNS.items():
        assert not groups_tiled_by_fla_prefill(name)
        cls = type(fla_model(name))
        model = cls.from_pretrained(folders[name], dtype=torch.bfloat16) if layout == "from_pretrained_bf16" else \
            cls.from_pretrained(folders[name]).to(torch.bfloat16)
        ours, truth = _ours(model, ids, mask, cut), theirs[name]
        for part in ("plain", "steps"):  # (left padding in bf16: the fp32 runs and the properties cover it)
            got, want, exact = ours[part], theirs[run][part], truth[part]
            # two bf16 computations, each about 1% from fp32 with independent rounding: ours must be as close to
            # fp32 as fla's bf16 forward is, and close to it
            assert rel_err(got, want) < 3e-2, (run, part)
            assert rel_err(got, exact) <= 1.5 * rel_err(want, exact) + 2e-3, (run, part)


# --- on CUDA: against fla's forward through its GPU code (run: pytest -m gpu tests/test_fla_mamba.py) -------
GPU_REL_TOL = {torch.float32: 1e-3, torch.bfloat16: 3e-2}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("length", [40, 300])  # 300 > fla's Mamba-2 chunk_size of 256 in its kernels' configs
@torch.no_grad()
def test_logits_equal_fla_forward_on_cuda(name, dtype, length):
    """fla's forward on CUDA: its PyTorch paths and Triton norms, or mamba_ssm's kernels where installed. Where
    fla's PyTorch prefill tiles the Mamba-2 groups (see above), its one-token path from zero is the reference."""
    extra = {"chunk_size": 256} if VARIANTS[name][0] == "mamba2" else {}
    theirs = fla_model(name, seed=11, **extra).cuda().to(dtype)
    exact = fla_model(name, seed=11, **extra).cuda()
    ids = torch.randint(2, 48, (3, length), generator=torch.Generator().manual_seed(12)).cuda()
    mask = torch.ones_like(ids)
    mask[1, :length // 3] = 0
    mask[2, :length - 5] = 0
    real = mask.bool()
    ours = wrapped(theirs)
    if groups_tiled_by_fla_prefill(name) and not importable("mamba_ssm"):
        cases = [(ours(ids)[0], stepped_from_zero(theirs, ids), stepped_from_zero(exact, ids))]
    else:
        cases = [(ours(ids)[0], theirs(ids).logits, exact(ids).logits),
                 (ours(ids, attention_mask=mask)[0][real], theirs(ids, attention_mask=mask).logits[real],
                  exact(ids, attention_mask=mask).logits[real])]
    for got, want, truth in cases:
        assert rel_err(got, want) < GPU_REL_TOL[dtype]
        if dtype != torch.float32:
            assert rel_err(got, truth) <= 1.5 * rel_err(want, truth) + 2e-3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", VARIANTS)
@torch.no_grad()
def test_pieces_and_steps_on_cuda_equal_one_read_on_cpu(name, dtype):
    """Our GPU fast paths under fla's layout (bf16: the from_pretrained layout, float32 norms and A_log)."""
    ids = ids_for(48, batch=3, length=150)
    want, _ = wrapped(fla_model(name, seed=15))(ids)
    model = fla_model(name, seed=15).cuda().to(dtype)
    if dtype == torch.bfloat16:
        for module in [*[layer.norm for layer in model.backbone.layers], model.backbone.norm_f]:
            module.float()
        for layer in model.backbone.layers:
            layer.mixer.A_log.data = layer.mixer.A_log.data.float()
    lm = wrapped(model)
    _, s = lm(ids[:, :100].cuda())
    l2, s = lm(ids[:, 100:140].cuda(), s)
    steps = [lm.step(ids[:, t].cuda(), s)[0][:, None] for t in range(140, 150)]
    assert rel_err(torch.cat([l2, *steps], 1).float().cpu(), want[:, 100:]) < GPU_REL_TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mamba-defaults", "mamba2-norm-before-gate-eps-tied"])
@torch.no_grad()
def test_from_pretrained_bf16_on_cuda(name, tmp_path):
    """fla's from_pretrained(dtype=bf16) layout (float32 norms and A_log) on the GPU, and load() of the folder."""
    fla_model(name, seed=13).save_pretrained(tmp_path)
    cls = type(fla_model(name))
    theirs = cls.from_pretrained(tmp_path, dtype=torch.bfloat16).cuda()
    exact = cls.from_pretrained(tmp_path).cuda()
    loaded = jrt_prompt.load(tmp_path, tokenizer=tiny_tokenizer(), dtype="bf16", device="cuda").model
    ids = torch.randint(2, 48, (2, 64), generator=torch.Generator().manual_seed(14)).cuda()
    want, truth = theirs(ids).logits, exact(ids).logits
    for ours in (wrapped(theirs), loaded):
        got = ours(ids)[0]
        assert rel_err(got, want) < GPU_REL_TOL[torch.bfloat16]
        assert rel_err(got, truth) <= 1.5 * rel_err(want, truth) + 2e-3
