"""A small byte-level BPE tokenizer built in-process, for tests that need a real HF tokenizer offline."""

from __future__ import annotations

import functools

from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Alice was born in Paris in 1990. Bob works at the bakery on Main Street.",
    "Question: Where was Alice born? Answer: Paris",
    "Information about the company. Name: Acme. Founded: 1950. Headquarters: Boston.",
    "Les élèves naïfs mangent des crêpes à Zürich; 東京 is Tokyo. \u00e9t\u00e9",
] * 4


@functools.cache
def tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Byte-level BPE (like GPT-2's) with <|endoftext|> as EOS and pad, left padding."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=vocab_size, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", padding_side="left")
    return tok
