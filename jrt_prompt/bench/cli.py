"""The jrt-bench command: prints tables (GPU name and date on top) and writes JSON."""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=True)
console = Console()


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def environment() -> dict:
    import torch

    info = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    for mod in ("triton", "transformers", "fla"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent or broken: reported as such
            info[mod] = "not installed"
    return info


def _require_gpu() -> dict:
    import torch

    if not torch.cuda.is_available():
        console.print("jrt-bench: error: needs a CUDA GPU", style="red")
        raise typer.Exit(2)
    env = environment()
    console.print(f"[bold]{env['gpu']}[/] - {env['date']} - torch {env['torch']}, triton {env['triton']}, "
                  f"transformers {env['transformers']}, fla {env['fla']}")
    return env


def _write(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.write_text(json.dumps(payload, indent=2))


@app.command()
def e2e(models: str = typer.Option("based-360m,based-1.3b,mamba2-370m,gla-1.3b", help="comma-separated"),
        contexts: str = typer.Option("2048,8192,32768", help="context lengths N (the JRT prompt reads 2N)"),
        batches: str = typer.Option("1,16,64", help="decode batch sizes"),
        chunk: int = typer.Option(8192, help="prefill chunk (tokens per forward)"),
        hf: bool = typer.Option(True, help="also time transformers' forward/generate (Mamba-2)"),
        compile: bool = typer.Option(False, help="torch.compile the decode step before capturing its CUDA graph"),
        graph_prefill: bool = typer.Option(True, help="also time prefills replayed from CUDA graphs"),
        json_out: Path | None = typer.Option(None, "--json")):
    """Time to first token, JRT cost per question with a cached read, decode tokens/s, peak memory."""
    from .e2e import run

    env = _require_gpu()
    results = run(models.split(","), _ints(contexts), _ints(batches), chunk=chunk, hf_compare=hf, compile=compile,
                  graph_prefill=graph_prefill, log=lambda m: console.print(m, style="dim"),
                  on_result=lambda r: _write(json_out, {"environment": env, "e2e": r, "partial": True}))
    t = Table(title="time to first token (ms, batch 1)")
    for col in ("model", "N", "prefill", "plain C,Q", "JRT C,Q,C,Q", "JRT/plain", "JRT per q (8 q, cached read)",
                "cached/plain", "peak MB"):
        t.add_column(col, justify="right")
    for r in results:
        for x in r["ttft"]:
            if "error" in x:
                t.add_row(r["model"], str(x["context"]), x["prefill"], x["error"], "", "", "", "", "")
                continue
            t.add_row(r["model"], str(x["context"]), x["prefill"], f"{x['plain_ms']:.1f}", f"{x['jrt_ms']:.1f}",
                      f"{x['jrt_over_plain']:.2f}x", f"{x['jrt_cached_per_question_ms']:.1f}",
                      f"{x['jrt_cached_over_plain']:.2f}x", f"{x['peak_mb_jrt']:.0f}")
    console.print(t)
    d = Table(title="greedy decode (CUDA graph)")
    for col in ("model", "batch", "tokens/s", "ms/step", "GB/s achieved", "state MB"):
        d.add_column(col, justify="right")
    for r in results:
        for x in r["decode"]:
            d.add_row(r["model"], str(x["batch"]), f"{x['tokens_per_s']:.0f}", f"{x['ms_per_step']:.3f}",
                      f"{x['gb_per_s']:.0f}", f"{x['state_mb']:.1f}")
        if "transformers" in r:
            h = r["transformers"]
            for key, val in h.items():
                if key.startswith("decode_tokens_per_s_b"):
                    d.add_row(f"{r['model']} (transformers {h['version']})", key.rsplit("b", 1)[1], f"{val:.1f}",
                              "", "", "")
            console.print(f"transformers {h['version']} forward, 2048 tokens: {h['ttft_ms']:.0f} ms")
    console.print(d)
    _write(json_out, {"environment": env, "e2e": results})


@app.command()
def kernels(json_out: Path | None = typer.Option(None, "--json"),
            lengths: str = typer.Option("2048,4096,8192,16384,32768", help="N (JRT rows run 2N)"),
            checks: bool = typer.Option(True, help="check the kernels against a float64 reference first")):
    """The paper's Table 5 layout: SDPA (N) vs Based/GLA linear attention at 2N, batch 16 (and 64 at 16k)."""
    from .kernels import run

    env = _require_gpu()
    results = run(_ints(lengths), checks=checks)
    _write(json_out, {"environment": env, "kernels": results})


def main():
    app()
