"""``BasedConfig`` (model_type "based"): hazyresearch's GPT2MixerConfig as a transformers config class.

Apart from ``based_hf`` (the model) so that registering it with AutoConfig, which happens whenever transformers'
AutoConfig module is imported (jrt_prompt.pipeline_registration), imports transformers' configuration code only,
not its modeling code (seconds). The model class is registered with AutoModelForCausalLM when the first BasedConfig
is created: every way transformers builds a model from "based" (AutoModelForCausalLM.from_pretrained / from_config,
pipeline) creates the config first.
"""

from __future__ import annotations

import importlib
import sys
import warnings

from transformers.models.gpt2.configuration_gpt2 import GPT2Config

from .based import NAME, _bad


class BasedConfig(GPT2Config):
    """hazyresearch's GPT2MixerConfig: a GPT2Config plus the fields below, defaults as its code defaults them."""

    model_type = NAME
    # GPT2Config maps max_position_embeddings onto n_positions (0 in these configs); generate() would cap at it.
    attribute_map = {k: v for k, v in GPT2Config.attribute_map.items() if k != "max_position_embeddings"}

    mixer: dict | None = None
    alt_mixer: dict | None = None
    alt_mixer_2: dict | None = None
    alt_mixer_layers: list[int] | None = None
    alt_mixer_2_layers: list[int] | None = None
    rms_norm: bool = False
    residual_in_fp32: bool = False
    pad_vocab_size_multiple: int = 1
    rotary_emb_fraction: float | int = 0.0
    rotary_emb_base: float | int = 10000.0
    rotary_emb_interleaved: bool = False
    qkv_proj_bias: bool = True
    out_proj_bias: bool = True
    mlp_fc1_bias: bool = True
    mlp_fc2_bias: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        register_model_class()

    @property
    def max_position_embeddings(self) -> None:
        """None: no learned positions, so no length limit."""
        return None

    @max_position_embeddings.setter
    def max_position_embeddings(self, value) -> None:
        if value:  # gpt.py would build learned position embeddings of this many rows
            raise _bad("max_position_embeddings", value, "learned position embeddings are not run")


def register_model_class() -> None:
    """Import ``based_hf``, which registers BasedForCausalLM with AutoModelForCausalLM (once: a failure is a warning,
    so that a config can still be read where transformers' modeling code cannot be imported)."""
    name = f"{__package__}.based_hf"
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"BasedForCausalLM is not registered with AutoModelForCausalLM: {type(e).__name__}: {e}",
                      stacklevel=3)


def register_config() -> None:
    """Make AutoConfig know model_type "based" (idempotent)."""
    from transformers.models.auto.configuration_auto import AutoConfig

    AutoConfig.register(NAME, BasedConfig, exist_ok=True)


register_config()  # here too: importing GPT2Config imports AutoConfig, whose import hook finds this module half-run
