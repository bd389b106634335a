"""Tiny GLA checkpoints in fla's exact format, written by the tests (no download, no fla needed).

``config.json`` holds every field fla 0.6.0's ``GLAConfig.save_pretrained`` writes (transformers 5.24), and
``model.safetensors`` exactly the keys and shapes of ``GLAForCausalLM.state_dict()``. Both are derived here from
fla's rules independently of jrt_prompt's adapter; tests/test_gla.py checks them against fla when it is installed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

# What GLAConfig(...).save_pretrained() writes, here for a tiny model.
BASE_CONFIG = {
    "architectures": ["GLAForCausalLM"],
    "attn": None,
    "attn_mode": "chunk",
    "attnres_block_size": None,
    "bos_token_id": 1,
    "clamp_min": None,
    "conv_size": 4,
    "dtype": "float32",
    "elementwise_affine": True,
    "eos_token_id": 2,
    "expand_k": 0.5,
    "expand_v": 1.0,
    "feature_map": None,
    "fuse_cross_entropy": True,
    "fuse_linear_cross_entropy": False,
    "fuse_norm": True,
    "fuse_swiglu": True,
    "hidden_act": "swish",
    "hidden_ratio": 4,
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": None,
    "max_position_embeddings": 2048,
    "model_type": "gla",
    "norm_eps": 1e-06,
    "num_heads": 2,
    "num_hidden_layers": 2,
    "num_kv_heads": None,
    "pad_token_id": None,
    "tie_word_embeddings": False,
    "transformers_version": "5.24.0",
    "use_cache": True,
    "use_gk": True,
    "use_gv": False,
    "use_l2warp": False,
    "use_output_gate": True,
    "use_short_conv": False,
    "vocab_size": 64,
}

# Variants that together reach every branch of fla's GLA layer that jrt_prompt implements.
VARIANTS = {
    "default": {},
    "conv_gqa_featuremap": {"use_short_conv": True, "conv_size": 3, "num_heads": 4, "num_kv_heads": 2,
                            "expand_k": 1.0, "feature_map": "relu", "clamp_min": -0.2, "intermediate_size": 48},
    "plain_norm_no_gate": {"use_output_gate": False, "fuse_norm": False, "elementwise_affine": False,
                           "hidden_ratio": 2, "expand_v": 2.0},
    "tied": {"tie_word_embeddings": True, "fuse_norm": False},
}


def gla_config(**overrides) -> dict:
    cfg = {**BASE_CONFIG, **overrides}
    unknown = set(overrides) - set(BASE_CONFIG)
    if unknown:
        raise KeyError(f"not GLAConfig fields: {sorted(unknown)}")
    return cfg


def fla_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every key of fla's GLAForCausalLM.state_dict() for ``cfg`` with its shape (fla 0.6.0's rules)."""
    d, heads = cfg["hidden_size"], cfg["num_heads"]
    groups = heads // (cfg["num_kv_heads"] or heads)
    key_dim, value_dim = round(d * cfg["expand_k"]), round(d * cfg["expand_v"])
    kk, kv = key_dim // groups, value_dim // groups
    inter = cfg["intermediate_size"]
    if inter is None:
        inter = int(d * (cfg["hidden_ratio"] or 4) * 2 / 3)
        inter = 256 * math.ceil(inter / 256)
    shapes = {"model.embeddings.weight": (cfg["vocab_size"], d)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "attn_norm.weight"] = (d,)
        shapes[p + "attn.q_proj.weight"] = (key_dim, d)
        shapes[p + "attn.k_proj.weight"] = (kk, d)
        shapes[p + "attn.v_proj.weight"] = (kv, d)
        if cfg["use_output_gate"]:
            shapes[p + "attn.g_proj.weight"] = (value_dim, d)
        if cfg["use_short_conv"]:
            for name, ch in (("q", key_dim), ("k", kk), ("v", kv)):
                shapes[p + f"attn.{name}_conv1d.weight"] = (ch, 1, cfg["conv_size"])
        shapes[p + "attn.gk_proj.0.weight"] = (16, d)
        shapes[p + "attn.gk_proj.1.weight"] = (kk, 16)
        shapes[p + "attn.gk_proj.1.bias"] = (kk,)
        shapes[p + "attn.o_proj.weight"] = (d, value_dim)
        if cfg["elementwise_affine"]:
            norm = "g_norm_swish_gate" if cfg["use_output_gate"] and cfg["fuse_norm"] else "g_norm"
            shapes[p + f"attn.{norm}.weight"] = (value_dim // heads,)
        shapes[p + "mlp_norm.weight"] = (d,)
        shapes[p + "mlp.gate_proj.weight"] = (inter, d)
        shapes[p + "mlp.up_proj.weight"] = (inter, d)
        shapes[p + "mlp.down_proj.weight"] = (d, inter)
    shapes["model.norm.weight"] = (d,)
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (cfg["vocab_size"], d)
    return shapes


def random_weights(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of O(1) activations (so tests see real mixing), norms near 1."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in fla_shapes(cfg).items():
        if "norm" in key:
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("bias") or key == "model.embeddings.weight":
            t = torch.randn(shape, generator=g)
        else:  # linear [out, in] or conv [C, 1, K]: scale by fan-in
            t = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
        sd[key] = t
    return sd


def write_gla_checkpoint(path: str | Path, cfg: dict, sd: dict[str, torch.Tensor] | None = None, *,
                         tokenizer=None) -> Path:
    """config.json + model.safetensors (+ the tokenizer's files when given) in ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    sd = random_weights(cfg) if sd is None else sd
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def fla_gla_model(cfg: dict, sd: dict[str, torch.Tensor] | None = None):
    """fla's own GLAForCausalLM for ``cfg`` (with ``sd`` loaded when given); needs flash-linear-attention."""
    from fla.models import GLAConfig, GLAForCausalLM

    fields = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "transformers_version", "dtype")}
    model = GLAForCausalLM(GLAConfig(**fields)).eval()
    if sd is not None:
        missing, unexpected = model.load_state_dict(sd, strict=False)
        allowed = {"lm_head.weight"} if cfg["tie_word_embeddings"] else set()
        if set(missing) - allowed or unexpected:
            raise KeyError(f"weights do not fit fla's model: missing {missing}, unexpected {unexpected}")
    return model


def require(module: str):
    """Import ``module`` or skip the test visibly (also when it is installed but fails to import)."""
    import pytest

    return pytest.importorskip(module, reason=f"{module} is not installed or does not import", exc_type=ImportError)
