"""Our Triton Based kernels (prefill with state in/out, one-token step) against a float64 reference.

CPU: the kernels run under Triton's interpreter, which must be switched on before triton is imported,
so every check runs in one child process (``python tests/test_ops_based_triton.py``) with
TRITON_INTERPRET=1; each pytest test reports one of its results. The interpreter cannot do bf16
arithmetic, so the kernel runs its 16-bit path with fp16 operands there (bf16 inputs still load and
store as bf16). Also on CPU: the kernels compile for Hopper (sm_90a) with Triton's bundled ptxas.
GPU (``pytest -m gpu``): the same kernels compiled and run, bf16 and fp32, outputs poisoned first.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if __package__ in (None, ""):  # run as a script (the interpreter child): make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.triton_child import child_main, child_results, collect_checks, interpreter_tests  # noqa: E402

F = 273  # 1 + 16 + 256 public features


# ---------------------------------------------------------------------------------------------
# float64 reference, written from the definition


def phi(x: torch.Tensor) -> torch.Tensor:
    """[..., 16] -> [..., 273]: (1, x/2, vec(x x^T)/(4 sqrt 2)), float64."""
    x = x.double()
    second = (x[..., :, None] * x[..., None, :]).flatten(-2) / (4 * math.sqrt(2))
    return torch.cat([torch.ones_like(x[..., :1]), x / 2, second], -1)


def reference(q, k, v, initial_state=None, mask=None, eps=1e-6):
    """Quadratic form in float64: o_i = (phi(q_i).S0 + sum_{j<=i} K_ij v_j) / (phi(q_i).z0 + sum K_ij + eps)."""
    q, k, v = q.double(), k.double(), v.double()
    B, T, H, _ = q.shape
    s = torch.einsum("bihf,bjhf->bhij", q, k) / 4
    K = (1 + s + s * s / 2) * torch.ones(T, T, dtype=torch.bool).tril()
    real = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.cpu()
    K = K * real[:, None, None, :]
    num = torch.einsum("bhij,bjhd->bihd", K, v)
    den = K.sum(-1).transpose(1, 2)  # [B, T, H]
    pk = phi(k) * real[:, :, None, None]
    kv = torch.einsum("bthf,bthd->bhfd", pk, v)
    z = pk.sum(1)
    if initial_state is not None:
        kv0, z0 = initial_state[0].double().cpu(), initial_state[1].double().cpu()
        pq = phi(q)
        num = num + torch.einsum("bthf,bhfd->bthd", pq, kv0)
        den = den + torch.einsum("bthf,bhf->bth", pq, z0)
        kv, z = kv + kv0, z + z0
    o = num / (den[..., None] + eps) * real[:, :, None, None]
    return o, (kv, z)


def rel(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def inputs(B, T, H, Dv, dtype=torch.float32, device="cpu", seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, 16, generator=g) * scale for _ in range(2))
    v = torch.randn(B, T, H, Dv, generator=g)
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


def left_pad_mask(B, T, pads, device="cpu"):
    m = torch.ones(B, T, dtype=torch.bool, device=device)
    for b, p in enumerate(pads):
        m[b, :p] = False
    return m


def prefix_state(B, H, Dv, seed=7, n=37):
    """A realistic (symmetric) state: the reference's after n random tokens."""
    q, k, v = inputs(B, n, H, Dv, seed=seed)
    return tuple(t.float() for t in reference(q, k, v)[1])


# ---------------------------------------------------------------------------------------------
# Checks: plain functions, run in the interpreter child on CPU (and reused on the GPU)


def _ops():
    from jrt_prompt.ops.based import triton_chunk, triton_step
    return triton_chunk, triton_step


def check_outputs_and_final_state_fp32():
    tc, _ = _ops()
    q, k, v = inputs(2, 100, 2, 32)  # 100: not a multiple of the chunk
    o, (kv, z) = tc.taylor_linear_attention(q, k, v)
    ro, (rkv, rz) = reference(q, k, v)
    assert o.dtype == torch.float32 and kv.dtype == torch.float32 and z.dtype == torch.float32
    assert tuple(kv.shape) == (2, 2, F, 32) and tuple(z.shape) == (2, 2, F)
    assert rel(o, ro) < 1e-5, rel(o, ro)
    assert rel(kv, rkv) < 1e-5 and rel(z, rz) < 1e-5, (rel(kv, rkv), rel(z, rz))


def check_initial_state_in():
    tc, _ = _ops()
    q, k, v = inputs(2, 70, 2, 32, seed=1)
    init = prefix_state(2, 2, 32)
    saved = tuple(t.clone() for t in init)
    o, (kv, z) = tc.taylor_linear_attention(q, k, v, initial_state=init)
    ro, (rkv, rz) = reference(q, k, v, initial_state=init)
    assert rel(o, ro) < 1e-5 and rel(kv, rkv) < 1e-5 and rel(z, rz) < 1e-5, (rel(o, ro), rel(kv, rkv))
    assert all(torch.equal(a, b) for a, b in zip(init, saved)), "initial_state was modified"


def symmetrised(kv: torch.Tensor) -> torch.Tensor:
    """kv with its x_i x_j and x_j x_i rows averaged: the same phi(q) . kv for every q."""
    out = kv.clone()
    pair = kv[..., 17:, :].reshape(*kv.shape[:-2], 16, 16, kv.shape[-1])
    out[..., 17:, :] = ((pair + pair.transpose(-3, -2)) / 2).reshape(*kv.shape[:-2], 256, kv.shape[-1])
    return out


def check_asymmetric_initial_state():
    """Any public kv gives the reference's outputs, with every variant; the returned kv equals the reference's up
    to moving weight between the x_i x_j and x_j x_i rows (the fold and onehot layouts average them)."""
    tc, _ = _ops()
    q, k, v = inputs(1, 50, 2, 16, seed=2)
    g = torch.Generator().manual_seed(3)
    kv0 = torch.randn(1, 2, F, 16, generator=g)
    z0 = torch.rand(1, 2, F, generator=g) * 10 + 50  # keeps the normaliser away from zero
    ro, (rkv, rz) = reference(q, k, v, initial_state=(kv0, z0))
    for name in tc.VARIANTS:
        o, (kv, z) = tc.taylor_linear_attention(q, k, v, initial_state=(kv0, z0), variant=name)
        assert rel(o, ro) < 1e-5, (name, rel(o, ro))
        assert rel(symmetrised(kv), symmetrised(rkv)) < 1e-5 and rel(z, rz) < 1e-5, (name, rel(kv, rkv), rel(z, rz))
        if name.startswith("grid"):  # one kernel row per public row: nothing is averaged
            assert rel(kv, rkv) < 1e-5, (name, rel(kv, rkv))


def check_every_variant_matches_reference():
    """Each kernel variant (fp32 and 16-bit, mask, initial state, segments unless two-pass, a chunk size that does
    not divide T) against the float64 reference; the layouts round-trip."""
    tc, _ = _ops()
    B, T, H, Dv = 2, 100, 2, 24
    mask = left_pad_mask(B, T, (0, 37))
    init = prefix_state(B, H, Dv)
    for name, var in tc.VARIANTS.items():
        back = tc.from_kernel_layout(tc.to_kernel_layout(init[0], name), name)
        assert rel(back, init[0]) < 1e-6, (name, rel(back, init[0]))
        for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 1e-2)):
            q, k, v = inputs(B, T, H, Dv, dtype=dtype, seed=21)
            ro, (rkv, rz) = reference(q, k, v, initial_state=init, mask=mask)
            for segments in ((1,) if var.twopass or dtype != torch.float32 else (1, 3)):
                o, (kv, z) = tc.taylor_linear_attention(q, k, v, initial_state=init, mask=mask, variant=name,
                                                        segments=segments)
                assert o.dtype == dtype and torch.all(o[~mask] == 0), name
                errs = rel(o, ro), rel(kv, rkv), rel(z, rz)
                assert errs[0] < tol and errs[1] < tol and errs[2] < 1e-5, (name, dtype, segments, errs)


def check_two_pass_pieces():
    """Two-pass with the state every 1 or 2 chunks and 1 or 3 pieces per output program, T not a multiple of
    anything, against the float64 reference."""
    tc, _ = _ops()
    for T in (97, 150):
        q, k, v = inputs(2, T, 2, 24, seed=T)
        mask = left_pad_mask(2, T, (0, 11))
        init = prefix_state(2, 2, 24)
        ro, (rkv, rz) = reference(q, k, v, initial_state=init, mask=mask)
        for name in ("twopass", "twopass1h"):
            for per_program, sub in ((1, 2), (3, 2), (2, 1)):
                o, (kv, z) = tc.taylor_linear_attention(q, k, v, initial_state=init, mask=mask, variant=name,
                                                        config=(32, 32, 4, 1, 0, 32, 4, per_program, sub))
                errs = rel(o, ro), rel(kv, rkv), rel(z, rz)
                assert max(errs) < 1e-5 and torch.all(o[~mask] == 0), (T, name, per_program, sub, errs)


def check_variant_choice():
    from jrt_prompt.errors import JRTError
    tc, _ = _ops()
    assert tc.variant_named(None).name == os.environ.get(tc.VARIANT_ENV, tc.DEFAULT_VARIANT)
    assert tc.variant_named("onehot").slots == 160 and tc.variant_named("grid").slots == 288
    for bad in ("nope", "fold "):
        try:
            tc.variant_named(bad)
        except JRTError as e:
            assert "variant" in str(e)
        else:
            raise AssertionError("an unknown variant must raise")
    assert tc.parse_config("64,32,8,1") == (64, 32, 8, 1) and tc.parse_config("64,32,8,1,128")[-1] == 128
    assert tc.parse_config("128,64,8,2,0,64,8,4,2") == (128, 64, 8, 2, 0, 64, 8, 4, 2)
    for bad in ("64,32", "64,32,8,1,0,64", "a,b,c,d", "1,2,3,4,5,6,7,8,9,10"):
        try:
            tc.parse_config(bad)
        except JRTError as e:
            assert tc.CONFIG_ENV in str(e)
        else:
            raise AssertionError(f"config {bad!r} must raise")


def check_wide_batches_take_the_two_pass_kernel():
    """At least WIDE_MIN_PAIRS (batch, head) pairs run WIDE_VARIANT (unless a variant is pinned), fewer the default;
    both match the reference."""
    tc, _ = _ops()
    seen = []
    real = tc.variant_named
    tc.variant_named = lambda name=None: seen.append(real(name).name) or real(name)
    try:
        for B, H in ((tc.WIDE_MIN_PAIRS // 16, 16), (1, 2)):
            q, k, v = inputs(B, 20, H, 16, seed=B)
            o, (kv, z) = tc.taylor_linear_attention(q, k, v)
            ro, (rkv, rz) = reference(q, k, v)
            assert rel(o, ro) < 1e-5 and rel(kv, rkv) < 1e-5, (B, H, rel(o, ro))
    finally:
        tc.variant_named = real
    expected_small = os.environ.get(tc.VARIANT_ENV, tc.DEFAULT_VARIANT)
    expected_wide = os.environ.get(tc.VARIANT_ENV, tc.WIDE_VARIANT)
    assert seen == [expected_wide, expected_small], seen


def check_split_point_equality():
    tc, _ = _ops()
    q, k, v = inputs(2, 150, 2, 32, seed=4)
    o, (kv, z) = tc.taylor_linear_attention(q, k, v)
    for a in (1, 45, 64, 149):
        o1, st = tc.taylor_linear_attention(q[:, :a], k[:, :a], v[:, :a])
        o2, (kv2, z2) = tc.taylor_linear_attention(q[:, a:], k[:, a:], v[:, a:], initial_state=st)
        both = torch.cat([o1, o2], 1)
        assert rel(both, o) < 1e-5 and rel(kv2, kv) < 1e-5 and rel(z2, z) < 1e-5, (a, rel(both, o))


def check_left_padding():
    tc, _ = _ops()
    B, T, H, Dv = 3, 90, 2, 32
    q, k, v = inputs(B, T, H, Dv, seed=5)
    pads = (0, 13, 70)
    mask = left_pad_mask(B, T, pads)
    o, (kv, z) = tc.taylor_linear_attention(q, k, v, mask=mask)
    ro, (rkv, rz) = reference(q, k, v, mask=mask)
    assert rel(o, ro) < 1e-5 and rel(kv, rkv) < 1e-5 and rel(z, rz) < 1e-5, (rel(o, ro), rel(kv, rkv))
    assert torch.all(o[~mask] == 0), "padded positions must read 0"
    # each row equals reading its real tokens alone
    for b, p in enumerate(pads):
        ob, (kvb, zb) = tc.taylor_linear_attention(q[b:b + 1, p:], k[b:b + 1, p:], v[b:b + 1, p:])
        assert rel(o[b:b + 1, p:], ob) < 1e-5 and rel(kv[b:b + 1], kvb) < 1e-5 and rel(z[b:b + 1], zb) < 1e-5, b


def check_padding_mid_stream_leaves_state():
    """After a prefilled state, a fully padded piece returns the state unchanged, exactly."""
    tc, _ = _ops()
    q, k, v = inputs(2, 40, 2, 16, seed=6)
    init = prefix_state(2, 2, 16)
    mask = torch.zeros(2, 40, dtype=torch.bool)
    o, (kv, z) = tc.taylor_linear_attention(q, k, v, initial_state=init, mask=mask)
    assert torch.all(o == 0)
    assert torch.equal(kv, init[0]) and torch.equal(z, init[1])
    mask[0, 39] = True  # one real token in row 0: row 1, still all pads, keeps its state bit for bit
    _, (kv, z) = tc.taylor_linear_attention(q, k, v, initial_state=init, mask=mask)
    assert torch.equal(kv[1], init[0][1]) and torch.equal(z[1], init[1][1]) and not torch.equal(z[0], init[1][0])
    mask[0, 39] = False
    mask[1, 25:] = True  # then one row turns real: matches the reference from the same state
    o, (kv, z) = tc.taylor_linear_attention(q, k, v, initial_state=init, mask=mask)
    ro, (rkv, rz) = reference(q, k, v, initial_state=init, mask=mask)
    assert rel(o, ro) < 1e-5 and rel(kv, rkv) < 1e-5 and rel(z, rz) < 1e-5


def check_value_dims_not_power_of_two():
    tc, _ = _ops()
    for Dv in (24, 48):  # one partial block; a full and a partial block of 32
        q, k, v = inputs(1, 70, 2, Dv, seed=Dv)
        o, (kv, z) = tc.taylor_linear_attention(q, k, v, initial_state=prefix_state(1, 2, Dv))
        ro, (rkv, rz) = reference(q, k, v, initial_state=prefix_state(1, 2, Dv))
        assert rel(o, ro) < 1e-5 and rel(kv, rkv) < 1e-5 and rel(z, rz) < 1e-5, Dv


def check_chunk_64_config():
    tc, _ = _ops()
    old = dict(tc.interpret_config)
    tc.interpret_config.update(BT=64, BV=64)
    try:
        q, k, v = inputs(2, 130, 2, 48, seed=8)
        mask = left_pad_mask(2, 130, (0, 66))
        o, (kv, z) = tc.taylor_linear_attention(q, k, v, mask=mask, initial_state=prefix_state(2, 2, 48))
        ro, (rkv, rz) = reference(q, k, v, mask=mask, initial_state=prefix_state(2, 2, 48))
        assert rel(o, ro) < 1e-5 and rel(kv, rkv) < 1e-5 and rel(z, rz) < 1e-5, rel(o, ro)
    finally:
        tc.interpret_config.clear()
        tc.interpret_config.update(old)


def check_segments_match_one_pass():
    tc, _ = _ops()
    q, k, v = inputs(2, 200, 2, 32, seed=9)
    mask = left_pad_mask(2, 200, (3, 130))
    init = prefix_state(2, 2, 32)
    o1, (kv1, z1) = tc.taylor_linear_attention(q, k, v, initial_state=init, mask=mask, segments=1)
    o3, (kv3, z3) = tc.taylor_linear_attention(q, k, v, initial_state=init, mask=mask, segments=3)
    ro, (rkv, rz) = reference(q, k, v, initial_state=init, mask=mask)
    assert rel(o3, ro) < 1e-5 and rel(kv3, rkv) < 1e-5 and rel(z3, rz) < 1e-5, rel(o3, ro)
    assert rel(o3, o1) < 1e-5 and rel(kv3, kv1) < 1e-5
    o, st = tc.taylor_linear_attention(q, k, v, segments=4, output_final_state=False)
    assert st is None and rel(o, reference(q, k, v)[0]) < 1e-5


def check_sixteen_bit_inputs():
    tc, _ = _ops()
    for dtype in (torch.float16, torch.bfloat16):
        q, k, v = inputs(2, 100, 2, 32, dtype=dtype, seed=10)
        mask = left_pad_mask(2, 100, (0, 30))
        init = prefix_state(2, 2, 32)
        o, (kv, z) = tc.taylor_linear_attention(q, k, v, initial_state=init, mask=mask)
        ro, (rkv, rz) = reference(q, k, v, initial_state=init, mask=mask)
        assert o.dtype == dtype and kv.dtype == torch.float32
        assert rel(o, ro) < 1e-2 and rel(kv, rkv) < 1e-2 and rel(z, rz) < 1e-5, (dtype, rel(o, ro), rel(kv, rkv))


def check_empty_and_no_state():
    tc, _ = _ops()
    q, k, v = inputs(1, 0, 2, 16)
    o, (kv, z) = tc.taylor_linear_attention(q, k, v)
    assert o.shape == (1, 0, 2, 16) and torch.all(kv == 0) and torch.all(z == 0)
    init = prefix_state(1, 2, 16)
    _, (kv, z) = tc.taylor_linear_attention(q, k, v, initial_state=init)
    assert rel(kv, init[0]) < 1e-6 and torch.equal(z, init[1])
    q, k, v = inputs(1, 5, 2, 16)
    o, st = tc.taylor_linear_attention(q, k, v, output_final_state=False)
    assert st is None and rel(o, reference(q, k, v)[0]) < 1e-5


def check_errors():
    from jrt_prompt.errors import JRTError
    tc, ts = _ops()
    q, k, v = inputs(1, 8, 2, 16)
    bad = [
        lambda: tc.taylor_linear_attention(q[..., :8], k[..., :8], v),  # feature dim 8
        lambda: tc.taylor_linear_attention(q, k.double(), v),  # mixed dtypes
        lambda: tc.taylor_linear_attention(q, k, v, mask=torch.ones(1, 7, dtype=torch.bool)),
        lambda: tc.taylor_linear_attention(q, k, v, mask=torch.ones(1, 8)),  # not bool
        lambda: tc.taylor_linear_attention(q, k, v, initial_state=(torch.zeros(1, 2, 272, 16), torch.zeros(1, 2, F))),
        lambda: ts.taylor_linear_attention_step(q[:, 0], k[:, 0], v[:, 0],
                                                torch.zeros(1, 2, F, 16, dtype=torch.float64), torch.zeros(1, 2, F)),
        lambda: ts.taylor_linear_attention_step(q[:, 0], k[:, 0], v[:, 0], torch.zeros(1, 2, 16, F).transpose(2, 3),
                                                torch.zeros(1, 2, F)),
    ]
    for i, call in enumerate(bad):
        try:
            call()
        except JRTError as e:
            assert str(e), i
        else:
            raise AssertionError(f"bad call {i} did not raise JRTError")


def check_layout_round_trip():
    tc, _ = _ops()
    init = prefix_state(2, 2, 16)[0]
    back = tc.from_kernel_layout(tc.to_kernel_layout(init))
    assert rel(back, init) < 1e-6, rel(back, init)
    assert tuple(tc.to_kernel_layout(init).shape) == (2, 2, 256, 16)


def check_step_equals_one_token_prefill():
    tc, ts = _ops()
    B, H, Dv = 2, 2, 24
    q, k, v = inputs(B, 1, H, Dv, seed=11)
    kv0, z0 = prefix_state(B, H, Dv)
    o_pre, (kv_pre, z_pre) = tc.taylor_linear_attention(q, k, v, initial_state=(kv0, z0))
    kv, z = kv0.clone(), z0.clone()
    ptr = kv.data_ptr(), z.data_ptr()
    o = ts.taylor_linear_attention_step(q[:, 0], k[:, 0], v[:, 0], kv, z)
    assert (kv.data_ptr(), z.data_ptr()) == ptr
    assert rel(o, o_pre[:, 0]) < 1e-5 and rel(kv, kv_pre) < 1e-5 and rel(z, z_pre) < 1e-5, rel(o, o_pre[:, 0])


def check_steps_equal_prefill():
    tc, ts = _ops()
    B, T, H, Dv = 2, 20, 2, 80  # 80: value blocks of 64 walked inside the program, the last one partial
    q, k, v = inputs(B, T, H, Dv, seed=12)
    ro, (rkv, rz) = reference(q, k, v)
    kv = torch.zeros(B, H, F, Dv)
    z = torch.zeros(B, H, F)
    outs = [ts.taylor_linear_attention_step(q[:, t], k[:, t], v[:, t], kv, z) for t in range(T)]
    o = torch.stack(outs, 1)
    assert rel(o, ro) < 1e-5 and rel(kv, rkv) < 1e-5 and rel(z, rz) < 1e-5, rel(o, ro)
    qh, kh, vh = (x.half() for x in inputs(B, 1, H, Dv, seed=13))
    oh = ts.taylor_linear_attention_step(qh[:, 0], kh[:, 0], vh[:, 0], kv, z)
    assert oh.dtype == torch.float16


def check_against_naive_module():
    """When the package's reference (naive.py) is there, ours agrees with it as well."""
    try:
        from jrt_prompt.ops.based import naive
    except ImportError:
        return "skipped: jrt_prompt.ops.based.naive not importable"
    tc, ts = _ops()
    q, k, v = inputs(2, 77, 2, 32, seed=14)
    mask = left_pad_mask(2, 77, (0, 9))
    init = prefix_state(2, 2, 32)
    o, (kv, z) = tc.taylor_linear_attention(q, k, v, initial_state=init, mask=mask)
    no, (nkv, nz) = naive.taylor_linear_attention_quadratic(q, k, v, initial_state=init, mask=mask)
    assert rel(o[mask], no[mask]) < 1e-5 and rel(kv, nkv) < 1e-5 and rel(z, nz) < 1e-5
    kv1, z1, kv2, z2 = kv.clone(), z.clone(), kv.clone(), z.clone()
    q1, k1, v1 = (x[:, 0] for x in inputs(2, 1, 2, 32, seed=15))
    assert rel(ts.taylor_linear_attention_step(q1, k1, v1, kv1, z1),
               naive.taylor_linear_attention_step(q1, k1, v1, kv2, z2)) < 1e-5
    assert rel(kv1, kv2) < 1e-5 and rel(z1, z2) < 1e-5
    return None


CHECKS = collect_checks(globals())


# ---------------------------------------------------------------------------------------------
# pytest, CPU: one interpreter child for all checks


interpreter_results, test_under_triton_interpreter = interpreter_tests(__file__, CHECKS)


# ---------------------------------------------------------------------------------------------
# pytest, GPU: compiled kernels, bf16 and fp32, outputs poisoned first


def _poisoned_prefill(tc, q, k, v, **kw):
    """Runs into a NaN-filled output buffer so that an unwritten element cannot pass."""
    real = tc._new_output
    tc._new_output = lambda x: torch.full_like(x, float("nan"))
    try:
        return tc.taylor_linear_attention(q, k, v, **kw)
    finally:
        tc._new_output = real


# The float32 prefill kernel hits an illegal memory access on an H100 (2026-11-24, twice; BENCHMARKS.md), which
# also spoils every later CUDA call of the process: not run until fixed. float32 prompts take the reference
# (PREFILL_VERIFIED in jrt_prompt/ops/based/__init__.py), so no user reaches it.
FP32_PREFILL_FAULT = pytest.mark.xfail(run=False, reason="known bug: illegal memory access in the float32 prefill "
                                       "kernel on an H100; float32 prompts take the reference")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2),
                                       pytest.param(torch.float32, 1e-3, marks=FP32_PREFILL_FAULT)])
@pytest.mark.parametrize("B,T,H,Dv", [(2, 1000, 4, 64), (1, 333, 2, 96), (3, 130, 2, 128)])
def test_gpu_prefill_matches_reference(dtype, tol, B, T, H, Dv):
    tc, _ = _ops()
    q, k, v = inputs(B, T, H, Dv, dtype=dtype, device="cuda", seed=T)
    mask = left_pad_mask(B, T, [min(b * 37, T - 1) for b in range(B)], device="cuda")
    init = prefix_state(B, H, Dv)
    for segments in (None, 1, 3):
        o, (kv, z) = _poisoned_prefill(tc, q, k, v, initial_state=tuple(t.cuda() for t in init), mask=mask,
                                       segments=segments)
        torch.cuda.synchronize()
        assert not torch.isnan(o).any() and not torch.isnan(kv).any()
        ro, (rkv, rz) = reference(q.cpu(), k.cpu(), v.cpu(), initial_state=init, mask=mask.cpu())
        assert rel(o, ro) < tol and rel(kv, rkv) < tol and rel(z, rz) < 1e-5, (segments, rel(o, ro), rel(kv, rkv))


def _variant_names() -> list[str]:
    try:
        from jrt_prompt.ops.based.triton_chunk import VARIANTS
    except Exception:  # no triton here: the GPU tests are skipped anyway
        return ["fold"]
    return list(VARIANTS)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", _variant_names())
def test_gpu_every_variant_matches_reference(variant):
    """Each variant compiled (its default or first config: no autotuning), bf16, mask, initial state, segments as
    chosen for the GPU, outputs poisoned."""
    tc, _ = _ops()
    var = tc.VARIANTS[variant]
    B, T, H, Dv = 2, 700, 4, 64
    q, k, v = inputs(B, T, H, Dv, dtype=torch.bfloat16, device="cuda", seed=5)
    mask = left_pad_mask(B, T, (0, 130), device="cuda")
    init = prefix_state(B, H, Dv)
    o, (kv, z) = _poisoned_prefill(tc, q, k, v, initial_state=tuple(t.cuda() for t in init), mask=mask,
                                   variant=variant, config=var.default_config or var.configs_16bit[0])
    torch.cuda.synchronize()
    ro, (rkv, rz) = reference(q.cpu(), k.cpu(), v.cpu(), initial_state=init, mask=mask.cpu())
    assert not torch.isnan(o).any() and torch.all(o[~mask] == 0)
    assert rel(o, ro) < 1e-2 and rel(kv, rkv) < 1e-2 and rel(z, rz) < 1e-5, (rel(o, ro), rel(kv, rkv), rel(z, rz))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float32, 1e-4)])
def test_gpu_step_matches_reference(dtype, tol):
    _, ts = _ops()
    B, H, Dv = 4, 16, 64
    q, k, v = inputs(B, 1, H, Dv, dtype=dtype, device="cuda", seed=3)
    kv0, z0 = prefix_state(B, H, Dv)
    kv, z = kv0.cuda(), z0.cuda()
    o = ts.taylor_linear_attention_step(q[:, 0], k[:, 0], v[:, 0], kv, z)
    ro, (rkv, rz) = reference(q.cpu(), k.cpu(), v.cpu(), initial_state=(kv0, z0))
    assert rel(o, ro[:, 0]) < tol and rel(kv, rkv) < 1e-5 and rel(z, rz) < 1e-5


@pytest.mark.gpu
def test_gpu_step_is_graph_capturable():
    _, ts = _ops()
    B, H, Dv = 2, 4, 64
    q, k, v = (x[:, 0] for x in inputs(B, 1, H, Dv, dtype=torch.bfloat16, device="cuda", seed=4))
    kv, z = (t.cuda() for t in prefix_state(B, H, Dv))
    kv_eager, z_eager = kv.clone(), z.clone()
    o_eager = ts.taylor_linear_attention_step(q, k, v, kv_eager, z_eager)
    kv_g, z_g = kv.clone(), z.clone()
    ts.taylor_linear_attention_step(q, k, v, kv_g.clone(), z_g.clone())  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o_g = ts.taylor_linear_attention_step(q, k, v, kv_g, z_g)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(o_g, o_eager) and torch.equal(kv_g, kv_eager) and torch.equal(z_g, z_eager)


# ---------------------------------------------------------------------------------------------
# CPU: the kernels compile for Hopper (sm_90a) with Triton's bundled ptxas; no GPU needed


def _resources(cubin: bytes) -> dict:
    """Registers and spill stack of a cubin, read with the cuobjdump Triton bundles."""
    import re
    import tempfile

    import triton
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return {"regs": int(found.group(1)), "stack": int(found.group(2))} if found else {}


def compile_for_hopper() -> dict[str, dict]:
    """Compiles every prefill variant (bf16, the benchmark's flags: no mask, no initial state, final state; and
    with every option on), the two-pass kernels, the state-only pass and the step, to sm_90a cubins."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    tc, ts = _ops()
    from jrt_prompt.ops.based import triton_split as split

    def build(fn, consts, num_warps, maxnreg=0, dtype="bf16"):
        sig = {}
        for name in fn.arg_names:
            if name in consts:
                sig[name] = "constexpr"
            elif name.endswith("_ptr"):
                sig[name] = ("*fp32" if name.startswith(("kv_", "z_", "tab_", "cz_")) else "*u8" if name == "mask_ptr"
                             else "*" + dtype)
            else:
                sig[name] = "fp32" if name == "eps" else "i32"
        options = {"num_warps": num_warps, "num_stages": 1, **({"maxnreg": maxnreg} if maxnreg else {})}
        kernel = triton.compile(ASTSource(fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                                options=options)
        return {"cubin_bytes": len(kernel.asm["cubin"]), "shared": kernel.metadata.shared,
                "wgmma": "wgmma" in kernel.asm["ptx"], **_resources(kernel.asm["cubin"])}

    built = {}
    base = dict(DT=tl.bfloat16, XDT=tl.bfloat16, PREC="tf32x3")
    for name, var in tc.VARIANTS.items():
        cx = dict(var.constexprs)
        bt, bv, warps = (var.default_config or var.configs_16bit[0])[:3]
        flags = dict(base, **cx, BT=bt, BV=bv, HAS_INIT=False, HAS_MASK=False, WRITE_STATE=True, WRITE_CHUNKS=False,
                     CK_EVERY=1)
        if not var.twopass:
            built[name] = build(var.kernel, dict(flags, WRITE_O=True), warps)
            continue
        state_bv, state_warps = var.default_config[5:7]
        sub = 2  # the state every two chunks: the walk's conditional store and the out kernel's second chunk
        built[name + ":state"] = build(tc._based_chunk_kernel, dict(flags, WRITE_O=False, WRITE_CHUNKS=True,
                                                                    CK_EVERY=sub, BV=state_bv), state_warps)
        out_flags = {k: v for k, v in flags.items() if k in ("DT", "XDT", "PREC", "BT", "BV", "NB", "FEAT")}
        built[name + ":out"] = build(split._based_chunk_out_kernel, dict(out_flags, HAS_MASK=False, G=1, SUB=sub),
                                     warps)
    bt, bv, warps, _ = tc._CONFIGS_16BIT[0]
    every = dict(base, **dict(tc.VARIANTS["fold"].constexprs), BT=bt, BV=bv, HAS_INIT=True, HAS_MASK=True,
                 WRITE_STATE=True, WRITE_CHUNKS=False, CK_EVERY=1)
    built["prefill"] = build(tc._based_chunk_kernel, dict(every, WRITE_O=True), warps)
    built["state_pass"] = build(tc._based_chunk_kernel, dict(every, WRITE_O=False, HAS_INIT=False), warps)
    built["step"] = build(ts._based_step_kernel, {"BV": 64, "BF": 64}, 4)
    return built


def test_kernels_compile_for_hopper():
    pytest.importorskip("triton.backends.nvidia")
    built = child_results(__file__, "--compile", interpret=False)
    from jrt_prompt.ops.based import triton_chunk as tc
    assert {"prefill", "state_pass", "step"} <= set(built)
    assert all(name in built or name + ":out" in built for name in tc.VARIANTS)
    assert all(b["cubin_bytes"] > 0 for b in built.values())
    assert built["prefill"]["wgmma"], "the prefill's matrix products should run on Hopper's wgmma"
    print("sm_90a resources:", json.dumps({k: {f: b.get(f) for f in ("regs", "stack", "shared")}
                                           for k, b in built.items()}))


if __name__ == "__main__":
    child_main(CHECKS, compile_for_hopper)
