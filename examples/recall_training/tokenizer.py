"""The demo tokenizer: a small byte-level BPE trained on the synthetic suite's text.

Byte-level, so any user text still encodes; trained on text of every training format so that each name, attribute
and value of the suite is one token (with its leading space) and prompts stay short. Saved as tokenizer.json +
tokenizer_config.json, which ``AutoTokenizer.from_pretrained(folder)`` loads offline.
"""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from jrt_prompt.eval import synthetic

EOS = "<|endoftext|>"
DEFAULT_VOCAB = 1024
# Some everyday English, so that questions a user types about other documents are not all single bytes.
GENERAL_TEXT = (
    "The quick brown fox jumps over the lazy dog. Who is the author of this document? Where does she live? "
    "When was it written, and what does it say about the company, the city and the people who work there? "
    "This is a short note: please read it twice. Information about the team. Answer the question below."
)


def corpus(samples: int = 4000, seed: int = 0) -> list[str]:
    """Training text of every format (train split only), the suite's words alone and with a space, and plain
    English."""
    texts = [s.text for s in synthetic.training_samples(samples, seed=seed, records=(1, 16))]
    words = synthetic.vocabulary()
    rng = random.Random(seed)
    for _ in range(50):
        rng.shuffle(words)
        texts.append(" ".join(words))
    texts += [GENERAL_TEXT] * 20
    return texts


def build_tokenizer(vocab_size: int = DEFAULT_VOCAB, seed: int = 0) -> PreTrainedTokenizerFast:
    """Train the BPE (deterministic for a given vocab_size and seed); EOS doubles as the pad token."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus(seed=seed), vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS, pad_token=EOS, bos_token=EOS,
                                   padding_side="left", model_max_length=1 << 20)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str | Path) -> Path:
    """tokenizer.json + tokenizer_config.json (+ special_tokens_map.json) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.padding_side = "left"
    return tok


def single_token_share(tokenizer) -> float:
    """Fraction of the suite's words (with a leading space) that are one token: a check that the BPE fits."""
    words = synthetic.vocabulary()
    return sum(len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1 for w in words) / len(words)
