"""Where a batch-1 prefill's and decode step's time goes (GPU): wall time, summed kernel time and kernel count from
torch.profiler, the top kernels, and the same prefill or step replayed from a CUDA graph (the launch cost removed).

    python benchmarks/prefill_profile.py [--models mamba2-370m,based-360m] [--tokens 2048] > prefill.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from jrt_prompt.bench.e2e import build, cuda_ms


def profile(lm, ids) -> dict:
    from torch.profiler import ProfilerActivity, profile as prof

    with torch.no_grad():
        for _ in range(2):
            lm(ids, last_only=True)
        torch.cuda.synchronize()
        with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            lm(ids, last_only=True)
            torch.cuda.synchronize()
    events = [e for e in p.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels = sum(e.count for e in events)
    gpu_us = sum(e.self_device_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_device_time_total)[:12]
    host = [e for e in p.key_averages() if e.device_type == torch.autograd.DeviceType.CPU]
    host_top = sorted(host, key=lambda e: -e.self_cpu_time_total)[:15]
    return {"kernels": kernels, "kernel_ms": gpu_us / 1e3,
            "top": [{"name": e.key[:90], "count": e.count, "ms": e.self_device_time_total / 1e3} for e in top],
            "host_top": [{"name": e.key[:90], "count": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3}
                         for e in host_top]}


def decode_profile(lm, batch: int = 1) -> dict:
    """One eager decode step's kernels (count, summed kernel time, top kernels) and the graphed step's time."""
    from torch.profiler import ProfilerActivity, profile as prof

    from jrt_prompt.cuda_graph import GraphedStep

    state = lm.init_state(batch)
    tok = torch.zeros(batch, dtype=torch.long, device="cuda")
    with torch.no_grad():
        for _ in range(3):
            lm.step(tok, state)
        torch.cuda.synchronize()
        with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            lm.step(tok, state)
            torch.cuda.synchronize()
    events = [e for e in p.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    top = sorted(events, key=lambda e: -e.self_device_time_total)[:12]
    graphed = GraphedStep(lm, batch)
    graphed.load(state)
    return {"step_kernels": sum(e.count for e in events),
            "step_kernel_ms": sum(e.self_device_time_total for e in events) / 1e3,
            "graphed_step_ms": cuda_ms(lambda: graphed.step(tok), reps=50, warmup=5),
            "step_top": [{"name": e.key[:90], "count": e.count, "us": e.self_device_time_total}
                         for e in top]}


def graphed_ms(lm, ids) -> float:
    """The whole prefill captured once, replayed: what it costs without Python and launch overhead."""
    state = lm.init_state(ids.shape[0])
    static = ids.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(2):
            lm(static, state, last_only=True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        logits, _ = lm(static, state, last_only=True)
    with torch.no_grad():
        eager, _ = lm(ids, state, last_only=True)
    graph.replay()
    torch.cuda.synchronize()
    err = ((logits.float() - eager.float()).norm() / eager.float().norm()).item()
    return {"graphed_ms": cuda_ms(lambda: graph.replay(), reps=10, warmup=2), "graphed_vs_eager_rel_err": err}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mamba2-370m")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--decode-only", action="store_true", help="only the decode step's profile")
    args = ap.parse_args()
    out = {"gpu": torch.cuda.get_device_name(), "tokens": args.tokens, "models": {}}
    for name in args.models.split(","):
        lm, _ = build(name)
        ids = torch.randint(0, lm.config.vocab_size, (1, args.tokens), device="cuda")
        entry = {}
        if not args.decode_only:
            with torch.no_grad():
                entry["eager_ms"] = cuda_ms(lambda: lm(ids, last_only=True), reps=10, warmup=2)
            entry.update(profile(lm, ids))
            try:
                entry.update(graphed_ms(lm, ids))
            except Exception as e:  # recorded, not hidden: some fast paths may not be capturable
                entry["graphed_error"] = f"{type(e).__name__}: {e}"[:500]
        try:
            entry.update(decode_profile(lm))
        except Exception as e:
            entry["decode_error"] = f"{type(e).__name__}: {e}"[:500]
        out["models"][name] = entry
        print(name, json.dumps({k: v for k, v in entry.items() if not k.endswith("top")}), file=sys.stderr)
        del lm
        torch.cuda.empty_cache()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
