"""Based (hazyresearch/based-360m, based-1b, based-1b-50b): the checkpoint reader behind ``jrt_prompt.load``.

No installable package runs these checkpoints, so jrt_prompt provides both ways in:
- here, ``from_folder`` reads the hazyresearch folder format: config.json (a GPT2Config plus ``mixer``,
  ``alt_mixer``, ``alt_mixer_2``, ``alt_mixer_layers``, ``alt_mixer_2_layers``) and pytorch_model.bin or
  model.safetensors with keys ``model.transformer...`` (the prefix is stripped, ``*metrics*`` keys dropped);
- in ``based_config`` / ``based_hf``, ``BasedConfig`` (model_type "based") and ``BasedForCausalLM``, a transformers
  model: the config is registered with AutoConfig once transformers' AutoConfig module is imported (see
  jrt_prompt.pipeline_registration), the model with AutoModelForCausalLM once a BasedConfig is created. They stay
  out of this module because importing transformers' modeling code costs seconds that ``load`` does not need;
  ``based.BasedConfig``, ``based.BasedForCausalLM`` and ``based.register`` still work (imported on first use).

The config is read as hazyresearch's code reads it (based/models/gpt.py: a field it defaults is defaulted the
same way here). What that code would run and we do not implement (softmax attention layers, LayerNorm,
learned positions, other feature maps ...) fails with an error naming the field and its value.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from jrt_prompt.checkpoint import read_state_dict
from jrt_prompt.errors import CheckpointError
from jrt_prompt.layers.based import GATE_ACTIVATIONS, BasedLayer, BasedSettings
from jrt_prompt.layers.norm import RMSNorm
from jrt_prompt.model import Block, LMConfig, RecurrentLM

from .skeleton import skeleton

NAME = "based"
FEATURE_DIM = 16  # the Taylor map's input size that every Based checkpoint uses (and the kernels assume)
POSITION_KEY = "transformer.embeddings.position_embeddings.weight"
JRT_RNN_KEYS = ("proj_k_enc", "proj_v_enc")
# hazyresearch key -> ours (model.* of the Lightning checkpoint; conv1 of the BaseConvWithSiLU4 variant)
KEY_MAPPING = {r"^model\.": "", r"\.mixer\.conv1\.conv\.": ".mixer.conv.conv."}
LINEAR_ATTN_FLAGS = ("use_rotary_apply", "use_decay_proj", "use_output_gating", "use_proj_g", "initial_conv",
                     "use_act")
# the transformers classes, in the modules that import transformers: ``based.BasedConfig`` imports them on first use
HF_NAMES = {"BasedConfig": "based_config", "BasedForCausalLM": "based_hf", "BasedCache": "based_hf",
            "BasedCausalLMOutput": "based_hf", "register": "based_hf"}
HF_MODULES = tuple(f"{__package__}.{m}" for m in dict.fromkeys(HF_NAMES.values()))


def __getattr__(name: str):
    if name in HF_NAMES:
        return getattr(importlib.import_module(f".{HF_NAMES[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _bad(field: str, value, why: str) -> CheckpointError:
    return CheckpointError(f"Based config field {field} = {value!r} is not supported: {why}")


def _target(spec: Mapping, field: str, allowed: tuple[str, ...]) -> None:
    target = spec.get("_target_")
    if target is not None and not any(a in str(target) for a in allowed):
        raise _bad(f"{field}._target_", target, f"jrt_prompt runs {' / '.join(allowed)} there")


def _layer_list(cfg: Mapping, field: str, n_layer: int) -> set[int]:
    value = cfg.get(field)
    if value is None:
        return set()
    if not isinstance(value, (list, tuple)) or not all(isinstance(i, int) and 0 <= i < n_layer for i in value) \
            or len(set(value)) != len(value):
        raise _bad(field, value, f"it must list distinct layer indices in [0, {n_layer})")
    return set(value)


def _layer_kinds(cfg: Mapping, n_layer: int) -> list[str]:
    """gpt.py create_mixer_cls: alt_mixer_2 layers first, then alt_mixer layers, BaseConv elsewhere."""
    window, linear = _layer_list(cfg, "alt_mixer_2_layers", n_layer), _layer_list(cfg, "alt_mixer_layers", n_layer)
    kinds = []
    for i in range(n_layer):
        kind, field = ("window", "alt_mixer_2") if i in window else ("linear", "alt_mixer") if i in linear \
            else ("conv", "mixer")
        if cfg.get(field) is None:
            raise _bad(field, None, f"layer {i} would be softmax attention (MHA), which is not a Based layer")
        kinds.append(kind)
    return kinds


def _conv_settings(cfg: Mapping, d: int) -> dict:
    mixer = cfg["mixer"]
    _target(mixer, "mixer", ("BaseConv",))
    if "BaseConvWithSiLU4" in str(mixer.get("_target_", "")):  # takes kernel_sizes and uses the first
        field, kernel = "mixer.kernel_sizes", mixer.get("kernel_sizes", [3])
        kernel = kernel[0] if isinstance(kernel, (list, tuple)) and kernel else kernel
    else:  # BaseConv takes kernel_size; the configs' kernel_sizes goes to its **kwargs unused
        field, kernel = "mixer.kernel_size", mixer.get("kernel_size", 3)
    if not isinstance(kernel, int) or kernel < 1:
        raise _bad(field, kernel, "it must be a positive int")
    expand = mixer.get("expand_proj", 2)
    if not isinstance(expand, int) or expand < 2 or expand * d % 2:
        raise _bad("mixer.expand_proj", expand, "it must be an int >= 2")
    return dict(conv_expand=expand, conv_kernel=kernel, conv_proj_bias=bool(mixer.get("use_bias", True)))


def _linear_settings(cfg: Mapping, d: int) -> dict:
    la = cfg["alt_mixer"]
    _target(la, "alt_mixer", ("linear_attention.LinearAttention", "linear_attn.LinearAttention"))
    heads, feature_dim = la.get("num_heads", 16), la.get("feature_dim", 16)
    if feature_dim != FEATURE_DIM:
        raise _bad("alt_mixer.feature_dim", feature_dim, f"the Taylor kernels take feature dim {FEATURE_DIM}")
    fmap = la.get("feature_map")
    if fmap is not None:  # linear_attention.LinearAttention: a TaylorExp module spec
        _target(fmap, "alt_mixer.feature_map", ("TaylorExp",))
        if "TaylorExp3" in str(fmap.get("_target_", "")):
            raise _bad("alt_mixer.feature_map._target_", fmap["_target_"], "only the 2nd-order TaylorExp is run")
        scale_dim = fmap.get("input_dim", feature_dim)
        scale_field = "alt_mixer.feature_map.input_dim"
    else:  # linear_attn.LinearAttention: a feature name plus switches
        if la.get("feature_name", "taylor_exp") != "taylor_exp":
            raise _bad("alt_mixer.feature_name", la["feature_name"], "only taylor_exp is run")
        if la.get("num_key_value_heads", heads) != heads:
            raise _bad("alt_mixer.num_key_value_heads", la["num_key_value_heads"], "it must equal num_heads")
        for flag in LINEAR_ATTN_FLAGS:
            if la.get(flag):
                raise _bad(f"alt_mixer.{flag}", la[flag], "this variant of linear attention is not run")
        scale_dim = la.get("scale_dim") or feature_dim
        scale_field = "alt_mixer.scale_dim"
    if scale_dim != FEATURE_DIM:
        raise _bad(scale_field, scale_dim, f"the Taylor map is scaled for input dim {FEATURE_DIM}")
    head_dim = la.get("head_dim") or d // heads
    if not isinstance(heads, int) or heads < 1 or (la.get("head_dim") is None and d % heads):
        raise _bad("alt_mixer.num_heads", heads, f"it must divide n_embd = {d}")
    return dict(la_heads=heads, la_feature_dim=feature_dim, la_head_dim=head_dim, la_eps=float(la.get("eps", 1e-12)))


def _window_settings(cfg: Mapping, d: int) -> dict:
    swa = cfg["alt_mixer_2"]
    _target(swa, "alt_mixer_2", ("slide", "sliding", "Sliding", "window"))
    window = swa.get("window_size", 128)
    if not isinstance(window, int) or window < 2:
        raise _bad("alt_mixer_2.window_size", window, "it must be an int >= 2 (each token sees window_size // 2 back)")
    heads = cfg.get("n_head", 12)  # gpt.py sliding_window_additions: num_heads = config.num_attention_heads
    if cfg.get("n_head_kv") not in (None, heads):
        raise _bad("n_head_kv", cfg["n_head_kv"], "grouped-query window attention is not run")
    if not isinstance(heads, int) or heads < 1 or d % heads:
        raise _bad("n_head", heads, f"it must divide n_embd = {d}")
    head_dim = d // heads
    rotary_dim = int(cfg.get("rotary_emb_fraction", 0.0) * head_dim)
    if rotary_dim % 2:
        raise _bad("rotary_emb_fraction", cfg["rotary_emb_fraction"], "the rotary dim must be even")
    if cfg.get("rotary_emb_interleaved"):
        raise _bad("rotary_emb_interleaved", True, "only rotate-half rotary is run")
    if cfg.get("rotary_emb_scale_base") is not None:
        raise _bad("rotary_emb_scale_base", cfg["rotary_emb_scale_base"], "xPos rotary is not run")
    return dict(swa_heads=heads, swa_window=window // 2, swa_rotary_dim=rotary_dim,
                swa_rotary_base=float(cfg.get("rotary_emb_base", 10000.0)),
                swa_scale=head_dim ** -0.5 if cfg.get("scale_attn_weights", True) else 1.0,
                swa_scale_by_layer=bool(cfg.get("scale_attn_by_inverse_layer_idx", False)),
                swa_qkv_bias=bool(cfg.get("qkv_proj_bias", True)), swa_out_bias=bool(cfg.get("out_proj_bias", True)))


def _check_block_options(cfg: Mapping) -> None:
    """Switches of gpt.py's GPTModel / create_block / create_mlp_cls that change the math; ours is one setting."""
    if not cfg.get("rms_norm", False):
        raise _bad("rms_norm", cfg.get("rms_norm", False), "Based blocks use RMSNorm (LayerNorm is not run)")
    for field, ok in (("prenorm", True), ("parallel_block", False), ("fused_mlp", False),
                      ("fused_dense_sqrelu_dense", False), ("fixed_decay", False), ("lm_head_bias", False)):
        if bool(cfg.get(field, ok)) != ok:
            raise _bad(field, cfg[field], f"only {field} = {ok} is run")
    if cfg.get("word_embed_proj_dim") is not None:
        raise _bad("word_embed_proj_dim", cfg["word_embed_proj_dim"], "embedding projections are not run")
    if cfg.get("mlp_type", "base") != "base":
        raise _bad("mlp_type", cfg["mlp_type"], "only the base gated MLP is run")


def settings_from_config(config: Mapping, weight_keys=None) -> BasedSettings:
    """hazyresearch config (a dict) -> the checked ``BasedSettings``; ``weight_keys`` (when known) tell whether the
    short convs have a bias (hazyresearch adds one only when it trained with causal-conv1d)."""
    cfg = dict(config)
    for field in ("n_embd", "n_layer", "vocab_size"):
        if not isinstance(cfg.get(field), int) or cfg[field] < 1:
            raise _bad(field, cfg.get(field), "it must be a positive int")
    d, n_layer = cfg["n_embd"], cfg["n_layer"]
    _check_block_options(cfg)
    activation = cfg.get("activation_function", "gelu_new")
    if activation not in GATE_ACTIVATIONS:
        raise _bad("activation_function", activation, f"Based uses a gated MLP: one of {', '.join(GATE_ACTIVATIONS)}")
    if not isinstance(cfg.get("n_inner"), int) or cfg["n_inner"] < 1:
        raise _bad("n_inner", cfg.get("n_inner"), "the gated MLP's hidden size must be given")
    multiple = cfg.get("pad_vocab_size_multiple", 1) or 1
    kinds = _layer_kinds(cfg, n_layer)
    values = dict(d_model=d, vocab_size=math.ceil(cfg["vocab_size"] / multiple) * multiple, kinds=kinds,
                  norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
                  residual_in_fp32=bool(cfg.get("residual_in_fp32", False)),
                  tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
                  mlp_hidden=cfg["n_inner"], mlp_activation=activation,
                  mlp_fc1_bias=bool(cfg.get("mlp_fc1_bias", True)), mlp_fc2_bias=bool(cfg.get("mlp_fc2_bias", True)),
                  la_head_dim=d // 16, swa_heads=1, swa_scale=1.0)  # placeholders for absent layer kinds
    if "conv" in kinds:
        values.update(_conv_settings(cfg, d))
        values["conv_bias"] = weight_keys is not None and any(k.endswith("mixer.conv.conv.bias") for k in weight_keys)
    if "linear" in kinds:
        values.update(_linear_settings(cfg, d))
    if "window" in kinds:
        values.update(_window_settings(cfg, d))
    return BasedSettings(**values)


# --------------------------------------------------------------------------- the modules, as stored
class BasedEmbeddings(nn.Module):
    def __init__(self, s: BasedSettings):
        super().__init__()
        self.word_embeddings = nn.Embedding(s.vocab_size, s.d_model)


class BasedBackbone(nn.Module):
    """``transformer.*``: embeddings.word_embeddings, layers.{i}, ln_f (no position embeddings)."""

    def __init__(self, s: BasedSettings):
        super().__init__()
        self.embeddings = BasedEmbeddings(s)
        self.layers = nn.ModuleList(BasedLayer(s, i) for i in range(s.n_layer))
        self.ln_f = RMSNorm(s.d_model, eps=s.norm_eps)


class BasedWeights(nn.Module):
    """The bare tree of a checkpoint (transformer + lm_head), for reading folders without transformers' loader."""

    def __init__(self, s: BasedSettings):
        super().__init__()
        self.transformer = BasedBackbone(s)
        self.lm_head = nn.Linear(s.d_model, s.vocab_size, bias=False)


def recurrent_lm(s: BasedSettings, transformer: BasedBackbone, lm_head: nn.Linear, *, eos_token_id=50256,
                 pad_token_id=None) -> RecurrentLM:
    """A RecurrentLM over these very modules (their parameters are shared, not copied)."""
    blocks = [Block(layer.norm1, layer.mixer, layer.norm2, layer.mlp, residual_in_fp32=s.residual_in_fp32)
              for layer in transformer.layers]
    config = LMConfig(arch=NAME, vocab_size=s.vocab_size, d_model=s.d_model, n_layer=s.n_layer,
                      eos_token_id=eos_token_id, pad_token_id=pad_token_id, residual_in_fp32=s.residual_in_fp32)
    return RecurrentLM(config, transformer.embeddings.word_embeddings, blocks, transformer.ln_f, lm_head)


# --------------------------------------------------------------------------- reading hazyresearch folders
def normalize_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """hazyresearch keys -> ours: ``model.`` stripped, ``*metrics*`` dropped (Lightning counters)."""
    out = {}
    for key, t in sd.items():
        if "metrics" in key:
            continue
        for pattern, repl in KEY_MAPPING.items():
            key = re.sub(pattern, repl, key)
        out[key] = t
    return out


def check_weight_names(keys) -> None:
    """Refuse the checkpoints that look like Based but are not: JRT-RNN, or Based with learned positions."""
    jrt = [k for k in keys if any(p in k for p in JRT_RNN_KEYS)]
    if jrt:
        raise CheckpointError(f"this is a JRT-RNN (prefix linear attention) checkpoint ({jrt[0]}): jrt_prompt runs "
                              "Based, Mamba, Mamba-2 and GLA models; JRT-RNN is not supported")
    if POSITION_KEY in keys:
        raise CheckpointError(f"the checkpoint has learned position embeddings ({POSITION_KEY}; config "
                              "max_position_embeddings > 0): Based models without them are supported")


def check_same_keys(where: str, missing, unused) -> None:
    """A model with some weights left random, or a checkpoint with weights we would ignore, is an error."""
    problems = [f"{what} {', '.join(sorted(keys)[:4])}" for what, keys in (("missing", missing), ("unused", unused))
                if keys]
    if problems:
        raise CheckpointError(f"{where}: weights and config disagree: {'; '.join(problems)}")


def _load(tree: BasedWeights, sd: dict[str, torch.Tensor], s: BasedSettings, where: str, device, dtype) -> None:
    """Give ``tree`` (built on the meta device) the tensors of ``sd``: every one used, every shape checked."""
    expected = tree.state_dict()
    if s.tie_embeddings:  # gpt.py tie_weights: the head is the embedding, whatever lm_head.weight holds
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
        expected.pop("lm_head.weight")
    check_same_keys(where, set(expected) - set(sd), set(sd) - set(expected))
    for k, meta in expected.items():
        if tuple(sd[k].shape) != tuple(meta.shape):
            raise CheckpointError(f"{where}: weight {k!r} has shape {tuple(sd[k].shape)}, the config implies "
                                  f"{tuple(meta.shape)}")
    tree.load_state_dict({k: sd[k].to(device=device, dtype=dtype) for k in expected}, strict=False, assign=True)
    if s.tie_embeddings:
        tree.lm_head.weight = tree.transformer.embeddings.word_embeddings.weight


def accepts_model(model) -> bool:
    """A BasedForCausalLM (or a subclass), told by name: transformers need not be imported to answer."""
    return any(c.__name__ == "BasedForCausalLM" and c.__module__ in HF_MODULES for c in type(model).__mro__)


def from_model(model) -> RecurrentLM:
    """The RecurrentLM inside a BasedForCausalLM (it shares the model's parameters)."""
    return model.lm


def accepts_folder(config: dict, files: set[str]) -> bool:
    return "alt_mixer" in config or config.get("model_type") == NAME


def from_folder(path, config: dict, *, device=None, dtype: torch.dtype | None = None) -> RecurrentLM:
    """Read a hazyresearch (or save_pretrained) Based folder into a RecurrentLM."""
    where = f"checkpoint {Path(path)}"
    sd = normalize_state_dict(read_state_dict(path))
    check_weight_names(sd.keys())
    s = settings_from_config(config, weight_keys=sd.keys())
    emb = sd.get("transformer.embeddings.word_embeddings.weight")
    dtype = dtype if dtype is not None else (emb.dtype if emb is not None else torch.float32)
    tree = skeleton(BasedWeights, s)
    _load(tree, sd, s, where, device, dtype)
    return recurrent_lm(s, tree.transformer, tree.lm_head, eos_token_id=config.get("eos_token_id", 50256),
                        pad_token_id=config.get("pad_token_id")).eval()
