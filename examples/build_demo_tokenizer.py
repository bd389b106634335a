#!/usr/bin/env python
"""Build the demo's byte-level BPE tokenizer (examples/recall_training/tokenizer.py) into a folder.

    python examples/build_demo_tokenizer.py runs/tokenizer [--vocab-size 1024]

train_recall.py builds the same tokenizer itself when it is not given --tokenizer; this script is for reusing one
tokenizer across runs, or for inspecting it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recall_training.tokenizer import DEFAULT_VOCAB, build_tokenizer, save_tokenizer, single_token_share  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder for tokenizer.json and tokenizer_config.json")
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB, help="upper bound; the corpus may give fewer")
    args = p.parse_args(argv)
    tok = build_tokenizer(args.vocab_size)
    save_tokenizer(tok, args.out)
    print(f"{args.out}: {len(tok)} tokens; {100 * single_token_share(tok):.0f}% of the suite's words are one token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
