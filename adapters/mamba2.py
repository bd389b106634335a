"""Mamba-2: transformers' and fla's ``Mamba2ForCausalLM``, HF folders (model_type "mamba2", written by either
library) and mamba_ssm folders whose ssm_cfg says {"layer": "Mamba2"} (state-spaces/mamba2-130m ... 2.7b)."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch

from jrt_prompt.errors import CheckpointError
from jrt_prompt.layers.mamba2 import Mamba2Mixer
from jrt_prompt.model import RecurrentLM

from .mamba import (NORM_EPS, build_lm, check_activation, d_inner_of, folder_model, hf_reading, is_mamba_ssm_config,
                    lm_config_from_hf, load_weights, mamba_ssm_layer, mamba_ssm_model)

NAME = "mamba2"
HF_CLASS = "Mamba2ForCausalLM"
# Mamba2 (modules/mamba2.py) arguments; conv_init, A_init_range, dt_min/max/init_floor only initialise weights,
# use_mem_eff_path picks a kernel.
MAMBA2_SSM_CFG = {"layer", "d_state", "d_conv", "conv_init", "expand", "headdim", "d_ssm", "ngroups", "A_init_range",
                  "D_has_hdim", "rmsnorm", "norm_before_gate", "dt_min", "dt_max", "dt_init_floor", "dt_limit", "bias",
                  "conv_bias", "chunk_size", "use_mem_eff_path"}


def _dt_limit(value, field: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise CheckpointError(f"config field {field} = {value!r} must be two numbers (min, max)") from None
    if not 0.0 <= lo <= hi:
        raise CheckpointError(f"config field {field} = {value!r} must satisfy 0 <= min <= max")
    return lo, hi


def _skeleton_from_hf(c) -> RecurrentLM:
    d_inner = int(c.expand * c.hidden_size)
    if c.num_heads * c.head_dim != d_inner:
        raise CheckpointError(f"config fields num_heads = {c.num_heads} times head_dim = {c.head_dim} must equal "
                              f"expand * hidden_size = {d_inner}")
    if c.num_heads % c.n_groups:
        raise CheckpointError(f"config field n_groups = {c.n_groups} must divide num_heads = {c.num_heads}")
    check_activation(c.hidden_act)
    mixer = dict(d_model=c.hidden_size, n_heads=c.num_heads, head_dim=c.head_dim, d_state=c.state_size,
                 n_groups=c.n_groups, d_conv=c.conv_kernel, use_bias=c.use_bias, use_conv_bias=c.use_conv_bias,
                 hidden_act=c.hidden_act, dt_limit=_dt_limit(c.time_step_limit, "time_step_limit"),
                 norm_eps=c.layer_norm_epsilon)
    return build_lm(lm_config_from_hf(c, NAME), lambda: Mamba2Mixer(**mixer), norm_eps=c.layer_norm_epsilon)


def _skeleton_from_mamba_ssm(config: dict) -> tuple[RecurrentLM, bool]:
    lm_config, ssm, opts = mamba_ssm_model(config, NAME, MAMBA2_SSM_CFG)
    d = lm_config.d_model
    d_inner = d_inner_of(d, ssm.get("expand", 2))
    if ssm.get("d_ssm") is not None and int(ssm["d_ssm"]) != d_inner:
        raise CheckpointError(f"mamba_ssm config field ssm_cfg.d_ssm = {ssm['d_ssm']}: an SSM on part of the "
                              f"channels with a gated MLP on the rest is not supported (only d_ssm = {d_inner})")
    headdim, ngroups = int(ssm.get("headdim", 64)), int(ssm.get("ngroups", 1))
    if d_inner % headdim:
        raise CheckpointError(f"mamba_ssm config field ssm_cfg.headdim = {headdim} does not divide {d_inner} channels")
    if (d_inner // headdim) % ngroups:
        raise CheckpointError(f"mamba_ssm config field ssm_cfg.ngroups = {ngroups} does not divide "
                              f"{d_inner // headdim} heads")
    mixer = dict(d_model=d, n_heads=d_inner // headdim, head_dim=headdim, d_state=int(ssm.get("d_state", 128)),
                 n_groups=ngroups, d_conv=int(ssm.get("d_conv", 4)), use_bias=bool(ssm.get("bias", False)),
                 use_conv_bias=bool(ssm.get("conv_bias", True)),
                 dt_limit=_dt_limit(ssm.get("dt_limit", (0.0, math.inf)), "ssm_cfg.dt_limit"),
                 rmsnorm=bool(ssm.get("rmsnorm", True)), norm_before_gate=bool(ssm.get("norm_before_gate", False)),
                 norm_eps=NORM_EPS, D_has_hdim=bool(ssm.get("D_has_hdim", False)))
    lm = build_lm(lm_config, lambda: Mamba2Mixer(**mixer), norm_eps=NORM_EPS, rms_norm=opts["rms_norm"])
    return lm, opts["tie"]


def accepts_model(model) -> bool:
    return any(cls.__name__ == HF_CLASS for cls in type(model).__mro__)


def from_model(model) -> RecurrentLM:
    """A RecurrentLM over the very tensors of a transformers or fla Mamba2ForCausalLM (no copy)."""
    from . import fla_mamba

    if fla_mamba.is_fla_model(model, HF_CLASS):
        return fla_mamba.from_model(model, NAME, partial(hf_reading, hf_config="Mamba2Config",
                                                         from_hf=_skeleton_from_hf, where="the model's config"))
    return load_weights(_skeleton_from_hf(model.config), model.state_dict(), tie=False)


def accepts_folder(config: dict, files: set[str]) -> bool:
    return config.get("model_type") == NAME or (is_mamba_ssm_config(config) and mamba_ssm_layer(config) == "Mamba2")


def from_folder(path: str | Path, config: dict, device=None, dtype: torch.dtype | None = None) -> RecurrentLM:
    return folder_model(path, config, name=NAME, hf_config="Mamba2Config", from_hf=_skeleton_from_hf,
                        from_mamba_ssm=_skeleton_from_mamba_ssm, device=device, dtype=dtype)
