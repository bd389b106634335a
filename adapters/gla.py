"""GLA: fla's GLAForCausalLM (loaded, via ``wrap``) or an fla-hub checkpoint folder (via ``load``).

Works without flash-linear-attention installed: the config is read as fla 0.6.0's GLAConfig reads it and the
weights are mapped by name onto ``jrt_prompt.layers.gla``; fla's kernels are used on CUDA when installed.
Config values fla would run but we do not implement raise an error naming the field.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from jrt_prompt.checkpoint import read_state_dict
from jrt_prompt.errors import CheckpointError, UnsupportedModelError
from jrt_prompt.layers.fla_norm import FlaRMSNorm
from jrt_prompt.layers.gla import FEATURE_MAPS, GatedLinearAttention, GatedMLP, GLASettings
from jrt_prompt.model import Block, LMConfig, RecurrentLM

from .skeleton import skeleton

NAME = "gla"

# GLAConfig's defaults (fla 0.6.0) for the fields that change the math; a config.json may omit any of them.
DEFAULTS = {
    "hidden_size": 2048, "expand_k": 0.5, "expand_v": 1.0, "hidden_ratio": 4, "intermediate_size": None,
    "num_hidden_layers": 24, "num_heads": 4, "num_kv_heads": None, "feature_map": None, "attn_mode": "chunk",
    "use_short_conv": False, "conv_size": 4, "use_output_gate": True, "clamp_min": None, "hidden_act": "swish",
    "elementwise_affine": True, "norm_eps": 1e-6, "attn": None, "attnres_block_size": None, "fuse_norm": True,
    "tie_word_embeddings": False, "vocab_size": 32000, "eos_token_id": 2, "pad_token_id": None,
}
ATTN_MODES = ("chunk", "fused_recurrent", "fused_chunk")  # three kernels of the same math


def _bad(field: str, value, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"GLA config field {field}={value!r} is not supported: {why}")


def _dim(cfg: dict, ratio_field: str) -> int:
    exact = cfg["hidden_size"] * cfg[ratio_field]
    if not math.isclose(exact, round(exact)):
        raise CheckpointError(f"GLA config: hidden_size * {ratio_field} = {exact} must be an integer")
    return round(exact)


def _mlp_size(cfg: dict) -> int:
    """fla's GatedMLP: intermediate_size, else 2/3 * hidden_ratio * hidden_size rounded up to a multiple of 256."""
    if cfg["intermediate_size"] is not None:
        return int(cfg["intermediate_size"])
    ratio = 4 if cfg["hidden_ratio"] is None else cfg["hidden_ratio"]
    size = int(cfg["hidden_size"] * ratio * 2 / 3)
    return 256 * ((size + 255) // 256)


def _check_no_softmax_layers(attn, n_layer: int) -> None:
    if attn is None:
        return
    specs = [attn] if isinstance(attn, dict) else list(attn)
    hybrid = sorted({i for spec in specs for i in spec.get("layers", ()) if 0 <= i < n_layer})
    if hybrid:
        raise _bad("attn", attn, f"layers {hybrid} are softmax attention (a hybrid model); jrt_prompt runs pure GLA")


def settings(config: dict) -> tuple[dict, GLASettings]:
    """The config with fla's defaults filled in, and the checked layer settings."""
    cfg = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    _check_no_softmax_layers(cfg["attn"], cfg["num_hidden_layers"])
    if cfg["attnres_block_size"] is not None:
        raise _bad("attnres_block_size", cfg["attnres_block_size"], "attention residuals are not implemented")
    if cfg["attn_mode"] not in ATTN_MODES:
        raise _bad("attn_mode", cfg["attn_mode"], f"fla knows {', '.join(ATTN_MODES)}")
    if cfg["hidden_act"] != "swish":
        raise _bad("hidden_act", cfg["hidden_act"], "only 'swish' (SwiGLU MLP, swish output gate) is implemented")
    if cfg["feature_map"] is not None and cfg["feature_map"] not in FEATURE_MAPS:
        raise _bad("feature_map", cfg["feature_map"], f"implemented: None, {', '.join(sorted(FEATURE_MAPS))}")
    heads = cfg["num_heads"]
    kv_heads = heads if cfg["num_kv_heads"] is None else cfg["num_kv_heads"]
    key_dim, value_dim = _dim(cfg, "expand_k"), _dim(cfg, "expand_v")
    if heads % kv_heads:
        raise CheckpointError(f"GLA config: num_heads={heads} is not a multiple of num_kv_heads={kv_heads}")
    for name, dim in (("key", key_dim), ("value", value_dim)):
        if dim % heads:
            raise CheckpointError(f"GLA config: the {name} dim {dim} is not divisible by num_heads={heads}")
    s = GLASettings(
        hidden_size=cfg["hidden_size"], num_heads=heads, num_kv_heads=kv_heads, key_dim=key_dim, value_dim=value_dim,
        intermediate_size=_mlp_size(cfg), use_short_conv=bool(cfg["use_short_conv"]), conv_size=cfg["conv_size"],
        use_output_gate=bool(cfg["use_output_gate"]), fuse_norm=bool(cfg["fuse_norm"]),
        elementwise_affine=bool(cfg["elementwise_affine"]), norm_eps=cfg["norm_eps"], clamp_min=cfg["clamp_min"],
        feature_map=cfg["feature_map"])
    return cfg, s


def build(config: dict, *, device=None, dtype=None) -> RecurrentLM:
    """A RecurrentLM of this config's shape with uninitialised weights."""
    cfg, s = settings(config)
    d, eps = s.hidden_size, cfg["norm_eps"]
    kw = dict(device=device, dtype=dtype)
    blocks = [Block(FlaRMSNorm(d, eps, **kw), GatedLinearAttention(s, **kw), FlaRMSNorm(d, eps, **kw),
                    GatedMLP(d, s.intermediate_size, **kw), residual_in_fp32=False)
              for _ in range(cfg["num_hidden_layers"])]
    lm_config = LMConfig(arch=NAME, vocab_size=cfg["vocab_size"], d_model=d, n_layer=cfg["num_hidden_layers"],
                         eos_token_id=cfg["eos_token_id"], pad_token_id=cfg["pad_token_id"], residual_in_fp32=False)
    lm = RecurrentLM(lm_config, nn.Embedding(cfg["vocab_size"], d, **kw), blocks, FlaRMSNorm(d, eps, **kw),
                     nn.Linear(d, cfg["vocab_size"], bias=False, **kw))
    return lm.eval()


_RENAMES = [  # our parameter name -> fla's, first match wins
    (r"^embedding\.", "model.embeddings."),
    (r"^norm_f\.", "model.norm."),
    (r"^blocks\.(\d+)\.norm\.", r"model.layers.\1.attn_norm."),
    (r"^blocks\.(\d+)\.norm2\.", r"model.layers.\1.mlp_norm."),
    (r"^blocks\.(\d+)\.mixer\.", r"model.layers.\1.attn."),
    (r"^blocks\.(\d+)\.mlp\.", r"model.layers.\1.mlp."),
    (r"^lm_head\.", "lm_head."),
]


def fla_name(ours: str) -> str:
    for pattern, repl in _RENAMES:
        if re.match(pattern, ours):
            return re.sub(pattern, repl, ours)
    raise KeyError(ours)


def _assign(lm: RecurrentLM, tensors: dict[str, torch.Tensor], tied: bool, where: str,
            make=nn.Parameter) -> None:
    """Give every parameter of ``lm`` its tensor from ``tensors`` (fla names); all of ``tensors`` must be used."""
    made: dict[str, nn.Parameter] = {}  # one Parameter per source tensor, so tied weights stay one
    for ours, param in list(lm.named_parameters(remove_duplicate=False)):
        key = fla_name(ours)
        if key == "lm_head.weight" and (tied or key not in tensors):
            if not tied:
                raise CheckpointError(f"{where} lacks 'lm_head.weight' and tie_word_embeddings is false")
            key = "model.embeddings.weight"
        if key not in tensors:
            raise CheckpointError(f"{where} lacks {key!r}")
        src = tensors[key]
        if tuple(src.shape) != tuple(param.shape):
            raise CheckpointError(f"{where}: {key!r} has shape {tuple(src.shape)}, the config implies "
                                  f"{tuple(param.shape)}")
        module_name, _, attr = ours.rpartition(".")
        if key not in made:
            made[key] = make(src)
        setattr(lm.get_submodule(module_name), attr, made[key])
    unused = sorted(set(tensors) - set(made) - ({"lm_head.weight"} if tied else set()))
    if unused:
        raise CheckpointError(f"{where} has weights a GLA model of this config does not use: {', '.join(unused[:6])}"
                              + (" ..." if len(unused) > 6 else ""))


# --- the adapter protocol ---------------------------------------------------------------------------
def accepts_model(model) -> bool:
    return any(c.__name__ == "GLAForCausalLM" and c.__module__.split(".")[0] == "fla" for c in type(model).__mro__)


def from_model(model) -> RecurrentLM:
    """Wrap a loaded fla GLAForCausalLM; the RecurrentLM shares its parameters (no copy)."""
    config = model.config.to_dict()
    for i, layer in enumerate(model.model.layers):
        if type(layer.attn).__name__ != "GatedLinearAttention":
            raise UnsupportedModelError(f"GLA layer {i} is a {type(layer.attn).__name__}; jrt_prompt runs pure GLA")
    lm = skeleton(build, config)
    params = model.state_dict(keep_vars=True)
    _assign(lm, params, bool(config.get("tie_word_embeddings", False)), f"the {type(model).__name__}",
            make=lambda p: p if isinstance(p, nn.Parameter) else nn.Parameter(p, requires_grad=False))
    return lm.eval()


def accepts_folder(config: dict, files: set[str]) -> bool:
    return config.get("model_type") == "gla"


_LEGACY_GATE = re.compile(r"^(model\.layers\.\d+\.mlp\.)gate_proj\.weight$")


def split_legacy_mlp(sd: dict[str, torch.Tensor], intermediate_size: int) -> dict[str, torch.Tensor]:
    """fla before its GatedMLP split (2024, when the fla-hub GLA models were trained) stored gate and up as one
    ``gate_proj`` [2 * intermediate, hidden] whose output was chunked into (gate, up). fla 0.6.0 cannot load that
    layout; we split it into today's ``gate_proj`` / ``up_proj``. Other keys pass through unchanged."""
    out = dict(sd)
    for key, w in sd.items():
        m = _LEGACY_GATE.match(key)
        if m and m.group(1) + "up_proj.weight" not in sd and w.shape[0] == 2 * intermediate_size:
            out[key], out[m.group(1) + "up_proj.weight"] = w[:intermediate_size], w[intermediate_size:]
    return out


def from_folder(path, config: dict, *, device=None, dtype=None) -> RecurrentLM:
    """Read an fla-format GLA checkpoint (config.json + model.* / lm_head.weight weights)."""
    lm = skeleton(build, config)
    sd = split_legacy_mlp(read_state_dict(path), lm.blocks[0].mlp.up_proj.out_features)
    sd = {k: v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point() else v.dtype)
          for k, v in sd.items()}
    _assign(lm, sd, bool(config.get("tie_word_embeddings", False)), f"checkpoint {Path(path)}")
    return lm.eval()
