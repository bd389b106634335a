"""``BasedForCausalLM``: the Based checkpoints as a transformers model (``from_pretrained``, ``generate()``,
pipelines, ``jrt_prompt.wrap``). Its state-dict keys are the hazyresearch keys.

Imports transformers' modeling code (PreTrainedModel, GenerationMixin: seconds of imports), so ``jrt_prompt.load``
never imports this module. It is imported, and registers the model with AutoModelForCausalLM, when the first
BasedConfig is created (as AutoModelForCausalLM.from_pretrained and pipelines do before they look for the model
class), or on first use of ``jrt_prompt.adapters.based.BasedForCausalLM``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.generation.utils import ALL_CACHE_NAMES, GenerationMixin
from transformers.modeling_outputs import CausalLMOutput
from transformers.modeling_utils import PreTrainedModel

from jrt_prompt.state import RecurrentState

from .based import (KEY_MAPPING, BasedBackbone, check_same_keys, check_weight_names, recurrent_lm,
                    settings_from_config)
from .based_config import BasedConfig, register_config


# generate() carries a model's cache from one step to the next (and reorders it for beams) only under names it
# knows: "cache" from transformers 5.24, "cache_params" (mamba-style models) before; forward takes it as ``cache``
GENERATE_CACHE_KEY = "cache" if "cache" in ALL_CACHE_NAMES else "cache_params"


class BasedCache:
    """What ``generate()`` carries between steps: our RecurrentState (``forward`` never mutates it)."""

    is_compileable = False
    is_croppable = False

    def __init__(self, state: RecurrentState):
        self.state = state

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.state.seen.max()) if self.state.batch_size else 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.state = self.state.select(beam_idx.to(self.state.device))


@dataclass
class BasedCausalLMOutput(CausalLMOutput):
    cache: BasedCache | None = None


class BasedForCausalLM(PreTrainedModel, GenerationMixin):
    """hazyresearch's GPTLMHeadModel for the Based checkpoints: keys ``transformer.*`` and ``lm_head.weight`` (tied).

    ``forward`` runs ``self.lm`` (a RecurrentLM sharing these modules); ``attention_mask`` must be left-padded.
    Under ``generate()`` the recurrent state travels in a ``BasedCache``, so each new token costs one step.
    """

    config_class = BasedConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["BasedLayer"]
    _tied_weights_keys = {"lm_head.weight": "transformer.embeddings.word_embeddings.weight"}
    _keys_to_ignore_on_load_unexpected = [r"metrics"]
    _is_stateful = True

    def __init__(self, config: BasedConfig):
        super().__init__(config)
        s = settings_from_config(config.to_dict())
        if not s.tie_embeddings:
            self._tied_weights_keys = {}
        self.transformer = BasedBackbone(s)
        self.lm_head = nn.Linear(s.d_model, s.vocab_size, bias=False)
        self.post_init()
        object.__setattr__(self, "lm", recurrent_lm(s, self.transformer, self.lm_head, eos_token_id=config.eos_token_id,
                                                    pad_token_id=config.pad_token_id))

    def get_input_embeddings(self):
        return self.transformer.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.transformer.embeddings.word_embeddings = value
        self.lm.embedding = value

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the state lives in a BasedCache that forward returns

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loader, plus the hazyresearch key names, and an error (not a warning) when weights are
        missing or left over: a Based model with some random weights would answer wrongly without a sign."""
        kwargs.setdefault("key_mapping", KEY_MAPPING)
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        unexpected = [k for k in info.get("unexpected_keys", ()) if "metrics" not in k]
        check_weight_names(unexpected)
        check_same_keys(str(pretrained_model_name_or_path), info.get("missing_keys", ()), unexpected)
        return (model, info) if want_info else model

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        """Carry the state under the name this transformers' generate() carries and reorders for beams."""
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        if getattr(outputs, "cache", None) is not None:
            model_kwargs[GENERATE_CACHE_KEY] = outputs.cache
        return model_kwargs

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, cache=None, cache_params=None,
                                      **kwargs):
        cache = cache if cache is not None else cache_params
        if cache is None:  # no state yet (or use_cache=False): read everything
            next_sequence_length = None
        return super().prepare_inputs_for_generation(input_ids, next_sequence_length=next_sequence_length,
                                                     cache=cache, **kwargs)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                cache: BasedCache | None = None, labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                logits_to_keep: int = 0, return_dict: bool | None = None, inputs_embeds=None, **kwargs):
        """Logits for ``input_ids`` read after ``cache`` (None: from the start). ``attention_mask`` may cover the
        cached tokens too (as generate() passes it); only its last ``input_ids.shape[1]`` columns are used."""
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("BasedForCausalLM takes input_ids (inputs_embeds are not supported)")
        length = input_ids.shape[1]
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[1] < length:
                raise ValueError(f"attention_mask must be [batch, >= {length}], got {tuple(attention_mask.shape)}")
            attention_mask = attention_mask[:, -length:]
        if use_cache is None:
            use_cache = bool(getattr(self.config, "use_cache", True)) and not self.training
        last_only = logits_to_keep == 1 and labels is None
        logits, state = self.lm(input_ids, cache.state if cache is not None else None, attention_mask,
                                last_only=last_only)
        if isinstance(logits_to_keep, int) and logits_to_keep > 1:
            logits = logits[:, -logits_to_keep:]
        logits = logits.float()
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1], **kwargs)
        new_cache = BasedCache(state) if use_cache else None
        if return_dict is False:
            return tuple(t for t in (loss, logits, new_cache) if t is not None)
        return BasedCausalLMOutput(loss=loss, logits=logits, cache=new_cache)


def register() -> None:
    """Make AutoConfig / AutoModelForCausalLM know model_type "based" (idempotent)."""
    from transformers.models.auto.modeling_auto import AutoModelForCausalLM

    register_config()
    AutoModelForCausalLM.register(BasedConfig, BasedForCausalLM, exist_ok=True)


register()
