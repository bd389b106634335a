"""results.json (written as a run goes, so a killed run leaves what it did), the RESULTS.md table, and the export
of the best Based run as the package's demo model."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

RESULTS = "results.json"
PLAIN_BELOW = 0.5  # the targets: where the plain prompt scores below this ...
JRT_GAIN = 0.15  # ... JRT adds at least this much
DEMO_MAX_BYTES = 16 * 1024 * 1024  # weights in total and per file
DEMO_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "generation_config.json")


def write_results(folder: str | Path, results: dict) -> Path:
    """Atomically (re)write ``folder/results.json``."""
    path = Path(folder) / RESULTS
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    os.replace(tmp, path)
    return path


def read_results(paths: list[str | Path]) -> list[dict]:
    """results.json files, or folders holding one (searched one level down too, e.g. an --arch all folder)."""
    found: list[dict] = []
    for p in map(Path, paths):
        files = [p] if p.is_file() else [p / RESULTS] if (p / RESULTS).is_file() else sorted(p.glob(f"*/{RESULTS}"))
        for f in files:
            data = json.loads(f.read_text())
            data.setdefault("folder", str(f.parent))
            found.append(data)
    return found


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}"


def _bytes(n) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def target_check(result: dict) -> str:
    """Where the plain prompt is below 50% and JRT adds >= 15 points; or why not."""
    table = result.get("accuracy") or {}
    if not table:
        return "not evaluated"
    low = [(int(r), row) for r, row in table.items() if row.get("default") is not None
           and row["default"] < PLAIN_BELOW and row.get("jrt") is not None]
    if not low:
        return "plain prompt >= 50% at every size evaluated (no size where plain fails)"
    met = [r for r, row in low if row["jrt"] - row["default"] >= JRT_GAIN]
    if met:
        return "met at " + ", ".join(str(r) for r in sorted(met)) + " records"
    best = max(low, key=lambda item: item[1]["jrt"] - item[1]["default"])
    return (f"not met: largest gain where plain < 50% is {100 * (best[1]['jrt'] - best[1]['default']):+.0f} points "
            f"at {best[0]} records (plain {_pct(best[1]['default'])}%, JRT {_pct(best[1]['jrt'])}%)")


def in_arch_order(results: list[dict]) -> list[dict]:
    order = {a: i for i, a in enumerate(("based", "mamba", "mamba2", "gla", "llama"))}
    return sorted(results, key=lambda r: (order.get(r.get("arch"), 9), r.get("folder", "")))


def model_label(result: dict) -> str:
    """"based d128", or "based d128 (based-6l)" for a run named otherwise (train_recall.py's --variant)."""
    label = f"{result.get('arch')} d{result.get('size', {}).get('d_model', '?')}"
    name = result.get("name")
    return f"{label} ({name})" if name and name != result.get("arch") else label


def summary_markdown(results: list[dict]) -> str:
    sizes = sorted({int(r) for res in results for r in (res.get("accuracy") or {})})
    head = ["model", "params", "state / seq"] + [f"{s} rec. plain / JRT" for s in sizes] + \
        ["steps", "train min", "JRT target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in in_arch_order(results):
        acc = res.get("accuracy") or {}
        cells = []
        for s in sizes:
            row = acc.get(str(s)) or {}
            cells.append("error" if "error" in row and row.get("jrt") is None else
                         f"{_pct(row.get('default'))} / {_pct(row.get('jrt'))}" if row else "-")
        state = res.get("state_bytes")
        state_cell = (_bytes(state) if res.get("arch") != "llama"
                      else f"KV {_bytes(res.get('kv_bytes_per_token'))}/token")
        train = res.get("training") or {}
        target = "baseline" if res.get("arch") == "llama" else target_check(res)
        name = model_label(res)
        lines.append("| " + " | ".join([name, f"{res.get('params', 0) / 1e6:.2f}M", state_cell, *cells,
                                         str(train.get("steps", "-")),
                                         f"{train.get('seconds', 0) / 60:.1f}", target]) + " |")
    notes = [
        "",
        "Accuracy (%) on the synthetic suite's test split (names never seen in training), 3 attributes per record, "
        "4 questions per document; plain = (C, Q), JRT = (C, Q, C, Q); greedy, `contains` metric, through "
        "`jrt_prompt.load` + the engine (the Llama baseline through transformers' generate on the same prompt ids).",
        "State / seq: bytes of one sequence's recurrent state (fp32 recurrences); for attention, the KV cache grows "
        "with the prompt.",
        f"JRT target: at a size where plain < {int(PLAIN_BELOW * 100)}%, JRT adds >= {int(JRT_GAIN * 100)} points.",
    ]
    return "\n".join(lines + notes) + "\n"


# evaluation.MODES beyond plain and JRT, in its order, with their column labels
EXTRA_MODES = {"question_first": "(Q, C, Q)", "question_first_sep": "sep + (Q, C, Q)"}


def prompts_markdown(results: list[dict]) -> str:
    """For runs evaluated with more prompts than plain and JRT (train_recall.py's --eval-modes): every prompt's
    accuracy per size, plain / JRT / the others. Empty when no run has them."""
    extra = [m for m in EXTRA_MODES if any(m in row for res in results for row in (res.get("accuracy") or {}).values())]
    if not extra:
        return ""
    runs = [res for res in in_arch_order(results)
            if any(m in row for m in extra for row in (res.get("accuracy") or {}).values())]
    sizes = sorted({int(r) for res in runs for r in (res.get("accuracy") or {})})
    labels = ["plain", "JRT"] + [EXTRA_MODES[m] for m in extra]
    head = ["model"] + [f"{s} rec." for s in sizes]
    lines = [f"Accuracy (%) by prompt, {' / '.join(labels)} (the same test questions; (Q, C, Q): \"Question\" is "
             "the first token; sep + (Q, C, Q): \"\\n\\n\" + (Q, C, Q), the JRT prompt without its first context "
             "copy):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in runs:
        acc = res.get("accuracy") or {}
        cells = [" / ".join(_pct((acc.get(str(s)) or {}).get(m)) for m in ("default", "jrt", *extra)) for s in sizes]
        lines.append("| " + " | ".join([model_label(res), *cells]) + " |")
    return "\n".join(lines) + "\n"


def summary_tables(results: list[dict]) -> str:
    """The table, then the prompts table where a run has more prompts than plain and JRT."""
    prompts = prompts_markdown(results)
    return summary_markdown(results) + ("\n" + prompts if prompts else "")


SIZE_BINS = (1, 4, 8, 16, 32, 64)


def size_bin(records: int) -> str:
    """"1-1", "2-4", "5-8", ..., "33-64", "65+": the record-count bins of the training log."""
    lo = 1
    for hi in SIZE_BINS:
        if records <= hi:
            return f"{lo}-{hi}"
        lo = hi + 1
    return f"{lo}+"


def bin_start(name: str) -> int:
    """The first record count of a ``size_bin`` name."""
    return int(name.split("-")[0].rstrip("+"))


DIGEST_FORMATS = {"plain": "plain", "jrt": "JRT", "question_first": "question-first",
                  "distractor_jrt": "distractor-JRT"}  # the last only where a run has such rows


def phase2_digest(results: list[dict]) -> str:
    """For runs with a phase 2: the training value accuracy (first answer token, train-split names) of its second
    half, by format and record count, so that question-first and JRT rows can be set against plain rows of the same
    size: above them is what reading the question first buys. Empty when no run reached phase 2."""
    rows, bins = [], set()
    for res in in_arch_order(results):
        train = res.get("training") or {}
        start = train.get("phase2_step")
        lines = [h for h in train.get("history", []) if h.get("phase") == 2 and "value_acc_by_records" in h]
        if start is None or not lines:
            continue
        lines = lines[len(lines) // 2:]
        hits: dict[str, dict[str, list[float]]] = {}
        for line in lines:
            for fmt, by_bin in line["value_acc_by_records"].items():
                for b, (acc, n) in by_bin.items():
                    total = hits.setdefault(b, {}).setdefault(fmt, [0.0, 0])
                    total[0] += acc * n
                    total[1] += n
        bins |= set(hits)
        rows.append((res, start, lines[0]["step"], hits))
    if not rows:
        return ""
    order = sorted(bins, key=bin_start)
    seen = {f for *_, hits in rows for got in hits.values() for f in got}
    formats = [f for f in DIGEST_FORMATS if f in ("plain", "jrt", "question_first") or f in seen]
    head = ["model", "phase 2 from step", "averaged from step"] + [f"{b} rec." for b in order]
    lines = ["Training value accuracy (%) in the second half of phase 2 by record count, "
             f"{' / '.join(DIGEST_FORMATS[f] for f in formats)} (train-split names, first answer token; - where no "
             "row of that kind):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res, start, since, hits in rows:
        cells = []
        for b in order:
            got = hits.get(b, {})
            cells.append(" / ".join(_pct(got[f][0] / got[f][1]) if got.get(f, [0, 0])[1] else "-"
                                    for f in formats))
        name = model_label(res)
        lines.append("| " + " | ".join([name, str(start), str(since), *cells]) + " |")
    return "\n".join(lines) + "\n"


def summary_with_digest(results: list[dict]) -> str:
    """The tables (``summary_tables``), then the phase-2 digest where a run has one."""
    digest = phase2_digest(results)
    return summary_tables(results) + ("\n" + digest if digest else "")


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


def export_demo(run_folder: str | Path, dest: str | Path) -> Path:
    """Copy a trained Based run (config, fp32 safetensors, tokenizer) to ``dest`` (the package's demo folder) after
    checking the size limits; the caller verifies ``jrt_prompt.load("demo")`` afterwards."""
    src, dest = Path(run_folder), Path(dest)
    config = json.loads((src / "config.json").read_text())
    if config.get("model_type") != "based":
        raise ValueError(f"{src} holds a {config.get('model_type')} model; the demo is a Based model")
    weights = weight_files(src)
    if [w.name for w in weights] != ["model.safetensors"]:
        raise ValueError(f"{src} must hold exactly one model.safetensors, found {[w.name for w in weights]}")
    size = weights[0].stat().st_size
    if size > DEMO_MAX_BYTES:
        raise ValueError(f"{weights[0]} is {size / 2**20:.1f} MiB, over the demo's 16 MiB: train a smaller model")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in DEMO_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    if (src / RESULTS).is_file():
        shutil.copy2(src / RESULTS, dest / "training_results.json")
    return dest
