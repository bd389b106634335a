"""The object ``wrap`` and ``load`` return: JRT prompts in, answers out, with the first read reusable.

    engine = jrt_prompt.load("demo")
    engine.generate(document, "What is Kira Voss's city?")
    doc = engine.read(document)             # the question-independent first read, done once
    engine.generate(doc, ["q1", "q2"])      # same tokens as the full prompts, without re-reading
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .errors import JRTError, PromptTooLongError
from .cuda_graph import GraphCache
from .generate import GenerationConfig, decode, prefill
from .model import RecurrentLM
from .prompt import EncodedPrompt, JRTPrompt
from .state import RecurrentState


@dataclass(frozen=True)
class ReadDocument:
    """A context after its first, question-independent read: pass it to ``generate`` in place of the text."""

    context: str
    ids: tuple[int, ...]  # the prompt's shared prefix, as read
    state: RecurrentState  # batch 1; never modified (continuations run on copies)

    @property
    def tokens(self) -> int:
        return len(self.ids)


class _Row:
    """One row's generated tokens, turned into text with stop strings and EOS applied."""

    def __init__(self, tokenizer, eos_ids: set[int], config: GenerationConfig):
        self.tokenizer, self.eos_ids, self.config = tokenizer, eos_ids, config
        self.ids: list[int] = []
        self.done = False
        self.text = ""
        self.emitted = 0  # characters already streamed

    def add(self, token: int, decode_now: bool) -> None:
        if self.done:
            return
        if self.config.stop_at_eos and token in self.eos_ids:
            self.done = True
            return
        self.ids.append(token)
        if decode_now or self.config.stop:
            self.decode()

    def decode(self) -> None:
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for s in self.config.stop:
            cut = self.text.find(s)
            if cut >= 0:
                self.text = self.text[:cut]
                self.done = True

    def pending(self, final: bool) -> str:
        """New text that is safe to show: held back while it may still become a stop string or a
        multi-byte character is half decoded."""
        end = len(self.text)
        if not final:
            end -= _held_back(self.text, self.config.stop)
        piece = self.text[self.emitted:max(end, self.emitted)]
        self.emitted += len(piece)
        return piece


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` may still change: a half-decoded character, or the start
    of a stop string."""
    hold = 1 if text.endswith("\ufffd") else 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold


class Engine:
    """A RecurrentLM with its tokenizer and prompt format; see the module docstring."""

    def __init__(self, model: RecurrentLM, tokenizer, prompt: JRTPrompt | None = None, *,
                 budget: int | None = None, trim: str | None = None, chunk_size: int | None = 4096,
                 cuda_graphs: bool = True, graph_prefill: bool = False, compile: bool = False):
        if tokenizer is None:
            raise JRTError("a tokenizer is required: pass tokenizer=AutoTokenizer.from_pretrained(...)")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.prompt = prompt or JRTPrompt()
        self.budget = budget if budget is not None else model.config.max_length
        self.trim = trim  # None: a prompt over budget is an error; "head"/"tail"/"window": cut the context
        self.chunk_size = chunk_size
        self.cuda_graphs, self.graph_prefill, self.compile = cuda_graphs, graph_prefill, compile
        # decode steps on CUDA replay a captured graph per batch size (cuda_graphs=False: plain steps); with
        # graph_prefill, prompts too, in pieces of chunk_size tokens: a capture per piece length on first use,
        # which pays off when many prompts are read (serving, benchmarks), not for one question
        self._graphs = None
        if cuda_graphs and model.device.type == "cuda":
            self._graphs = GraphCache(model, compile=compile,
                                      prefill_chunk=(chunk_size or 4096) if graph_prefill else None)
        eos = [tokenizer.eos_token_id, model.config.eos_token_id]
        self.eos_ids = {i for e in eos for i in (e if isinstance(e, list) else [e]) if i is not None}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.config.pad_token_id
        self.pad_id = pad if pad is not None else next(iter(self.eos_ids), 0)

    @property
    def config(self):
        """The model's config (transformers' pipeline() reads ``model.config`` of an Engine passed as the model)."""
        return self.model.config

    def __repr__(self) -> str:
        return f"Engine({self.model.config.arch}, prompt={self.prompt!r}, budget={self.budget})"

    # --- prompts -------------------------------------------------------------------------
    def encode(self, context: str, question: str, original_question: str | None = None, *,
               around: str | None = None) -> EncodedPrompt:
        """The prompt's token ids, within the budget: trimmed by ``self.trim``, or an error if it may not trim."""
        if not context or not context.strip():
            raise JRTError("the context is empty")
        if not question or not question.strip():
            raise JRTError("the question is empty")
        enc = self.prompt.encode(self.tokenizer, context, question, original_question)
        if self.budget is None or len(enc.ids) <= self.budget:
            return enc
        if self.trim is None:
            raise PromptTooLongError(
                f"the prompt is {len(enc.ids)} tokens, over the model's budget of {self.budget} "
                f"({enc.context_tokens} context tokens x {self.prompt.repeats} reads); allow trimming "
                "(trim='head'|'tail'|'window', --truncate on the CLI) or shorten the document")
        return self.prompt.encode(self.tokenizer, context, question, original_question, budget=self.budget,
                                  trim=self.trim, around=around)

    # --- reading -------------------------------------------------------------------------
    def read(self, context: str, *, progress=None) -> ReadDocument:
        """Read the context once (the part of the prompt that does not depend on the question)."""
        if not context or not context.strip():
            raise JRTError("the context is empty")
        ids = self.prompt.read_ids(self.tokenizer, context)
        if self.budget is not None and len(ids) >= self.budget and self.trim is None:
            raise PromptTooLongError(
                f"the document alone is {len(ids)} tokens of the prompt, over the model's budget of {self.budget}")
        _, state = prefill(self.model, [ids], pad_id=self.pad_id, chunk_size=self.chunk_size, progress=progress,
                           graph=self._prefill_graph(1))
        return ReadDocument(context, tuple(ids), state)

    def _prefill_graph(self, batch_size: int):
        return self._graphs.prefill(batch_size) if self._graphs is not None else None

    # --- generating ----------------------------------------------------------------------
    def _jobs(self, context, question, original_question):
        """Normalise (context|ReadDocument|lists, question|list) into one (ids, start state rows) per row."""
        single = isinstance(question, str)
        questions = [question] if single else list(question)
        originals = original_question if isinstance(original_question, (list, tuple)) else [original_question] * len(questions)
        if isinstance(context, (str, ReadDocument)):
            contexts = [context] * len(questions)
        else:
            contexts = list(context)
            if single:
                raise JRTError("a list of contexts needs a list of questions of the same length")
        if len(contexts) != len(questions) or len(originals) != len(questions):
            raise JRTError(f"got {len(contexts)} contexts and {len(questions)} questions: the lists must match")
        if not questions:
            raise JRTError("no questions given")
        prompts, starts = [], []
        for c, q, o in zip(contexts, questions, originals):
            if isinstance(c, ReadDocument):
                enc = self.encode(c.context, q, o)
                if tuple(enc.ids[:enc.shared]) == c.ids:
                    prompts.append(enc.ids[enc.shared:])
                    starts.append(c.state)
                    continue
                # trimming for this question changed the first read: read the whole prompt instead
                prompts.append(enc.ids)
            else:
                prompts.append(self.encode(c, q, o).ids)
            starts.append(None)
        return single, prompts, starts

    def _start_state(self, starts: list[RecurrentState | None]) -> RecurrentState | None:
        if all(s is None for s in starts):
            return None
        rows = [s if s is not None else self.model.init_state(1) for s in starts]
        if all(r is rows[0] for r in rows):
            return rows[0].expand(len(rows))
        return RecurrentState.cat(rows)

    def _run(self, prompts, state, config: GenerationConfig, progress=None, streaming: bool = False
             ) -> Iterator[list[_Row]]:
        """Prefill then decode; yields the rows after each look at the tokens. Without streaming or stop
        strings the host looks only every ``SYNC_EVERY`` tokens (a few wasted steps past EOS at most)."""
        logits, state = prefill(self.model, prompts, state, pad_id=self.pad_id, chunk_size=self.chunk_size,
                                progress=progress, graph=self._prefill_graph(len(prompts)))
        step = None
        if self._graphs is not None and config.max_new_tokens > 1:
            graphed = self._graphs.get(len(prompts))
            state, step = graphed.load(state), graphed.step
        rows = [_Row(self.tokenizer, self.eos_ids, config) for _ in prompts]
        every = 1 if streaming or config.stop else self.SYNC_EVERY
        pending: list[torch.Tensor] = []
        for tokens in decode(self.model, logits, state, config, step=step):
            pending.append(tokens)
            if len(pending) < every:
                continue
            rows = self._take(rows, pending, streaming)
            pending = []
            if all(r.done for r in rows):
                break
            yield rows
        else:
            if pending:
                rows = self._take(rows, pending, streaming)
        for r in rows:
            r.decode()
        yield rows

    SYNC_EVERY = 16

    @staticmethod
    def _take(rows: list[_Row], pending: list[torch.Tensor], streaming: bool) -> list[_Row]:
        for step_tokens in torch.stack(pending).tolist():
            for row, t in zip(rows, step_tokens):
                row.add(t, decode_now=streaming)
        return rows

    def generate_ids(self, prompts: Sequence[Sequence[int]], state: RecurrentState | None = None,
                     **gen) -> list[list[int]]:
        """Lower level: generate after token lists (left-padded together), optionally after ``state``."""
        config = GenerationConfig(**gen)
        rows = [_Row(self.tokenizer, self.eos_ids, config) for _ in prompts]
        for rows in self._run([list(p) for p in prompts], state, config):
            pass
        return [r.ids for r in rows]

    def generate(self, context, question, original_question=None, *, progress=None, **gen) -> str | list[str]:
        """Answer ``question`` about ``context`` (a string or a ``read`` result). Lists of questions (and of
        contexts) are answered as one left-padded batch and return a list. ``gen``: see GenerationConfig.
        ``progress(n)`` is called as the prompts are read, with the tokens read so far (per row)."""
        config = GenerationConfig(**gen)
        single, prompts, starts = self._jobs(context, question, original_question)
        rows = [_Row(self.tokenizer, self.eos_ids, config) for _ in prompts]
        for rows in self._run(prompts, self._start_state(starts), config, progress=progress):
            pass
        answers = [r.text for r in rows]
        return answers[0] if single else answers

    def stream(self, context, question, original_question=None, *, progress=None, **gen) -> Iterator[str]:
        """Yield the answer to one question as text pieces, as they are generated."""
        if not isinstance(question, str):
            raise JRTError("stream answers one question at a time; use generate for lists")
        config = GenerationConfig(**gen)
        _, prompts, starts = self._jobs(context, question, original_question)
        row = None
        for (row,) in self._run(prompts, self._start_state(starts), config, progress=progress, streaming=True):
            piece = row.pending(final=row.done)
            if piece:
                yield piece
        if row is not None:
            piece = row.pending(final=True)
            if piece:
                yield piece
