"""The fused Mamba-2 step kernel (``jrt_prompt.ops.mamba2_step.triton_step``) against its reference (``naive``).

CPU: the kernels run under Triton's interpreter in one child process (``python tests/test_ops_mamba2_step_triton.py``
with TRITON_INTERPRET=1; see tests/triton_child.py); each pytest test reports one check. The checks step several
tokens from a non-zero state and compare the output and both states after every token, over groups, conv widths,
conv bias, D per head or per channel, dt limits and dtypes (the gate and norm after it: test_ops_norm_linear_triton.py).
GPU (``pytest -m gpu``): the same checks compiled, the Mamba-2 370M shape, CUDA-graph capture, and a whole model's
decode against the reference path.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

if __package__ in (None, ""):  # run as a script (the interpreter child): make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.triton_child import child_main, collect_checks, interpreter_tests  # noqa: E402


DEVICE = "cpu"  # the checks' device (test_gpu_checks sets "cuda")


def rel(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make(batch=2, heads=4, head_dim=8, d_state=16, groups=2, K=4, bias=True, D_per_channel=False,
         dtype=torch.float32, device=None, seed=0):
    """Parameters and a non-zero state of one Mamba-2 layer (random, realistic ranges), as op arguments."""
    g = torch.Generator().manual_seed(seed)
    device = device or DEVICE
    d_inner = heads * head_dim
    conv_dim = d_inner + 2 * groups * d_state

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    p = dict(conv_weight=r(conv_dim, K, scale=0.5).to(dtype), conv_bias=r(conv_dim, scale=0.1).to(dtype) if bias else None,
             A_log=r(heads, scale=0.5).float(), D=(r(heads, head_dim) if D_per_channel else r(heads)).to(dtype),
             dt_bias=r(heads, scale=0.5).to(dtype))
    conv_state = r(batch, K - 1, conv_dim).to(dtype)
    ssm_state = r(batch, heads, head_dim, d_state, scale=0.3).float()
    tokens = [r(batch, 2 * d_inner + 2 * groups * d_state + heads).to(dtype) for _ in range(3)]
    return p, conv_state, ssm_state, tokens


def compare(kernel_fn, reference_fn, *, groups=2, tol=1e-5, state_tol=None, dt_limit=(0.0, math.inf), **shape):
    p, conv_state, ssm_state, tokens = make(groups=groups, **shape)
    kw = dict(n_groups=groups, dt_limit=dt_limit)
    states = {"k": (conv_state.clone(), ssm_state.clone()), "r": (conv_state.clone(), ssm_state.clone())}
    for i, zx in enumerate(tokens):
        out = {}
        for name, fn in (("k", kernel_fn), ("r", reference_fn)):
            cs, ss = states[name]
            out[name] = fn(zx, cs, p["conv_weight"], p["conv_bias"], ss, p["A_log"], p["D"], p["dt_bias"], **kw)
        (kc, ks), (rc, rs) = states["k"], states["r"]
        assert out["k"].dtype == out["r"].dtype == zx.dtype and out["k"].shape == out["r"].shape
        errs = rel(out["k"], out["r"]), rel(kc, rc), rel(ks, rs)
        assert errs[0] < tol and errs[1] < (state_tol or tol) and errs[2] < (state_tol or tol), (i, shape, errs)


def _kernel():
    from jrt_prompt.ops.mamba2_step import naive, triton_step
    return triton_step.mamba2_step, naive.mamba2_step


# ---------------------------------------------------------------------------------------------
# Checks: plain functions, run in the interpreter child on CPU (and reused on the GPU)


def check_fp32_configs():
    k, r = _kernel()
    for cfg in (dict(), dict(groups=1), dict(K=3, bias=False), dict(K=2), dict(D_per_channel=True),
                dict(head_dim=12, d_state=12), dict(batch=1, heads=2, groups=1), dict(batch=3, heads=8, groups=4)):
        compare(k, r, **cfg)


def check_fp32_dt_limit():
    k, r = _kernel()
    compare(k, r, dt_limit=(0.05, 0.4))


def check_counters_return_to_zero():
    """The B/C conv-state shift is done by the last program of each (batch row, group), which resets its
    counter: after a launch every counter is zero again."""
    from jrt_prompt.ops.mamba2_step import triton_step
    k, r = _kernel()
    compare(k, r, batch=3, heads=8, groups=4)
    assert all(int(buf.abs().sum()) == 0 for buf in triton_step._COUNTERS.values())


def check_bf16():
    """bf16 weights and activations (fp32 states): the kernel rounds once where the reference rounds each op."""
    k, r = _kernel()
    for cfg in (dict(), dict(groups=1)):
        compare(k, r, dtype=torch.bfloat16, tol=2e-2, state_tol=2e-2, **cfg)


def check_errors():
    from jrt_prompt.errors import JRTError
    k, _ = _kernel()
    p, cs, ss, tokens = make()
    args = (p["conv_weight"], p["conv_bias"])
    rest = (p["A_log"], p["D"], p["dt_bias"])
    for bad, why in ((lambda: k(tokens[0][:, :-1], cs, *args, ss, *rest, n_groups=2), "zxbcdt"),
                     (lambda: k(tokens[0], cs, *args, ss.double(), *rest, n_groups=2), "float32"),
                     (lambda: k(tokens[0], cs, *args, ss, *rest, n_groups=3), "G = 3")):
        try:
            bad()
        except JRTError as e:
            assert why in str(e), str(e)
        else:
            raise AssertionError(f"expected a JRTError about {why}")


CHECKS = collect_checks(globals())


# ---------------------------------------------------------------------------------------------
# pytest, CPU: one interpreter child for all checks


interpreter_results, test_under_triton_interpreter = interpreter_tests(__file__, CHECKS)


def test_dispatch_takes_reference_on_cpu_and_under_grad():
    """On CPU (and whenever a gradient is needed) the op is the reference, whatever Triton can do."""
    from jrt_prompt.ops.mamba2_step import mamba2_step, naive
    p, cs, ss, tokens = make()
    a = mamba2_step(tokens[0], cs.clone(), p["conv_weight"], p["conv_bias"], ss.clone(), p["A_log"], p["D"],
                    p["dt_bias"], n_groups=2)
    b = naive.mamba2_step(tokens[0], cs.clone(), p["conv_weight"], p["conv_bias"], ss.clone(), p["A_log"], p["D"],
                          p["dt_bias"], n_groups=2)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# pytest, GPU: compiled kernels


@pytest.mark.gpu
def test_gpu_checks():
    global DEVICE
    DEVICE = "cuda"
    try:
        for name, fn in CHECKS.items():
            if name != "check_errors":
                fn()
    finally:
        DEVICE = "cpu"


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 16, 64])
def test_gpu_370m_shape(batch):
    """Mamba-2 370M: 32 heads of 64 channels, d_state 128, one group, conv width 4; bf16."""
    k, r = _kernel()
    compare(k, r, batch=batch, heads=32, head_dim=64, d_state=128, groups=1, dtype=torch.bfloat16, device="cuda",
            tol=2e-2, state_tol=2e-2)


@pytest.mark.gpu
def test_gpu_graph_capture():
    k, _ = _kernel()
    p, cs, ss, tokens = make(device="cuda", dtype=torch.bfloat16)
    args = (p["conv_weight"], p["conv_bias"], p["A_log"], p["D"], p["dt_bias"])

    def run(zx, c, s):
        return k(zx, c, args[0], args[1], s, *args[2:], n_groups=2)

    c_e, s_e = cs.clone(), ss.clone()
    o_e = run(tokens[0], c_e, s_e)
    c_g, s_g = cs.clone(), ss.clone()
    run(tokens[0], c_g.clone(), s_g.clone())  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o_g = run(tokens[0], c_g, s_g)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(o_g, o_e) and torch.equal(c_g, c_e) and torch.equal(s_g, s_e)


@pytest.mark.gpu
def test_gpu_model_decode_matches_reference():
    """A small Mamba-2 model: from one prefilled state (the reference's: fla's prefill differs by its TF32 dots),
    greedy decode through the fused step equals the reference ops' decode (fp32), every step's logits agree."""
    from jrt_prompt.adapters.mamba2 import from_model
    from jrt_prompt.ops.backend import reference_ops
    from tests.checkpoints_mamba import tiny_mamba2
    model = from_model(tiny_mamba2(0, hidden_size=32, num_heads=8)).cuda().float()
    ids = torch.randint(0, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        with reference_ops():
            _, s_ref = model(ids)
        s_fast = s_ref.fork()
        tok = torch.tensor([1, 2], device="cuda")
        for _ in range(8):
            lf, _ = model.step(tok, s_fast)
            with reference_ops():
                lr, _ = model.step(tok, s_ref)
            assert rel(lf, lr) < 1e-4, rel(lf, lr)
            tok = lr.argmax(-1)


if __name__ == "__main__":
    child_main(CHECKS)
