"""Mamba (1): transformers' and fla's ``MambaForCausalLM``, HF folders (model_type "mamba", written by either
library) and mamba_ssm folders.

Also holds what the Mamba-2 adapter shares with this one: the mamba_ssm config format, building a
RecurrentLM on the meta device, and loading weights into it by assignment (no copy when nothing is cast).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from jrt_prompt.checkpoint import read_state_dict
from jrt_prompt.errors import CheckpointError
from jrt_prompt.layers.mamba import ACTIVATIONS, MambaMixer
from jrt_prompt.layers.norm import RMSNorm
from jrt_prompt.model import Block, LMConfig, RecurrentLM

from .skeleton import skip_init

NAME = "mamba"
HF_CLASS = "MambaForCausalLM"
NORM_EPS = 1e-5  # mamba_ssm's MixerModel default; its config has no field for it

# mamba_ssm's MambaConfig fields (models/config_mamba.py); MambaLMHeadModel rejects any other.
MAMBA_SSM_FIELDS = {"d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx", "attn_cfg",
                    "rms_norm", "residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple", "tie_embeddings"}
# Mamba (modules/mamba_simple.py) arguments; the dt_* ones only initialise weights.
MAMBA1_SSM_CFG = {"layer", "d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale",
                  "dt_init_floor", "conv_bias", "bias", "use_fast_path"}


# ---------------------------------------------------------------- building and loading (shared with mamba2)
def build_lm(config: LMConfig, make_mixer: Callable[[], nn.Module], *, norm_eps: float, rms_norm: bool = True
             ) -> RecurrentLM:
    """The model skeleton on the meta device (no memory, no initialisation); ``load_weights`` gives it its tensors."""
    d = config.d_model

    def norm() -> nn.Module:
        return RMSNorm(d, eps=norm_eps) if rms_norm else nn.LayerNorm(d, eps=norm_eps)

    with skip_init():
        blocks = [Block(norm(), make_mixer(), residual_in_fp32=config.residual_in_fp32) for _ in range(config.n_layer)]
        lm = RecurrentLM(config, nn.Embedding(config.vocab_size, d), blocks, norm(),
                         nn.Linear(d, config.vocab_size, bias=False))
    return lm.eval()


def our_key(key: str) -> str:
    """HF (backbone.embeddings, backbone.layers.i) and mamba_ssm (backbone.embedding) names -> RecurrentLM names."""
    for prefix, ours in (("backbone.embeddings.", "embedding."), ("backbone.embedding.", "embedding."),
                         ("backbone.layers.", "blocks."), ("backbone.norm_f.", "norm_f.")):
        if key.startswith(prefix):
            return ours + key[len(prefix):]
    return key


def stored_key(ours: str) -> str:
    """A RecurrentLM name as a checkpoint stores it (for messages)."""
    for prefix, theirs in (("embedding.", "backbone.embedding(s)."), ("blocks.", "backbone.layers."),
                           ("norm_f.", "backbone.norm_f.")):
        if ours.startswith(prefix):
            return theirs + ours[len(prefix):]
    return ours


def load_weights(lm: RecurrentLM, sd: dict[str, torch.Tensor], *, tie: bool, device=None,
                 dtype: torch.dtype | None = None, keep_fp32: Callable[[str], bool] | None = None) -> RecurrentLM:
    """Assign ``sd`` (HF or mamba_ssm names) to ``lm``'s parameters. Tensors are used as they are (shared, no
    copy) unless ``device``/``dtype`` ask for a cast; a tied head reuses the embedding's tensor. With ``dtype``,
    the parameters ``keep_fp32(our name)`` picks are cast to float32 instead."""
    named = {}
    for key, t in sd.items():
        if our_key(key) in named:
            raise CheckpointError(f"checkpoint weights hold {our_key(key)!r} twice (as {key!r} and another name)")
        named[our_key(key)] = (key, t)
    if tie:
        if "embedding.weight" not in named:
            raise CheckpointError("checkpoint weights lack the embedding ('backbone.embeddings.weight' or "
                                  "'backbone.embedding.weight')")
        named["lm_head.weight"] = named["embedding.weight"]
    expected = lm.state_dict()
    missing = [k for k in expected if k not in named]
    if missing:
        raise CheckpointError(f"checkpoint weights lack {len(missing)} tensors the config implies, e.g. "
                              f"{', '.join(stored_key(k) for k in missing[:3])}")
    unused = [named[k][0] for k in named if k not in expected]
    if unused:
        raise CheckpointError(f"checkpoint weights hold tensors this config does not use: {', '.join(unused[:3])}; "
                              "the config and the weights disagree")
    cast: dict[tuple[int, torch.dtype | None], torch.Tensor] = {}
    out = {}
    for k, meta in expected.items():
        key, t = named[k]
        if tuple(t.shape) != tuple(meta.shape):
            raise CheckpointError(f"checkpoint weight {key!r} has shape {tuple(t.shape)}, the config implies "
                                  f"{tuple(meta.shape)}")
        want = torch.float32 if dtype is not None and keep_fp32 is not None and keep_fp32(k) else dtype
        if not t.is_floating_point():
            want = None
        if (id(t), want) not in cast:  # a tensor held under two names (a tied head) is cast once and stays shared
            cast[id(t), want] = t.to(device=device, dtype=want)
        out[k] = cast[id(t), want]
    lm.load_state_dict(out, assign=True)
    return lm


def folder_dtype(sd: dict[str, torch.Tensor], dtype: torch.dtype | None) -> torch.dtype:
    """The requested dtype, else the stored embedding's (one dtype for the whole model)."""
    if dtype is not None:
        return dtype
    emb = sd.get("backbone.embeddings.weight", sd.get("backbone.embedding.weight"))
    return emb.dtype if emb is not None else torch.float32


def check_activation(name: str, field: str = "hidden_act") -> None:
    if name not in ACTIVATIONS:
        raise CheckpointError(f"config field {field} = {name!r} is not supported; use one of {', '.join(ACTIVATIONS)}")


# ---------------------------------------------------------------- the mamba_ssm format (shared with mamba2)
def is_mamba_ssm_config(config: dict) -> bool:
    return "model_type" not in config and {"d_model", "n_layer", "vocab_size"} <= config.keys()


def mamba_ssm_layer(config: dict) -> str:
    ssm_cfg = config.get("ssm_cfg") or {}
    return ssm_cfg.get("layer", "Mamba1") if isinstance(ssm_cfg, dict) else "?"


def mamba_ssm_model(config: dict, arch: str, allowed_ssm_cfg: set[str]) -> tuple[LMConfig, dict, dict]:
    """Check a mamba_ssm config; return the LMConfig, its ssm_cfg and the block options (rms_norm, tie)."""
    unknown = sorted(config.keys() - MAMBA_SSM_FIELDS)
    if unknown:
        raise CheckpointError(f"mamba_ssm config has fields MambaConfig does not: {', '.join(unknown)}")
    ssm_cfg = config.get("ssm_cfg") or {}
    if not isinstance(ssm_cfg, dict):
        raise CheckpointError(f"mamba_ssm config field ssm_cfg must be an object, got {ssm_cfg!r}")
    bad = sorted(ssm_cfg.keys() - allowed_ssm_cfg)
    if bad:
        raise CheckpointError(f"mamba_ssm config field ssm_cfg has keys {arch} does not take: {', '.join(bad)}")
    if config.get("d_intermediate", 0):
        raise CheckpointError(f"mamba_ssm config field d_intermediate = {config['d_intermediate']}: blocks with an "
                              "MLP are not supported (only d_intermediate = 0)")
    if config.get("attn_layer_idx"):
        raise CheckpointError(f"mamba_ssm config field attn_layer_idx = {config['attn_layer_idx']}: hybrid models "
                              "with attention layers are not supported")
    vocab, multiple = int(config["vocab_size"]), int(config.get("pad_vocab_size_multiple", 8))
    if multiple < 1:
        raise CheckpointError(f"mamba_ssm config field pad_vocab_size_multiple = {multiple} must be >= 1")
    vocab += -vocab % multiple  # MambaLMHeadModel pads the vocabulary the same way
    lm_config = LMConfig(arch=arch, vocab_size=vocab, d_model=int(config["d_model"]), n_layer=int(config["n_layer"]),
                         residual_in_fp32=bool(config.get("residual_in_fp32", True)))
    options = {"rms_norm": bool(config.get("rms_norm", True)), "tie": bool(config.get("tie_embeddings", True))}
    return lm_config, ssm_cfg, options


def d_inner_of(d_model: int, expand) -> int:
    d_inner = expand * d_model
    if int(d_inner) != d_inner:
        raise CheckpointError(f"ssm_cfg expand = {expand} times d_model = {d_model} is not a whole number of channels")
    return int(d_inner)


# ---------------------------------------------------------------- Mamba 1
def _mixer_from_hf(c) -> dict:
    check_activation(c.hidden_act)
    return dict(d_model=c.hidden_size, d_inner=c.intermediate_size, d_state=c.state_size, d_conv=c.conv_kernel,
                dt_rank=int(c.time_step_rank), use_bias=c.use_bias, use_conv_bias=c.use_conv_bias,
                hidden_act=c.hidden_act)


def lm_config_from_hf(c, arch: str) -> LMConfig:
    return LMConfig(arch=arch, vocab_size=c.vocab_size, d_model=c.hidden_size, n_layer=c.num_hidden_layers,
                    eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id, residual_in_fp32=c.residual_in_fp32)


def _skeleton_from_hf(c) -> RecurrentLM:
    mixer = _mixer_from_hf(c)
    return build_lm(lm_config_from_hf(c, NAME), lambda: MambaMixer(**mixer), norm_eps=c.layer_norm_epsilon)


def accepts_model(model) -> bool:
    return any(cls.__name__ == HF_CLASS for cls in type(model).__mro__)


def from_model(model) -> RecurrentLM:
    """A RecurrentLM over the very tensors of a transformers or fla MambaForCausalLM (no copy)."""
    from . import fla_mamba

    if fla_mamba.is_fla_model(model, HF_CLASS):
        return fla_mamba.from_model(model, NAME, partial(hf_reading, hf_config="MambaConfig", from_hf=_skeleton_from_hf,
                                                         where="the model's config"))
    return load_weights(_skeleton_from_hf(model.config), model.state_dict(), tie=False)


def accepts_folder(config: dict, files: set[str]) -> bool:
    return config.get("model_type") == NAME or (is_mamba_ssm_config(config) and mamba_ssm_layer(config) != "Mamba2")


def hf_reading(config: dict, *, hf_config: str, from_hf, where: str) -> tuple[RecurrentLM, bool]:
    """The skeleton and tie flag transformers' ``hf_config`` class makes of ``config`` (CheckpointError if invalid)."""
    import transformers

    try:
        c = getattr(transformers, hf_config).from_dict(config)
    except Exception as e:  # noqa: BLE001 - any invalid field becomes one clear error
        raise CheckpointError(f"{where} is not a valid {hf_config}: {e}") from None
    return from_hf(c), bool(c.tie_word_embeddings)


def folder_model(path, config: dict, *, name: str, hf_config: str, from_hf, from_mamba_ssm, device=None,
                 dtype: torch.dtype | None = None) -> RecurrentLM:
    """Read a folder of any format: HF as transformers writes it (config.json model_type ``name``, checked by
    transformers' ``hf_config`` class) or as fla writes it (same model_type, fla's fields), or mamba_ssm.
    ``from_hf(config_object)`` / ``from_mamba_ssm(dict)`` give the skeleton (and tie flag)."""
    if config.get("model_type") == name:
        from . import fla_mamba

        read_hf = partial(hf_reading, hf_config=hf_config, from_hf=from_hf, where=f"{path}/config.json")
        if fla_mamba.is_fla_config(config, name, read_hf, where=f"{path}/config.json"):
            return fla_mamba.from_folder(path, config, name, device=device, dtype=dtype)
        lm, tie = read_hf(config)
    else:
        lm, tie = from_mamba_ssm(config)
    sd = read_state_dict(path)
    return load_weights(lm, sd, tie=tie, device=device, dtype=folder_dtype(sd, dtype))


def from_folder(path: str | Path, config: dict, device=None, dtype: torch.dtype | None = None) -> RecurrentLM:
    return folder_model(path, config, name=NAME, hf_config="MambaConfig", from_hf=_skeleton_from_hf,
                        from_mamba_ssm=_skeleton_from_mamba_ssm, device=device, dtype=dtype)


def _skeleton_from_mamba_ssm(config: dict) -> tuple[RecurrentLM, bool]:
    layer = mamba_ssm_layer(config)
    if layer != "Mamba1":
        raise CheckpointError(f"mamba_ssm config field ssm_cfg.layer = {layer!r} is not supported (Mamba1, Mamba2)")
    lm_config, ssm, opts = mamba_ssm_model(config, NAME, MAMBA1_SSM_CFG)
    d = lm_config.d_model
    dt_rank = ssm.get("dt_rank", "auto")
    mixer = dict(d_model=d, d_inner=d_inner_of(d, ssm.get("expand", 2)), d_state=int(ssm.get("d_state", 16)),
                 d_conv=int(ssm.get("d_conv", 4)), dt_rank=-(-d // 16) if dt_rank == "auto" else int(dt_rank),
                 use_bias=bool(ssm.get("bias", False)), use_conv_bias=bool(ssm.get("conv_bias", True)))
    lm = build_lm(lm_config, lambda: MambaMixer(**mixer), norm_eps=NORM_EPS, rms_norm=opts["rms_norm"])
    return lm, opts["tie"]
