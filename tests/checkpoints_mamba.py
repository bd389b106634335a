"""Tiny random transformers Mamba / Mamba-2 models and checkpoint folders written from them, in the two
formats the adapters read:

- HF: ``save_pretrained`` (config.json with model_type, model.safetensors, backbone.embeddings.* keys);
- mamba_ssm: config.json with exactly mamba_ssm's MambaConfig fields (d_model, n_layer, vocab_size before
  padding, ssm_cfg, rms_norm, ...) and pytorch_model.bin with its key names (backbone.embedding.weight,
  lm_head.weight even when tied, as MambaLMHeadModel.save_pretrained writes it), built by renaming the
  HF model's tensors. Loading such a folder must give the HF model's logits.

Variants mamba_ssm has and transformers lacks (LayerNorm blocks, Mamba-2 without the gated norm or with
norm before gate) are made by swapping the HF model's norm modules for ones with those semantics, so the
HF forward is still the reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random, SSM ones included (A_log, D, dt biases, norm weights), not the init defaults."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("A_log"):
                p.copy_(torch.rand(p.shape, generator=g) * 2.5 - 1.0)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * r)
            elif name.endswith("dt_bias") or name.endswith("dt_proj.bias"):
                p.copy_(0.5 * r - 0.5)
            else:
                p.copy_(0.3 * r)
    return model.eval()


def tiny_mamba(seed: int = 0, **overrides) -> MambaForCausalLM:
    cfg = dict(vocab_size=48, hidden_size=16, state_size=4, num_hidden_layers=2, conv_kernel=4, expand=2,
               pad_token_id=0, eos_token_id=1)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return randomize(MambaForCausalLM(MambaConfig(**cfg)), seed)


TINY_MAMBA2 = dict(vocab_size=48, hidden_size=16, num_heads=4, head_dim=8, state_size=6, n_groups=2, num_hidden_layers=2,
                   conv_kernel=4, expand=2, chunk_size=8, pad_token_id=0, eos_token_id=1)


def tiny_mamba2(seed: int = 0, **overrides) -> Mamba2ForCausalLM:
    cfg = {**TINY_MAMBA2, **overrides}
    torch.manual_seed(seed)
    return grouped_gated_norms(randomize(Mamba2ForCausalLM(Mamba2Config(**cfg)), seed))


def transformers_norms_over_groups() -> bool:
    """transformers before 5.23 normalises Mamba-2's gated RMSNorm over all channels, not per group as mamba_ssm
    (and every checkpoint trained with it) does: with n_groups > 1 its logits are not the checkpoint's."""
    from transformers.models.mamba2 import modeling_mamba2

    return "group_size" in modeling_mamba2.MambaRMSNormGated.__init__.__code__.co_varnames


def grouped_gated_norms(model: Mamba2ForCausalLM) -> Mamba2ForCausalLM:
    """On transformers < 5.23, give the model mamba_ssm's per-group gated norm (5.23's code), so its forward is
    the reference the tests compare against on every version (test_transformers_gated_norm_ignores_groups)."""
    if not transformers_norms_over_groups():
        for layer in model.backbone.layers:
            old = layer.mixer.norm
            layer.mixer.norm = _GateThenNorm(old.weight.data, old.weight.numel() // model.config.n_groups,
                                             old.variance_epsilon)
    return model


# ------------------------------------------------------------------ HF format
def write_hf_folder(model: nn.Module, path: Path) -> Path:
    model.save_pretrained(path)
    return path


# ------------------------------------------------------------------ mamba_ssm format
def mamba_ssm_weights(model: nn.Module, *, write_head: bool = True) -> dict[str, torch.Tensor]:
    """The HF model's tensors under mamba_ssm's names (only the embedding is named differently there)."""
    sd = {}
    for key, t in model.state_dict().items():
        if key == "lm_head.weight" and not write_head:
            continue
        sd[key.replace("backbone.embeddings.", "backbone.embedding.")] = t.clone()
    return sd


def _mamba_ssm_config(c, ssm_cfg: dict, *, vocab_size: int, pad_multiple: int, tie: bool, rms_norm: bool,
                      legacy: bool) -> dict:
    assert vocab_size + (-vocab_size % pad_multiple) == c.vocab_size, "the HF model must have the padded vocab"
    assert c.layer_norm_epsilon == 1e-5, "mamba_ssm's norms use eps 1e-5"
    if legacy:  # state-spaces/mamba-130m's config.json: the first MambaConfig, always tied
        assert tie
        return {"d_model": c.hidden_size, "n_layer": c.num_hidden_layers, "vocab_size": vocab_size,
                "ssm_cfg": ssm_cfg, "rms_norm": rms_norm, "residual_in_fp32": c.residual_in_fp32,
                "fused_add_norm": True, "pad_vocab_size_multiple": pad_multiple}
    return {"d_model": c.hidden_size, "d_intermediate": 0, "n_layer": c.num_hidden_layers, "vocab_size": vocab_size,
            "ssm_cfg": ssm_cfg, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": rms_norm,
            "residual_in_fp32": c.residual_in_fp32, "fused_add_norm": True, "pad_vocab_size_multiple": pad_multiple,
            "tie_embeddings": tie}


def mamba1_ssm_cfg(c: MambaConfig, *, defaults: bool = False) -> dict:
    """Mamba's ssm_cfg for an HF config: empty when it uses mamba_ssm's defaults (as mamba-130m's does)."""
    assert c.hidden_act == "silu", "mamba_ssm's conv activation is always silu"
    if defaults:
        assert (c.state_size, c.conv_kernel, c.expand, c.time_step_rank) == (16, 4, 2, -(-c.hidden_size // 16))
        assert (c.use_conv_bias, c.use_bias) == (True, False)
        return {}
    return {"layer": "Mamba1", "d_state": c.state_size, "d_conv": c.conv_kernel, "expand": c.expand,
            "dt_rank": c.time_step_rank, "conv_bias": c.use_conv_bias, "bias": c.use_bias}


def mamba2_ssm_cfg(c: Mamba2Config, **extra) -> dict:
    assert c.hidden_act == "silu", "mamba_ssm's conv activation is always silu"
    cfg = {"layer": "Mamba2", "d_state": c.state_size, "d_conv": c.conv_kernel, "expand": c.expand,
           "headdim": c.head_dim, "ngroups": c.n_groups, "bias": c.use_bias, "conv_bias": c.use_conv_bias,
           "chunk_size": c.chunk_size}
    if tuple(c.time_step_limit) != (0.0, float("inf")):
        cfg["dt_limit"] = list(c.time_step_limit)
    cfg.update(extra)
    return cfg


def write_mamba_ssm_folder(model: nn.Module, path: Path, ssm_cfg: dict, *, vocab_size: int | None = None,
                           pad_multiple: int = 8, tie: bool | None = None, write_head: bool = True,
                           rms_norm: bool = True, legacy: bool = False,
                           weights: dict[str, torch.Tensor] | None = None) -> Path:
    """A folder as MambaLMHeadModel.save_pretrained writes it: config.json and pytorch_model.bin."""
    c = model.config
    tie = c.tie_word_embeddings if tie is None else tie
    config = _mamba_ssm_config(c, ssm_cfg, vocab_size=vocab_size or c.vocab_size, pad_multiple=pad_multiple,
                               tie=tie, rms_norm=rms_norm, legacy=legacy)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=4))
    torch.save(weights if weights is not None else mamba_ssm_weights(model, write_head=write_head),
               path / "pytorch_model.bin")
    return path


# ------------------------------------------------------------------ variants only mamba_ssm has
def use_layer_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Swap every RMSNorm of the blocks and the final norm for a random nn.LayerNorm (mamba_ssm rms_norm=False)."""
    g = torch.Generator().manual_seed(seed)
    d = model.config.hidden_size

    def layer_norm():
        ln = nn.LayerNorm(d, eps=1e-5)
        with torch.no_grad():
            ln.weight.copy_(1 + 0.2 * torch.randn(d, generator=g))
            ln.bias.copy_(0.2 * torch.randn(d, generator=g))
        return ln

    for layer in model.backbone.layers:
        layer.norm = layer_norm()
    model.backbone.norm_f = layer_norm()
    return model.eval()


class _GateOnly(nn.Module):
    """mamba_ssm Mamba2 with rmsnorm=False: y * silu(z), no weight."""

    def forward(self, y, gate):
        return (y.float() * F.silu(gate.float())).to(y.dtype)


class _GateThenNorm(nn.Module):
    """mamba_ssm's gated RMSNorm (norm_before_gate=False): rmsnorm(y * silu(z)) per group * weight."""

    def __init__(self, weight: torch.Tensor, group_size: int, eps: float):
        super().__init__()
        self.weight, self.group_size, self.variance_epsilon = nn.Parameter(weight), group_size, eps

    def forward(self, y, gate):
        h = y.float() * F.silu(gate.float())
        g = h.reshape(*h.shape[:-1], -1, self.group_size)
        n = (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)).reshape(h.shape)
        return self.weight * n.to(y.dtype)


class _NormThenGate(nn.Module):
    """mamba_ssm's gated RMSNorm with norm_before_gate=True: rmsnorm(y) per group * weight * silu(z)."""

    def __init__(self, weight: torch.Tensor, group_size: int, eps: float):
        super().__init__()
        self.weight, self.group_size, self.eps = nn.Parameter(weight.clone()), group_size, eps

    def forward(self, y, gate):
        shape = y.shape
        g = y.float().reshape(*shape[:-1], -1, self.group_size)
        n = (g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)).reshape(shape)
        return (n * self.weight.float() * F.silu(gate.float())).to(y.dtype)


def mamba2_without_gated_norm(model: Mamba2ForCausalLM) -> Mamba2ForCausalLM:
    for layer in model.backbone.layers:
        layer.mixer.norm = _GateOnly()
    return model


def mamba2_norm_before_gate(model: Mamba2ForCausalLM) -> Mamba2ForCausalLM:
    for layer in model.backbone.layers:
        old = layer.mixer.norm
        layer.mixer.norm = _NormThenGate(old.weight.data, old.weight.numel() // model.config.n_groups,
                                         old.variance_epsilon)
    return model


# ------------------------------------------------------------------ helpers the Mamba tests share
def hf_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """transformers' own forward, no cache: the reference logits."""
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def ids_for(vocab: int, batch: int = 2, length: int = 21, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def load_folder(path: Path, expected: str):
    """Pick the adapter as the loader does (exactly one Mamba adapter must accept the folder) and load."""
    from jrt_prompt.adapters import mamba, mamba2
    from jrt_prompt.checkpoint import folder_files, read_config

    config, files = read_config(path), folder_files(path)
    accepted = [m for m in (mamba, mamba2) if m.accepts_folder(config, files)]
    assert [m.NAME for m in accepted] == [expected], f"folder accepted by {[m.NAME for m in accepted]}"
    return accepted[0].from_folder(path, config)


def expect_error(from_folder, path: Path, config: dict, *words: str) -> None:
    """``from_folder`` raises a CheckpointError whose message holds each of ``words``."""
    import pytest

    from jrt_prompt.errors import CheckpointError

    with pytest.raises(CheckpointError) as e:
        from_folder(path, config)
    for w in words:
        assert w in str(e.value), f"{w!r} not in: {e.value}"


def assert_differentiable(lm) -> None:
    """A left-padded forward back-propagates finite, non-zero gradients into the first mixer's parameters."""
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0
    logits, _ = lm(ids_for(lm.config.vocab_size, length=9), attention_mask=mask)
    logits.square().mean().backward()
    for name in ("A_log", "D", "in_proj.weight", "conv1d.weight"):
        grad = lm.blocks[0].mixer.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
