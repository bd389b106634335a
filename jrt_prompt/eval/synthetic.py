"""An offline, seeded recall suite: documents of plain-text records, one question about one fact each.

A document is ``records`` lines, one entity per line with ``attributes`` attributes, e.g.

    Name: Kira Voss. City: Lagos. Job: baker. Pet: owl.

and a question asks for one attribute of one entity: "What is Kira Voss's job?" -> "baker". The
difficulty knob is the number of facts per document (``records`` x ``attributes``): a model with a
fixed-size state cannot keep every fact of a long document on one plain read, but once it has seen the
question (the JRT prompt reads the document again after it) it only needs to keep the facts asked for.

Design choices, so that a tiny tokenizer and model can learn the format:
- short words from small lists (32 first names, 32 last names, 6 attributes with 16 values each); every
  answer is one word, and no value occurs inside another, so the ``contains`` metric is unambiguous;
- an entity's name is unique within a document; its attribute values are drawn independently;
- train and test never share a fact: every (first, last) name pair belongs to exactly one split (by
  the parity of its list positions), so an (entity, attribute, value) triple of one split never occurs in
  the other, whatever the seeds; the two splits also draw from different random streams.

The same generator feeds training (``training_samples``: the mixture the demo model trains on) and
evaluation (``examples``: what ``jrt-eval --tasks synthetic`` scores).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

FIRST_NAMES = (
    "Kira", "Omar", "Lena", "Ravi", "Ana", "Ben", "Cleo", "Dev", "Eli", "Finn", "Gia", "Hugo", "Ida", "Jon",
    "Kai", "Lia", "Max", "Nia", "Otto", "Pia", "Quin", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wes", "Xia",
    "Yuri", "Zoe", "Abe", "Bea",
)
LAST_NAMES = (
    "Voss", "Reed", "Hale", "Cruz", "Diaz", "Egan", "Ford", "Hart", "Hunt", "Ives", "Jain", "Kemp", "Lowe",
    "Marsh", "Nash", "Oakes", "Park", "Quill", "Ross", "Stone", "Tate", "Ueda", "Vale", "Wolfe", "Young",
    "Zane", "Bell", "Cole", "Dunn", "Frost", "Moss", "Lamb",
)
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "city": ("Lagos", "Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Rome", "Delhi", "Quito", "Seoul", "Dakar",
             "Perth", "Hanoi", "Kyiv", "Miami", "Dubai"),
    "job": ("baker", "nurse", "pilot", "judge", "chef", "miner", "tailor", "farmer", "singer", "driver",
            "poet", "guard", "clerk", "medic", "monk", "smith"),
    "pet": ("owl", "cat", "dog", "fox", "hen", "yak", "eel", "bat", "ram", "cow", "pig", "ant", "elk", "emu",
            "gnu", "ape"),
    "color": ("red", "blue", "green", "pink", "teal", "gold", "black", "white", "brown", "beige", "cyan",
              "lime", "navy", "plum", "rust", "tan"),
    "food": ("rice", "soup", "bread", "cake", "pasta", "tofu", "corn", "beans", "fish", "salad", "curry",
             "pie", "jam", "figs", "nuts", "eggs"),
    "sport": ("golf", "chess", "judo", "polo", "rugby", "tennis", "darts", "karate", "rowing", "hockey",
              "boxing", "yoga", "surf", "skiing", "cricket", "squash"),
}
SPLITS = ("train", "test")
DEFAULT_SEEDS = {"train": 0, "test": 1234}


def names(split: str) -> tuple[str, ...]:
    """The entity names of one split: (first, last) pairs whose list positions add up to an even number
    belong to train, odd to test (512 each)."""
    parity = _split_index(split)
    return tuple(f"{f} {l}" for i, f in enumerate(FIRST_NAMES) for j, l in enumerate(LAST_NAMES)
                 if (i + j) % 2 == parity)


def _split_index(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def vocabulary() -> list[str]:
    """Every word the generator can write (names, attribute names and values, fixed words), e.g. to build a
    small tokenizer for the demo model."""
    words = {"Name", "What", "is", "s"} | set(FIRST_NAMES) | set(LAST_NAMES)
    for attr, values in ATTRIBUTES.items():
        words |= {attr, attr.capitalize(), *values}
    return sorted(words)


@dataclass(frozen=True)
class Fact:
    entity: str
    attribute: str
    value: str

    @property
    def question(self) -> str:
        return f"What is {self.entity}'s {self.attribute}?"


@dataclass(frozen=True)
class Document:
    """One document and the facts asked about it."""

    text: str
    asked: tuple[Fact, ...]
    records: int
    attributes: tuple[str, ...]

    @property
    def facts(self) -> int:
        return self.records * len(self.attributes)


def record_line(entity: str, values: dict[str, str]) -> str:
    return " ".join([f"Name: {entity}."] + [f"{a.capitalize()}: {v}." for a, v in values.items()])


class Generator:
    """A seeded stream of documents of one split. ``records`` may be an int or an inclusive (lo, hi) range
    drawn per document; ``attributes`` attribute names are drawn per document from the six."""

    def __init__(self, split: str = "test", seed: int | None = None, *, records: int | tuple[int, int] = 16,
                 attributes: int = 3, questions: int = 4):
        _split_index(split)
        lo, hi = (records, records) if isinstance(records, int) else records
        if not 1 <= lo <= hi <= len(names(split)):
            raise ValueError(f"records must be between 1 and {len(names(split))} (got {records!r})")
        if not 1 <= attributes <= len(ATTRIBUTES):
            raise ValueError(f"attributes must be between 1 and {len(ATTRIBUTES)} (got {attributes})")
        if questions < 1:
            raise ValueError(f"questions must be at least 1 (got {questions})")
        self.split, self.records, self.attributes, self.questions = split, (lo, hi), attributes, questions
        self.seed = DEFAULT_SEEDS[split] if seed is None else seed
        self._rng = random.Random(f"jrt-synthetic:{split}:{self.seed}")
        self._names = names(split)
        self._attr_names = tuple(ATTRIBUTES)

    def document(self) -> Document:
        rng = self._rng
        n = rng.randint(*self.records)
        attrs = tuple(sorted(rng.sample(self._attr_names, self.attributes), key=self._attr_names.index))
        entities = rng.sample(self._names, n)
        table = [{a: rng.choice(ATTRIBUTES[a]) for a in attrs} for _ in entities]
        text = "\n".join(record_line(e, row) for e, row in zip(entities, table))
        pairs = [(i, a) for i in range(n) for a in attrs]
        asked = tuple(Fact(entities[i], a, table[i][a]) for i, a in rng.sample(pairs, min(self.questions, len(pairs))))
        return Document(text, asked, n, attrs)

    def __iter__(self) -> Iterator[Document]:
        while True:
            yield self.document()


def documents(n: int, split: str = "test", seed: int | None = None, **kwargs) -> list[Document]:
    gen = Generator(split, seed, **kwargs)
    return [gen.document() for _ in range(n)]


# --- training text --------------------------------------------------------------------------------------

FORMATS = ("plain", "jrt", "question_first")
DEFAULT_MIX = {"plain": 0.4, "jrt": 0.4, "question_first": 0.2}


@dataclass(frozen=True)
class TrainingSample:
    """One training sequence: ``prompt + completion``; train on the completion (the answer) only, or on all."""

    prompt: str
    completion: str  # " answer\n": the answer cue ends without a space, generation stops at the newline
    format: str  # plain | jrt | question_first
    facts: int

    @property
    def text(self) -> str:
        return self.prompt + self.completion


def prompt_text(fmt: str, context: str, question: str) -> str:
    """The prompt of one training format, built from JRTPrompt's generic template so that training text is
    exactly what ``jrt-eval`` and the engine feed at inference:

    - plain: (C, Q) = ``JRTPrompt("generic", 1)``; jrt: (C, Q, C, Q) = ``JRTPrompt("generic", 2)``;
    - question_first: (Q, C, Q), the JRT prompt without its first read of the document, which teaches the
      model to keep what a question asks for while it reads.
    """
    from ..prompt import JRTPrompt

    if fmt == "plain":
        return JRTPrompt("generic", 1).text(context, question)
    twice = JRTPrompt("generic", 2).text(context, question)
    if fmt == "jrt":
        return twice
    if fmt == "question_first":
        head = context.strip()
        if not twice.startswith(head):
            raise ValueError("the generic JRT prompt no longer starts with the context; update prompt_text")
        return twice[len(head):].lstrip()
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def training_samples(n: int, *, seed: int | None = None, records: int | tuple[int, int] = (2, 32),
                     attributes: int = 3, mix: dict[str, float] | None = None,
                     questions: int = 1) -> Iterator[TrainingSample]:
    """``n`` training samples from the train split (facts never shared with the test split), in the format
    mixture ``mix`` (default 40% plain, 40% jrt, 20% question-first); ``questions`` samples per document."""
    mix = dict(DEFAULT_MIX if mix is None else mix)
    if not mix or any(f not in FORMATS or w < 0 for f, w in mix.items()) or sum(mix.values()) <= 0:
        raise ValueError(f"mix must weigh some of {FORMATS} with non-negative weights, got {mix}")
    gen = Generator("train", seed, records=records, attributes=attributes, questions=questions)
    pick = random.Random(f"jrt-synthetic-mix:{gen.seed}")
    formats, weights = list(mix), list(mix.values())
    made = 0
    while made < n:
        doc = gen.document()
        for fact in doc.asked:
            if made >= n:
                return
            fmt = pick.choices(formats, weights)[0]
            yield TrainingSample(prompt_text(fmt, doc.text, fact.question), f" {fact.value}\n", fmt, doc.facts)
            made += 1
