#!/usr/bin/env python
"""GPU timing of our Triton selective scan (Mamba 1, state in and out) against the PyTorch reference.

Run on a CUDA machine from the repository root (about a minute on an H100, most of it autotuning):

    python benchmarks/scan_bench.py                  # B 1, L 2048 and 8192, C 1536 (Mamba-130M), N 16, bf16
    python benchmarks/scan_bench.py --lengths 2048 --batch 4

Rows: ours with a start state and a left-padding mask (what the model runs), ours from zeros, the reference
(``naive.selective_scan``), mamba_ssm's ``selective_scan_fn`` (no start state) when it is installed, and the
one-token steps (ours and the reference). Each row prints its median time, the GB/s it achieves on the bytes
the scan must move at least (u, delta, z, B, C read and y written in bf16; A, D, bias; the fp32 states
read and written), the speed-up over the reference, and its relative error against the reference.
With OUT set, writes $OUT/scan_bench.json. ``--smoke`` runs tiny shapes on the CPU under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def make_inputs(batch, length, channels, d_state, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, device=device, generator=g)

    return dict(
        u=randn(batch, length, channels).to(dtype), delta=randn(batch, length, channels).to(dtype),
        A=-torch.exp(torch.rand(channels, d_state, device=device, generator=g) * 3 - 1),
        B=randn(batch, length, d_state).to(dtype), C=randn(batch, length, d_state).to(dtype),
        D=randn(channels).to(dtype), z=randn(batch, length, channels).to(dtype),
        delta_bias=(randn(channels) * 0.5 - 1).to(dtype),
    )


def min_bytes(batch, length, channels, d_state, elt, with_state=True, tokens=None) -> int:
    """Bytes a scan must move: 4 [B, L, C] tensors (u, delta, z in; y out), B and C, A/D/bias, the states."""
    tokens = length if tokens is None else tokens
    seq = batch * tokens * (4 * channels + 2 * d_state) * elt
    params = channels * d_state * 4 + 2 * channels * elt
    states = (2 if with_state else 1) * batch * channels * d_state * 4
    return seq + params + states


def timer(fn, device, reps=20, warmup=3) -> float:
    """Median milliseconds of ``fn`` over ``reps`` runs (CUDA events on the GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@torch.no_grad()
def bench_length(batch, length, channels, d_state, dtype, device, reps) -> list[dict]:
    from jrt_prompt.ops.backend import importable
    from jrt_prompt.ops.selective_scan import naive, triton_scan

    t = make_inputs(batch, length, channels, d_state, dtype, device, seed=length)
    args = [t[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    h0 = torch.randn(batch, channels, d_state, device=device)
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    mask[:, : length // 8] = False  # some left padding in every row
    elt = t["u"].element_size()
    rows = []

    def row(name, fn, ref, nbytes, tokens=length):
        ms = timer(fn, device, reps)
        out = fn()
        err = max(rel(out[0], ref[0]), rel(out[1], ref[1])) if ref is not None else float("nan")
        rows.append(dict(impl=name, B=batch, L=tokens, C=channels, N=d_state, ms=ms, GBps=nbytes / ms / 1e6,
                         rel_err=err))

    ref_masked = naive.selective_scan(*args, initial_state=h0, mask=mask)
    ref_plain = naive.selective_scan(*args)
    full = min_bytes(batch, length, channels, d_state, elt)
    row("ours, start state + mask", lambda: triton_scan.selective_scan(*args, initial_state=h0, mask=mask),
        ref_masked, full)
    config = triton_scan.last_config()
    row("ours, from zeros", lambda: triton_scan.selective_scan(*args), ref_plain,
        min_bytes(batch, length, channels, d_state, elt, with_state=False))
    row("reference (naive), start state + mask", lambda: naive.selective_scan(*args, initial_state=h0, mask=mask),
        ref_masked, full)
    if device == "cuda" and importable("mamba_ssm.ops.selective_scan_interface"):
        from jrt_prompt.ops.selective_scan import _mamba_ssm_scan
        row("mamba_ssm selective_scan_fn, from zeros", lambda: _mamba_ssm_scan(*args, True), ref_plain,
            min_bytes(batch, length, channels, d_state, elt, with_state=False))
    one = [x[:, 0] if x.dim() == 3 else x for x in args]
    state = h0.clone()
    step_bytes = min_bytes(batch, 1, channels, d_state, elt)
    row("ours, one-token step", lambda: (triton_scan.selective_state_update(state, *one), state), None, step_bytes, 1)
    row("reference, one-token step", lambda: (naive.selective_state_update(state, *one), state), None, step_bytes, 1)
    ref_ms = rows[2]["ms"]
    for r in rows:
        r["speedup_vs_reference"] = ref_ms / r["ms"] if "step" not in r["impl"] else rows[-1]["ms"] / r["ms"]
        r["config"] = config if r["impl"].startswith("ours, start") else None
    return rows


def print_table(rows):
    head = f"{'implementation':40s} {'B':>2s} {'L':>6s} {'C':>5s} {'N':>3s} {'ms':>9s} {'GB/s':>8s} {'speed-up':>9s} {'rel err':>9s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['impl']:40s} {r['B']:2d} {r['L']:6d} {r['C']:5d} {r['N']:3d} {r['ms']:9.3f} {r['GBps']:8.1f} "
              f"{r['speedup_vs_reference']:8.1f}x {r['rel_err']:9.2e}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--channels", type=int, default=1536)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (needs TRITON_INTERPRET=1)")
    a = p.parse_args(argv)
    device = "cuda"
    if a.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("--smoke runs the kernels in Triton's interpreter: set TRITON_INTERPRET=1")
        device, a.lengths, a.channels, a.d_state, a.reps = "cpu", [24], 8, 4, 1
    elif not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1)")
    dtype = getattr(torch, a.dtype)
    rows = []
    for length in a.lengths:
        rows += bench_length(a.batch, length, a.channels, a.d_state, dtype, device, a.reps)
    print(f"selective scan, {a.dtype}, on {torch.cuda.get_device_name() if device == 'cuda' else 'cpu (interpreter)'}")
    print_table(rows)
    if rows and rows[0].get("config"):
        print(f"autotuned config (first length): {rows[0]['config']}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "scan_bench.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
