"""The training mixture as fixed-shape batches of token ids with dense supervision.

Formats (jrt_prompt.eval.synthetic, train split only, so no test fact is ever seen):
- plain (C, Q, A): what a plain prompt asks at inference;
- jrt (C, Q, C, Q, A): the JRT prompt. Its second copy of C is itself dense recall supervision: every value in it
  is predictable from the first read (the next-token loss covers all tokens), which is how associative recall
  is usually trained (every key asked), while the final answer needs only the fact the question asks for;
- question_first (Q, C, Q, A): the question before the document, as web text often has it (a heading, a FAQ), so
  keeping what a question asks for while reading is something the model has seen. By default it starts with
  "Question:" (the sequence's first token); with ``MixtureConfig.question_first_lead`` "separator" it starts with
  the "\\n\\nQuestion:" that the JRT prompt's second read starts with (the JRT prompt's ids minus its first context
  copy, token for token), so no row carries a sequence-start cue that the JRT prompt lacks;
- distractor_jrt (D', Q, C, Q, A): the JRT prompt with an unrelated document D' of the same size (the same record
  count and attributes, train-split names none of which is in C while C has at most half the names) as its first
  copy: the question is read after a full state, as in a JRT prompt, but only keeping what it asks for while
  reading C answers it (nothing in the first copy does). Always supervised on the answer only.

Token ids are exactly those of inference: ``JRTPrompt("generic", 1 or 2).encode`` (per-part tokenisation), then the
completion " value\\n" and EOS; question_first is the JRT prompt without its first context copy (and, with the
default lead, without the blank line before "Question:"); distractor_jrt is the JRT prompt with its first copy's
ids replaced by those of D'. ``FastTokenizer`` only memoises the tokeniser's answers for short strings and calls the
Rust tokenizer directly; every ``check_every``-th sample is re-encoded with the real tokenizer and compared.

Loss masks: rows of the formats in ``MixtureConfig.answer_only`` (default: jrt, question_first and distractor_jrt)
are supervised on their completion only (the answer after the final question), so nothing rewards copying the
document a second time; the other rows (plain) on every token. Each format draws its documents' record counts from
its own range (``MixtureConfig.records``), so the rows that read the document after the question can be longer than
the state can hold: then only keeping the asked-for fact on the second read answers them.

Rows are right-padded (a causal model's outputs at real tokens do not depend on what follows, so the loss is that of
the unpadded rows) to one of a few bucket lengths (fla autotunes per length). A batch is one format and one record
count (rows of about the same length), and holds about ``tokens_per_batch`` tokens.

Two phases (``BatchStream(..., phase2=..., phase=...)``): the stream draws each batch from the mixture of the phase
``phase()`` names (0: the first, 1: ``phase2``), so a run can learn recall first (dense supervision, short documents)
and then switch to rows that only selecting what to store can answer (see train_recall.py's ``--phase2-*``).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from jrt_prompt.eval import synthetic
from jrt_prompt.prompt import JRTPrompt, piece_ids

FORMATS = synthetic.FORMATS + ("distractor_jrt",)  # plain, jrt, question_first (the suite's), distractor_jrt
DEFAULT_MIX = {"plain": 0.4, "jrt": 0.3, "question_first": 0.3}
DEFAULT_RECORDS = {"plain": (1, 32), "jrt": (4, 64), "question_first": (4, 64), "distractor_jrt": (4, 64)}
ANSWER_ONLY = ("jrt", "question_first", "distractor_jrt")
ALWAYS_ANSWER_ONLY = ("distractor_jrt",)  # its first copy predicts nothing of the rest: no full-loss rows
QUESTION_FIRST_LEADS = ("question", "separator")  # a question-first row's start: "Question:" or "\n\nQuestion:"
BUCKETS = (64, 128, 256, 512, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


class FastTokenizer:
    """The subset of a fast HF tokenizer that ``JRTPrompt.encode`` calls, with short strings memoised."""

    MEMO_CHARS = 256

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer
        self._encode_short = functools.lru_cache(maxsize=1 << 16)(self._encode)
        self._decode_short = functools.lru_cache(maxsize=1 << 16)(self._decode)

    def _encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.backend.encode(text, add_special_tokens=False).ids)

    def _decode(self, ids: tuple[int, ...]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def __call__(self, text: str, add_special_tokens: bool = False):
        if add_special_tokens:
            raise ValueError("FastTokenizer only tokenises without special tokens")
        ids = self._encode_short(text) if len(text) <= self.MEMO_CHARS else self._encode(text)
        return {"input_ids": list(ids)}

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = False) -> str:
        if skip_special_tokens or clean_up_tokenization_spaces:
            raise ValueError("FastTokenizer decodes as JRTPrompt does: no skipping, no clean-up")
        ids = tuple(ids)
        return self._decode_short(ids) if len(ids) <= 64 else self._decode(ids)


@dataclass(frozen=True)
class Sample:
    ids: list[int]
    answer_start: int  # index in ids of the first completion token (the value)
    format: str
    records: int
    recall: tuple[int, int] | None = None  # [start, end) of a JRT row's second context copy: predictable tokens
    loss_start: int = 0  # the first token whose prediction is in the next-token loss (answer_start: answer only)
    more_values: tuple[int, ...] = ()  # indices of the values of follow-up questions (multi-question plain rows)


class SampleEncoder:
    """(format, document, fact) -> token ids of prompt + completion + EOS, as inference tokenises them."""

    def __init__(self, tokenizer, check_every: int = 64):
        self.tokenizer = tokenizer
        self.fast = FastTokenizer(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.prompts = {1: JRTPrompt("generic", 1), 2: JRTPrompt("generic", 2)}
        self.question_head = piece_ids(tokenizer, "Question:")
        self.first_question = piece_ids(tokenizer, "\n\nQuestion:")
        self.check_every, self._count = check_every, 0

    def prompt_ids(self, fmt: str, context: str, question: str, tokenizer=None, *, lead: str = "question",
                   distractor: str | None = None) -> tuple[list[int], int]:
        """The prompt's ids and how many tokens one copy of the context takes. ``lead``: what a question-first
        prompt starts with ("question": "Question:", the training rows of runs 1-6; "separator": "\\n\\nQuestion:",
        as the JRT prompt's second read does); ``distractor``: the text of D' (distractor_jrt only)."""
        tok = tokenizer or self.fast
        if fmt == "plain":
            enc = self.prompts[1].encode(tok, context, question)
            return enc.ids, enc.context_tokens
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        if lead not in QUESTION_FIRST_LEADS:
            raise ValueError(f"a question-first lead must be one of {QUESTION_FIRST_LEADS}, got {lead!r}")
        enc = self.prompts[2].encode(tok, context, question)
        if fmt == "jrt":
            return enc.ids, enc.context_tokens
        rest = enc.ids[enc.context_tokens:]
        if rest[:len(self.first_question)] != self.first_question:
            raise RuntimeError("the JRT prompt does not continue its first context with '\\n\\nQuestion:'")
        if fmt == "question_first":
            if lead == "separator":
                return rest, enc.context_tokens
            return self.question_head + rest[len(self.first_question):], enc.context_tokens
        if distractor is None:
            raise ValueError("a distractor_jrt prompt needs the distractor document's text")
        other = self.prompts[2].encode(tok, distractor, question)
        return other.ids[:other.context_tokens] + rest, enc.context_tokens

    def completion_ids(self, value: str) -> list[int]:
        return self.fast(f" {value}\n")["input_ids"] + [self.eos]

    def follow_up_ids(self, question: str) -> list[int]:
        """A further question after an answer's newline: "\nQuestion: Q\nAnswer:" (a blank line before it)."""
        return self.fast(f"\nQuestion: {question}\nAnswer:")["input_ids"]

    def encode(self, fmt: str, doc: synthetic.Document, fact: synthetic.Fact, answer_only: bool = False,
               more: tuple[synthetic.Fact, ...] = (), *, lead: str = "question",
               distractor: synthetic.Document | None = None) -> Sample:
        """One row; ``more`` (plain rows only) adds follow-up questions about the same document, each answered:
        denser recall supervision, the first question still exactly as inference asks it. ``lead``: see
        ``prompt_ids``; ``distractor``: D' of a distractor_jrt row (answer-only)."""
        if fmt in ALWAYS_ANSWER_ONLY and not answer_only:
            raise ValueError(f"{fmt} rows are supervised on their answer only")
        other = distractor.text if distractor is not None else None
        prompt, n_context = self.prompt_ids(fmt, doc.text, fact.question, lead=lead, distractor=other)
        self._count += 1
        if self.check_every and self._count % self.check_every == 1:
            exact, _ = self.prompt_ids(fmt, doc.text, fact.question, tokenizer=self.tokenizer, lead=lead,
                                       distractor=other)
            if exact != prompt:
                raise RuntimeError(f"memoised tokenisation differs from the tokenizer's for a {fmt} prompt")
        recall = second_copy(prompt, n_context) if fmt == "jrt" and not answer_only else None
        if more and fmt != "plain":
            raise ValueError("follow-up questions are for plain rows only")
        ids = prompt + self.completion_ids(fact.value)[:-1]
        values = []
        for extra in more:
            ids += self.follow_up_ids(extra.question)
            values.append(len(ids))
            ids += self.completion_ids(extra.value)[:-1]
        return Sample(ids + [self.eos], len(prompt), fmt, doc.records, recall, len(prompt) if answer_only else 0,
                      tuple(values))


def entities(doc: synthetic.Document) -> list[str]:
    """The names of a document's records, in order."""
    return [line.split(".")[0][len("Name: "):] for line in doc.text.split("\n") if line.startswith("Name: ")]


def distractor_document(doc: synthetic.Document, rng: random.Random, split: str = "train") -> synthetic.Document:
    """D' for a distractor_jrt row: as many records as ``doc`` with the same attributes, values drawn anew, names
    from ``split`` none of which is in ``doc`` (when ``doc`` has at most half the split's names; beyond that, none
    of the names it is asked about). No questions of its own."""
    pool = synthetic.names(split)
    taken = set(entities(doc))
    if len(pool) - len(taken) < doc.records:
        taken = {fact.entity for fact in doc.asked}
    if len(pool) - len(taken) < doc.records:  # a document of (nearly) every name: any names
        taken = set()
    chosen = rng.sample([name for name in pool if name not in taken], doc.records)
    text = "\n".join(synthetic.record_line(name, {a: rng.choice(synthetic.ATTRIBUTES[a]) for a in doc.attributes})
                     for name in chosen)
    return synthetic.Document(text, (), doc.records, doc.attributes)


def second_copy(ids: list[int], n_context: int) -> tuple[int, int]:
    """Where the context's second copy sits in a JRT prompt whose first copy is ``ids[:n_context]``."""
    head = ids[:n_context]
    for start in range(n_context + 1, len(ids) - n_context + 1):
        if ids[start] == head[0] and ids[start:start + n_context] == head:
            return start, start + n_context
    raise RuntimeError("the JRT prompt does not hold its context twice")


@dataclass
class Batch:
    ids: torch.Tensor  # [B, L] long, right-padded with EOS
    lm_mask: torch.Tensor  # [B, L - 1] bool: position t predicts ids[t + 1], a real supervised token
    recall_mask: torch.Tensor  # [B, L - 1] bool: predictions of a JRT row's second context copy
    value_pos: torch.Tensor  # [B] long: the position whose prediction is the (first question's) value's first token
    answer_mask: torch.Tensor  # [B, L - 1] bool: positions predicting any answer's value (follow-ups included)
    formats: list[str]
    records: list[int]
    lengths: list[int] = field(default_factory=list)  # real tokens per row
    level: float | None = None  # the curriculum level the batch was drawn at (None: not known)
    top: int | None = None  # the largest record count that level allowed its format

    @property
    def tokens(self) -> int:
        return sum(self.lengths)

    def _map(self, fn) -> "Batch":
        return Batch(fn(self.ids), fn(self.lm_mask), fn(self.recall_mask), fn(self.value_pos), fn(self.answer_mask),
                     self.formats, self.records, self.lengths, self.level, self.top)

    def pin_memory(self) -> "Batch":  # called by the DataLoader on CUDA machines
        return self._map(lambda t: t.pin_memory())

    def to(self, device) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=True))


def bucket(length: int, buckets: tuple[int, ...] = BUCKETS) -> int:
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(f"a {length}-token sample is longer than the largest bucket ({buckets[-1]}); "
                     "lower --max-records")


def collate(samples: list[Sample], pad_id: int, buckets: tuple[int, ...] = BUCKETS) -> Batch:
    L = bucket(max(len(s.ids) for s in samples), buckets)
    ids = torch.full((len(samples), L), pad_id, dtype=torch.long)
    lm = torch.zeros(len(samples), L - 1, dtype=torch.bool)
    recall = torch.zeros(len(samples), L - 1, dtype=torch.bool)
    value_pos = torch.zeros(len(samples), dtype=torch.long)
    answers = torch.zeros(len(samples), L - 1, dtype=torch.bool)
    for i, s in enumerate(samples):
        n = len(s.ids)
        ids[i, :n] = torch.tensor(s.ids)
        lm[i, max(0, s.loss_start - 1):n - 1] = True
        if s.recall is not None:
            recall[i, s.recall[0] - 1:s.recall[1] - 1] = True
        value_pos[i] = s.answer_start - 1
        for v in (s.answer_start, *s.more_values):
            answers[i, v - 1] = True
    return Batch(ids, lm, recall, value_pos, answers, [s.format for s in samples], [s.records for s in samples],
                 [len(s.ids) for s in samples])


@dataclass
class MixtureConfig:
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    # records per document of each format, an inclusive range (uniform); the curriculum level caps the top
    records: dict[str, tuple[int, int]] = field(default_factory=lambda: dict(DEFAULT_RECORDS))
    answer_only: tuple[str, ...] = ANSWER_ONLY  # formats supervised on their answer only
    plain_questions: int = 4  # questions per plain row (the first as inference asks it, then follow-ups)
    attributes: tuple[int, int] = (1, 3)  # per batch, uniform in this range: one-attribute records are plain copying,
    # easy examples that start the copy circuit recall builds on; the test documents have 3
    tokens_per_batch: int = 16384
    max_batch: int = 256
    buckets: tuple[int, ...] = BUCKETS
    # record counts under the level's top: "uniform" in [lo, top], or "top-half" (the first GPU run's): half the
    # batches from [top // 2, top], half from [lo, top]
    sampling: str = "uniform"
    # what question-first rows start with: "question" ("Question:", runs 1-6) or "separator" ("\n\nQuestion:", as the
    # JRT prompt's second read does: no sequence-start cue)
    question_first_lead: str = "question"


SAMPLINGS = ("uniform", "top-half")


def check_mixture(config: MixtureConfig) -> None:
    """ValueError unless the mix, attribute range and record ranges make batches."""
    if not config.mix or any(f not in FORMATS or w < 0 for f, w in config.mix.items()) \
            or sum(config.mix.values()) <= 0:
        raise ValueError(f"the mix must weigh some of {FORMATS} with non-negative weights, got {config.mix}")
    if config.sampling not in SAMPLINGS:
        raise ValueError(f"record sampling must be one of {SAMPLINGS}, got {config.sampling!r}")
    if config.question_first_lead not in QUESTION_FIRST_LEADS:
        raise ValueError(f"the question-first lead must be one of {QUESTION_FIRST_LEADS}, "
                         f"got {config.question_first_lead!r}")
    for fmt in ALWAYS_ANSWER_ONLY:
        if config.mix.get(fmt, 0) > 0 and fmt not in config.answer_only:
            raise ValueError(f"{fmt} rows are supervised on their answer only: name {fmt} in the answer-only formats")
    lo, hi = config.attributes
    if not 1 <= lo <= hi <= len(synthetic.ATTRIBUTES):
        raise ValueError(f"attributes must be a range within 1..{len(synthetic.ATTRIBUTES)}, got {config.attributes}")
    for fmt, w in config.mix.items():
        r = config.records.get(fmt)
        if w > 0 and (r is None or not 1 <= r[0] <= r[1]):
            raise ValueError(f"records: {fmt} needs a range lo-hi with 1 <= lo <= hi, got {r}")


class BatchStream:
    """An endless seeded stream of batches from the train split. Each batch: one format (drawn by the mix's weights),
    one record count drawn from that format's range in ``config.records`` with its top capped by
    ``level() / max level`` of the range (the curriculum; ``level`` returns a fraction in (0, 1]; uniformly, or as
    ``config.sampling`` says; the batch records the level and top it was drawn at), and a number of
    attributes per record drawn from ``config.attributes``; up to 4 questions per document, each its own row (a
    distractor_jrt document's rows share one D', drawn from a random stream of their own). With ``phase2``,
    batches come from that mixture while ``phase()`` returns 1 (the level applies to both)."""

    def __init__(self, encoder: SampleEncoder, config: MixtureConfig, seed: int, level: Callable[[], float],
                 phase2: MixtureConfig | None = None, phase: Callable[[], int] | None = None):
        for mixture in (config, phase2 or config):
            check_mixture(mixture)
        self.encoder, self.level = encoder, level
        self.configs = (config, phase2 or config)
        self.phase = phase or (lambda: 0)
        self.rng = random.Random(f"recall-training:{seed}")
        self.distractor_rng = random.Random(f"recall-training-distractor:{seed}")  # its own: the other draws stay
        self.seed = seed
        self._generators: dict[tuple[int, int], synthetic.Generator] = {}

    def _generator(self, records: int, attributes: int) -> synthetic.Generator:
        key = (records, attributes)
        if key not in self._generators:
            self._generators[key] = synthetic.Generator(
                "train", self.seed * 100_003 + records * 10 + attributes, records=records, attributes=attributes,
                questions=attributes * records)
        return self._generators[key]

    @property
    def config(self) -> MixtureConfig:
        """The mixture of the current phase."""
        return self.configs[1 if self.phase() else 0]

    def record_range(self, fmt: str, config: MixtureConfig | None = None,
                     level: float | None = None) -> tuple[int, int]:
        """(lo, top): the format's record range with its top capped by the curriculum level."""
        lo, hi = (config or self.config).records[fmt]
        frac = min(1.0, max(0.0, float(self.level() if level is None else level)))
        return lo, max(lo, int(round(hi * frac)))

    def row_records(self, fmt: str, config: MixtureConfig | None = None, level: float | None = None) -> int:
        config = config or self.config
        lo, top = self.record_range(fmt, config, level)
        if config.sampling == "top-half" and self.rng.random() < 0.5:
            lo = max(lo, top // 2)
        return self.rng.randint(lo, top)

    def batch(self) -> Batch:
        config = self.config  # one phase for the whole batch
        level = float(self.level())  # and one level
        formats, weights = list(config.mix), list(config.mix.values())
        fmt = self.rng.choices(formats, weights)[0]
        n = self.row_records(fmt, config, level)
        attributes = self.rng.randint(*config.attributes)
        answer_only = fmt in config.answer_only
        samples: list[Sample] = []
        rows = None
        while rows is None or len(samples) < rows:
            doc = self._generator(n, attributes).document()
            other = distractor_document(doc, self.distractor_rng) if fmt == "distractor_jrt" else None
            # a few questions per document, each its own row (a fresh state, as at inference)
            asked = doc.asked[:4 * config.plain_questions] if fmt == "plain" else doc.asked[:4]
            per_row = config.plain_questions if fmt == "plain" else 1
            for at in range(0, len(asked), per_row):
                group = asked[at:at + per_row]
                samples.append(self.encoder.encode(fmt, doc, group[0], answer_only, tuple(group[1:]),
                                                   lead=config.question_first_lead, distractor=other))
                if rows is None:
                    length = bucket(len(samples[0].ids), config.buckets)
                    rows = max(1, min(config.max_batch, config.tokens_per_batch // length))
                if len(samples) >= rows:
                    break
        batch = collate(samples, self.encoder.eos, config.buckets)
        batch.level, batch.top = level, self.record_range(fmt, config, level)[1]
        return batch

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.batch()
