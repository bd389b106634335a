#!/usr/bin/env python
"""Train small recall models on the synthetic suite, then score plain vs JRT prompts on its test split.

    python examples/train_recall.py --arch based --minutes 8 --out runs/based
    python examples/train_recall.py --arch all --parallel --minutes 5.5 --eval-minutes 1.5 --out runs/all
    python examples/train_recall.py --summarize runs/all --write RESULTS.md
    python examples/train_recall.py --export-demo runs/all/based      # -> jrt_prompt/demo, then load("demo")

One process per architecture (``--arch all`` starts them as subprocesses, concurrently with ``--parallel``; one
failing never stops the others). Each writes DIR/results.json as it goes (config, seeds, parameters, state bytes,
training kernels chosen and why, training log, accuracy per document size), so a run killed by a time limit still
leaves what it did, and saves its checkpoint (``save_pretrained`` + tokenizer) before evaluating. See
examples/recall_training/ for the parts and examples/recall_training/NOTES.md for the CPU experiments behind the
training mixture.

The mixture (defaults): plain rows (C, Q, A) with 1-32 records and 4 questions each (the first exactly as inference
asks it, every answer supervised, every token in the loss); JRT rows (C, Q, C, Q, A) and question-first rows
(Q, C, Q, A) with 4-64 records, supervised on the final answer only (no loss on the second copy: that rewarded
copying); one format and one size per batch. ``--records``, ``--mix``, ``--answer-only``, ``--plain-questions``,
``--recall-weight`` change it. ``--phase2-from F`` switches to a second mixture (``--phase2-mix``,
``--phase2-records``, ``--phase2-answer-only``, ``--phase2-plain-questions``, ``--phase2-recall-weight``) after a
fraction F of the budget: e.g. the first GPU run's dense recall mixture first, then answer-only question-first and
JRT rows (examples/recall_training/gpu_run4.sh and NOTES.md). ``--buckets`` sets the padded row lengths.
The curriculum (``--start-level`` below 1) grows on every row by default; ``--growth-rule hard-rows`` and
``--record-sampling top-half`` give the first GPU run's (only rows near the level's top count; half the batches
near the top), and ``--phase2-when-acc`` starts phase 2 once plain rows at the top are recalled
(examples/recall_training/gpu_run5.sh; ``--phase2-acc-level`` also counts rows drawn just under level 1).
``--variant NAME=ARCH OPTIONS`` adds a named run with options of its own to an ``--arch`` list (e.g. a second Based
with 6 layers), ``--init-range`` sets the init scale (examples/recall_training/gpu_run6.sh).
``--question-first-lead separator`` starts question-first rows with the "\\n\\nQuestion:" the JRT prompt's second read
starts with (no sequence-start cue), the ``distractor_jrt`` format (D', Q, C, Q: a JRT prompt whose first copy is an
unrelated document of the same size, answer-only) can be weighed in ``--mix`` with its own ``--records`` range, and
``--eval-modes`` adds the (Q, C, Q) and "\\n\\n" + (Q, C, Q) prompts to plain and JRT in the evaluation (a second
table; the JRT target still compares plain and JRT): examples/recall_training/gpu_run7.sh.
``--call-minutes M`` trains M minutes of the budget, saves DIR/train_state.pt and stops; ``--resume DIR`` (same
recipe) goes on and evaluates at the end: one run over several GPU calls (NOTES.md, "Resuming a run across calls").

Training kernels on CUDA (``--train-ops``): by default the PyTorch references for every recurrent model
(``reference_ops``; Mamba's scan ``selective_scan_cumsum``, Mamba-2's SSD ``ssd_chunked``), so nothing is
compiled or autotuned before the first step (the last GPU run lost 5 minutes to fla's compile/autotune for GLA and
Mamba, and Mamba-2 died at its first backward: fla 0.6.0 refuses its gated chunk backward on Hopper with Triton
< 3.7.1). With ``--train-ops fast``, fla's kernels; Mamba-2 then checks fla's Hopper/Triton guard (and a tiny
forward + backward) first and falls back to ``ssd_chunked``; results.json's "training_ops" says what ran and why.

GPU run-book (one H100; torch 2.11, Triton 3.6, fla 0.6.0). First the GPU checks (a minute):

    pytest -q -m gpu tests/test_train_recall.py

then all five architectures and the demo-sized Based model at the same time, on the one GPU:

    python examples/train_recall.py --arch all --parallel --minutes 5.5 --eval-minutes 1.2 --eval-ops reference \
        --start-level 0.25 --deadline-minutes 8.5 --out $OUT/recall &
    python examples/train_recall.py --arch based --d-model 256 --minutes 5.5 --eval-minutes 1.2 --start-level 0.25 \
        --out $OUT/demo
    wait; python examples/train_recall.py --summarize $OUT/recall $OUT/demo --write $OUT/RESULTS.md

Expected wall time: about 8 minutes (start-up without compiling: imports and tokenizer, well under a minute; 5.5
of training; saving; 1.2 of evaluation, a size already started may run up to 60 s over; the launcher stops any
child still running 8.5 minutes after the launch and prints the table). Not yet run on a GPU with these settings.
Results: $OUT/recall/<arch>/results.json (arch: based, mamba, mamba2, gla, llama; train.log and the checkpoint
beside it), $OUT/recall/RESULTS.md (the table), $OUT/demo/results.json (+ checkpoint; ``--export-demo $OUT/demo``
makes it the package's demo).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # data-loader workers are forked after tokenizer use

from recall_training import data as data_mod  # noqa: E402
from recall_training import report  # noqa: E402
from recall_training import models as models_mod  # noqa: E402
from recall_training.loop import GROWTH_RULES  # noqa: E402
from recall_training.models import ARCHS, RECURRENT, ModelSize  # noqa: E402

CHILD_OPTIONS_DROPPED = {"--arch", "--out", "--parallel", "--tokenizer", "--deadline-minutes", "--variant", "--name",
                         "--resume"}
FLAGS = {"--parallel"}  # options without a value
STATE = "train_state.pt"  # a paused run's training state (--call-minutes), read by --resume
NOT_RECIPE = {"call_minutes", "call_steps", "deadline_minutes", "resume", "out", "tokenizer", "parallel", "summarize",
              "write", "export_demo", "demo_dest"}  # options a resumed call may change
# Mamba's batch cap per PyTorch scan (autograd memory); the cumsum scan keeps about what the two-level one does
# per token, and the blocked one 8 times that (run 10 at 8192: no out-of-memory on an H100, peak not logged)
REFERENCE_SCAN_TOKENS = {"two-level": 8192, "blocks": 8192, "cumsum": 16384}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to do")
    what.add_argument("--arch", help=f"{', '.join(ARCHS)}, all, or a comma-separated list (launched in that order) "
                                     "that may name --variant runs")
    what.add_argument("--variant", action="append", default=[], metavar="NAME=ARCH OPTIONS",
                      help="a run named NAME for --arch lists: ARCH trained with these options after the shared "
                           "ones (later options win), into DIR/NAME; e.g. 'based-6l=based --n-layer 6'; repeatable")
    what.add_argument("--name", help="the run's name in log lines and tables (default: the architecture; "
                                     "the launcher sets it for --variant runs)")
    what.add_argument("--out", type=Path, help="run folder (with --arch all or a list: one subfolder per architecture)")
    what.add_argument("--parallel", action="store_true",
                      help="with --arch all or a list: train them at once on one GPU")
    what.add_argument("--deadline-minutes", type=float,
                      help="with --arch all: stop any child still running this long after the launch (default: "
                           "--minutes + --eval-minutes + 4 per child), then print the table")
    what.add_argument("--summarize", nargs="+", type=Path, metavar="DIR", help="print the table of these runs")
    what.add_argument("--write", type=Path, help="with --summarize: also write the table to this file")
    what.add_argument("--export-demo", type=Path, metavar="RUN", help="copy a Based run into the package's demo")
    what.add_argument("--demo-dest", type=Path, help="where --export-demo copies to (default: jrt_prompt/demo)")
    model = p.add_argument_group("model")
    model.add_argument("--d-model", type=int, default=128)
    model.add_argument("--n-layer", type=int, default=4, help="blocks with an MLP (Mamba, Mamba-2: twice as many)")
    model.add_argument("--state", type=int, help="Mamba / Mamba-2 d_state (default 16 / 32)")
    model.add_argument("--heads", type=int, help="heads (default d_model // 32)")
    model.add_argument("--based-pattern", help="Based layers, one letter each: c BaseConv, l linear attn, w window")
    model.add_argument("--window", type=int, default=64, help="Based window_size (sees window/2 tokens back)")
    model.add_argument("--init-range", type=float,
                       help="std of the normal init of embeddings and linear layers (default: the library's: 0.02 "
                            "for Based, GLA, Llama; 0.1 for transformers' Mamba and Mamba-2)")
    model.add_argument("--train-ops", choices=("reference", "fast"), default="reference",
                       help="training kernels on CUDA: the PyTorch references (default: no Triton compile or "
                            "autotune, training starts at once) or fla's (GLA, Mamba-2 unless fla refuses its "
                            "backward here, Mamba's scan as GLA after a self-check)")
    model.add_argument("--mamba-scan", choices=models_mod.MAMBA_SCANS,
                       help="Mamba's training scan on CUDA (default: cumsum with --train-ops reference, gla with "
                            "fast)")
    train = p.add_argument_group("training")
    train.add_argument("--minutes", type=float, default=8.0, help="training time budget (evaluation comes after)")
    train.add_argument("--max-steps", type=int, help="a step budget as well: stop and schedule by whichever ends first")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--call-minutes", type=float, metavar="M",
                       help="train at most M minutes of the --minutes budget in this process, then save DIR/"
                            f"{STATE} and stop without evaluating (a later call goes on with --resume DIR)")
    train.add_argument("--call-steps", type=int, metavar="N", help="as --call-minutes, after N steps (tests)")
    train.add_argument("--resume", type=Path, metavar="DIR",
                       help=f"go on with the paused run in DIR ({STATE}; with --arch all or a list: DIR/<arch>) "
                            "with the same recipe options; evaluates once the whole budget is spent")
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--warmup", type=int, default=200)
    train.add_argument("--tokens-per-batch", type=int, default=16384)
    train.add_argument("--records", default=",".join(f"{k}={lo}-{hi}" for k, (lo, hi) in data_mod.DEFAULT_RECORDS.items()),
                       help="records per training document of each format, a range (test documents: --eval-records)")
    train.add_argument("--start-level", type=float, default=1.0,
                       help="curriculum: start with this fraction of each format's largest record count (1: off)")
    train.add_argument("--growth-rule", choices=GROWTH_RULES, default="all-rows",
                       help="curriculum: which rows' rolling accuracy grows the level: every row (all-rows), or "
                            "only rows with at least half of their batch's top record count, from batches drawn "
                            "since the last growth (hard-rows: the first GPU run's test)")
    train.add_argument("--record-sampling", choices=data_mod.SAMPLINGS, default="uniform",
                       help="record counts under the curriculum's top: uniform in [lo, top], or top-half (the first "
                            "GPU run's: half the batches from [top/2, top], half from [lo, top])")
    train.add_argument("--floor-from", type=float, default=0.45,
                       help="fraction of the budget after which the curriculum is pushed towards the full ranges "
                            "even without recall (1: never)")
    train.add_argument("--answer-weight", type=float, default=1.0, help="weight of the answers' value loss")
    train.add_argument("--answer-only", default=",".join(data_mod.ANSWER_ONLY),
                       help="formats supervised on their answer only (the others on every token); 'none' for none")
    train.add_argument("--plain-questions", type=int, default=4,
                       help="questions per plain row (the first as inference asks it, then follow-ups, each answered)")
    train.add_argument("--recall-weight", type=float, default=0.0,
                       help="weight of a loss on JRT rows' second document copy (needs jrt out of --answer-only)")
    train.add_argument("--mix", default=",".join(f"{k}={v}" for k, v in data_mod.DEFAULT_MIX.items()),
                       help=f"weights of the row formats ({', '.join(data_mod.FORMATS)}); distractor_jrt rows must be "
                            "answer-only")
    train.add_argument("--question-first-lead", choices=data_mod.QUESTION_FIRST_LEADS, default="question",
                       help="what question-first rows start with, in both phases: 'Question:' (question: the first "
                            "token of the row, runs 1-6) or '\\n\\nQuestion:' (separator: as the JRT prompt's second "
                            "read starts, so the row is the JRT prompt minus its first context copy)")
    train.add_argument("--attributes", default="1-3", help="attributes per record in training, a range (test: 3)")
    train.add_argument("--buckets", help="row lengths batches are padded to, comma-separated (default: "
                       f"{','.join(map(str, data_mod.BUCKETS))}); finer buckets pad less")
    train.add_argument("--workers", type=int, default=2, help="data-loader processes")
    train.add_argument("--log-every", type=float, default=30.0, help="seconds between log lines")
    train.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    train.add_argument("--tokenizer", type=Path, help="a saved tokenizer folder (default: build the demo BPE)")
    train.add_argument("--vocab-size", type=int, default=1024)
    two = p.add_argument_group("phase 2", "from --phase2-from of the budget on, batches come from a second mixture "
                                "(each option unset: as in phase 1, except the recall weight: 0); the curriculum "
                                "level carries over")
    two.add_argument("--phase2-from", type=float,
                     help="fraction of the time (or step) budget at which phase 2 starts (default: no phase 2)")
    two.add_argument("--phase2-mix", help="--mix of phase 2")
    two.add_argument("--phase2-records", help="--records of phase 2 (formats not named: as in phase 1)")
    two.add_argument("--phase2-answer-only", help="--answer-only of phase 2")
    two.add_argument("--phase2-plain-questions", type=int, help="--plain-questions of phase 2")
    two.add_argument("--phase2-recall-weight", type=float, default=0.0, help="--recall-weight of phase 2")
    two.add_argument("--phase2-when-acc", type=float, metavar="A",
                     help="start phase 2 as soon as the rolling value accuracy of plain rows at the curriculum's "
                          "top (level 1, rows of at least half the top record count) reaches A; --phase2-from "
                          "stays the latest start")
    two.add_argument("--phase2-acc-level", type=float, metavar="L",
                     help="with --phase2-when-acc: count plain rows of batches drawn at level L or above, not only "
                          "at level 1 (growth by half can stop just under 1; default 1)")
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--eval-records", default="4,8,16,32,64", help="document sizes (records of 3 facts)")
    ev.add_argument("--eval-modes", default="default,jrt",
                    help="prompts to score, comma-separated: default (plain) and jrt (always; the JRT target compares "
                         "them), question_first ((Q, C, Q)), question_first_sep ('\\n\\n' + (Q, C, Q))")
    ev.add_argument("--eval-documents", type=int, default=50, help="documents per size (4 questions each)")
    ev.add_argument("--eval-minutes", type=float, default=2.0, help="evaluation time budget")
    ev.add_argument("--eval-batch", type=int, default=32)
    ev.add_argument("--eval-ops", choices=("auto", "reference"), default="auto",
                    help="the engine's kernels when evaluating: its defaults (fla / Triton on CUDA) or the PyTorch "
                         "references (nothing to compile; the reload check runs under the same choice)")
    args = p.parse_args(argv)
    if not (args.summarize or args.export_demo or args.arch):
        p.error("give --arch (and --out), --summarize DIR... or --export-demo RUN")
    try:
        named = variants(args.variant)
    except ValueError as e:
        p.error(str(e))
    if args.arch and not set(arch_list(args.arch)) <= set(ARCHS) | set(named):
        p.error(f"--arch must be one of {', '.join(ARCHS)}, all, or a comma-separated list of them and of --variant "
                "names")
    if args.arch and set(arch_list(args.arch)) & set(named) and not ("," in args.arch or args.arch == "all"):
        p.error("a --variant name goes in an --arch list (e.g. --arch based,NAME)")
    if args.arch and args.out is None:
        p.error("--out is required with --arch")
    if args.phase2_from is None and any(getattr(args, k) is not None for k in (
            "phase2_mix", "phase2_records", "phase2_answer_only", "phase2_plain_questions", "phase2_when_acc",
            "phase2_acc_level")):
        p.error("the --phase2-* options need --phase2-from")
    if args.phase2_when_acc is not None and not 0 <= args.phase2_when_acc <= 1:
        p.error(f"--phase2-when-acc {args.phase2_when_acc} must be an accuracy (0 to 1)")
    if args.phase2_acc_level is not None and not 0 < args.phase2_acc_level <= 1:
        p.error(f"--phase2-acc-level {args.phase2_acc_level} must be a curriculum level (above 0, at most 1)")
    try:
        args.eval_modes = ",".join(evaluation_modes(args.eval_modes))
    except ValueError as e:
        p.error(f"--eval-modes: {e}")
    if args.arch:  # a bad mixture fails here, not in five children
        try:
            for mixture in filter(None, mixtures(args)):
                data_mod.check_mixture(mixture)
        except ValueError as e:
            p.error(str(e))
    if args.arch and named and argv is not None:  # and so does a variant's option
        for name, (arch, options) in named.items():
            if name in arch_list(args.arch):
                parse_args([*child_argv(argv), "--arch", arch, "--out", "x", *options])
    return args


def evaluation_modes(text: str) -> tuple[str, ...]:
    """--eval-modes -> the modes in evaluation.MODES order (ValueError for a bad list)."""
    from recall_training.evaluation import check_modes

    return check_modes(s.strip() for s in text.split(",") if s.strip())


def variants(specs: list[str]) -> dict[str, tuple[str, list[str]]]:
    """--variant "NAME=ARCH OPTIONS" -> {NAME: (ARCH, [OPTIONS])}; ValueError for a malformed one."""
    import re
    import shlex

    named: dict[str, tuple[str, list[str]]] = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        words = shlex.split(rest)
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name) or name in ARCHS or name in ("all", "tokenizer") \
                or not words or words[0] not in ARCHS or name in named:
            raise ValueError(f"--variant {spec!r} must be NAME=ARCH [OPTIONS] with a new lower-case NAME that is not "
                             f"an architecture and ARCH one of {', '.join(ARCHS)}")
        if any(w.split("=", 1)[0] in CHILD_OPTIONS_DROPPED for w in words[1:]):
            raise ValueError(f"--variant {spec!r}: the launcher sets {', '.join(sorted(CHILD_OPTIONS_DROPPED))}")
        named[name] = (words[0], words[1:])
    return named


def arch_list(text: str) -> list[str]:
    """--arch: one architecture, all, or a comma-separated list."""
    return list(ARCHS) if text == "all" else [a.strip() for a in text.split(",") if a.strip()]


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in filter(None, (s.strip() for s in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in data_mod.FORMATS:
            raise SystemExit(f"--mix: unknown format {name!r} (formats: {', '.join(data_mod.FORMATS)})")
        mix[name] = float(weight or 1)
    return mix


def parse_range(text: str, option: str = "--attributes") -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise SystemExit(f"{option} {text!r} must be a number or a range like 1-3") from None


def parse_records(text: str, base: dict[str, tuple[int, int]] | None = None) -> dict[str, tuple[int, int]]:
    records = dict(data_mod.DEFAULT_RECORDS if base is None else base)
    for part in filter(None, (s.strip() for s in text.split(","))):
        name, _, spec = part.partition("=")
        if name not in data_mod.FORMATS:
            raise SystemExit(f"--records: unknown format {name!r} (formats: {', '.join(data_mod.FORMATS)})")
        records[name] = parse_range(spec, "--records")
    return records


def parse_formats(text: str) -> tuple[str, ...]:
    names = tuple(filter(None, (s.strip() for s in text.split(",")))) if text.strip() != "none" else ()
    unknown = set(names) - set(data_mod.FORMATS)
    if unknown:
        raise SystemExit(f"--answer-only: unknown formats {sorted(unknown)} (formats: {', '.join(data_mod.FORMATS)})")
    return names


def parse_buckets(text: str | None) -> tuple[int, ...]:
    if not text:
        return data_mod.BUCKETS
    try:
        buckets = tuple(sorted({int(s) for s in text.split(",") if s.strip()}))
    except ValueError:
        raise SystemExit(f"--buckets {text!r} must be comma-separated lengths") from None
    if not buckets or buckets[0] < 2:
        raise SystemExit(f"--buckets {text!r}: lengths must be at least 2")
    return buckets


def mixtures(args) -> tuple[data_mod.MixtureConfig, data_mod.MixtureConfig | None]:
    """The mixture of phase 1 and, with --phase2-from, that of phase 2 (unset options as in phase 1)."""
    first = data_mod.MixtureConfig(mix=parse_mix(args.mix), records=parse_records(args.records),
                                   answer_only=parse_formats(args.answer_only),
                                   plain_questions=max(1, args.plain_questions),
                                   attributes=parse_range(args.attributes), tokens_per_batch=args.tokens_per_batch,
                                   buckets=parse_buckets(args.buckets), sampling=args.record_sampling,
                                   question_first_lead=args.question_first_lead)
    if args.phase2_from is None:
        return first, None
    if not 0 <= args.phase2_from <= 1:
        raise SystemExit(f"--phase2-from {args.phase2_from} must be a fraction of the budget (0 to 1)")
    second = replace(first, records=parse_records(args.phase2_records or "", first.records))
    if args.phase2_mix:
        second.mix = parse_mix(args.phase2_mix)
    if args.phase2_answer_only is not None:
        second.answer_only = parse_formats(args.phase2_answer_only)
    if args.phase2_plain_questions is not None:
        second.plain_questions = max(1, args.phase2_plain_questions)
    return first, second


def model_size(args) -> ModelSize:
    return ModelSize(d_model=args.d_model, n_layer=args.n_layer, state=args.state, heads=args.heads,
                     based_pattern=args.based_pattern, window=args.window, init_range=args.init_range)


# --------------------------------------------------------------------------- one architecture
def run_one(args, arch: str, out: Path) -> int:
    """Train, save, evaluate one model; results.json is kept current throughout. Returns an exit code."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"arch": arch, "status": "starting", "argv": sys.argv, "seed": args.seed,
                     "size": vars(model_size(args)), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.name and args.name != arch:
        results["name"] = args.name
    name = args.name or arch
    results["recipe"] = recipe(args)  # before choose_training_ops changes args
    save = lambda: report.write_results(out, results)  # noqa: E731
    save()
    log = lambda msg: print(f"[{name}] {msg}" if not msg.startswith("[") else msg, flush=True)  # noqa: E731

    def stopped(signum, frame):  # the launcher's deadline: say so in results.json, keep what is there
        results["status"] = f"stopped by signal {signum} while {results['status']}"
        save()
        sys.exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stopped)
    try:
        return _run_one(args, arch, out, results, save, log, torch)
    except Exception as e:  # noqa: BLE001 - recorded, and the exit code tells the launcher
        results["status"] = "failed"
        results["error"] = f"{type(e).__name__}: {e}"
        results["traceback"] = traceback.format_exc()
        save()
        log(f"FAILED: {results['error']}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def choose_training_ops(args, arch: str, trainable, device, log) -> dict:
    """Set the training kernels (``Trainable.ops``, ``mamba_scan``, ``mamba2_ssd``) for ``device``; returns what was
    chosen, why and how long the checks took (for results.json)."""
    from recall_training import models

    start = time.time()
    trainable.ops = args.train_ops
    notes: list[str] = []
    if arch == "mamba":
        choice = args.mamba_scan or ("gla" if args.train_ops == "fast" else "cumsum")
        if device.type == "cuda":
            trainable.mamba_scan = models.checked_mamba_scan(choice, device, notes.append)
        cap = REFERENCE_SCAN_TOKENS.get(trainable.mamba_scan)
        if device.type == "cuda" and cap and args.tokens_per_batch > cap:
            notes.append(f"{trainable.mamba_scan} Mamba scan: batches of {cap} tokens instead of "
                         f"{args.tokens_per_batch} (autograd keeps [B, L, C, N] tensors)")
            args.tokens_per_batch = cap
    if arch == "mamba2" and device.type == "cuda" and args.train_ops == "fast":
        trainable.mamba2_ssd = models.checked_mamba2_ssd(device, notes.append)
    for note in notes:
        log(note)
    chosen = trainable.describe() if device.type == "cuda" else {"ops": "reference (CPU)"}
    return {**chosen, "notes": notes, "check_seconds": round(time.time() - start, 1)}


def recipe(args) -> dict:
    """The options a run's calls must share (JSON-ready)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in sorted(vars(args).items()) if k not in NOT_RECIPE}


def resume_mismatch(args) -> str | None:
    """Why --resume DIR cannot go on with these options (one line), or None."""
    path = args.resume / STATE
    if not path.is_file():
        return f"--resume {args.resume}: no {STATE} there (not a paused run, or already finished)"
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=False)["recipe"]
    now = recipe(args)
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if differ:
        return (f"--resume {args.resume}: the recipe differs from the paused run's: "
                + ", ".join(f"--{k.replace('_', '-')} {now.get(k)!r} (was {saved.get(k)!r})" for k in differ))
    return None


def _tokenizer(args, out: Path):
    from recall_training.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer

    source = args.resume or args.tokenizer
    tok = load_tokenizer(source) if source else build_tokenizer(args.vocab_size)
    save_tokenizer(tok, out)
    return load_tokenizer(out)


def _run_one(args, arch, out, results, save, log, torch) -> int:
    from recall_training import evaluation, loop, models

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    results["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results["versions"] = {"torch": torch.__version__, **_versions()}
    tokenizer = _tokenizer(args, out)
    results["tokenizer"] = {"vocab": len(tokenizer), "eos": tokenizer.eos_token_id}

    hf = models.build_hf_model(arch, model_size(args), len(tokenizer), tokenizer.eos_token_id, args.seed)
    hf.to(device)
    trainable = models.make_trainable(arch, hf)
    results["training_ops"] = choose_training_ops(args, arch, trainable, device, log)
    save()
    results.update(params=models.count_parameters(hf), config=hf.config.to_dict(), status="training")
    if arch == "llama":
        results["kv_bytes_per_token"] = models.state_bytes(trainable, 1)
    else:
        results["state_bytes"] = models.state_bytes(trainable)
    mixture, second = mixtures(args)
    phase2 = None if second is None else loop.Phase2(args.phase2_from, second, args.phase2_recall_weight,
                                                     args.phase2_when_acc, args.phase2_acc_level or 1.0)
    config = loop.TrainConfig(minutes=args.minutes, max_steps=args.max_steps, lr=args.lr, warmup_steps=args.warmup,
                              start_level=args.start_level, growth_rule=args.growth_rule,
                              floor_from=args.floor_from, floor_to=max(args.floor_from, 0.8),
                              answer_weight=args.answer_weight, recall_weight=args.recall_weight,
                              log_every_s=args.log_every, workers=args.workers, mixture=mixture, phase2=phase2)
    results["train_config"] = _plain(config)
    results["seeds"] = {"init": args.seed, "data": args.seed, "test_split": "synthetic default (1234)"}
    save()
    log(f"{results['params'] / 1e6:.2f}M parameters on {results['device']}; "
        f"state {results.get('state_bytes', results.get('kv_bytes_per_token'))} bytes; training {args.minutes} min")

    def on_log(r):
        results["training"] = _plain(r)
        save()

    state = None
    if args.resume:
        state = torch.load(args.resume / STATE, map_location=device, weights_only=False)
        results["resumed"] = {"from": str(args.resume), "steps": state["steps"], "seconds": state["seconds"],
                              "call": state["call"] + 1}
        log(f"resuming {args.resume} at step {state['steps']} ({state['seconds']:.0f}s of {args.minutes * 60:.0f}s)")

    def pause(train_state):  # saved with the model, so that the folder also loads as it is
        train_state.update(recipe=results["recipe"], call=state["call"] + 1 if state else 1)
        torch.save(train_state, out / (STATE + ".tmp"))
        os.replace(out / (STATE + ".tmp"), out / STATE)

    trained = loop.train(trainable, tokenizer, config, args.seed, device, log=log, on_log=on_log,
                         name=args.name or arch, resume=state,
                         call_seconds=args.call_minutes * 60 if args.call_minutes is not None else None,
                         call_steps=args.call_steps, on_pause=pause)
    results["training"] = _plain(trained)
    if trained.stopped == "call":  # the budget is not spent: the next call evaluates
        hf.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        results.update(status="paused", finished=False)
        save()
        log(f"paused at step {trained.steps} ({trained.seconds:.0f}s of {args.minutes * 60:.0f}s): go on with "
            f"--resume {out}")
        return 0
    if (out / STATE).exists():  # finished: a stale state would resume a run that is over
        (out / STATE).unlink()
    results["status"] = "saving"
    save()
    hf.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    results["saved"] = sorted(p.name for p in out.iterdir() if p.name != report.RESULTS)
    results["status"] = "evaluating"
    save()

    deadline = time.time() + args.eval_minutes * 60
    sizes = [int(s) for s in args.eval_records.split(",") if s.strip()]
    from jrt_prompt.ops.backend import reference_ops

    results["eval_ops"] = args.eval_ops if arch in RECURRENT else "transformers"
    modes = evaluation_modes(args.eval_modes)
    results["eval_modes"] = list(modes)
    with reference_ops(True) if args.eval_ops == "reference" else contextlib.nullcontext():
        if arch in RECURRENT:
            answer = _engine_answerer(out, tokenizer, trainable, device, args.eval_batch, results, log)
        else:
            hf.eval()
            answer = lambda ex, mode, check: evaluation.hf_answers(  # noqa: E731
                hf, tokenizer, ex, mode, args.eval_batch, check)

        def on_size(table):
            results["accuracy"] = table
            save()

        with torch.no_grad():
            results["accuracy"] = evaluation.evaluate_sizes(answer, sizes, args.eval_documents, deadline, log=log,
                                                            on_size=on_size, modes=modes)
    results["status"] = "done"
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save()
    print(report.summary_tables([results]), flush=True)
    return 0


def _engine_answerer(out, tokenizer, trainable, device, batch_size, results, log):
    """Answers through the saved folder loaded back (what a user gets); its logits are compared with the trained
    model's first. CUDA graphs are dropped if capturing fails (recorded)."""
    import torch

    import jrt_prompt
    from recall_training import evaluation

    loaded = jrt_prompt.load(str(out), device=device, dtype=torch.float32).model
    ids = torch.randint(0, len(tokenizer), (2, 48), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        diff = (loaded(ids)[0].float() - trainable.lm(ids)[0].float()).abs().max().item()
    results["reload_max_abs_logit_diff"] = diff
    if not diff < 1e-3:
        raise RuntimeError(f"the saved folder loads to a different model (max logit difference {diff:.3g})")
    use_graphs = [device.type == "cuda"]

    def answer(examples, mode, check):
        try:
            return evaluation.engine_answers(loaded, tokenizer, examples, mode, batch_size, use_graphs[0], check)
        except evaluation.OutOfTime:
            raise
        except Exception as e:  # noqa: BLE001
            if not use_graphs[0]:
                raise
            use_graphs[0] = False
            results["cuda_graphs_error"] = f"{type(e).__name__}: {e}"
            log(f"CUDA-graph decode failed ({type(e).__name__}: {e}); evaluating without graphs")
            return evaluation.engine_answers(loaded, tokenizer, examples, mode, batch_size, False, check)

    return answer


def _plain(obj):
    """Dataclasses -> JSON-ready dicts."""
    from dataclasses import asdict, is_dataclass

    return asdict(obj) if is_dataclass(obj) else obj


def _versions() -> dict:
    found = {}
    for name in ("transformers", "fla", "triton"):
        try:
            found[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            found[name] = None
    return found


# --------------------------------------------------------------------------- all five
def child_argv(argv: list[str]) -> list[str]:
    """The command line minus the options the launcher sets per child."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in CHILD_OPTIONS_DROPPED:
            skip = "=" not in a and name not in FLAGS
            continue
        kept.append(a)
    return kept


def run_all(args, argv: list[str]) -> int:
    """Each architecture of --arch in its own process (at once with --parallel), sharing one tokenizer; logs go to
    DIR/<arch>/train.log and are echoed here; a child past its deadline is stopped. Prints the table at the end."""
    from recall_training.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer

    args.out.mkdir(parents=True, exist_ok=True)
    tok_dir = args.tokenizer or args.out / "tokenizer"
    if args.tokenizer is None:
        save_tokenizer(build_tokenizer(args.vocab_size), tok_dir)
    load_tokenizer(tok_dir)  # fail here, not five times
    base = [sys.executable, str(Path(__file__).resolve()), *child_argv(argv), "--tokenizer", str(tok_dir)]
    named = variants(args.variant)
    grace = 240.0  # start-up (imports, Triton compiles), saving, and the evaluation's last size
    deadline_each = (args.minutes + args.eval_minutes) * 60 + grace
    launch_deadline = time.time() + args.deadline_minutes * 60 if args.deadline_minutes else float("inf")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    codes: dict[str, int | None] = {}
    pending = arch_list(args.arch)
    running: dict[str, tuple[subprocess.Popen, float, Path, object]] = {}
    positions: dict[str, int] = {}
    while pending or running:
        while pending and (args.parallel or not running):
            arch = pending.pop(0)  # an architecture or a --variant name
            folder = args.out / arch
            folder.mkdir(parents=True, exist_ok=True)
            log_path = folder / "train.log"
            handle = open(log_path, "w")
            real, options = named.get(arch, (arch, []))
            which = ["--arch", real, "--out", str(folder), *options] + (["--name", arch] if arch in named else [])
            which += ["--resume", str(args.resume / arch)] if args.resume else []
            proc = subprocess.Popen(base + which, stdout=handle, stderr=subprocess.STDOUT, env=env)
            running[arch] = (proc, min(time.time() + deadline_each, launch_deadline), log_path, handle)
            positions[arch] = 0
            print(f"[launcher] started {arch} (pid {proc.pid}), log {log_path}", flush=True)
        time.sleep(2.0)
        for arch, (proc, deadline, log_path, handle) in list(running.items()):
            positions[arch] = _echo(log_path, positions[arch])
            if proc.poll() is None and time.time() > deadline:
                print(f"[launcher] {arch} is past its deadline: stopping pid {proc.pid}", flush=True)
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.poll() is not None:
                positions[arch] = _echo(log_path, positions[arch])
                handle.close()
                codes[arch] = proc.returncode
                del running[arch]
                print(f"[launcher] {arch} finished with exit code {proc.returncode}", flush=True)
    table = report.summary_with_digest(report.read_results([args.out]))
    (args.out / "RESULTS.md").write_text(table)
    print(table, flush=True)
    print(json.dumps({"exit_codes": codes}), flush=True)
    return 0 if all(c == 0 for c in codes.values()) else 1


def _echo(path: Path, position: int) -> int:
    """Print the lines a child has logged since ``position`` (noise from libraries is left in the file)."""
    try:
        with open(path, errors="replace") as f:
            f.seek(position)
            chunk = f.read()
    except OSError:
        return position
    end = chunk.rfind("\n") + 1
    for line in chunk[:end].splitlines():
        if line.startswith("["):  # progress lines; each child's own table is left in its log
            print(line, flush=True)
    return position + len(chunk[:end].encode())


# --------------------------------------------------------------------------- summary and demo
def summarize(paths: list[Path], write: Path | None) -> int:
    results = report.read_results(paths)
    if not results:
        print(f"no {report.RESULTS} under {', '.join(map(str, paths))}", file=sys.stderr)
        return 2
    table = report.summary_with_digest(results)
    print(table)
    if write:
        write.write_text(table)
    return 0


def export_demo(run: Path, dest: Path | None) -> int:
    """Copy the run to the demo folder, then check that ``jrt_prompt.load`` reads it and answers through JRT."""
    from jrt_prompt.loading import DEMO_DIR

    from recall_training import evaluation

    dest = report.export_demo(run, dest or DEMO_DIR)
    total = sum(p.stat().st_size for p in report.weight_files(dest))
    import jrt_prompt

    engine = jrt_prompt.load(str(dest))
    examples = evaluation.test_examples(8, 5)
    answers = [engine.generate(ex.context, ex.question, max_new_tokens=8, stop="\n") for ex in examples]
    acc = evaluation.score(examples, answers)
    print(f"demo written to {dest}: {total / 2**20:.2f} MiB of weights; JRT accuracy on {len(examples)} test "
          f"questions (8 records): {acc:.2f}; e.g. {examples[0].question!r} -> {answers[0]!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.summarize:
        return summarize(args.summarize, args.write)
    if args.export_demo:
        return export_demo(args.export_demo, args.demo_dest)
    if args.arch == "all" or "," in args.arch:
        return run_all(args, argv)
    if args.resume and (error := resume_mismatch(args)):
        print(f"error: {error}", file=sys.stderr)
        return 2
    return run_one(args, args.arch, args.out)


if __name__ == "__main__":
    sys.exit(main())
