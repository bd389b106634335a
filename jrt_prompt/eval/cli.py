"""jrt-eval: recall accuracy of a model with the default and the JRT prompt, side by side.

    jrt-eval --model PATH --tasks swde,fda,synthetic --modes default,jrt --limit 100 --json out.json

Paper tasks come from the hub (hazyresearch/...) unless ``--data TASK=PATH`` names a local JSONL/parquet
file (or folder) in the same schema; ``synthetic`` is generated offline. Errors are one line, exit code 2.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import JRTError
from .runner import MAX_NEW_TOKENS, EvalResult, evaluate, parse_modes
from .tasks import SyntheticOptions, TaskData, get_task, load_task

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


def load_engine(model: str, tokenizer: str | None, device: str | None, dtype: str | None, graph_prefill: bool = False):
    """The engine for --model (a seam for tests: they swap in a tiny in-memory model)."""
    from ..loading import load

    return load(model, tokenizer=tokenizer, device=device, dtype=dtype, graph_prefill=graph_prefill)


def parse_data(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise JRTError(f"--data {item!r} must be TASK=PATH, e.g. --data swde=swde.jsonl")
        out[get_task(name).name] = path.strip()
    return out


def pct(x: float | None, signed: bool = False) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def table(result: EvalResult, title: str) -> Table:
    t = Table(title=title)
    t.add_column("task")
    t.add_column("n", justify="right")
    for mode in result.modes:
        t.add_column(mode, justify="right")
    both = "default" in result.modes and "jrt" in result.modes
    if both:
        t.add_column("gap (jrt - default)", justify="right")
    for s in result.tasks:
        t.add_row(s.task, str(s.examples), *(pct(s.accuracy[m]) for m in result.modes),
                  *([pct(s.gap, signed=True)] if both else []))
    avg = result.average()
    t.add_row("average", "", *(pct(avg[m]) for m in result.modes),
              *([pct(result.average_gap(), signed=True)] if both else []), style="bold")
    return t


@app.command()
def main(
    model: str = typer.Option(..., "--model", "-m", help="checkpoint folder, hub id, or 'demo'"),
    tasks: str = typer.Option("synthetic", "--tasks", "-t", help="comma-separated: swde,fda,squad,triviaqa,nq,drop,synthetic"),
    modes: str = typer.Option("default,jrt", "--modes", help="comma-separated: default (plain prompt), jrt (read twice)"),
    limit: int | None = typer.Option(None, "--limit", "-n", help="at most this many examples per task"),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: the loader's)"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16 or float16"),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="tokenizer path or hub id (default: beside the weights)"),
    json_out: Path | None = typer.Option(None, "--json", help="write scores and per-example predictions here"),
    data: list[str] = typer.Option([], "--data", help="TASK=PATH: read a paper task from a local .jsonl/.parquet file or folder"),
    no_window: bool = typer.Option(False, "--no-window", help="keep whole documents (no 950-token window around the answer)"),
    max_new_tokens: int = typer.Option(MAX_NEW_TOKENS, "--max-new-tokens", min=1),
    synthetic_documents: int = typer.Option(50, "--synthetic-documents", min=1),
    synthetic_records: int = typer.Option(16, "--synthetic-records", min=1, help="records per document (difficulty)"),
    synthetic_attributes: int = typer.Option(3, "--synthetic-attributes", min=1, max=6),
    synthetic_questions: int = typer.Option(4, "--synthetic-questions", min=1, help="questions per document"),
    seed: int | None = typer.Option(None, "--seed", help="synthetic test seed (default: the suite's fixed one)"),
    no_progress: bool = typer.Option(False, "--no-progress"),
    graph_prefill: bool = typer.Option(False, "--graph-prefill",
                                       help="CUDA: read prompts through CUDA graphs (one capture per piece length)"),
):
    """Score MODEL on recall tasks with the plain and the JRT prompt; print both and the gap."""
    err = Console(stderr=True)
    try:
        mode_list = parse_modes(modes)
        names = [get_task(n).name for n in tasks.split(",") if n.strip()]
        if not names:
            raise JRTError("no tasks given: use --tasks swde,fda,synthetic")
        sources = parse_data(data)
        options = SyntheticOptions(synthetic_documents, synthetic_records, synthetic_attributes, synthetic_questions, seed)
        engine = load_engine(model, tokenizer, device, dtype, graph_prefill)
        loaded: list[TaskData] = [load_task(n, engine.tokenizer, source=sources.get(n), limit=limit,
                                            window=not no_window, synthetic_options=options) for n in names]
        for d in loaded:
            if not d.examples:
                raise JRTError(f"{d.task.name}: no usable examples in {d.source} (skipped: {dict(d.skipped) or 'none'})")
        total = sum(len(d.examples) for d in loaded) * len(mode_list)
        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err, disable=no_progress, transient=True) as bar:
            job = bar.add_task("answering", total=total)
            result = evaluate(engine, loaded, mode_list, batch_size=batch_size, max_new_tokens=max_new_tokens,
                              on_batch=lambda n: bar.advance(job, n))
    except JRTError as e:
        err.print(f"jrt-eval: error: {e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    result.settings.update({"model": model, "tasks": names, "limit": limit, "window": not no_window,
                            "device": str(engine.model.device)})
    for d in loaded:
        if d.skipped:
            err.print(f"{d.task.name}: skipped {sum(d.skipped.values())} rows "
                      f"({', '.join(f'{k}: {v}' for k, v in d.skipped.items())})", markup=False)
    Console().print(table(result, f"recall accuracy (%), {model}"))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_json(), indent=1, ensure_ascii=False), encoding="utf-8")
        err.print(f"wrote {json_out}", markup=False)


def run() -> None:
    """Console entry point: usage errors are one line too."""
    try:
        code = app(prog_name="jrt-eval", standalone_mode=False)
    except Exception as e:  # click's (typer vendors its own copy): usage errors carry format_message
        if type(e).__name__ == "Abort":
            print("jrt-eval: aborted", file=sys.stderr)
            sys.exit(130)
        if not hasattr(e, "format_message"):
            raise
        print(f"jrt-eval: error: {e.format_message()} (see jrt-eval --help)", file=sys.stderr)
        code = getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        print("jrt-eval: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
