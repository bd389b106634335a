"""lm-evaluation-harness model ``jrt``: any checkpoint ``jrt_prompt.load`` reads, run by our engine.

    jrt-lm-eval --model jrt --model_args pretrained=PATH[,dtype=bfloat16,tokenizer=...] \\
        --tasks swde_once,swde_twice,fda_once,fda_twice --device cuda --batch_size 16

lm-eval finds models only in its own registry (no plugin entry points), so ``jrt-lm-eval`` (lm_eval_cli.py)
imports this module, which registers ``jrt``, and adds our task folder (``TASKS_DIR``: the paper's default and
twice prompts of swde, fda and squad_completion, group ``jrt_recall``) to every task search. From Python:
``import jrt_prompt.eval.lm_eval_model`` then ``lm_eval.simple_evaluate(model="jrt", ...,
task_manager=TaskManager(include_path=TASKS_DIR))``.

Requests are answered in left-padded batches. ``generate_until`` decodes greedily unless the task asks for
sampling, stopping at the task's ``until`` strings or EOS. ``loglikelihood`` reads each context once and
scores the continuation from the state after it (a recurrent model needs no logits over the context).
``loglikelihood_rolling`` reads documents in chunks, carrying the state, so any length fits.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

import lm_eval.models  # noqa: F401 - the built-in models register first (the registry loads them only when empty)
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from ..errors import JRTError
from ..generate import prefill

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
log = logging.getLogger(__name__)
IGNORED_ARGS = {"max_batch_size", "trust_remote_code", "parallelize"}  # lm-eval passes these to every model


def _batch_size(value) -> int:
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return 8
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise JRTError(f"batch_size={value!r} must be an integer") from None
    if size < 1:
        raise JRTError(f"batch_size={value!r} must be at least 1")
    return size


@register_model("jrt")
class JRTLM(TemplateLM):
    """lm-eval's LM interface over ``jrt_prompt.load(pretrained)``, or over an engine passed as ``engine=``."""

    def __init__(self, pretrained: str | None = None, tokenizer: str | None = None, device: str | None = None,
                 dtype: str | None = None, batch_size: int | str | None = 8, max_gen_toks: int = 256,
                 chunk_size: int | str = 4096, engine=None, **kwargs):
        super().__init__()
        unknown = set(kwargs) - IGNORED_ARGS
        if unknown:
            raise JRTError(f"model jrt got unknown model_args {', '.join(sorted(unknown))}; it takes pretrained, "
                           "tokenizer, device, dtype, batch_size, max_gen_toks, chunk_size")
        self.batch_size = _batch_size(batch_size)
        if engine is None:
            if not pretrained:
                raise JRTError("model jrt needs --model_args pretrained=PATH (a checkpoint folder, hub id or 'demo')")
            from ..loading import load

            engine = load(pretrained, tokenizer=tokenizer, device=device, dtype=dtype)
        self.engine = engine
        self.engine.chunk_size = int(chunk_size)
        self.tokenizer = engine.tokenizer
        self.model = engine.model
        self.max_gen_toks = int(max_gen_toks)
        self._name = str(pretrained or getattr(self.tokenizer, "name_or_path", "jrt"))

    # --- what lm-eval asks of a model --------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        return eos if eos is not None else self.engine.pad_id

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", self._name)).replace("/", "__")

    @property
    def device(self):
        return self.model.device

    @property
    def max_length(self) -> int | None:
        return self.engine.budget

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return list(self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"])

    def tok_decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # --- scoring -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][1]) + len(requests[i][2])))
        results: dict[int, tuple[float, bool]] = {}
        for start in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm, desc="loglikelihood"):
            rows = order[start:start + self.batch_size]
            contexts = [list(requests[i][1]) or [self.eot_token_id] for i in rows]
            conts = [list(requests[i][2]) for i in rows]
            last, state = prefill(self.model, contexts, pad_id=self.engine.pad_id, chunk_size=self.engine.chunk_size)
            logits = last[:, None]
            longest = max(len(c) for c in conts)
            if longest > 1:  # the continuation's own tokens predict its later tokens; right padding is harmless
                ids = torch.full((len(rows), longest - 1), self.engine.pad_id, dtype=torch.long)
                for r, c in enumerate(conts):
                    ids[r, :len(c) - 1] = torch.tensor(c[:-1])
                more, _ = self.model(ids.to(self.model.device), state)
                logits = torch.cat([logits, more], dim=1)
            logp = F.log_softmax(logits.float(), dim=-1)
            for r, (i, c) in enumerate(zip(rows, conts)):
                target = torch.tensor(c, device=logp.device)
                lp = logp[r, :len(c)]
                score = float(lp.gather(-1, target[:, None]).sum())
                greedy = bool((lp.argmax(-1) == target).all())
                results[i] = (score, greedy)
                self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return [results[i] for i in range(len(requests))]

    @torch.no_grad()
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        chunk = self.engine.chunk_size or 4096
        for req in tqdm(requests, disable=disable_tqdm, desc="loglikelihood_rolling"):
            (text,) = req.args[:1]
            tokens = self.tok_encode(text)
            inputs = [self.eot_token_id] + tokens[:-1]
            total, state = 0.0, None
            for s in range(0, len(tokens), chunk):
                ids = torch.tensor([inputs[s:s + chunk]], device=self.model.device)
                logits, state = self.model(ids, state)
                target = torch.tensor(tokens[s:s + chunk], device=logits.device)
                total += float(F.log_softmax(logits[0].float(), -1).gather(-1, target[:, None]).sum())
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return out

    # --- generation --------------------------------------------------------------------------------------
    def _config(self, gen_kwargs: dict) -> dict:
        kw = dict(gen_kwargs or {})
        until = kw.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        config = {"max_new_tokens": int(kw.pop("max_gen_toks", self.max_gen_toks)), "stop": until}
        temperature = float(kw.pop("temperature", 0.0) or 0.0)
        do_sample = bool(kw.pop("do_sample", False)) or temperature > 0
        if do_sample:
            config.update(do_sample=True, temperature=temperature or 1.0)
            for key in ("top_k", "top_p", "seed"):
                if key in kw:
                    config[key] = kw.pop(key)
        for key in ("top_k", "top_p", "seed"):
            kw.pop(key, None)
        if kw:
            log.warning("model jrt ignores generation arguments %s", sorted(kw))
        return config

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        jobs = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args[0], req.args[1]
            config = self._config(gen_kwargs)
            ids = self.tok_encode(context) or [self.eot_token_id]
            if self.engine.budget is not None:  # keep the end of an over-long prompt (lm-eval's convention)
                ids = ids[-max(1, self.engine.budget - config["max_new_tokens"]):]
            jobs.append((i, context, gen_kwargs, config, ids))
        groups: dict[str, list] = {}
        for job in jobs:
            groups.setdefault(repr(sorted(job[3].items())), []).append(job)
        results: dict[int, str] = {}
        bar = tqdm(total=len(jobs), disable=disable_tqdm, desc="generate_until")
        for group in groups.values():
            group.sort(key=lambda j: -len(j[4]))
            for start in range(0, len(group), self.batch_size):
                batch = group[start:start + self.batch_size]
                config = batch[0][3]
                outs = self.engine.generate_ids([j[4] for j in batch], **config)
                for (i, context, gen_kwargs, _, _), ids in zip(batch, outs):
                    text = self.tok_decode(ids)
                    for s in config["stop"]:
                        text = text.split(s)[0]
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                bar.update(len(batch))
        bar.close()
        return [results[i] for i in range(len(requests))]
