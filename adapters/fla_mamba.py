"""fla's own Mamba and Mamba-2 (flash-linear-attention 0.6.0: ``fla.models.MambaForCausalLM`` /
``Mamba2ForCausalLM``) and the folders its ``save_pretrained`` writes. Used by the mamba and mamba2 adapters.

fla reuses model_type "mamba"/"mamba2" and transformers' weight names, but not its config: fla names fields its
own way (norm_eps, dt_rank, dt_limit, ...), has other defaults (Mamba: residual_in_fp32 False, untied head) and
Mamba-2 options transformers lacks (rmsnorm, norm_before_gate, D_has_hdim). transformers' config classes read
an fla config.json without complaint and with the wrong values (norm_eps ignored), so fla folders are told
apart by their field names and read here.

What fla computes, mapped onto our layers:
- blocks: residual + mixer(RMSNorm(h)); with residual_in_fp32 the sum is taken in float32 and then cast to the
  block norm weight's dtype. fla builds the block norms and norm_f in float32 (A_log too), also when the model
  is loaded in bfloat16, so the residual stream is float32 exactly when residual_in_fp32 and those norms are
  float32; a model cast whole (``model.to(torch.bfloat16)``) keeps its stream in bfloat16;
- norms: fla's fused RMSNorm (float32 math, one rounding, the input's dtype out): ``FlaRMSNorm``;
- Mamba mixer: as transformers' (conv, x_proj, softplus(dt_proj), selective scan, D skip, silu gate);
- Mamba-2 mixer: as mamba_ssm's Mamba2: dt clamped to dt_limit, gated RMSNorm per group (norm_eps) or, with
  rmsnorm False, y * silu(z); norm_before_gate; D per head or per channel (D_has_hdim). Head h reads B/C group
  h // (num_heads / n_groups), as mamba_ssm, transformers and fla's own one-token step do. fla 0.6.0's PyTorch
  prefill (its path whenever mamba_ssm is not installed) tiles the groups instead (head h reads group
  h % n_groups): for 1 < n_groups < num_heads its prefill disagrees with its own step; we follow the step.
Only silu (swish) is supported as hidden_act: fla applies it to the gate on its PyTorch path and silu on its
mamba_ssm path, and its other activations are not transformers' ones of the same name.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from jrt_prompt.checkpoint import read_state_dict
from jrt_prompt.errors import CheckpointError, JRTError, UnsupportedModelError
from jrt_prompt.layers.fla_norm import FlaRMSNorm
from jrt_prompt.layers.mamba import MambaMixer
from jrt_prompt.layers.mamba2 import Mamba2Mixer
from jrt_prompt.model import Block, LMConfig, RecurrentLM

from .mamba import folder_dtype, load_weights
from .mamba2 import _dt_limit
from .skeleton import skip_init

ACTIVATIONS = ("silu", "swish")

# config.json fields only one of the two libraries writes (their other fields are shared, with other defaults)
FLA_ONLY = {
    "mamba": {"norm_eps", "dt_rank", "dt_scale", "dt_min", "dt_max", "dt_init_scheme", "dt_init_floor", "fuse_norm",
              "fuse_cross_entropy", "fuse_linear_cross_entropy", "use_l2warp"},
    "mamba2": {"norm_eps", "dt_limit", "dt_min", "dt_max", "dt_init_floor", "rmsnorm", "norm_before_gate",
               "D_has_hdim", "A_init_range", "conv_init", "fuse_norm", "fuse_cross_entropy",
               "fuse_linear_cross_entropy", "use_l2warp"},
}
TRANSFORMERS_ONLY = {
    "mamba": {"layer_norm_epsilon", "time_step_rank", "time_step_scale", "time_step_min", "time_step_max",
              "time_step_init_scheme", "time_step_floor", "use_mambapy", "use_associative_scan"},
    "mamba2": {"layer_norm_epsilon", "time_step_rank", "time_step_min", "time_step_max", "time_step_floor",
               "time_step_limit"},
}

# fla's defaults (fla/models/mamba*/configuration_mamba*.py) for the fields that shape the computation
DEFAULTS = {
    "mamba": dict(vocab_size=32000, hidden_size=2048, state_size=16, num_hidden_layers=48, norm_eps=1e-5,
                  pad_token_id=0, eos_token_id=2, expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True,
                  hidden_act="silu", residual_in_fp32=False, dt_rank="auto", tie_word_embeddings=False),
    "mamba2": dict(head_dim=64, vocab_size=32000, hidden_size=2048, state_size=128, num_hidden_layers=48,
                   norm_eps=1e-5, pad_token_id=0, eos_token_id=2, expand=2, conv_kernel=4, n_groups=1,
                   use_bias=False, use_conv_bias=True, D_has_hdim=False, hidden_act="silu", residual_in_fp32=True,
                   dt_limit=(0.0, math.inf), rmsnorm=True, norm_before_gate=False, tie_word_embeddings=False),
}


def fp32_in_fla(key: str) -> bool:
    """The tensors fla's from_pretrained keeps float32 whatever dtype is asked (our names)."""
    return key == "norm_f.weight" or (key.startswith("blocks.") and key.endswith((".norm.weight", ".mixer.A_log"))
                                      and ".mixer.norm." not in key)


def is_fla_model(model, class_name: str) -> bool:
    """``model`` is (a subclass of) fla's ``class_name``, not transformers' class of that name."""
    return any(cls.__name__ == class_name and cls.__module__.split(".")[0] == "fla" for cls in type(model).__mro__)


def computation(lm: RecurrentLM, tie: bool) -> dict[str, object]:
    """What a skeleton computes, as comparable values: its LMConfig, every module's plain settings (eps, dt_limit,
    sizes, flags) and activation function, every parameter's shape, and whether the head is tied."""
    out: dict[str, object] = {"config": lm.config.model_dump(), "tied head": tie}
    for name, module in lm.named_modules():
        for key, value in vars(module).items():
            if not key.startswith("_") and (isinstance(value, (bool, int, float, str, tuple)) or callable(value)):
                out[f"{name}.{key}"] = value
    out.update({f"{key} shape": tuple(p.shape) for key, p in lm.state_dict().items()})
    return out


def disagreements(fla_reading: tuple[RecurrentLM, bool], hf_reading: tuple[RecurrentLM, bool]) -> list[str]:
    """Where the two libraries' readings of one config compute differently, as 'what: fla x, transformers y'."""
    a, b = computation(*fla_reading), computation(*hf_reading)
    found = [f"{re.sub(r'^blocks[.][0-9]+[.]', 'blocks.*.', key)}: fla {a.get(key)!r}, transformers {b.get(key)!r}"
             for key in {**a, **b} if a.get(key) != b.get(key)]
    return list(dict.fromkeys(found))  # every block alike: said once


def _fla_skeleton(config: dict, arch: str, error: type[JRTError]) -> tuple[RecurrentLM, bool]:
    f = fields(config, arch)
    lm = _skeleton(arch, f, error, dtype=torch.float32, norm_dtype=torch.float32)
    return lm, bool(f["tie_word_embeddings"])


def is_fla_config(config: dict, arch: str, read_hf: Callable[[dict], tuple[RecurrentLM, bool]], *, where: str
                  ) -> bool:
    """An HF-format config of model_type ``arch`` to read as fla's (True) or as transformers' (False).

    fla's fields mean fla wrote it. Both libraries keep fields they do not know, so a model one library read from
    the other's folder saves both sets (fla imported, AutoModelForCausalLM reading a transformers folder, then
    save_pretrained): then the two readings must compute the same, or it is unclear which model the folder holds.
    A config with neither library's own fields is transformers' (the format's owner)."""
    fla, hf = FLA_ONLY[arch] & config.keys(), TRANSFORMERS_ONLY[arch] & config.keys()
    if not fla or not hf:
        return bool(fla)
    try:
        theirs = read_hf(config)
    except CheckpointError:  # not a config transformers can read: fla's
        return True
    differ = disagreements(_fla_skeleton(config, arch, CheckpointError), theirs)
    if differ:
        raise CheckpointError(
            f"{where} holds both fla's fields ({', '.join(sorted(fla))}) and transformers' "
            f"({', '.join(sorted(hf))}) for model_type {arch!r}, and the two libraries would build different models "
            f"from it ({'; '.join(differ[:4])}); keep the fields of the library whose model it is, remove the others")
    return True


def _whole(value, field: str, error: type[JRTError]) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise error(f"fla config field {field} = {value!r} must be a positive whole number")
    return int(value)


def _check_activation(f: dict, error: type[JRTError]) -> None:
    if f["hidden_act"] not in ACTIVATIONS:
        raise error(f"fla config field hidden_act = {f['hidden_act']!r} is not supported (only silu/swish): fla's "
                    "Mamba applies it where mamba_ssm applies silu, and its activations differ from transformers'")


def mamba1_mixer(f: dict, error: type[JRTError]) -> dict:
    """MambaMixer arguments from fla's Mamba config fields (fla's MambaBlock reads exactly these)."""
    _check_activation(f, error)
    d = _whole(f["hidden_size"], "hidden_size", error)
    d_inner = f.get("intermediate_size")  # fla stores it; a stored value wins over expand * hidden_size
    d_inner = int(f["expand"] * d) if d_inner is None else _whole(d_inner, "intermediate_size", error)
    dt_rank = -(-d // 16) if f["dt_rank"] == "auto" else _whole(f["dt_rank"], "dt_rank", error)
    return dict(d_model=d, d_inner=d_inner, d_state=_whole(f["state_size"], "state_size", error),
                d_conv=_whole(f["conv_kernel"], "conv_kernel", error), dt_rank=dt_rank, use_bias=bool(f["use_bias"]),
                use_conv_bias=bool(f["use_conv_bias"]), hidden_act="silu")


def mamba2_mixer(f: dict, error: type[JRTError]) -> dict:
    """Mamba2Mixer arguments from fla's Mamba-2 config fields, with the size checks fla's Mamba2 layer makes."""
    _check_activation(f, error)
    d, head_dim = _whole(f["hidden_size"], "hidden_size", error), _whole(f["head_dim"], "head_dim", error)
    d_inner = int(f["expand"] * d)
    if d_inner < 1 or d_inner % head_dim:
        raise error(f"fla config: expand * hidden_size = {d_inner} must be a multiple of head_dim = {head_dim}")
    n_heads = d_inner // head_dim
    if f.get("num_heads") not in (None, 0, n_heads):
        raise error(f"fla config field num_heads = {f['num_heads']!r} must equal expand * hidden_size / head_dim "
                    f"= {n_heads}")
    n_groups = _whole(f["n_groups"], "n_groups", error)
    if n_heads % n_groups:
        raise error(f"fla config field n_groups = {n_groups} must divide the {n_heads} heads")
    try:
        dt_limit = _dt_limit(f["dt_limit"], "dt_limit")
    except CheckpointError as e:
        raise error(str(e)) from None
    return dict(d_model=d, n_heads=n_heads, head_dim=head_dim, d_state=_whole(f["state_size"], "state_size", error),
                n_groups=n_groups, d_conv=_whole(f["conv_kernel"], "conv_kernel", error),
                use_bias=bool(f["use_bias"]), use_conv_bias=bool(f["use_conv_bias"]), hidden_act="silu",
                dt_limit=dt_limit, rmsnorm=bool(f["rmsnorm"]), norm_before_gate=bool(f["norm_before_gate"]),
                norm_eps=float(f["norm_eps"]), D_has_hdim=bool(f["D_has_hdim"]))


MIXERS = {"mamba": (MambaMixer, mamba1_mixer), "mamba2": (Mamba2Mixer, mamba2_mixer)}


def _skeleton(arch: str, f: dict, error: type[JRTError], *, dtype: torch.dtype, norm_dtype: torch.dtype
              ) -> RecurrentLM:
    """fla's model on the meta device: block norms hand ``dtype`` to the mixers; the residual stream is float32
    only when fla's is (residual_in_fp32 with float32 block norms)."""
    mixer_cls, mixer_args = MIXERS[arch]
    mixer = mixer_args(f, error)
    d, eps = mixer["d_model"], float(f["norm_eps"])
    config = LMConfig(arch=arch, vocab_size=_whole(f["vocab_size"], "vocab_size", error), d_model=d,
                      n_layer=_whole(f["num_hidden_layers"], "num_hidden_layers", error),
                      eos_token_id=f["eos_token_id"], pad_token_id=f["pad_token_id"],
                      residual_in_fp32=bool(f["residual_in_fp32"]) and norm_dtype == torch.float32)
    with skip_init():
        blocks = [Block(FlaRMSNorm(d, eps, out_dtype=dtype), mixer_cls(**mixer),
                        residual_in_fp32=config.residual_in_fp32) for _ in range(config.n_layer)]
        lm = RecurrentLM(config, torch.nn.Embedding(config.vocab_size, d), blocks, FlaRMSNorm(d, eps),
                         torch.nn.Linear(d, config.vocab_size, bias=False))
    return lm.eval()


def fields(config: dict, arch: str) -> dict:
    """fla's config values, its defaults filled in (special floats already decoded by read_config / to_dict)."""
    return {**DEFAULTS[arch], **{k: v for k, v in config.items() if v is not None or k.endswith("token_id")}}


FLA_MODULES = {"mamba": "Mamba", "mamba2": "Mamba2"}  # the mixer class fla's blocks hold (fla.layers)


def _check_layout(model, arch: str) -> None:
    """fla's blocks as fla builds them: a module swapped in computes something else under the same weight names."""
    expected = [("backbone.norm_f", model.backbone.norm_f, "RMSNorm")]
    for i, layer in enumerate(model.backbone.layers):
        expected += [(f"backbone.layers.{i}.norm", layer.norm, "RMSNorm"),
                     (f"backbone.layers.{i}.mixer", layer.mixer, FLA_MODULES[arch])]
    for where, module, name in expected:
        cls = type(module)
        if cls.__name__ != name or cls.__module__.split(".")[0] != "fla":
            raise UnsupportedModelError(f"fla {type(model).__name__}: {where} is a {cls.__module__}.{cls.__name__}, "
                                        f"not fla's {name}; jrt_prompt only wraps fla's model as fla builds it")


def from_model(model, arch: str, read_hf: Callable[[dict], tuple[RecurrentLM, bool]]) -> RecurrentLM:
    """A RecurrentLM over the very tensors of fla's MambaForCausalLM / Mamba2ForCausalLM (no copy). It computes
    what the fla model computes; when that model was built from a transformers config whose fields fla ignores
    (with fla imported, AutoModelForCausalLM builds fla's class for transformers' folders), a warning says so."""
    config = model.config.to_dict()
    f = fields(config, arch)
    layers = model.backbone.layers
    _check_layout(model, arch)
    norm_dtypes = {layer.norm.weight.dtype for layer in layers} | {model.backbone.norm_f.weight.dtype}
    if len(norm_dtypes) != 1:
        raise UnsupportedModelError(f"fla {type(model).__name__} has norms of several dtypes "
                                    f"({', '.join(sorted(map(str, norm_dtypes)))}); cast the model to one dtype")
    lm = _skeleton(arch, f, UnsupportedModelError, dtype=layers[0].mixer.in_proj.weight.dtype,
                   norm_dtype=norm_dtypes.pop())
    if TRANSFORMERS_ONLY[arch] & config.keys():
        try:
            differ = disagreements(_fla_skeleton(config, arch, UnsupportedModelError), read_hf(config))
        except CheckpointError:  # transformers cannot read this config: nothing it would build differently
            differ = []
        if differ:
            warnings.warn(f"this fla {type(model).__name__} was built from a config with transformers' fields, some "
                          f"of which fla ignores ({'; '.join(differ[:4])}): jrt_prompt computes what the fla model "
                          "computes; for transformers' model load the folder with jrt_prompt.load or transformers' "
                          "own class", stacklevel=4)
    return load_weights(lm, model.state_dict(), tie=False)


def from_folder(path: str | Path, config: dict, arch: str, *, device=None, dtype: torch.dtype | None = None
                ) -> RecurrentLM:
    """A folder fla's save_pretrained wrote, loaded as fla's ``from_pretrained(path, dtype=dtype)`` builds it: the
    block norms, norm_f and A_log float32, everything else ``dtype`` (default: the stored embedding's)."""
    f = fields(config, arch)
    sd = read_state_dict(path)
    dtype = folder_dtype(sd, dtype)
    lm = _skeleton(arch, f, CheckpointError, dtype=dtype, norm_dtype=torch.float32)
    return load_weights(lm, sd, tie=bool(f["tie_word_embeddings"]), device=device, dtype=dtype, keep_fp32=fp32_in_fla)
