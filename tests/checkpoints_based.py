"""Tiny Based checkpoints in hazyresearch's exact format, and an independent forward pass to check against.

``config.json`` has the fields of a GPT2MixerConfig as the reference experiment configs set them
(based/configs/experiment/reference/based-360m.yaml, shrunk); the weights file holds the Lightning checkpoint's
keys (``model.transformer...``, ``model.lm_head.weight`` tied, plus ``*_metrics.*`` counters). Both are derived
here from hazyresearch's code (gpt.py, mixers/convolution.py, linear_attention.py, slide_attention.py),
independently of jrt_prompt. ``reference_logits`` transcribes that code's full-sequence forward in plain torch.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

# A based-360m-style config, shrunk: d 32, 5 layers (BaseConv, linear attn, window, linear attn, window).
BASE_CONFIG = {
    "activation_function": "swiglu",
    "alt_mixer": {
        "_target_": "based.models.mixers.linear_attention.LinearAttention",
        "feature_dim": 16,
        "feature_map": {"_target_": "based.models.mixers.linear_attention.TaylorExp", "input_dim": 16},
        "l_max": 2048,
        "num_heads": 2,
        "parallel_implementation": "fla_parallel",
    },
    "alt_mixer_2": {
        "_target_": "based.models.mixers.slide_attention.SlidingAttention",
        "causal": True,
        "num_heads": 4,
        "window_size": 8,  # each token sees itself and 4 before it
    },
    "alt_mixer_2_layers": [2, 4],
    "alt_mixer_layers": [1, 3],
    "attn_pdrop": 0,
    "bos_token_id": 50256,
    "embd_pdrop": 0,
    "eos_token_id": 50256,
    "fused_bias_fc": True,
    "fused_dropout_add_ln": True,
    "fused_mlp": False,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "mixer": {
        "_target_": "based.models.mixers.convolution.BaseConv",
        "expand_proj": 4,
        "kernel_sizes": 3,
        "l_max": 2048,
        "use_bias": True,
    },
    "mlp_fc1_bias": False,
    "mlp_fc2_bias": False,
    "n_embd": 32,
    "n_head": 4,
    "n_inner": 64,
    "n_layer": 5,
    "n_positions": 0,
    "out_proj_bias": False,
    "pad_vocab_size_multiple": 8,
    "qkv_proj_bias": False,
    "reorder_and_upcast_attn": False,
    "resid_pdrop": 0,
    "residual_in_fp32": True,
    "rms_norm": True,
    "rotary_emb_base": 10000,
    "rotary_emb_fraction": 1,
    "scale_attn_by_inverse_layer_idx": False,
    "scale_attn_weights": True,
    "special_initializer": True,
    "tie_word_embeddings": True,
    "use_flash_attn": True,
    "vocab_size": 396,
}


# Every other branch of the same code: other conv shape, biases, partial rotary, per-layer attention scale.
VARIANT = {
    "mixer": {"_target_": "based.models.mixers.convolution.BaseConv", "expand_proj": 2, "kernel_size": 4,
              "l_max": 2048, "use_bias": False},
    "alt_mixer_layers": [0, 3], "alt_mixer_2_layers": [1, 3],  # layer 3 is in both: the window wins
    "qkv_proj_bias": True, "out_proj_bias": True, "mlp_fc1_bias": True, "mlp_fc2_bias": True,
    "rotary_emb_fraction": 0.5, "scale_attn_by_inverse_layer_idx": True, "residual_in_fp32": False,
    "n_layer": 4, "pad_vocab_size_multiple": 1,
}


def based_config(**overrides) -> dict:
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg.update(copy.deepcopy(overrides))
    return cfg


def _kinds(cfg: dict) -> list[str]:
    window, linear = set(cfg["alt_mixer_2_layers"]), set(cfg["alt_mixer_layers"])
    return ["window" if i in window else "linear" if i in linear else "conv" for i in range(cfg["n_layer"])]


def hazyresearch_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every key of GPTLMHeadModel.state_dict() for ``cfg`` (no 'model.' prefix) with its shape."""
    d, inner = cfg["n_embd"], cfg["n_inner"]
    vocab = math.ceil(cfg["vocab_size"] / cfg["pad_vocab_size_multiple"]) * cfg["pad_vocab_size_multiple"]
    shapes = {"transformer.embeddings.word_embeddings.weight": (vocab, d)}
    for i, kind in enumerate(_kinds(cfg)):
        p = f"transformer.layers.{i}."
        shapes[p + "norm1.weight"] = (d,)
        shapes[p + "norm2.weight"] = (d,)
        shapes[p + "mlp.fc1.weight"] = (2 * inner, d)
        shapes[p + "mlp.fc2.weight"] = (d, inner)
        if cfg["mlp_fc1_bias"]:
            shapes[p + "mlp.fc1.bias"] = (2 * inner,)
        if cfg["mlp_fc2_bias"]:
            shapes[p + "mlp.fc2.bias"] = (d,)
        if kind == "conv":
            e = cfg["mixer"]["expand_proj"]
            shapes[p + "mixer.in_proj.weight"] = (e * d, d)
            shapes[p + "mixer.out_proj.weight"] = (d, e * d // 2)
            if cfg["mixer"]["use_bias"]:
                shapes[p + "mixer.in_proj.bias"] = (e * d,)
                shapes[p + "mixer.out_proj.bias"] = (d,)
            kernel = cfg["mixer"].get("kernel_size", 3)  # BaseConv ignores kernel_sizes
            shapes[p + "mixer.conv.conv.weight"] = (e * d // 2, 1, kernel)
        elif kind == "linear":
            h, f = cfg["alt_mixer"]["num_heads"], cfg["alt_mixer"]["feature_dim"]
            shapes[p + "mixer.proj_q.weight"] = (h * f, d)
            shapes[p + "mixer.proj_k.weight"] = (h * f, d)
            shapes[p + "mixer.proj_v.weight"] = (d, d)
            shapes[p + "mixer.out_proj.weight"] = (d, d)
        else:
            shapes[p + "mixer.Wqkv.weight"] = (3 * d, d)
            shapes[p + "mixer.out_proj.weight"] = (d, d)
            if cfg["qkv_proj_bias"]:
                shapes[p + "mixer.Wqkv.bias"] = (3 * d,)
            if cfg["out_proj_bias"]:
                shapes[p + "mixer.out_proj.bias"] = (d,)
    shapes["transformer.ln_f.weight"] = (d,)
    shapes["lm_head.weight"] = (vocab, d)
    return shapes


def random_weights(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of a sensible scale (unit-variance activations), the head tied to the embedding."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in hazyresearch_shapes(cfg).items():
        if key.endswith("norm1.weight") or key.endswith("norm2.weight") or key.endswith("ln_f.weight"):
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        elif key.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("conv.conv.weight"):
            t = 0.5 * torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
        sd[key] = t
    sd["lm_head.weight"] = sd["transformer.embeddings.word_embeddings.weight"].clone()
    return sd


def write_checkpoint(path: Path, cfg: dict, sd: dict[str, torch.Tensor], fmt: str = "bin") -> Path:
    """config.json plus the Lightning-style weights: 'model.' before every key, metrics counters beside them."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    stored = {f"model.{k}": v.contiguous() for k, v in sd.items()}
    stored["model.train_metrics.num-tokens.count"] = torch.tensor(12345.0)
    stored["model.val_metrics.num-tokens.count"] = torch.tensor(678.0)
    if fmt == "bin":
        torch.save(stored, path / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(stored, str(path / "model.safetensors"))
    return path


# --------------------------------------------------------------------------- hazyresearch's forward, transcribed
def _rms(x, w, eps):
    return w * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps))


def _base_conv(x, sd, p, cfg):
    u = F.linear(x, sd[p + "in_proj.weight"], sd.get(p + "in_proj.bias"))
    u1, u2 = u.chunk(2, dim=-1)
    w = sd[p + "conv.conv.weight"]
    y = F.conv1d(u1.transpose(1, 2), w, groups=w.shape[0], padding=w.shape[-1] - 1)[..., : x.shape[1]]
    return F.linear(F.silu(y.transpose(1, 2)) * u2, sd[p + "out_proj.weight"], sd.get(p + "out_proj.bias"))


def _linear_attention(x, sd, p, cfg):
    """linear_attention.py parallel_forward ("quadratic"), TaylorExp features."""
    b, l, d = x.shape
    h, f = cfg["alt_mixer"]["num_heads"], cfg["alt_mixer"]["feature_dim"]
    q = F.linear(x, sd[p + "proj_q.weight"]).view(b, l, h, f).transpose(1, 2)
    k = F.linear(x, sd[p + "proj_k.weight"]).view(b, l, h, f).transpose(1, 2)
    v = F.linear(x, sd[p + "proj_v.weight"]).view(b, l, h, d // h).transpose(1, 2)

    def taylor(t):
        t2 = (t.unsqueeze(-1) * t.unsqueeze(-2)).flatten(start_dim=-2) / math.sqrt(2)
        return torch.cat([t[..., :1] ** 0, t / math.sqrt(math.sqrt(f)), t2 / math.sqrt(f)], dim=-1)

    q, k = taylor(q), taylor(k)
    a = torch.tril(torch.einsum("bhnd,bhmd->bhnm", q, k))
    y = torch.einsum("bhnm,bhme->bhne", a, v)
    z = 1 / (torch.einsum("bhld,bhld->bhl", q, k.cumsum(2)) + 1e-12)
    y = (y * z[..., None]).transpose(1, 2).reshape(b, l, d)
    return F.linear(y, sd[p + "out_proj.weight"])


def _window_attention(x, sd, p, cfg, layer_idx):
    """slide_attention.py with flash-attn semantics: window (window_size // 2, 0), rotary rotate-half."""
    b, l, d = x.shape
    h = cfg["n_head"]
    hd = d // h
    qkv = F.linear(x, sd[p + "Wqkv.weight"], sd.get(p + "Wqkv.bias")).view(b, l, 3, h, hd)
    rd = int(cfg["rotary_emb_fraction"] * hd)
    inv = 1.0 / (cfg["rotary_emb_base"] ** (torch.arange(0, rd, 2, dtype=torch.float32) / rd))
    freqs = torch.outer(torch.arange(l, dtype=torch.float32), inv)
    cos, sin = freqs.cos()[:, None, :], freqs.sin()[:, None, :]

    def rotate(t):
        t1, t2, rest = t[..., : rd // 2], t[..., rd // 2: rd], t[..., rd:]
        return torch.cat([t1 * cos - t2 * sin, t1 * sin + t2 * cos, rest], dim=-1)

    q, k, v = rotate(qkv[:, :, 0]), rotate(qkv[:, :, 1]), qkv[:, :, 2]
    back = cfg["alt_mixer_2"]["window_size"] // 2
    i, j = torch.arange(l)[:, None], torch.arange(l)[None, :]
    keep = (j <= i) & (j >= i - back)
    scale = hd ** -0.5 if cfg["scale_attn_weights"] else 1.0
    if cfg["scale_attn_by_inverse_layer_idx"]:
        scale /= layer_idx + 1
    s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    a = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1)
    o = torch.einsum("bhij,bjhd->bihd", a, v).reshape(b, l, d)
    return F.linear(o, sd[p + "out_proj.weight"], sd.get(p + "out_proj.bias"))


@torch.no_grad()
def reference_logits(cfg: dict, sd: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """GPTLMHeadModel.forward in float32 (prenorm blocks, residual added before each norm; the head is the
    embedding unless tie_word_embeddings is false)."""
    sd = {k: v.float() for k, v in sd.items()}
    eps = cfg["layer_norm_epsilon"]
    residual = F.embedding(ids, sd["transformer.embeddings.word_embeddings.weight"])
    for i, kind in enumerate(_kinds(cfg)):
        p = f"transformer.layers.{i}."
        h = _rms(residual, sd[p + "norm1.weight"], eps)
        if kind == "conv":
            h = _base_conv(h, sd, p + "mixer.", cfg)
        elif kind == "linear":
            h = _linear_attention(h, sd, p + "mixer.", cfg)
        else:
            h = _window_attention(h, sd, p + "mixer.", cfg, i)
        residual = residual + h
        y, gate = F.linear(_rms(residual, sd[p + "norm2.weight"], eps), sd[p + "mlp.fc1.weight"],
                           sd.get(p + "mlp.fc1.bias")).chunk(2, dim=-1)
        residual = residual + F.linear(y * F.silu(gate), sd[p + "mlp.fc2.weight"], sd.get(p + "mlp.fc2.bias"))
    h = _rms(residual, sd["transformer.ln_f.weight"], eps)
    head = "transformer.embeddings.word_embeddings.weight" if cfg.get("tie_word_embeddings", True) else "lm_head.weight"
    return F.linear(h, sd[head])
