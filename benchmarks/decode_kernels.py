"""Times a Mamba-2 370M decode layer's launches at batch 1 and 4 on a CUDA GPU, inside a CUDA graph (as decode
runs), each over 48 layers' own weights and states (from HBM, as in the model): norm + in_proj and gated norm +
out_proj as two launches (our norm kernel, then cuBLAS) against the fused ``ops.norm_linear`` kernels over a
sweep of BLOCK_N, warps and PDL on/off, and the fused SSD step. Prints a table (us per layer and the bandwidth of
the weights, or of the state read and written) and writes JSON.
Usage: python benchmarks/decode_kernels.py [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import torch
import torch.nn.functional as F
from triton.testing import do_bench_cudagraph

from jrt_prompt.ops.mamba2_step import triton_step
from jrt_prompt.ops.norm import add_rms_norm, gated_rms_norm
from jrt_prompt.ops.norm_linear import triton_norm_linear as nl

D_MODEL, D_INNER, HEADS, D_STATE = 1024, 2048, 32, 128  # Mamba-2 370M
IN_N = 2 * D_INNER + 2 * D_STATE + HEADS
LAYERS = 48


def us(fn) -> float:
    return do_bench_cudagraph(fn, rep=200) * 1e3


def layers(op, n=LAYERS):
    """op(i) for i < n, as one timed function: each layer's own weights, so they come from HBM as in a model
    (one layer's 13 MB would sit in the 50 MB L2 if re-read)."""
    def run():
        for i in range(n):
            op(i)
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--rows", default="1,4")
    args = ap.parse_args()
    dev, bf = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    w_in = [torch.randn(IN_N, D_MODEL, device=dev, dtype=bf, generator=g) * D_MODEL ** -0.5 for _ in range(LAYERS)]
    w_out = [torch.randn(D_MODEL, D_INNER, device=dev, dtype=bf, generator=g) * D_INNER ** -0.5 for _ in range(LAYERS)]
    nw_in = torch.ones(D_MODEL, device=dev, dtype=bf)
    nw_out = torch.ones(D_INNER, device=dev, dtype=bf)
    rows_out = []
    print(f"{torch.cuda.get_device_name()}  {datetime.date.today()}  torch {torch.__version__}; "
          f"per layer, over {LAYERS} layers' weights (from HBM)")
    print(f"{'op':<34}{'rows':>5}{'BLOCK_N':>8}{'warps':>6}{'PDL':>5}{'us':>9}{'GB/s':>8}")
    for rows in [int(r) for r in args.rows.split(",")]:
        h = torch.randn(rows, D_MODEL, device=dev, generator=g)
        y = torch.randn(rows, D_MODEL, device=dev, dtype=bf, generator=g)
        yo = torch.randn(rows, D_INNER, device=dev, dtype=bf, generator=g)
        zx = torch.randn(rows, IN_N, device=dev, dtype=bf, generator=g)
        z = zx[:, :D_INNER]
        cases = [
            ("in_proj: cuBLAS alone", None, None, None, w_in, layers(lambda i: F.linear(y, w_in[i]))),
            ("in_proj: add_rms_norm + cuBLAS", None, None, None, w_in, layers(lambda i: F.linear(
                add_rms_norm(h, y, nw_in, 1e-5, hf_rounding=True, residual_fp32=True, cast=bf)[1], w_in[i]))),
            ("out_proj: cuBLAS alone", None, None, None, w_out, layers(lambda i: F.linear(yo, w_out[i]))),
            ("out_proj: gated norm + cuBLAS", None, None, None, w_out, layers(lambda i: F.linear(
                gated_rms_norm(yo, z, nw_out, D_INNER, 1e-5), w_out[i]))),
        ]
        for pdl in ("1", "0"):
            for bn in (2, 4, 8, 16):
                for warps in (2, 4, 8):
                    if pdl == "0" and warps != 4:
                        continue
                    cases.append(("in_proj: fused add+norm+linear", bn, warps, pdl, w_in, layers(
                        lambda i, bn=bn, warps=warps: nl.add_rms_norm_linear(
                            h, y, nw_in, 1e-5, w_in[i], hf_rounding=True, residual_fp32=True, cast=bf, block_n=bn,
                            num_warps=warps))))
                    cases.append(("out_proj: fused gated norm+linear", bn, warps, pdl, w_out, layers(
                        lambda i, bn=bn, warps=warps: nl.gated_rms_norm_linear(
                            yo, z, nw_out, D_INNER, 1e-5, False, w_out[i], block_n=bn, num_warps=warps))))
        # the fused SSD step (conv, dt, state update, B/C shift by the last program), each layer its own state
        cs = [torch.randn(rows, 3, D_INNER + 2 * D_STATE, device=dev, dtype=bf, generator=g) for _ in range(LAYERS)]
        ss = [torch.randn(rows, HEADS, D_INNER // HEADS, D_STATE, device=dev, generator=g) * 0.1
              for _ in range(LAYERS)]
        cw = torch.randn(D_INNER + 2 * D_STATE, 4, device=dev, dtype=bf, generator=g)
        cb = torch.randn(D_INNER + 2 * D_STATE, device=dev, dtype=bf, generator=g)
        a_log, dd, dtb = (torch.randn(HEADS, device=dev, generator=g) * 0.1 for _ in range(3))
        for pdl in ("1", "0"):
            cases.append(("ssd step (state read+write)", None, 4, pdl, ss, layers(
                lambda i: triton_step.mamba2_step(zx, cs[i], cw, cb, ss[i], a_log, dd, dtb, n_groups=1))))
        for name, bn, warps, pdl, w, fn in cases:
            os.environ["JRT_PROMPT_PDL"] = pdl or "1"
            try:
                fn()
                t = us(fn) / LAYERS
            except Exception as e:  # a config that does not compile or fit is reported, not fatal
                print(f"{name:<34}{rows:>5}{bn or '-':>8}{warps or '-':>6}{pdl or '-':>5}  failed: "
                      f"{type(e).__name__}: {e}"[:200])
                continue
            nbytes = w[0].numel() * w[0].element_size() * (2 if w is ss else 1)
            gbs = nbytes / t / 1e3
            rows_out.append(dict(op=name, rows=rows, block_n=bn, warps=warps, pdl=pdl, us=t, gbs=gbs))
            print(f"{name:<34}{rows:>5}{bn or '-':>8}{warps or '-':>6}{pdl or '-':>5}{t:>9.2f}{gbs:>8.0f}")
    os.environ.pop("JRT_PROMPT_PDL", None)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gpu=torch.cuda.get_device_name(), date=str(datetime.date.today()), rows=rows_out), f,
                      indent=1)


if __name__ == "__main__":
    main()
