"""JRT prompts: (context, question) -> prompt text and token ids, with the context read `repeats` times.

A prompt is a list of parts of three kinds: the context (the same normalised string in every copy), fixed
literal text, and question text (the question, the original question or the attribute name). Token ids
are the concatenation of per-part tokenisations, never a tokenisation of the whole text, because that is
what makes the first read reusable: the ids before the first question part (``shared``) are the same for
every question, so ``engine.read(context)`` followed by ``ids[shared:]`` is exactly the full prompt.

Part boundaries are put where byte-level BPE tokenisers (GPT-2, GPT-NeoX) split anyway: before a space
(" {question}") or a newline, or after punctuation. Each part is tokenised between anchors that are then
dropped (see ``piece_ids``): a head, so SentencePiece tokenisers (Llama, Mistral) add no word-start marker
to every part, and for a part ending in whitespace a tail letter, so "\\n\\n" before a context copy gives
the two newline tokens of whole text, not a merged one. The ids are then those of the whole text except
where a space precedes a context copy ("Qo C" in the paper's twice prompts): that space is its own token.

Templates (C the context, Q the question; see REFERENCE.md section 2 for the paper's six tasks):

- ``generic`` (any ``repeats`` >= 1): ``C + "\\n\\nQuestion: " + Q`` once per read, the reads joined by
  ``"\\n\\n"``, then the answer cue ``"\\nAnswer:"`` (no trailing space: the model emits " answer").
  repeats=2: ``"{C}\\n\\nQuestion: {Q}\\n\\n{C}\\n\\nQuestion: {Q}\\nAnswer:"``. C and Q are stripped.
- ``swde``, ``fda`` (Q is the attribute name K, shown with its first letter upper-cased; C stripped of
  surrounding whitespace and trailing dots): repeats=1 ``C + ". " + K + ":"``; repeats=2
  ``"Information about K. " + C + ".\\n" + C + ". " + K + ":"``.
- ``nq``, ``triviaqa``, ``drop`` (Q the cloze statement, Qo the original question; C as for swde, and
  triviaqa drops its [PAR] [DOC] [TLE] marks first): repeats=1 ``C + ". " + Q``; repeats=2
  ``Qo + " " + C + ".\\n" + C + ". " + Q``.
- ``squad`` (``context`` is the passage and ``question`` the cloze statement; the paper's "text field"
  is ``C + " " + Q``): repeats=1 ``C + " " + Q``; repeats=2 ``Qo + " " + C + "\\n" + C + " " + Q``.
Task templates take repeats 1 (the paper's "default" prompt) or 2 (its "twice" prompt). Twice prompts
of nq, triviaqa, drop and squad start with Qo: nothing of them can be read before the question.

Budget: the question and the fixed text are never cut (PromptTooLongError if they alone exceed it). What
the budget leaves is split evenly over the context copies (possibly 0 tokens each), and every copy keeps
the same slice of the context's tokens (sliced in token space, so the ids stay exact): its head, its tail,
or a window centred on the first occurrence of ``around`` (exact match first, then case-insensitive; when
it is absent the head is kept and ``around_found`` says so). A cut that would split a character across
tokens moves inwards to the character boundary. A trimmed prompt's ``text`` holds the decoded slice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from .errors import JRTError, PromptTooLongError

CONTEXT, FIXED, ASK = "context", "fixed", "ask"
TRIM_POLICIES = ("head", "tail", "window")
_TRIVIAQA_MARKS = re.compile(r"\[PAR\]|\[DOC\]|\[TLE\]")
_REPLACEMENT = "\ufffd"

Part = tuple[str, str]  # (kind, text); a CONTEXT part's text is ignored (the context goes there)


class PromptError(JRTError, ValueError):
    """A prompt cannot be built from these arguments (unknown template, bad repeats, missing question)."""


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of one prompt and what trimming did to its context.

    ``ids[:shared]`` depends only on the context (what ``JRTPrompt.read_ids`` returns); ``context_tokens``
    and ``trimmed`` count tokens of ONE context copy; ``kept`` is the [start, end) slice of the context's
    tokens that every copy holds; ``policy`` is the trim policy applied (None when nothing was cut);
    ``around_found`` says whether a window's ``around`` string was found (None unless trim="window").
    """

    ids: list[int]
    shared: int
    text: str
    context_tokens: int
    trimmed: int
    budget: int | None
    kept: tuple[int, int] = (0, 0)
    policy: str | None = None
    around_found: bool | None = None

    @property
    def question_ids(self) -> list[int]:
        """The ids to feed after the shared prefix has been read."""
        return self.ids[self.shared:]


# --- templates ---------------------------------------------------------------------------------------

def _generic(repeats: int, q: str, qo: str | None) -> list[Part]:
    parts: list[Part] = []
    for i in range(repeats):
        parts += [(CONTEXT, ""), (FIXED, "\n\nQuestion:"), (ASK, " " + q)]
        if i < repeats - 1:
            parts.append((FIXED, "\n\n"))
    return parts + [(FIXED, "\nAnswer:")]


def _attribute(repeats: int, key: str, qo: str | None) -> list[Part]:
    key = key[:1].upper() + key[1:]
    if repeats == 1:
        return [(CONTEXT, ""), (FIXED, "."), (ASK, f" {key}:")]
    return [(ASK, f"Information about {key}. "), (CONTEXT, ""), (FIXED, ".\n"), (CONTEXT, ""),
            (FIXED, "."), (ASK, f" {key}:")]


def _cloze(repeats: int, q: str, qo: str | None) -> list[Part]:
    if repeats == 1:
        return [(CONTEXT, ""), (FIXED, "."), (ASK, " " + q)]
    return [(ASK, qo + " "), (CONTEXT, ""), (FIXED, ".\n"), (CONTEXT, ""), (FIXED, "."), (ASK, " " + q)]


def _squad(repeats: int, q: str, qo: str | None) -> list[Part]:
    if repeats == 1:
        return [(CONTEXT, ""), (ASK, " " + q)]
    return [(ASK, qo + " "), (CONTEXT, ""), (FIXED, "\n"), (CONTEXT, ""), (ASK, " " + q)]


def _strip(context: str) -> str:
    return context.strip()


def _strip_final_dots(context: str) -> str:
    """The paper's normalisation: surrounding whitespace and trailing dots go (the template adds one '.')."""
    return context.strip().rstrip(". \t\r\n")


def _triviaqa_context(context: str) -> str:
    return _strip_final_dots(_TRIVIAQA_MARKS.sub("", context))


@dataclass(frozen=True)
class _Template:
    build: Callable[[int, str, str | None], list[Part]]
    clean_context: Callable[[str], str]
    max_repeats: int | None  # None: any repeats >= 1
    twice_needs_original: bool  # repeats=2 starts with the original question


_TEMPLATES: dict[str, _Template] = {
    "generic": _Template(_generic, _strip, None, False),
    "swde": _Template(_attribute, _strip_final_dots, 2, False),
    "fda": _Template(_attribute, _strip_final_dots, 2, False),
    "nq": _Template(_cloze, _strip_final_dots, 2, True),
    "triviaqa": _Template(_cloze, _triviaqa_context, 2, True),
    "drop": _Template(_cloze, _strip_final_dots, 2, True),
    "squad": _Template(_squad, _strip, 2, True),
}
TEMPLATES = tuple(_TEMPLATES)


# --- tokenisation ------------------------------------------------------------------------------------

def _tokenize(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def piece_ids(tokenizer, piece: str) -> list[int]:
    """Ids of `piece` as it tokenises in the middle of a text.

    The piece is tokenised between anchors whose ids are then dropped: a head ("\\n", else ".") so that
    SentencePiece tokenisers add no word-start marker, and, when the piece ends in whitespace, a tail
    letter standing for the context that follows (byte-level BPE tokenises "\\n\\n" alone as one token
    but "\\n\\nThe" as two newlines and a word). An anchor is used only where its ids come apart from the
    piece's and the piece decodes back exactly; else the piece is tokenised alone.
    """
    if not piece:
        return []
    for tail in ("A", "") if piece[-1].isspace() else ("",):
        for head in ("\n", "."):
            head_ids = _tokenize(tokenizer, head)
            tail_ids = _tokenize(tokenizer, head + tail)
            ids = _tokenize(tokenizer, head + piece + tail)
            if tail_ids[:len(head_ids)] != head_ids or ids[:len(head_ids)] != head_ids:
                continue
            tail_ids = tail_ids[len(head_ids):]
            body = ids[len(head_ids):len(ids) - len(tail_ids)]
            if (ids[len(ids) - len(tail_ids):] == tail_ids
                    and _decode(tokenizer, head_ids + body) == _decode(tokenizer, head_ids) + piece):
                return body
    return _tokenize(tokenizer, piece)


def _merge(parts: list[Part]) -> list[Part]:
    """Adjacent non-context parts of one kind become one piece (tokenised together, like whole text)."""
    merged: list[Part] = []
    for kind, text in parts:
        if merged and kind != CONTEXT and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return merged


# --- trimming ----------------------------------------------------------------------------------------

def _find(context: str, around: str) -> int:
    """Character index of the first occurrence of `around` (exact, then case-insensitive), or -1."""
    at = context.find(around)
    if at < 0:
        m = re.search(re.escape(around), context, re.IGNORECASE)
        at = m.start() if m else -1
    return at


def _whole_characters(tokenizer, ids: list[int], lo: int, hi: int) -> tuple[int, int]:
    """Move cut edges inwards past tokens that hold only part of a character (they decode to U+FFFD).

    A slice of one partial character becomes empty.
    """
    for _ in range(4):
        if 0 < lo < hi and _decode(tokenizer, ids[lo:lo + 4]).startswith(_REPLACEMENT):
            lo += 1
    for _ in range(4):
        if lo < hi < len(ids) and _decode(tokenizer, ids[max(lo, hi - 4):hi]).endswith(_REPLACEMENT):
            hi -= 1
    return lo, hi


def _window(tokenizer, context: str, n_tokens: int, room: int, around: str | None) -> tuple[int, bool]:
    """Start of a `room`-token window centred on `around` (token positions from tokenising the prefix)."""
    at = _find(context, around) if around else -1
    if at < 0:
        return 0, False
    start = len(piece_ids(tokenizer, context[:at]))
    end = len(piece_ids(tokenizer, context[:at + len(around)]))
    centre = (min(start, n_tokens) + min(end, n_tokens)) / 2
    return max(0, min(n_tokens - room, round(centre - room / 2))), True


# --- the prompt --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JRTPrompt:
    """A prompt format: `template` (see the module docstring and TEMPLATES) read `repeats` times.

    repeats=2 (the default) is the JRT prompt; repeats=1 is the plain prompt. For task templates,
    `question` is the cloze statement (the attribute name for swde/fda) and `original_question` is the
    dataset's question, needed by the twice prompts of nq, triviaqa, drop and squad; other templates
    ignore it.
    """

    template: str = "generic"
    repeats: int = 2

    def __post_init__(self):
        spec = _TEMPLATES.get(self.template)
        if spec is None:
            raise PromptError(f"unknown template={self.template!r}; choose one of {', '.join(TEMPLATES)}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise PromptError(f"repeats={self.repeats!r} must be an integer >= 1")
        if spec.max_repeats is not None and self.repeats > spec.max_repeats:
            raise PromptError(f"repeats={self.repeats} is not available for template={self.template!r}: "
                              "task templates take 1 (the paper's default prompt) or 2 (its twice prompt)")

    @property
    def _spec(self) -> _Template:
        return _TEMPLATES[self.template]

    @property
    def starts_with_context(self) -> bool:
        """Whether the first part is the context, i.e. the prompt has a question-independent prefix."""
        return self._spec.build(self.repeats, "?", "?")[0][0] == CONTEXT

    def _context(self, context: str) -> str:
        if not isinstance(context, str):
            raise PromptError(f"the context must be a string, not {type(context).__name__}")
        cleaned = self._spec.clean_context(context)
        if not cleaned:
            raise PromptError("the context is empty")
        return cleaned

    def _parts(self, question: str, original_question: str | None) -> list[Part]:
        if not isinstance(question, str) or not question.strip():
            raise PromptError("the question is empty")
        qo = original_question.strip() if isinstance(original_question, str) else None
        if self.repeats > 1 and self._spec.twice_needs_original and not qo:
            raise PromptError(f"template={self.template!r} with repeats=2 starts with the original question: "
                              "pass original_question=...")
        return self._spec.build(self.repeats, question.strip(), qo)

    def text(self, context: str, question: str, original_question: str | None = None) -> str:
        """The prompt text: exactly the concatenation of its parts."""
        context = self._context(context)
        return "".join(context if kind == CONTEXT else text for kind, text in self._parts(question, original_question))

    def encode(self, tokenizer, context: str, question: str, original_question: str | None = None, *,
               budget: int | None = None, trim: str | None = "head", around: str | None = None,
               reserve: int = 0) -> EncodedPrompt:
        """Token ids of the prompt, its context trimmed to fit `budget` tokens when that is given.

        trim: "head" | "tail" | "window" (centred on `around`), or None to raise PromptTooLongError
        instead of trimming. reserve: plan the trim as if the question parts took at least this many
        tokens, so every question that fits in it gets the same context slice as ``read_ids(reserve=...)``.
        """
        _check_trim(budget, trim, around, reserve)
        context = self._context(context)
        pieces = [(kind, text, [] if kind == CONTEXT else piece_ids(tokenizer, text))
                  for kind, text in _merge(self._parts(question, original_question))]
        ctx_ids = piece_ids(tokenizer, context)
        fixed = sum(len(ids) for kind, _, ids in pieces if kind == FIXED)
        asked = sum(len(ids) for kind, _, ids in pieces if kind == ASK)
        lo, hi, policy, found = self._plan(tokenizer, context, ctx_ids, budget, fixed + max(asked, reserve),
                                           trim, around)
        kept_text = context if (lo, hi) == (0, len(ctx_ids)) else _decode(tokenizer, ctx_ids[lo:hi])
        ids: list[int] = []
        text: list[str] = []
        shared = None
        for kind, piece, piece_tokens in pieces:
            if kind == ASK and shared is None:
                shared = len(ids)
            ids += ctx_ids[lo:hi] if kind == CONTEXT else piece_tokens
            text.append(kept_text if kind == CONTEXT else piece)
        return EncodedPrompt(ids=ids, shared=len(ids) if shared is None else shared, text="".join(text),
                             context_tokens=hi - lo, trimmed=len(ctx_ids) - (hi - lo), budget=budget,
                             kept=(lo, hi), policy=policy, around_found=found)

    def read_ids(self, tokenizer, context: str, *, budget: int | None = None, trim: str | None = "head",
                 around: str | None = None, reserve: int = 0) -> list[int]:
        """The question-independent prefix: ``encode(...).ids[:shared]`` for any question.

        With a budget this holds for every question whose parts take at most `reserve` tokens, when
        encode is given the same budget, trim, around and reserve.
        """
        if not self.starts_with_context:
            raise PromptError(f"template={self.template!r} with repeats={self.repeats} starts with the "
                              "question: no part of it can be read before the question is known")
        _check_trim(budget, trim, around, reserve)
        context = self._context(context)
        # the question parts are the only ones that depend on the question: a placeholder shows the rest
        parts = _merge(self._parts("?", "?"))
        first_ask = next(i for i, (kind, _) in enumerate(parts) if kind == ASK)
        ctx_ids = piece_ids(tokenizer, context)
        fixed = sum(len(piece_ids(tokenizer, text)) for kind, text in parts if kind == FIXED)
        lo, hi, _, _ = self._plan(tokenizer, context, ctx_ids, budget, fixed + reserve, trim, around)
        ids: list[int] = []
        for kind, text in parts[:first_ask]:
            ids += ctx_ids[lo:hi] if kind == CONTEXT else piece_ids(tokenizer, text)
        return ids

    def _plan(self, tokenizer, context: str, ctx_ids: list[int], budget: int | None, other: int,
              trim: str | None, around: str | None) -> tuple[int, int, str | None, bool | None]:
        """The [lo, hi) slice of context tokens every copy keeps, the policy applied, and around_found."""
        n_tokens = len(ctx_ids)
        if budget is None or other + self.repeats * n_tokens <= budget:
            return 0, n_tokens, None, None
        if trim is None:
            raise PromptTooLongError(
                f"the prompt is {other + self.repeats * n_tokens} tokens, over the budget of {budget}, "
                "and trim=None forbids cutting the context")
        if other > budget:
            raise PromptTooLongError(
                f"the question and fixed text alone take {other} tokens, over the budget of {budget}: "
                "raise the budget or shorten the question")
        room = (budget - other) // self.repeats  # may be 0: every copy of the context cut, as reported
        found = None
        if trim == "head":
            lo = 0
        elif trim == "tail":
            lo = n_tokens - room
        else:
            lo, found = _window(tokenizer, context, n_tokens, room, around)
        hi = lo + room
        if _REPLACEMENT not in context:  # else U+FFFD is text, not a sign of a split character
            lo, hi = _whole_characters(tokenizer, ctx_ids, lo, hi)
        policy = "head" if trim == "window" and not found else trim
        return lo, hi, policy, found


def _check_trim(budget: int | None, trim: str | None, around: str | None, reserve: int) -> None:
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise PromptError(f"budget={budget!r} must be a positive integer or None")
    if trim is not None and trim not in TRIM_POLICIES:
        raise PromptError(f"trim={trim!r} must be one of {', '.join(TRIM_POLICIES)} or None")
    if around is not None and trim != "window":
        raise PromptError(f"around={around!r} is only used with trim='window' (got trim={trim!r})")
    if isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 0:
        raise PromptError(f"reserve={reserve!r} must be an integer >= 0")
