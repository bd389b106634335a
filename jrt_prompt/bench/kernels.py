"""``jrt-bench kernels``: GPU check and benchmark of our Based Triton kernels (chunked prefill with state
in/out; one-token step) in the layout of the paper's Table 5.

    jrt-bench kernels                      # checks, then N = 2048 ... 32768 and batch 64 at 16384
    jrt-bench kernels --lengths 2048,8192  # fewer rows

1. Checks: our kernels against a float64 chunked reference computed on the GPU, at several shapes, in
   bf16 / fp16 (relative error < 1e-2) and fp32 (< 1e-3), outputs poisoned with NaN first, with and
   without masks, initial states and sequence segments; the final state (kv, ksum) too.
2. Timings (triton.testing.do_bench, median) at batch 16, 16 heads, value dim 64, bf16, N = 2048..32768:
   torch SDPA flash and cuDNN backends at length N (causal, head dim 64), fla fused_chunk_based at 2N
   (no state out), ours at 2N with the final state, fla chunk_gla at 2N (4 heads, K 256, V 512, final
   state); and batch 64 at N = 16384. Speed-ups are over SDPA flash at N. For ours: achieved GB/s and
   TFLOP/s, and the floor from the measured copy bandwidth and bf16 matmul rate.
Every row that fails prints its error and the run goes on.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import traceback

import torch

F = 273
DEVICE = "cuda"  # the checks also run on "cpu" under TRITON_INTERPRET=1 (a smoke test of this script)
RESULTS: dict = {"checks": [], "timings": [], "errors": []}


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def log(msg: str = "") -> None:
    print(msg, flush=True)


def guarded(what: str):
    """Decorator: run, and on any error print it, record it and return None."""
    def wrap(fn):
        def run(*a, **k):
            try:
                return fn(*a, **k)
            except Exception as e:  # a failing row must not stop the others
                log(f"  !! {what} failed: {type(e).__name__}: {e}")
                RESULTS["errors"].append({"what": what, "args": repr(a)[:200], "error": traceback.format_exc()})
                if DEVICE == "cuda":
                    torch.cuda.empty_cache()
                return None
        return run
    return wrap


# ------------------------------------------------------------------------------------------------
# float64 reference on the GPU (chunked, exact up to float64 rounding)


def phi(x: torch.Tensor) -> torch.Tensor:
    second = (x[..., :, None] * x[..., None, :]).flatten(-2) / (4 * math.sqrt(2))
    return torch.cat([torch.ones_like(x[..., :1]), x / 2, second], -1)


@torch.no_grad()
def reference(q, k, v, initial_state=None, mask=None, eps=1e-6, chunk=256):
    """o_i = phi(q_i).S_i / (phi(q_i).z_i + eps) in float64, heads first inside; returns o [B,T,H,Dv], (kv, z)."""
    B, T, H, _ = q.shape
    Dv = v.shape[-1]
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))  # [B, H, T, *]
    real = (torch.ones(B, T, device=q.device, dtype=torch.float64) if mask is None else mask.double())[:, None]
    if initial_state is None:
        kv = torch.zeros(B, H, F, Dv, device=q.device, dtype=torch.float64)
        z = torch.zeros(B, H, F, device=q.device, dtype=torch.float64)
    else:
        kv, z = (t.double().clone() for t in initial_state)
    o = torch.empty(B, H, T, Dv, device=q.device, dtype=torch.float64)
    for c0 in range(0, T, chunk):
        c1 = min(T, c0 + chunk)
        qc, kc, vc, rc = q[:, :, c0:c1], k[:, :, c0:c1], v[:, :, c0:c1], real[..., c0:c1]
        s = qc @ kc.transpose(-1, -2) / 4
        K = (1 + s + s * s / 2) * torch.ones(c1 - c0, c1 - c0, device=q.device).tril() * rc[:, :, None, :]
        pq, pk = phi(qc), phi(kc) * rc[..., None]
        num = K @ vc + pq @ kv
        den = K.sum(-1) + (pq @ z[..., None])[..., 0]
        o[:, :, c0:c1] = num / (den[..., None] + eps) * rc[..., None]
        kv = kv + pk.transpose(-1, -2) @ vc
        z = z + pk.sum(2)
    return o.transpose(1, 2), (kv, z)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(B, T, H, Dv, dtype, seed=0, scale=1.0, device=None):
    device = device or DEVICE
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(B, T, H, 16, device=device, generator=g) * scale
    k = torch.randn(B, T, H, 16, device=device, generator=g) * scale
    v = torch.randn(B, T, H, Dv, device=device, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


# ------------------------------------------------------------------------------------------------
# 1) checks


@guarded("prefill check")
def check_prefill(B, T, H, Dv, dtype, use_mask, use_init, segments, scale=1.0):
    from jrt_prompt.ops.based import triton_chunk as tc
    tol = 1e-3 if dtype == torch.float32 else 1e-2
    q, k, v = make_inputs(B, T, H, Dv, dtype, seed=T + Dv, scale=scale)
    mask = None
    if use_mask:
        mask = torch.ones(B, T, dtype=torch.bool, device=DEVICE)
        for b in range(B):
            mask[b, : (b * 97) % max(1, T // 2)] = False
    init = None
    if use_init:  # a realistic state: the reference's after 300 other tokens
        pq, pk, pv = make_inputs(B, 300, H, Dv, torch.float32, seed=1)
        init = tuple(t.float() for t in reference(pq, pk, pv)[1])
    real_new = tc._new_output
    tc._new_output = lambda x: torch.full_like(x, float("nan"))  # poison: unwritten elements show up
    try:
        o, (kv, z) = tc.taylor_linear_attention(q, k, v, initial_state=init, mask=mask, segments=segments)
    finally:
        tc._new_output = real_new
    _sync()
    ro, (rkv, rz) = reference(q, k, v, initial_state=init, mask=mask)
    nan = bool(torch.isnan(o).any() or torch.isnan(kv).any() or torch.isnan(z).any())
    keep = mask if mask is not None else torch.ones(B, T, dtype=torch.bool, device=DEVICE)
    e_o, e_kv, e_z = rel(o[keep], ro[keep]), rel(kv, rkv), rel(z, rz)
    pads_zero = bool((o[~keep] == 0).all()) if mask is not None else True
    ok = (not nan) and pads_zero and e_o < tol and e_kv < tol and e_z < 1e-5
    row = dict(kind="prefill", B=B, T=T, H=H, Dv=Dv, dtype=str(dtype).split(".")[-1], mask=use_mask, init=use_init,
               segments=segments, scale=scale, rel_o=e_o, rel_kv=e_kv, rel_z=e_z, nan=nan, pads_zero=pads_zero, ok=ok)
    RESULTS["checks"].append(row)
    log(f"  {'ok  ' if ok else 'FAIL'} prefill B={B} T={T} H={H} Dv={Dv} {row['dtype']:8s} mask={use_mask!s:5} "
        f"init={use_init!s:5} seg={segments!s:4} x{scale}: rel o {e_o:.2e}  kv {e_kv:.2e}  ksum {e_z:.2e}"
        f"{'  NaN!' if nan else ''}{'' if pads_zero else '  pads not 0!'}")
    return ok


@guarded("step check")
def check_step(B, H, Dv, dtype):
    from jrt_prompt.ops.based import triton_step as ts
    tol = 1e-3 if dtype == torch.float32 else 1e-2
    pq, pk, pv = make_inputs(B, 200, H, Dv, torch.float32, seed=2)
    kv0, z0 = (t.float() for t in reference(pq, pk, pv)[1])
    q, k, v = make_inputs(B, 1, H, Dv, dtype, seed=3)
    kv, z = kv0.clone(), z0.clone()
    o = ts.taylor_linear_attention_step(q[:, 0], k[:, 0], v[:, 0], kv, z)
    _sync()
    ro, (rkv, rz) = reference(q, k, v, initial_state=(kv0, z0))
    e_o, e_kv, e_z = rel(o, ro[:, 0]), rel(kv, rkv), rel(z, rz)
    ok = e_o < tol and e_kv < 1e-5 and e_z < 1e-5 and not torch.isnan(o).any()
    RESULTS["checks"].append(dict(kind="step", B=B, H=H, Dv=Dv, dtype=str(dtype).split(".")[-1], rel_o=e_o,
                                  rel_kv=e_kv, rel_z=e_z, ok=bool(ok)))
    log(f"  {'ok  ' if ok else 'FAIL'} step    B={B} H={H} Dv={Dv} {str(dtype).split('.')[-1]:8s}: "
        f"rel o {e_o:.2e}  kv {e_kv:.2e}  ksum {e_z:.2e}")
    return ok


def run_checks():
    from jrt_prompt.ops.based import PREFILL_VERIFIED
    log("== checks against a float64 reference (outputs poisoned with NaN first)")
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    for args in [
        (2, 1000, 4, 64, bf16, True, True, None),
        (2, 1000, 4, 64, fp32, True, True, None),
        (1, 4096, 2, 128, bf16, False, False, None),  # batch x heads 2: the segmented path
        (1, 4096, 2, 128, fp32, False, True, None),
        (3, 777, 16, 96, bf16, True, True, 1),
        (2, 300, 4, 80, fp16, True, True, 3),
        (16, 2048, 16, 64, bf16, False, False, None),  # the benchmark's layout, shorter
        (4, 1500, 8, 64, bf16, True, False, 5),
    ]:
        if args[4] not in PREFILL_VERIFIED:  # never dispatched to the kernel; its fp32 path faults the context
            log(f"  skip prefill B={args[0]} T={args[1]} H={args[2]} Dv={args[3]} {str(args[4])[6:]}: the kernel "
                f"runs only {', '.join(str(d)[6:] for d in PREFILL_VERIFIED)} (ops/based PREFILL_VERIFIED)")
            continue
        check_prefill(*args)
    check_prefill(2, 1000, 4, 64, bf16, True, True, None, scale=2.0)  # larger q.k: (q.k)^2 terms dominate
    for dtype in (bf16, fp32):
        check_step(16, 16, 64, dtype)
    check_step(2, 4, 96, bf16)


# ------------------------------------------------------------------------------------------------
# 2) timings


def bench(fn, reps_ms=200) -> float:
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=25, rep=reps_ms, return_mode="median"))


@guarded("measuring the ceilings")
def measure_ceilings() -> dict:
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")  # 1 GiB
    x.random_(0, 255)
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    bw = 2 * x.numel() / (ms * 1e-3)
    del x, y
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = bench(lambda: a @ b)
    tf = 2 * 8192 ** 3 / (ms * 1e-3)
    del a, b
    torch.cuda.empty_cache()
    out = {"copy_GBps": bw / 1e9, "bf16_matmul_TFLOPs": tf / 1e12}
    log(f"== ceilings measured here: copy {bw / 1e9:.0f} GB/s (read + write), bf16 matmul {tf / 1e12:.0f} TFLOP/s")
    return out


def ours_traffic_and_flops(B, T, H, Dv):
    """Bytes: q, k, v read once, o written once (bf16), plus the fp32 final state; FLOPs: the chunked
    algorithm's useful work: phi(q) S and phi(k)^T v over 273 features, plus the causal half of 64-token
    chunks (q k^T and the product with v)."""
    bytes_ = B * T * H * (16 + 16 + Dv + Dv) * 2 + B * H * F * (Dv + 1) * 4
    flops = B * T * H * (4 * F * Dv + 64 * (16 + Dv))
    return bytes_, flops


def _free():
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def _bench_on(tensors: list, fn) -> float:
    """Median ms of fn(*tensors); the tensors are dropped afterwards so that the next row has the memory."""
    ms = bench(lambda: fn(*tensors))
    tensors.clear()
    _free()
    return ms


@guarded("SDPA row")
def time_sdpa(backend_name, B, N, H=16, D=64):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend_name]

    def run(q, k, v):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    return _bench_on([torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3)], run)


@guarded("fla fused_chunk_based row")
def time_fla_based(B, T, H=16, Dv=64):
    from fla.ops.based import fused_chunk_based
    return _bench_on(list(make_inputs(B, T, H, Dv, torch.bfloat16, seed=5)), fused_chunk_based)


@guarded("ours row")
def time_ours(B, T, H=16, Dv=64):
    from jrt_prompt.ops.based import triton_chunk as tc
    ms = _bench_on(list(make_inputs(B, T, H, Dv, torch.bfloat16, seed=6)),
                   lambda q, k, v: tc.taylor_linear_attention(q, k, v, output_final_state=True))
    var = tc.variant_named(tc.auto_variant(B * H))
    config = os.environ.get(tc.CONFIG_ENV) or (",".join(map(str, var.default_config)) if var.twopass
                                               else tc.last_config())
    return ms, f"{var.name} {config}", tc.num_segments(B * H, T, torch.device("cuda"))


@guarded("fla chunk_gla row")
def time_fla_gla(B, T, H=4, K=256, V=512):
    from fla.ops.gla import chunk_gla
    q, k = (torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    v = torch.randn(B, T, H, V, device="cuda", dtype=torch.bfloat16)
    g = (torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, device="cuda")) / 16).to(torch.bfloat16)
    return _bench_on([q, k, v, g], lambda *t: chunk_gla(*t, output_final_state=True))


@guarded("step row")
def time_step(B, H=16, Dv=64):
    from jrt_prompt.ops.based import triton_step as ts
    q, k, v = (x[:, 0] for x in make_inputs(B, 1, H, Dv, torch.bfloat16, seed=7))
    kv = torch.zeros(B, H, F, Dv, device="cuda")
    z = torch.zeros(B, H, F, device="cuda")
    ms = bench(lambda: ts.taylor_linear_attention_step(q, k, v, kv, z))
    return ms


def run_timings(Ns: list[int], ceilings: dict | None):
    fla_ok = True
    try:
        import fla  # noqa: F401
    except Exception as e:
        fla_ok = False
        log(f"== fla does not import ({type(e).__name__}: {e}); its rows are skipped")
    layouts = [(16, N) for N in Ns] + ([(64, 16384)] if 16384 in Ns else [])
    log("== timings (ms, median of triton.testing.do_bench); x = speed-up over SDPA flash at N")
    header = f"{'B':>3} {'N':>6} | {'flash(N)':>9} {'cudnn(N)':>9} | {'fla based(2N)':>13} {'ours(2N)+state':>14} " \
             f"{'fla gla(2N)':>11} | {'ours x':>7} {'GB/s':>6} {'TFLOP/s':>7} {'floor ms':>8} {'/floor':>6}  config"
    log(header)
    for B, N in layouts:
        row = {"B": B, "N": N, "H": 16, "Dv": 64}
        row["sdpa_flash_ms"] = time_sdpa("flash", B, N)
        row["sdpa_cudnn_ms"] = time_sdpa("cudnn", B, N)
        row["fla_fused_chunk_based_2N_ms"] = time_fla_based(B, 2 * N) if fla_ok else None
        ours = time_ours(B, 2 * N)
        row["ours_2N_ms"], row["ours_config"], row["ours_segments"] = ours if ours else (None, None, None)
        row["fla_chunk_gla_2N_ms"] = time_fla_gla(B, 2 * N) if fla_ok else None
        bytes_, flops = ours_traffic_and_flops(B, 2 * N, 16, 64)
        row["ours_bytes"], row["ours_flops"] = bytes_, flops
        if row["ours_2N_ms"]:
            row["ours_GBps"] = bytes_ / (row["ours_2N_ms"] * 1e-3) / 1e9
            row["ours_TFLOPs"] = flops / (row["ours_2N_ms"] * 1e-3) / 1e12
        if ceilings:
            row["floor_ms"] = 1e3 * max(bytes_ / (ceilings["copy_GBps"] * 1e9),
                                        flops / (ceilings["bf16_matmul_TFLOPs"] * 1e12))
        flash, ours_ms = row["sdpa_flash_ms"], row["ours_2N_ms"]
        row["ours_speedup_over_flash_N"] = flash / ours_ms if flash and ours_ms else None
        RESULTS["timings"].append(row)

        def f(x, w, p=2):
            return f"{x:{w}.{p}f}" if isinstance(x, float) else f"{'-':>{w}}"

        log(f"{B:>3} {N:>6} | {f(flash, 9)} {f(row['sdpa_cudnn_ms'], 9)} | {f(row['fla_fused_chunk_based_2N_ms'], 13)} "
            f"{f(ours_ms, 14)} {f(row['fla_chunk_gla_2N_ms'], 11)} | {f(row['ours_speedup_over_flash_N'], 7, 1)} "
            f"{f(row.get('ours_GBps'), 6, 0)} {f(row.get('ours_TFLOPs'), 7, 0)} {f(row.get('floor_ms'), 8)} "
            f"{f(ours_ms / row['floor_ms'] if ours_ms and row.get('floor_ms') else None, 6, 1)}  "
            f"{row['ours_config']} seg={row['ours_segments']}")
    for B in (1, 16, 64):
        ms = time_step(B)
        if ms:
            bytes_ = 2 * B * 16 * F * 65 * 4
            RESULTS["timings"].append({"kind": "step", "B": B, "H": 16, "Dv": 64, "ms": ms, "GBps": bytes_ / ms / 1e6})
            log(f"   step (one decoded token) B={B:>3} H=16 Dv=64: {ms * 1e3:7.1f} us, "
                f"state traffic {bytes_ / ms / 1e6:6.0f} GB/s")


def run(lengths: list[int], checks: bool = True, console=None) -> dict:
    """Checks (unless ``checks`` is False), ceilings, then timings; returns everything measured."""
    import triton

    props = torch.cuda.get_device_properties(0)
    RESULTS["meta"] = {"gpu": props.name, "sms": props.multi_processor_count,
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
                       "config_env": os.environ.get("JRT_BASED_TRITON_CONFIG"),
                       "variant": os.environ.get("JRT_BASED_TRITON_VARIANT") or "default"}
    if checks:
        run_checks()
    ceilings = measure_ceilings()
    RESULTS["ceilings"] = ceilings
    run_timings(lengths, ceilings)
    n_fail = sum(1 for c in RESULTS["checks"] if not c.get("ok"))
    log(f"== checks: {len(RESULTS['checks']) - n_fail} ok, {n_fail} failed; rows with errors: {len(RESULTS['errors'])}")
    return RESULTS
