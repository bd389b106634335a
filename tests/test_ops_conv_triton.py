"""The one-launch causal depthwise conv1d (``jrt_prompt.ops.conv.triton_conv``) against its reference
(``naive.causal_conv1d``): y and the new tail, left padding, the folded silu, reading a sequence in pieces.

CPU: under Triton's interpreter in one child process (see tests/triton_child.py), on small shapes with small
tiles so that rows, windows and padding cross tile edges; also the kernel compiled for Hopper (sm_90) with
Triton's bundled ptxas, and the dispatcher. GPU (``pytest -m gpu``): the same checks compiled, and Mamba-2
370M's prefill shape.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

if __package__ in (None, ""):  # run as a script (the interpreter child): make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.triton_child import (child_main, child_results, collect_checks, gpu_checks_test, interpreter_tests,
                                on_device)  # noqa: E402

DEVICE = "cpu"
BF16 = torch.bfloat16
SMALL = dict(block_t=4, block_c=16)  # 11 steps x 20 channels: 3 time blocks x 2 channel blocks a row


def _mods():
    from jrt_prompt.ops.conv import naive, triton_conv
    return triton_conv, naive


def _tols(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) per element. bf16/fp16: the reference rounds the conv and then the silu to x's dtype, the
    kernel rounds once, and Triton's interpreter converts float32 to bf16 by truncation (see bf16_tol in
    tests/test_ops_norm_linear_triton.py): a few units in the last place. A wrong window or a dropped tail
    value is off by O(1) on O(1) data."""
    return (1e-5, 1e-5) if dtype == torch.float32 else (2 ** -5, 2 ** -6)


def assert_close(a: torch.Tensor, b: torch.Tensor, what):
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
    rtol, atol = _tols(b.dtype)
    a, b = a.double().cpu(), b.double().cpu()
    bad = (a - b).abs() > rtol * b.abs() + atol
    assert not bad.any(), (what, int(bad.sum()), (a - b).abs().max().item())


def _rand(g, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).to(DEVICE, dtype)


def make(B, L, C, K, dtype, *, bias=True, tail=True, pads=None, seed=0, param_dtype=None, tail_dtype=None):
    """x as a column slice of a wider tensor (an in_proj output), weight as conv1d.weight[:, 0, :], mask with
    ``pads[b]`` padded steps on the left of row b."""
    g = torch.Generator().manual_seed(seed)
    x = _rand(g, B, L, C + 13, dtype=dtype)[:, :, 5:5 + C]
    w = _rand(g, C, 1, K, dtype=param_dtype or dtype, scale=K ** -0.5)[:, 0, :]
    b = _rand(g, C, dtype=param_dtype or dtype, scale=0.3) if bias else None
    t = _rand(g, B, K - 1, C, dtype=tail_dtype or dtype) if tail else None
    mask = None
    if pads is not None:
        assert len(pads) == B
        mask = torch.arange(L)[None, :] >= torch.tensor(pads)[:, None]
        mask = mask.to(DEVICE)
    return x, w, b, t, mask


def compare(x, w, b, t, mask, activation=None, **launch):
    """Kernel vs reference: y per element, y exactly 0 at padded steps, the new tail exact (it is a copy of x's
    and the old tail's values in x's dtype; only the interpreter's float32->bf16 truncation of a wider tail
    differs from torch's rounding)."""
    k, r = _mods()
    yk, tk = k.causal_conv1d(x, w, b, t, mask, activation=activation, **launch)
    yr, tr = r.causal_conv1d(x, w, b, t, mask, activation=activation)
    what = (tuple(x.shape), w.shape[1], x.dtype, b is not None, t is not None, mask is not None, activation)
    assert yk.is_contiguous() and tk.is_contiguous(), what
    assert_close(yk, yr, what)
    if mask is not None:
        assert (yk[~mask] == 0).all(), what
    assert tk.dtype == tr.dtype and tk.shape == tr.shape, (what, tk.dtype, tr.dtype, tk.shape, tr.shape)
    if t is None or t.dtype == x.dtype or DEVICE != "cpu":
        assert torch.equal(tk, tr), (what, (tk.double() - tr.double()).abs().max().item())
    else:
        assert_close(tk, tr, what)
    return yk, tk


# The options, K by K: nothing; everything; bias + mask; tail + silu.
OPTIONS = ((False, False, None, False), (True, True, "silu", True), (True, False, None, True),
           (False, True, "silu", False))
# Real tokens per row of 11: all, 8, 2 and 1 (fewer than K-1 = 3), none, 5.
PADS = (0, 3, 9, 10, 11, 6)


def _options(dtype):
    for K in (1, 2, 4):
        for seed, (bias, tail, act, masked) in enumerate(OPTIONS):
            x, w, b, t, mask = make(6, 11, 20, K, dtype, bias=bias, tail=tail, pads=PADS if masked else None,
                                    seed=seed)
            compare(x, w, b, t, mask, act, **SMALL)


# ---------------------------------------------------------------------------------------------
# Checks: plain functions, run in the interpreter child on CPU (and reused on the GPU)


def check_options_fp32():
    _options(torch.float32)


def check_options_bf16():
    _options(BF16)


def check_shorter_than_tail():
    """L < K-1: the new tail is part old tail, part new tokens (and all old tail for a padded row)."""
    for K, L in ((4, 1), (4, 2), (3, 1)):
        x, w, b, t, mask = make(3, L, 20, K, torch.float32, pads=(0, 1, L), seed=K + L)
        compare(x, w, b, t, mask, "silu", **SMALL)
    x, w, b, t, _ = make(2, 2, 20, 4, BF16, tail=False, seed=9)
    compare(x, w, b, None, None)  # the default tile, clipped to the short row


def check_dtypes_and_layouts():
    """Wider weight, bias and tail than x (the reference rounds them to x's dtype); float16; a tail with
    non-unit channel stride, a transposed weight, a mask and an x with padded batch strides; default tiles."""
    x, w, b, t, mask = make(3, 11, 20, 4, BF16, param_dtype=torch.float32, tail_dtype=torch.float32,
                            pads=(0, 2, 9), seed=1)
    compare(x, w, b, t, mask, "silu", **SMALL)
    x, w, b, t, mask = make(3, 11, 20, 4, torch.float16, pads=(1, 0, 11), seed=2)
    compare(x, w, b, t, mask, **SMALL)
    g = torch.Generator().manual_seed(3)
    B, L, C, K = 3, 11, 20, 4
    x = _rand(g, B + 2, L + 1, C)[1:B + 1, 1:]  # batch and row strides of the wider tensor
    w = _rand(g, K, C).t()  # [C, K] with strides (1, C)
    t = _rand(g, B, C, K - 1).transpose(1, 2)  # channel stride K-1
    big = torch.ones(B, L + 4, dtype=torch.bool, device=DEVICE)
    big[1, :6] = False
    big[2, :13] = False
    mask = big[:, 4:]  # row stride L+4
    compare(x, w, None, t, mask, "silu", **SMALL)
    compare(x, w, None, t, mask)  # default tiles: one time block, one channel block


def check_pieces_equal_whole():
    """conv(x[:a]) then conv(x[a:]) from the returned tail equals conv(x), exactly, for the kernel: cut inside
    and after the K-1 steps the tail covers, and at a tile edge; rows padded past the cut included."""
    k, _ = _mods()
    L = 12
    for dtype in (torch.float32, BF16):
        x, w, b, t, mask = make(4, L, 20, 4, dtype, pads=(0, 3, 7, L), seed=4)
        y, tail = k.causal_conv1d(x, w, b, t, mask, activation="silu", **SMALL)
        for a in (2, 5, 8):
            y1, t1 = k.causal_conv1d(x[:, :a], w, b, t, mask[:, :a], activation="silu", **SMALL)
            y2, t2 = k.causal_conv1d(x[:, a:], w, b, t1, mask[:, a:], activation="silu", **SMALL)
            assert torch.equal(torch.cat([y1, y2], 1), y), (dtype, a)
            assert torch.equal(t2, tail), (dtype, a)


CHECKS = collect_checks(globals())


# ---------------------------------------------------------------------------------------------
# pytest, CPU: one interpreter child for all checks; the dispatcher and limits in process


interpreter_results, test_under_triton_interpreter = interpreter_tests(__file__, CHECKS)


def test_supported_limits():
    pytest.importorskip("triton")
    k, _ = _mods()
    x, w, b, t, mask = make(2, 5, 8, 4, torch.float32, pads=(0, 2))
    assert k.supported(x, w, b, t, mask) and k.supported(x, w)
    assert not k.supported(x.transpose(1, 2), w.new_zeros(5, 4))  # channel stride != 1
    assert not k.supported(x[:, :0], w)  # no elements
    assert not k.supported(x.to(torch.float64), w)
    assert not k.supported(x, torch.zeros(8, 5))  # K > MAX_K
    assert not k.supported(x, w[:4])  # weight for other channels
    assert not k.supported(x, w, b, t[:, :2], mask)  # tail of the wrong length
    assert not k.supported(x, w, b, t, mask.float())  # not a bool mask
    assert not k.supported(x, w, b, t, mask[:1])
    with pytest.raises(ValueError):
        k.launch(x, w, b, t, mask, "gelu")


def test_dispatch_takes_reference_on_cpu():
    from jrt_prompt.ops.conv import causal_conv1d, naive
    x, w, b, t, mask = make(3, 7, 8, 4, torch.float32, pads=(0, 2, 7))
    for act in (None, "silu"):
        a = causal_conv1d(x, w, b, t, mask, activation=act)
        e = naive.causal_conv1d(x, w, b, t, mask, activation=act)
        assert torch.equal(a[0], e[0]) and torch.equal(a[1], e[1])
    with pytest.raises(ValueError):
        causal_conv1d(x, w, activation="gelu")


def test_dispatch_choice(monkeypatch):
    """With the tensors taken for CUDA tensors: the kernel, unless a reference is forced, a gradient is needed or
    the call is not ``supported``."""
    fast = pytest.importorskip("jrt_prompt.ops.conv.triton_conv")
    from jrt_prompt.ops import backend, conv
    monkeypatch.setattr(backend, "use_fast_path", lambda *tensors: not backend.reference_forced())
    monkeypatch.setattr(fast, "causal_conv1d", lambda *args, **kw: "kernel")
    x, w, b, t, mask = make(2, 5, 8, 4, torch.float32, pads=(0, 2))
    assert conv.causal_conv1d(x, w, b, t, mask, activation="silu") == "kernel"
    with backend.reference_ops():
        y, tail = conv.causal_conv1d(x, w, b, t, mask, activation="silu")
    assert torch.equal(y, conv.naive.causal_conv1d(x, w, b, t, mask, activation="silu")[0])
    assert conv.causal_conv1d(x, torch.zeros(8, 5), b) != "kernel"  # K = 5
    assert conv.causal_conv1d(x, w.clone().requires_grad_(), b) != "kernel"
    with torch.no_grad():
        assert conv.causal_conv1d(x, w.clone().requires_grad_(), b) == "kernel"


def test_naive_activation():
    """The reference's silu: on y before the padded steps are zeroed; None keeps the old output."""
    from jrt_prompt.ops.conv import naive
    x, w, b, t, mask = make(3, 7, 8, 4, torch.float32, pads=(0, 2, 7))
    y0, t0 = naive.causal_conv1d(x, w, b, t, mask)
    y1, t1 = naive.causal_conv1d(x, w, b, t, mask, activation="silu")
    assert torch.equal(y1, torch.nn.functional.silu(y0)) and torch.equal(t0, t1)
    assert (y0[~mask] == 0).all() and torch.equal(t0[2], t[2])  # a row with no real token keeps its tail


# ---------------------------------------------------------------------------------------------
# CPU: the kernel compiles for Hopper (sm_90) with Triton's bundled ptxas; no GPU needed


def compile_for_hopper() -> dict[str, dict]:
    """Mamba-2 370M's prefill call (bf16, x a slice of in_proj's output, every option on) and a float32 one,
    compiled for sm_90 with the specialization the JIT gives these arguments (16-divisible pointers and ints,
    ints equal to 1 as constants): registers, spill stack and the load/store widths."""
    import re
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    k, _ = _mods()
    names = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.uint8: "u8"}
    fn = k._causal_conv1d_kernel
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"

    def build(x, w, b, t, mask):
        grid, args, consts, _ = k.launch(x, w, b, t, mask, "silu")
        sig, attrs, consts = {}, {}, dict(consts)
        for i, (name, arg) in enumerate(zip(fn.arg_names, args)):
            if isinstance(arg, torch.Tensor):
                sig[name] = "*" + names[arg.dtype]
                divisible = arg.data_ptr() % 16 == 0
            elif arg == 1:
                sig[name], consts[name] = "constexpr", 1
                continue
            else:
                sig[name], divisible = "i32", arg % 16 == 0
            if divisible:
                attrs[(i,)] = [["tt.divisibility", 16]]
        sig.update({name: "constexpr" for name in consts})
        kernel = triton.compile(ASTSource(fn, signature=sig, constexprs=consts, attrs=attrs),
                                target=GPUTarget("cuda", 90, 32), options={"num_warps": k.NUM_WARPS})
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True).stdout
        found = re.search(r"REG:(\d+) STACK:(\d+)", out)
        ptx = kernel.asm["ptx"]
        return {"grid": list(grid), "regs": int(found.group(1)), "stack": int(found.group(2)),
                "ld_v4": ptx.count("ld.global.v4"), "st": sorted(set(re.findall(r"st\.global[.\w]*", ptx)))}

    L, C = 2048, 2304
    zxbcdt = torch.empty(4, L, 4352, dtype=torch.bfloat16)
    w = torch.empty(C, 1, 4, dtype=torch.bfloat16)[:, 0, :]
    b, t = torch.empty(C, dtype=torch.bfloat16), torch.empty(4, 3, C, dtype=torch.bfloat16)
    mask = torch.ones(4, L, dtype=torch.bool)
    x32 = torch.empty(4, L, C)
    return {"bf16": build(zxbcdt[:, :, 2048:2048 + C], w, b, t, mask),
            "fp32": build(x32, w.float(), b.float(), t.float(), mask)}


def test_kernel_compiles_for_hopper():
    """No spills, 16-byte loads of x and 16-byte stores of y (x's row stride 4352 and column 2048 keep the
    channel runs aligned), and 64 x 18 programs a row for the bf16 call."""
    pytest.importorskip("triton.backends.nvidia")
    built = child_results(__file__, "--compile", interpret=False)
    assert built["bf16"]["grid"] == [4 * 64, 18], built
    for name, res in built.items():
        assert res["stack"] == 0 and res["regs"] <= 192, (name, res)
        assert res["ld_v4"] > 0 and "st.global.v4.b32" in res["st"], (name, res)


# ---------------------------------------------------------------------------------------------
# pytest, GPU: compiled kernels


test_gpu_checks = gpu_checks_test(globals(), CHECKS)


@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 4])
def test_gpu_370m_prefill(B):
    """Mamba-2 370M: xBC = zxbcdt[..., 2048:4352] of the in_proj output [B, 2048, 4352], K = 4, bf16, bias, silu,
    the default tiles; B = 4 with left padding of different lengths. The dispatcher takes the kernel."""
    from jrt_prompt.ops.conv import causal_conv1d
    with on_device(globals(), "cuda"):
        L, C = 2048, 2304
        g = torch.Generator().manual_seed(B)
        zxbcdt = _rand(g, B, L, 4352, dtype=BF16)
        x = zxbcdt[:, :, 2048:2048 + C]
        w = _rand(g, C, 1, 4, dtype=BF16, scale=0.5)[:, 0, :]
        b = _rand(g, C, dtype=BF16, scale=0.3)
        t = _rand(g, B, 3, C, dtype=BF16)
        pads = (0, 1, 700, L - 2)[:B]
        mask = (torch.arange(L)[None, :] >= torch.tensor(pads)[:, None]).cuda() if B > 1 else None
        yk, tk = compare(x, w, b, t, mask, "silu")
        with torch.no_grad():
            yd, td = causal_conv1d(x, w, b, t, mask, activation="silu")
        assert torch.equal(yd, yk) and torch.equal(td, tk)


if __name__ == "__main__":
    child_main(CHECKS, compile_for_hopper)
