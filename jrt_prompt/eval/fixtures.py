"""A few hand-written rows in each hub dataset's schema: for tests, and for an offline dry run of the
pipeline (``write_fixtures(folder)`` then ``jrt-eval --data swde=folder/swde.jsonl ...``). The texts are
short and made up; they exercise the cleaning rules (a trailing "key:", SWDE's summary marker, TriviaQA's
[PAR]/[DOC]/[TLE] marks, a trailing copy of the cloze question) and the dropping of one-character answers.
"""

from __future__ import annotations

from pathlib import Path

from .data import write_jsonl

ROWS: dict[str, list[dict]] = {
    "swde": [
        {"doc_id": "movie-0001", "file_name": "movie/0001.htm", "key": "director", "value": "Jane Doe",
         "text": "Blue Sky (1999)\nDirector: Jane Doe\nGenre: drama\nRuntime: 98 min.\n"
                 "Summary of information above... director:"},
        {"doc_id": "movie-0001", "file_name": "movie/0001.htm", "key": "genre", "value": "drama",
         "text": "Blue Sky (1999)\nDirector: Jane Doe\nGenre: drama\nRuntime: 98 min.\n"
                 "Summary of information above... genre:"},
        {"doc_id": "movie-0002", "file_name": "movie/0002.htm", "key": "mpaa_rating", "value": "R",
         "text": "Night Run. Rated R. mpaa_rating:"},
    ],
    "fda": [
        {"doc_id": "K123456", "file_name": "K123456.txt", "key": "applicant", "value": "Acme Medical Inc.",
         "text": "510(k) SUMMARY. Device name: CardioFlow. Applicant: Acme Medical Inc. "
                 "Predicate device: K998877... applicant:"},
        {"doc_id": "K654321", "file_name": "K654321.txt", "key": "predicate device name", "value": "ThermoScan",
         "text": "Summary of safety. The predicate device name is ThermoScan. Intended use: ear thermometry."},
    ],
    "squad": [
        {"doc_id": "sq-1", "title": "Paris", "value": "Seine",
         "context": "Paris is the capital of France. The city lies on the river Seine.",
         "question": "Which river flows through Paris?",
         "text": "Paris is the capital of France. The city lies on the river Seine. "
                 "The river that flows through Paris is the"},
        {"doc_id": "sq-2", "title": "Zürich", "value": "Limmat",
         "context": "Zürich lies where the Limmat leaves Lake Zürich.\nQuestion: Which river leaves Lake Zürich?",
         "question": "Which river leaves Lake Zürich?",
         "text": "Zürich lies where the Limmat leaves Lake Zürich. The river that leaves Lake Zürich is the"},
    ],
    "triviaqa": [
        {"doc_id": "tqa-1", "answers": ["Mercury", "Hg"], "orig_question": "Which planet is closest to the sun?",
         "question": "The planet closest to the sun is",
         "context": "[DOC] [TLE] Planets [PAR] Mercury is the closest planet to the sun. Venus comes next. "
                    "The planet closest to the sun is"},
    ],
    "nq": [
        {"answers": ["1990"], "orig_question": "when was alice born",
         "question": "Alice was born in the year", "context": "Alice was born in Paris in 1990. Bob works at a bakery."},
        {"answers": ["x"], "orig_question": "what letter", "question": "The letter is",
         "context": "The letter is x."},
    ],
    "drop": [
        {"answers": ["3", "three"], "orig_question": "How many goals did Bob score?",
         "question": "The number of goals Bob scored is",
         "context": "Bob scored three goals in the first half... "},
        {"answers": ["twelve"], "orig_question": "How many eggs are in a dozen?",
         "question": "A dozen holds this many eggs:",
         "context": "A dozen is twelve. Bakers sell eggs by the dozen."},
    ],
}


def save_tiny_mamba(folder: str | Path, tokenizer, *, seed: int = 0) -> Path:
    """Save a tiny random transformers MambaForCausalLM with ``tokenizer`` to ``folder``: a checkpoint that
    ``jrt_prompt.load`` reads, for offline runs of jrt-eval and jrt-lm-eval (its answers are noise)."""
    import torch
    from transformers import MambaConfig, MambaForCausalLM

    eos = tokenizer.eos_token_id
    config = MambaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, state_size=8, expand=2,
                         conv_kernel=4, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, bos_token_id=eos)
    torch.manual_seed(seed)
    MambaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def write_fixtures(folder: str | Path) -> dict[str, Path]:
    """Write every task's fixture rows to ``folder/TASK.jsonl``; return the paths by task."""
    folder = Path(folder)
    return {task: write_jsonl(folder / f"{task}.jsonl", rows) for task, rows in ROWS.items()}
