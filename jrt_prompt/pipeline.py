"""The transformers pipeline "jrt-question-answering": JRT prompts through ``transformers.pipeline``.

    import jrt_prompt                                   # registers the task (see pipeline_registration)
    from transformers import pipeline

    qa = pipeline("jrt-question-answering", model=mamba, tokenizer=tok)   # a loaded supported model (wrap)
    qa = pipeline("jrt-question-answering", model="path/to/folder")      # an HF-format checkpoint folder
    qa = pipeline("jrt-question-answering", model=jrt_prompt.load(path))  # an Engine: any format, "demo" too
    qa({"context": doc, "question": "Who signed?"})
    # -> {"answer": "Ada", "tokens_read": 812, "trimmed": False, "context_tokens": 400, "repeats": 2}
    qa([{"context": d, "question": q}, ...], batch_size=8, repeats=1, max_new_tokens=16)
    qa(context=doc, question=["Who?", "When?"])

Parameters (at construction as defaults, or per call): ``repeats`` (reads of the context), ``trim``
(None: a prompt over budget is an error; "head"/"tail"/"window"), ``budget`` (tokens; default the
model's), and the generation fields of ``jrt_prompt.generate.GenerationConfig`` (max_new_tokens, do_sample,
temperature, top_k, top_p, seed, stop, stop_at_eos). Answers end at the first newline unless ``stop`` says
otherwise, and are stripped. Batches are left-padded and give the same answers as one input at a time.

How a model given as a path resolves: transformers' ``pipeline()`` reads its config with AutoConfig before
it asks the task's model classes, so a path works when AutoConfig knows its model_type (HF Mamba,
Mamba-2, jrt_prompt's "based", fla's GLA once fla is imported); then ``JRTCheckpoint`` (the task's model
class) reads the weights with jrt_prompt's loader. mamba_ssm or hazyresearch folders, and the name "demo",
never reach it: pass ``model=jrt_prompt.load(path_or_demo)``. With no model at all, the task's default is
the bundled demo folder.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from types import SimpleNamespace

import torch
from transformers.pipelines import PIPELINE_REGISTRY, Pipeline

from .engine import Engine
from .errors import JRTError
from .generate import GenerationConfig
from .loading import DEMO_DIR, load_model, wrap
from .prompt import TRIM_POLICIES

TASK = "jrt-question-answering"
STOP = ("\n",)  # an answer is one line, as in the paper's evaluation
GENERATION_FIELDS = frozenset(GenerationConfig.model_fields)
PROMPT_FIELDS = ("repeats", "trim", "budget")
INPUT_KEYS = ("context", "question")


class JRTCheckpoint:
    """The task's model class: what ``pipeline()`` loads a checkpoint path with (jrt_prompt's own reader)."""

    @classmethod
    def from_pretrained(cls, path, *, dtype=None, device_map=None, **_hub_options):
        if device_map == "auto" or (device_map is not None and not isinstance(device_map, (str, torch.device))):
            raise JRTError(f"device_map={device_map!r}: jrt_prompt puts a model on one device; pass device=...")
        model, _ = load_model(path, device=device_map, dtype=None if dtype == "auto" else dtype)
        return model


def cut_at_stops(text: str, stops) -> str:
    """The text before the first stop string (as Engine.generate returns it)."""
    for s in stops:
        at = text.find(s)
        if at >= 0:
            text = text[:at]
    return text


def _one_input(item) -> tuple[str, str]:
    if not isinstance(item, Mapping):
        raise JRTError(f"each input is a dict with 'context' and 'question', not a {type(item).__name__}")
    missing = [k for k in INPUT_KEYS if k not in item]
    extra = sorted(set(item) - set(INPUT_KEYS))
    if missing or extra:
        raise JRTError(f"an input needs exactly the keys 'context' and 'question' (missing: {missing or 'none'}, "
                       f"unknown: {extra or 'none'})")
    for k in INPUT_KEYS:
        if not isinstance(item[k], str):
            raise JRTError(f"input {k!r} must be a string, not {type(item[k]).__name__}")
    return item["context"], item["question"]


def inputs_from(context, question):
    """``context=..., question=...`` call arguments as pipeline inputs: one dict, or a list of them when
    either is a list (a single context is shared by a list of questions)."""
    if isinstance(context, str) and isinstance(question, str):
        return {"context": context, "question": question}
    questions = [question] if isinstance(question, str) else list(question)
    contexts = [context] * len(questions) if isinstance(context, str) else list(context)
    if len(contexts) != len(questions):
        raise JRTError(f"got {len(contexts)} contexts and {len(questions)} questions: the lists must match")
    return [{"context": c, "question": q} for c, q in zip(contexts, questions)]


class JRTQuestionAnsweringPipeline(Pipeline):
    """Answers {"context", "question"} inputs with a JRT prompt; returns the answer and prompt statistics."""

    _load_tokenizer = None  # optional: an Engine brings its own, and wrap looks beside a model's weights
    _load_processor = _load_image_processor = _load_video_processor = _load_feature_extractor = False

    def __init__(self, model, tokenizer=None, **kwargs):
        engine = model if isinstance(model, Engine) else None
        if engine is not None:
            model, tokenizer = engine.model, tokenizer if tokenizer is not None else engine.tokenizer
        device_before = model.device
        super().__init__(model, tokenizer, **kwargs)  # may move the model to the pipeline's device
        if engine is None:
            engine = wrap(self.model, self.tokenizer)
        elif self.model.device != device_before or self.tokenizer is not engine.tokenizer:
            engine = Engine(engine.model, self.tokenizer, engine.prompt, budget=engine.budget, trim=engine.trim,
                            chunk_size=engine.chunk_size, cuda_graphs=engine.cuda_graphs,
                            graph_prefill=engine.graph_prefill, compile=engine.compile)  # graphs are per device
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self._encoders: dict[tuple, Engine] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.engine!r}, device={self.device})"

    # --- parameters --------------------------------------------------------------------------------
    def _sanitize_parameters(self, **params):
        unknown = sorted(set(params) - GENERATION_FIELDS - set(PROMPT_FIELDS))
        if unknown:
            raise JRTError(f"{TASK} got unknown argument(s) {', '.join(unknown)}; it takes {', '.join(PROMPT_FIELDS)} "
                           f"and the generation fields {', '.join(sorted(GENERATION_FIELDS))}")
        prompt = {k: params[k] for k in PROMPT_FIELDS if k in params}
        if "trim" in prompt and prompt["trim"] not in (None, *TRIM_POLICIES):
            raise JRTError(f"trim={prompt['trim']!r} must be None or one of {', '.join(TRIM_POLICIES)}")
        if "budget" in prompt and prompt["budget"] is not None and (
                isinstance(prompt["budget"], bool) or not isinstance(prompt["budget"], int) or prompt["budget"] < 1):
            raise JRTError(f"budget={prompt['budget']!r} must be a positive integer or None")
        gen = {k: v for k, v in params.items() if k in GENERATION_FIELDS}
        GenerationConfig(**gen)  # fail at the call, not inside a batch
        post = {"stop": gen["stop"]} if "stop" in gen else {}
        return prompt, gen, post

    def _encoder(self, **changes) -> Engine:
        """The engine with this call's repeats/trim/budget (a shallow copy sharing model and tokenizer)."""
        key = tuple(sorted(changes.items()))
        if key not in self._encoders:
            e = copy.copy(self.engine)
            if "repeats" in changes:
                e.prompt = dataclasses.replace(e.prompt, repeats=changes["repeats"])
            if "trim" in changes:
                e.trim = changes["trim"]
            if "budget" in changes:
                e.budget = changes["budget"]
            self._encoders[key] = e
        return self._encoders[key]

    # --- inputs ------------------------------------------------------------------------------------
    def __call__(self, inputs=None, **kwargs):
        if inputs is None:
            if "context" not in kwargs or "question" not in kwargs:
                raise JRTError(f"{TASK} takes {{'context': ..., 'question': ...}}, a list of them, "
                               "or context=..., question=...")
            inputs = inputs_from(kwargs.pop("context"), kwargs.pop("question"))
        return super().__call__(inputs, **kwargs)

    def get_iterator(self, *args, **kwargs):
        # transformers' batch collation needs a tokenizer pad token (GPT-2's has none); the rows are cut back
        # out by their attention mask, so the engine's pad id will do, always on the left
        tokenizer, self.tokenizer = self.tokenizer, SimpleNamespace(pad_token_id=self.engine.pad_id,
                                                                    padding_side="left")
        try:
            return super().get_iterator(*args, **kwargs)
        finally:
            self.tokenizer = tokenizer

    # --- the three steps ---------------------------------------------------------------------------
    def preprocess(self, item, **prompt_params):
        context, question = _one_input(item)
        engine = self._encoder(**prompt_params)
        enc = engine.encode(context, question)
        ids = torch.tensor([enc.ids], dtype=torch.long)
        stats = torch.tensor([[len(enc.ids), enc.context_tokens, enc.trimmed, engine.prompt.repeats]])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "stats": stats}

    def _forward(self, model_inputs, **gen):
        ids, mask = model_inputs["input_ids"], model_inputs["attention_mask"].bool()
        prompts = [row[keep].tolist() for row, keep in zip(ids, mask)]
        answers = self.engine.generate_ids(prompts, **{"stop": list(STOP), **gen})
        answer_ids = torch.full((len(answers), max(map(len, answers), default=0)), -1, dtype=torch.long)
        for row, a in zip(answer_ids, answers):
            row[:len(a)] = torch.tensor(a, dtype=torch.long)
        return {"answer_ids": answer_ids, "stats": model_inputs["stats"]}

    def postprocess(self, outputs, stop=STOP):
        ids = [t for t in outputs["answer_ids"][0].tolist() if t >= 0]
        text = self.engine.tokenizer.decode(ids, skip_special_tokens=True)
        tokens_read, context_tokens, trimmed, repeats = outputs["stats"][0].tolist()
        return {"answer": cut_at_stops(text, stop or ()).strip(), "tokens_read": tokens_read,
                "trimmed": trimmed > 0, "context_tokens": context_tokens, "repeats": repeats}


def register() -> None:
    """Add the task to transformers' pipeline registry (idempotent). Imports the Based adapter first, so that
    AutoConfig knows model_type "based" when a Based folder is given as a path."""
    try:
        import jrt_prompt.adapters.based  # noqa: F401 - registers BasedConfig with AutoConfig
    except ImportError:
        pass
    current = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if current is not None and current["impl"] is JRTQuestionAnsweringPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=JRTQuestionAnsweringPipeline, pt_model=JRTCheckpoint,
                                        default={"model": (str(DEMO_DIR), None)})
