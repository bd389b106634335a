"""jrt-ask: answer questions about a document with a recurrent LM that reads it twice (the JRT prompt).

    jrt-ask report.txt "Who signed the contract?" "When was it signed?"
    cat notes.md | jrt-ask - "What is the deadline?" --model ./mamba-130m --json

Several questions share one read of the document (the part of the prompt before the first question), then
each is answered. Answers go to stdout, one per line (after the question and a tab when there are several);
a progress bar goes to stderr while a long document is read. Every problem is one line on stderr,
``jrt-ask: error: ...``, with exit code 2 for bad input or models and 1 for failures while running.
The document and the arguments are checked before the model (and transformers) is loaded.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import typer

from .errors import JRTError

PROGRAM = "jrt-ask"
MAX_NEW_TOKENS = 48  # the paper's evaluation setting; answers are short
STOP = ("\n",)  # an answer is one line (the paper stops at the first newline too)
PROGRESS_MIN_TOKENS = 4096  # documents whose first read is at least this long get a progress bar

HELP = """Answer QUESTIONs about the document FILE (- reads stdin) with a recurrent LM that reads it twice.

Several questions share one read of the document. Answers are printed one per line (after the question and a
tab when there are several); errors are one line on stderr.

Examples: jrt-ask report.txt "Who signed?" "When?";  cat notes.md | jrt-ask - "What is due?" -m ./mamba --json"""

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


# --- input checks (before anything heavy is loaded) --------------------------------------------------

def read_document(source: str) -> str:
    """The document's text from a file or ``-`` (stdin): UTF-8 text that is not blank, else a JRTError."""
    name = "stdin" if source == "-" else source
    if source == "-":
        data = sys.stdin.buffer.read()
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise JRTError(f"no such file: {source}")
        if path.is_dir():
            raise JRTError(f"{source} is a directory, not a text file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise JRTError(f"cannot read {source}: {e.strerror or e}") from None
    if b"\x00" in data:
        raise JRTError(f"{name} is a binary file (it contains NUL bytes); give a UTF-8 text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise JRTError(f"{name} is not UTF-8 text (undecodable byte at offset {e.start}); "
                       "convert it, e.g. with iconv -t utf-8") from None
    if not text.strip():
        raise JRTError(f"{name} is empty" if not text else f"{name} holds only whitespace")
    return text


def check_questions(questions: list[str]) -> list[str]:
    for i, q in enumerate(questions, 1):
        if not q.strip():
            raise JRTError(f"question {i} is empty" if len(questions) > 1 else "the question is empty")
    return questions


def effective_repeats(repeats: int | None, no_jrt: bool) -> int:
    if no_jrt and repeats not in (None, 1):
        raise JRTError(f"--no-jrt reads the document once, but --repeats {repeats} asks for {repeats} reads")
    return 1 if no_jrt else (2 if repeats is None else repeats)


def check_device(device: str | None) -> None:
    """A clear error for a device this machine lacks, instead of a failure deep inside loading."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise JRTError(f"--device {device!r} is not a device name (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise JRTError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise JRTError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


# --- output ------------------------------------------------------------------------------------------

def stderr_console():
    """The console for the progress bar (a seam: tests render it into a buffer)."""
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def reading_progress(total: int):
    """A progress callback for Engine.read (tokens read so far), drawing a bar for long documents only."""
    if total < PROGRESS_MIN_TOKENS:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("reading the document"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"),
                  TimeElapsedColumn(), console=stderr_console(), transient=True) as bar:
        task = bar.add_task("read", total=total)
        yield lambda n: bar.update(task, completed=n)


def stream_answer(pieces, prefix: str) -> str:
    """Write an answer to stdout as it is generated, without its surrounding whitespace (as printed unstreamed)."""
    sys.stdout.write(prefix)
    shown, held = "", ""
    for piece in pieces:
        if not shown:
            piece = piece.lstrip()
        body = piece.rstrip()
        if body:
            sys.stdout.write(held + body)
            sys.stdout.flush()
            shown += held + body
            held = piece[len(body):]
        else:
            held += piece
    sys.stdout.write("\n")
    sys.stdout.flush()
    return shown


# --- the command -------------------------------------------------------------------------------------

SMALL_MODEL = 50_000_000  # parameters


def small_on_cpu(engine) -> None:
    """A small model on CPU runs fastest on one thread: more threads only wait on each other (measured: 48
    tokens of the demo took 0.1-0.2 s on one thread, 3-4 s on two cores busy with other work)."""
    import torch

    if engine.model.device.type == "cpu" and sum(p.numel() for p in engine.model.parameters()) < SMALL_MODEL:
        torch.set_num_threads(1)


@app.command(help=HELP)
def ask(
    file: str = typer.Argument(..., metavar="FILE", help="the document: a UTF-8 text file, or - for stdin"),
    questions: list[str] = typer.Argument(..., metavar="QUESTION", help="one or more questions"),
    model: str = typer.Option("demo", "--model", "-m", help="checkpoint folder, hub id, or 'demo'"),
    tokenizer: str | None = typer.Option(None, "--tokenizer",
                                         help="tokenizer path or hub id (default: beside the weights)"),
    repeats: int | None = typer.Option(None, "--repeats", "-r", min=1, help="reads of the document (default: 2)"),
    no_jrt: bool = typer.Option(False, "--no-jrt", help="the plain prompt: read the document once (--repeats 1)"),
    max_new_tokens: int = typer.Option(MAX_NEW_TOKENS, "--max-new-tokens", min=1),
    truncate: str | None = typer.Option(None, "--truncate", metavar="head|tail",
                                        help="cut a document over the model's budget, keeping its head or tail"),
    budget: int | None = typer.Option(None, "--budget", min=1, help="token budget of a prompt (default: the model's)"),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: the loader's)"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default: the checkpoint's)"),
    stream: bool = typer.Option(False, "--stream", help="print each answer as it is generated"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object: answers and prompt statistics"),
):
    started = time.perf_counter()
    n_reads = effective_repeats(repeats, no_jrt)
    if stream and as_json:
        raise JRTError("--stream and --json cannot be combined (the JSON object is printed once, at the end)")
    if truncate == "window":
        raise JRTError("--truncate window needs the answer to centre on, which a question alone does not give; "
                       "use --truncate head or tail")
    if truncate not in (None, "head", "tail"):
        raise JRTError(f"--truncate {truncate!r} must be head or tail")
    document = read_document(file)
    check_questions(questions)
    check_device(device)

    from .loading import load
    from .prompt import JRTPrompt

    engine = load(model, tokenizer=tokenizer, prompt=JRTPrompt(repeats=n_reads), device=device, dtype=dtype,
                  budget=budget, trim=truncate)
    small_on_cpu(engine)
    prompts = [engine.encode(document, q) for q in questions]  # over budget without --truncate: an error here
    trimmed = any(p.trimmed for p in prompts)
    source = document
    if not trimmed and engine.prompt.starts_with_context:
        with reading_progress(prompts[0].shared) as progress:
            source = engine.read(document, progress=progress)  # shared by every question
    read_tokens = source.tokens if source is not document else 0
    gen = dict(max_new_tokens=max_new_tokens, stop=list(STOP))
    several = len(questions) > 1
    if stream:
        answers = [stream_answer(engine.stream(source, q, **gen), f"{q}\t" if several else "") for q in questions]
    else:
        answers = [a.strip() for a in engine.generate(source, questions, **gen)]
    if as_json:
        result = {
            "model": model, "arch": engine.model.config.arch, "repeats": n_reads,
            "answers": [{"question": q, "answer": a, "prompt_tokens": len(p.ids)}
                        for q, a, p in zip(questions, answers, prompts)],
            "document_tokens": prompts[0].context_tokens + prompts[0].trimmed,
            "tokens_read": read_tokens + sum(len(p.ids) - (p.shared if read_tokens else 0) for p in prompts),
            "trimmed": trimmed, "trimmed_tokens": max(p.trimmed for p in prompts),
            "seconds": round(time.perf_counter() - started, 3),
        }
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    elif not stream:
        sys.stdout.write("".join(f"{q}\t{a}\n" if several else f"{a}\n" for q, a in zip(questions, answers)))


# --- entry point -------------------------------------------------------------------------------------

def one_line(text: str) -> str:
    return " ".join(str(text).split())


def fail(message: str, code: int) -> int:
    sys.stderr.write(f"{PROGRAM}: error: {one_line(message)}\n")
    return code


def main(argv: list[str] | None = None) -> int:
    """Console entry point: the exit code; every error is one line on stderr, never a traceback."""
    try:
        code = app(args=argv, prog_name=PROGRAM, standalone_mode=False)
    except (JRTError, OSError) as e:
        return fail(str(e), 2)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROGRAM}: interrupted\n")
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's promise: one line, no traceback
        if hasattr(e, "format_message"):  # click's usage errors (typer vendors its own click)
            if type(e).__name__ == "Abort":
                return fail("aborted", 130)
            return fail(f"{e.format_message()} (see {PROGRAM} --help)", getattr(e, "exit_code", 2))
        return fail(f"{type(e).__name__}: {e}", 1)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
