"""Sweep of our Based Triton prefill kernel variants x configs on one GPU (H100: under 180 s with compilation).

    python benchmarks/based_kernel_sweep.py                    # every entry of SWEEP, JSON to $OUT/based_sweep.json
    python benchmarks/based_kernel_sweep.py --only fold,onehot  # some variants
    python benchmarks/based_kernel_sweep.py --budget 120        # stop starting entries after 120 s

For each (variant, config) in priority order:
1. check against a float64 reference computed on the GPU at B=2, T=1000, H=4, Dv=64, bf16 (output buffer
   poisoned with NaN first; relative error of o and of the final kv < 1e-2, k-sum < 1e-5); a failing
   entry is not timed. The check runs the same compiled kernel as the timing (no mask, no initial state,
   one segment), so it costs no extra compilation;
2. time it (triton.testing.do_bench, median) at B=16, H=16, Dv=64, bf16, T=16384 and T=65536, final
   state out, one segment (the automatic choice at this size).
Then a table sorted by the time at 65536 with GB/s, TFLOP/s and x-floor (floor = max(bytes / 3.0e12,
flops / 688e12), the ceilings measured on an H100), the SDPA flash time at N=32768 (causal, head dim 64)
and the speed-up ours(2N) / flash(N). Registers and spills of each compiled kernel come from Triton.
Pick the winner with JRT_BASED_TRITON_VARIANT=<variant> JRT_BASED_TRITON_CONFIG=BT,BV,warps,stages[,maxnreg].
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

F = 273
DEVICE = "cuda"  # --smoke: "cpu" under TRITON_INTERPRET=1, tiny shapes (a test of this script, not of speed)
SHAPES = {"check": (2, 1000, 4, 64), "time": (16, 16, 64)}  # (B, T, H, Dv) and (B, H, Dv)
COPY_BPS, MATMUL_FLOPS = 3.0e12, 688e12  # measured on an H100 (jrt-bench kernels)

# (variant, (BT, BV, num_warps, num_stages, maxnreg or 0[, walk BV, walk num_warps, pieces per program, chunks
# per piece])) in priority order, so that a run cut short by its budget still has the important rows.
# Variants (triton_chunk.VARIANTS): fold = the previous kernel; *p = the next chunk's inputs prefetched;
# foldk* = the fold state in four bands of 64 slots (fewer live registers); twopass* = a walk writing the
# state every (chunks per piece) chunks, then all pieces' outputs in parallel (twopass: fold layout, 256 rows
# of state; twopass1h: onehot layout, 160 rows). First run on an H100 (2026-11-24, BENCHMARKS.md): twopass1h
# 64,64,8 12.53 ms, foldp 64,64,8 13.38 ms, fold 64,64,8 14.93 ms at T = 65536 (second run: twopass1h
# 64,64,4 with the state every 2 chunks 9.01 ms; the state every 3 or 4 chunks is refused at compile time: the
# output kernel handles 1 or 2); anything that spills much
# (maxnreg 128, 16 warps, onehot/grid fused at BV 64) was 2-8x slower, and BV 32 doubles the feature work.
SWEEP = [
    ("twopass1h", (64, 64, 4, 1, 0, 64, 8, 1, 2)),  # the second run's best (9.01 ms, 13.5x flash): the default
    ("twopass1h", (64, 64, 4, 1, 0, 64, 4, 1, 2)),
    ("twopass1h", (64, 64, 4, 1, 0, 64, 8, 2, 2)),
    ("twopass1h", (64, 64, 4, 2, 0, 64, 8, 1, 2)),
    ("twopass1h", (128, 64, 4, 1, 0, 64, 8, 1, 2)),
    ("twopass1h", (64, 64, 4, 1, 0, 64, 16, 1, 2)),
    ("twopass1h", (64, 64, 8, 1, 0, 64, 8, 1, 1)),  # the first run's best
    ("twopass1h", (64, 64, 8, 1, 0, 64, 8, 1, 2)),  # the state every 128 tokens: half its traffic
    ("twopass", (64, 64, 8, 1, 0, 64, 8, 1, 2)),
    ("twopass", (64, 64, 4, 1, 0, 64, 8, 1, 2)),
    ("foldp", (64, 64, 8, 1, 0)),  # the first run's best single pass
    ("foldk", (64, 64, 8, 1, 0)),
    ("foldkp", (64, 64, 8, 1, 0)),
    ("foldkp", (64, 32, 8, 1, 0)),
    ("fold", (64, 64, 8, 1, 0)),  # the first run's default
    ("twopass1h", (64, 64, 8, 2, 0, 64, 8, 4, 1)),
    ("twopass1h", (64, 64, 8, 2, 0, 64, 8, 4, 2)),
    ("twopass", (64, 64, 8, 2, 0, 64, 8, 4, 2)),
    ("twopass1h", (64, 64, 8, 1, 0, 32, 4, 1, 2)),
    ("twopass", (64, 64, 8, 1, 0, 32, 4, 1, 2)),
    ("twopass1h", (64, 64, 4, 1, 0, 32, 4, 1, 1)),
    ("twopass1h", (128, 64, 8, 1, 0, 64, 8, 1, 1)),
    ("twopass", (128, 64, 8, 1, 0, 64, 8, 1, 1)),
    ("foldp", (32, 32, 4, 1, 0)),
    ("foldkp", (32, 64, 8, 1, 0)),
    ("foldp", (32, 64, 8, 1, 0)),
]


def log(msg: str = "") -> None:
    print(msg, flush=True)


def phi(x: torch.Tensor) -> torch.Tensor:
    second = (x[..., :, None] * x[..., None, :]).flatten(-2) / (4 * math.sqrt(2))
    return torch.cat([torch.ones_like(x[..., :1]), x / 2, second], -1)


@torch.no_grad()
def reference(q, k, v, eps=1e-6, chunk=250):
    """Chunked Taylor linear attention in float64 on the GPU (from the definition): o, (kv, z)."""
    B, T, H, _ = q.shape
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))
    kv = torch.zeros(B, H, F, v.shape[-1], device=q.device, dtype=torch.float64)
    z = torch.zeros(B, H, F, device=q.device, dtype=torch.float64)
    o = torch.empty_like(v)
    for c0 in range(0, T, chunk):
        c1 = min(T, c0 + chunk)
        qc, kc, vc = q[:, :, c0:c1], k[:, :, c0:c1], v[:, :, c0:c1]
        s = qc @ kc.transpose(-1, -2) / 4
        K = (1 + s + s * s / 2) * torch.ones(c1 - c0, c1 - c0, device=q.device, dtype=torch.float64).tril()
        pq, pk = phi(qc), phi(kc)
        den = K.sum(-1) + (pq @ z[..., None])[..., 0]
        o[:, :, c0:c1] = (K @ vc + pq @ kv) / (den[..., None] + eps)
        kv = kv + pk.transpose(-1, -2) @ vc
        z = z + pk.sum(2)
    return o.transpose(1, 2), (kv, z)


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(B, T, H, Dv, seed):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q, k = (torch.randn(B, T, H, 16, device=DEVICE, generator=g) for _ in range(2))
    v = torch.randn(B, T, H, Dv, device=DEVICE, generator=g)
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def traffic_and_flops(B, T, H, Dv):
    """Bytes: q, k, v read once, o written once (bf16) plus the fp32 final state; FLOPs: phi(q) S and
    phi(k)^T v over 273 features plus the causal half of 64-token chunks (as jrt-bench kernels)."""
    return B * T * H * (16 + 16 + Dv + Dv) * 2 + B * H * F * (Dv + 1) * 4, B * T * H * (4 * F * Dv + 64 * (16 + Dv))


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def bench(fn, reps_ms) -> float:
    if DEVICE != "cuda":
        t = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t)
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=10, rep=reps_ms, return_mode="median"))


def kernel_parts(fn, iters=5) -> dict[str, float]:
    """GPU time per call of each kernel that ``fn`` launches (torch.profiler, ``iters`` calls after one warm-up),
    ms by kernel name: for the two-pass variants, the state walk (``_based_split_kernel``) against the outputs
    (``_based_chunk_out_kernel``), which says which of the two to work on."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    parts: dict[str, float] = {}
    for e in prof.key_averages():
        if not str(getattr(e, "device_type", "")).endswith("CUDA"):
            continue
        us = getattr(e, "self_device_time_total", None)
        us = getattr(e, "self_cuda_time_total", 0.0) if us is None else us
        if us > 0:
            parts[e.key] = parts.get(e.key, 0.0) + us / iters / 1e3
    return dict(sorted(parts.items(), key=lambda kv: -kv[1]))


def short_parts(parts: dict[str, float] | None) -> str:
    """walk / out / rest in ms, as the table prints them."""
    if not parts:
        return "-"
    walk = sum(v for k, v in parts.items() if "split_kernel" in k)
    out = sum(v for k, v in parts.items() if "chunk_out_kernel" in k)
    rest = sum(parts.values()) - walk - out
    return f"{walk:.2f}/{out:.2f}/{rest:.2f}"


def run_entry(tc, variant, config, lengths, reps_ms):
    row = {"variant": variant, "config": list(config)}
    # 1) check (compiles the kernel)
    q, k, v = make_inputs(*SHAPES["check"], seed=1)
    real_new = tc._new_output
    tc._new_output = lambda x: torch.full_like(x, float("nan"))
    t = time.time()
    try:
        o, (kv, z) = tc.taylor_linear_attention(q, k, v, segments=1, variant=variant, config=config)
    finally:
        tc._new_output = real_new
    sync()
    row["compile_and_check_s"] = round(time.time() - t, 2)
    compiled = tc.last_compiled[-1] if tc.last_compiled else None
    row["regs"] = getattr(compiled, "n_regs", None)
    row["spills"] = getattr(compiled, "n_spills", None)
    row["shared"] = getattr(getattr(compiled, "metadata", None), "shared", None)
    ro, (rkv, rz) = reference(q, k, v)
    row["nan"] = bool(torch.isnan(o).any() or torch.isnan(kv).any())
    row["rel_o"], row["rel_kv"], row["rel_z"] = rel(o, ro), rel(kv, rkv), rel(z, rz)
    row["ok"] = (not row["nan"]) and row["rel_o"] < 1e-2 and row["rel_kv"] < 1e-2 and row["rel_z"] < 1e-5
    if not row["ok"]:
        return row
    # 2) timings
    B, H, Dv = SHAPES["time"]
    for T in lengths:
        q, k, v = make_inputs(B, T, H, Dv, seed=T)
        ms = bench(lambda: tc.taylor_linear_attention(q, k, v, segments=1, variant=variant, config=config), reps_ms)
        bytes_, flops = traffic_and_flops(B, T, H, Dv)
        floor_ms = 1e3 * max(bytes_ / COPY_BPS, flops / MATMUL_FLOPS)
        row[f"ms_{T}"] = float(ms)
        row[f"GBps_{T}"] = bytes_ / (ms * 1e-3) / 1e9
        row[f"TFLOPs_{T}"] = flops / (ms * 1e-3) / 1e12
        row[f"x_floor_{T}"] = float(ms) / floor_ms
        if DEVICE == "cuda" and T == lengths[-1]:
            try:
                row[f"parts_{T}"] = kernel_parts(
                    lambda: tc.taylor_linear_attention(q, k, v, segments=1, variant=variant, config=config))
            except Exception as e:  # the profile is extra: it must not lose the timing
                row[f"parts_{T}"] = {"error": f"{type(e).__name__}: {e}"}
        q = k = v = None  # freed before the next length's inputs
        sync()
    return row


def sdpa_flash_ms(N=32768, B=16, H=16, D=64, reps_ms=300) -> float | None:
    if DEVICE != "cuda":
        return None
    import triton.testing
    from torch.nn.attention import SDPBackend, sdpa_kernel
    try:
        q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))

        def run():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

        return float(triton.testing.do_bench(run, warmup=1, rep=reps_ms, return_mode="median"))
    except Exception as e:  # a missing backend must not lose the sweep
        log(f"SDPA flash failed: {type(e).__name__}: {e}")
        return None
    finally:
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--budget", type=float, default=150.0, help="seconds after which no new entry starts")
    ap.add_argument("--lengths", default="16384,65536")
    ap.add_argument("--reps-ms", type=float, default=60.0, help="do_bench rep time per timing")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--smoke", action="store_true", help="CPU, under TRITON_INTERPRET=1, tiny shapes")
    args = ap.parse_args(argv)
    start = time.time()
    if args.smoke:
        global DEVICE
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("--smoke runs under TRITON_INTERPRET=1")
        DEVICE = "cpu"
        SHAPES.update(check=(2, 100, 2, 32), time=(1, 2, 32))
        args.lengths = "64,128"
    import triton

    from jrt_prompt.ops.based import triton_chunk as tc
    lengths = [int(x) for x in args.lengths.split(",")]
    only = {x for x in args.only.split(",") if x}
    entries = [(v, c) for v, c in SWEEP if not only or v in only]
    gpu = torch.cuda.get_device_properties(0) if DEVICE == "cuda" else None
    B, H, Dv = SHAPES["time"]
    meta = {"gpu": gpu.name if gpu else "cpu (interpreter smoke run)", "sms": gpu.multi_processor_count if gpu else 0,
            "torch": torch.__version__, "triton": triton.__version__, "lengths": lengths, "B": B, "H": H, "Dv": Dv,
            "dtype": "bf16", "check_shape": SHAPES["check"]}
    log(f"== {meta}")
    flash = sdpa_flash_ms(N=lengths[-1] // 2)
    log(f"== SDPA flash (causal, B16 H16 D64 bf16) at N={lengths[-1] // 2}: {flash} ms")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []

    def save(total=None):  # after every entry: a run killed on its time limit keeps what it measured
        (out / "based_sweep.json").write_text(json.dumps(
            {"meta": meta, "sdpa_flash_ms": flash, "flash_N": lengths[-1] // 2, "rows": rows, "skipped": skipped,
             "total_s": total}, indent=1, default=str))

    for variant, config in entries:
        if time.time() - start > args.budget:
            skipped.append([variant, list(config)])
            continue
        t = time.time()
        try:
            row = run_entry(tc, variant, config, lengths, args.reps_ms)
        except Exception as e:  # one failing entry must not stop the sweep
            row = {"variant": variant, "config": list(config), "ok": False,
                   "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
            sync()
        row["entry_s"] = round(time.time() - t, 1)
        rows.append(row)
        times = " ".join(f"{row[f'ms_{T}']:.2f}ms@{T}" for T in lengths if f"ms_{T}" in row)
        log(f"  {variant:7s} {str(config):24s} {'ok  ' if row.get('ok') else 'FAIL'} regs={row.get('regs')} "
            f"spills={row.get('spills')} rel_o={row.get('rel_o', float('nan')):.2e} {times} "
            f"({row['entry_s']}s){'  ' + row['error'] if 'error' in row else ''}")
        save()
    key = f"ms_{lengths[-1]}"
    timed = sorted((r for r in rows if key in r), key=lambda r: r[key])
    log(f"\n== sorted by time at T={lengths[-1]} (B16 H16 Dv64 bf16, final state out); "
        f"SDPA flash at N={lengths[-1] // 2}: {flash if flash is None else round(flash, 2)} ms")
    log(f"{'variant':8s} {'config (see SWEEP)':26s} {'regs':>4s} {'spill':>5s} "
        + " ".join(f"{'ms@' + str(T):>9s}" for T in lengths)
        + f" {'GB/s':>6s} {'TFLOP/s':>7s} {'x-floor':>7s} {'x-flash':>7s} {'rel_o':>8s}  walk/out/rest ms")
    for r in timed:
        x_flash = flash / r[key] if flash else None
        r["speedup_over_flash"] = x_flash
        log(f"{r['variant']:8s} {','.join(map(str, r['config'])):26s} {r.get('regs')!s:>4s} {r.get('spills')!s:>5s} "
            + " ".join(f"{r[f'ms_{T}']:9.3f}" for T in lengths)
            + f" {r[f'GBps_{lengths[-1]}']:6.0f} {r[f'TFLOPs_{lengths[-1]}']:7.1f} {r[f'x_floor_{lengths[-1]}']:7.2f} "
              f"{x_flash if x_flash is None else round(x_flash, 1)!s:>7s} {r['rel_o']:8.1e}  "
              f"{short_parts(parts if 'error' not in (parts := r.get(f'parts_{lengths[-1]}', {})) else None)}")
    failed = [r for r in rows if not r.get("ok")]
    for r in failed:
        why = r.get("error") or {k: r.get(k) for k in ("nan", "rel_o", "rel_kv", "rel_z")}
        log(f"FAILED {r['variant']} {r['config']}: {why}")
    if skipped:
        log(f"NOT RUN (budget {args.budget} s): {skipped}")
    if timed:
        best = timed[0]
        log(f"\nbest: JRT_BASED_TRITON_VARIANT={best['variant']} "
            f"JRT_BASED_TRITON_CONFIG={','.join(map(str, best['config']))}  {best[key]:.2f} ms at T={lengths[-1]}")
    total = round(time.time() - start, 1)
    log(f"== total {total} s")
    save(total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
