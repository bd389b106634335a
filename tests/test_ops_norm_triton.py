"""The one-launch RMSNorm kernel (``jrt_prompt.ops.norm.triton_norm``) against its reference, both roundings.

CPU: under Triton's interpreter in one child process (see tests/triton_child.py). GPU (``pytest -m gpu``): the
same checks compiled, and the decode-size and prefill-size rows of real models.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

if __package__ in (None, ""):  # run as a script (the interpreter child): make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.triton_child import child_main, collect_checks, interpreter_tests, on_device  # noqa: E402

DEVICE = "cpu"


def _ops():
    from jrt_prompt.ops.norm import naive, triton_norm
    return triton_norm.rms_norm, naive.rms_norm


def _cases():
    g = torch.Generator().manual_seed(0)
    for rows, dim in ((3, 32), (1, 48), (5, 100)):
        x = (torch.randn(rows, dim, generator=g) * 3 + 0.5).to(DEVICE)
        w = (1 + 0.1 * torch.randn(dim, generator=g)).to(DEVICE)
        yield x, w


def check_both_roundings_and_casts():
    k, r = _ops()
    for x, w in _cases():
        for hf in (True, False):
            for x_dtype, w_dtype, cast in ((torch.float32, torch.float32, None),
                                           (torch.float32, torch.bfloat16, torch.bfloat16),
                                           (torch.bfloat16, torch.bfloat16, None),
                                           (torch.float32, torch.float32, torch.float16),
                                           (torch.bfloat16, torch.float32, None)):
                for weight in (w.to(w_dtype), None):
                    a = k(x.to(x_dtype), weight, 1e-5, hf_rounding=hf, cast=cast)
                    b = r(x.to(x_dtype), weight, 1e-5, hf_rounding=hf, cast=cast)
                    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype)
                    exact = {x_dtype, w_dtype, cast or x_dtype} == {torch.float32}  # no 16-bit rounding
                    tol = 1e-6 if exact else 1e-2
                    err = ((a.double() - b.double()).norm() / b.double().norm()).item()
                    assert err < tol, (hf, x_dtype, w_dtype, cast, weight is None, err)


def check_out_dtype_and_3d():
    k, r = _ops()
    x = torch.randn(2, 3, 40, device=DEVICE)
    w = torch.rand(40, device=DEVICE) + 0.5
    a = k(x, w, 1e-6, hf_rounding=False, out_dtype=torch.bfloat16)
    b = r(x, w, 1e-6, hf_rounding=False, out_dtype=torch.bfloat16)
    assert a.shape == (2, 3, 40) and a.dtype == torch.bfloat16
    assert ((a.float() - b.float()).abs().max() <= 1e-2 * b.float().abs().max()), (a - b).abs().max()
    nc = x.transpose(0, 1)[..., :]  # not contiguous across rows
    assert torch.allclose(k(nc, w, 1e-6, hf_rounding=True), r(nc, w, 1e-6, hf_rounding=True), atol=1e-6)


def check_add_then_norm():
    """The residual add inside the norm kernel: the sum (float32 or not) and the normed output, both roundings."""
    from jrt_prompt.ops.norm import naive, triton_norm
    g = torch.Generator().manual_seed(1)
    for h_dtype, y_dtype, w_dtype, residual_fp32, cast in ((torch.float32, torch.float32, torch.float32, True, None),
                                                           (torch.bfloat16, torch.bfloat16, torch.bfloat16, True,
                                                            torch.bfloat16),
                                                           (torch.float32, torch.bfloat16, torch.bfloat16, True,
                                                            torch.bfloat16),
                                                           (torch.bfloat16, torch.bfloat16, torch.bfloat16, False,
                                                            torch.bfloat16),
                                                           (torch.float32, torch.bfloat16, torch.float32, True, None)):
        h = (torch.randn(3, 40, generator=g) * 2).to(DEVICE, h_dtype)
        y = torch.randn(3, 40, generator=g).to(DEVICE, y_dtype)
        w = (1 + 0.1 * torch.randn(40, generator=g)).to(DEVICE, w_dtype)
        for hf in (True, False):
            kw = dict(hf_rounding=hf, residual_fp32=residual_fp32, cast=cast)
            (ra, oa), (rb, ob) = triton_norm.add_rms_norm(h, y, w, 1e-5, **kw), naive.add_rms_norm(h, y, w, 1e-5, **kw)
            assert ra.dtype == rb.dtype and oa.dtype == ob.dtype, (ra.dtype, rb.dtype, oa.dtype, ob.dtype)
            exact = {h_dtype, y_dtype, w_dtype, cast or torch.float32} == {torch.float32}
            tol = 1e-6 if exact else 1e-2
            for a, b in ((ra, rb), (oa, ob)):
                err = ((a.double() - b.double()).norm() / b.double().norm()).item()
                assert err < (1e-6 if a.dtype == torch.float32 and a is ra else tol), (h_dtype, residual_fp32, hf, err)


def check_gated_group_norm():
    """Mamba-2's output norm: groups, gate first or norm first, no weight, bf16, a strided z (a split view)."""
    from jrt_prompt.ops.norm import naive, triton_norm
    g = torch.Generator().manual_seed(2)
    for dtype in (torch.float32, torch.bfloat16):
        zy = torch.randn(2, 5, 3 * 48, generator=g).to(DEVICE, dtype)
        z, y = zy[..., :48], zy[..., 48:96]  # z strided like in_proj's split
        w = (1 + 0.1 * torch.randn(48, generator=g)).to(DEVICE, dtype)
        for group_size in (48, 16, 12):
            for nbg in (False, True):
                for weight in (w, None):
                    a = triton_norm.gated_rms_norm(y, z, weight, group_size, 1e-5, nbg)
                    b = naive.gated_rms_norm(y, z, weight, group_size, 1e-5, nbg)
                    assert a.dtype == b.dtype == dtype and a.shape == b.shape
                    err = ((a.double() - b.double()).norm() / b.double().norm()).item()
                    assert err < (1e-6 if dtype == torch.float32 else 1e-2), (dtype, group_size, nbg, err)


CHECKS = collect_checks(globals())


interpreter_results, test_under_triton_interpreter = interpreter_tests(__file__, CHECKS)


def test_fused_step_equals_unfused_on_cpu():
    """RecurrentLM.step (adds inside the norms) equals the per-block step (add, then norm) on CPU."""
    from tests.toy_model import toy_lm
    lm = toy_lm(40)
    state_a, state_b = lm.init_state(2), lm.init_state(2)
    tok = torch.tensor([3, 7])
    with torch.no_grad():
        for _ in range(3):
            la, _ = lm.step(tok, state_a)
            h = lm.embedding(tok)
            for block, st in zip(lm.blocks, state_b.layers):
                h = block.step(h, st, state_b.seen)
            state_b.seen.add_(1)
            lb = lm.lm_head(lm.norm_f(h).to(lm.lm_head.weight.dtype))
            assert torch.allclose(la, lb, atol=1e-6), (la - lb).abs().max()
            tok = la.argmax(-1)


def test_fused_forward_equals_unfused_on_cpu():
    """RecurrentLM.forward (adds inside the norms) equals the per-block forward (add, then norm) on CPU, with a
    left-padded row."""
    from tests.toy_model import toy_lm
    lm = toy_lm(40)
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :3] = False
    with torch.no_grad():
        la, sa = lm(ids, attention_mask=mask)
        state = lm.init_state(2)
        positions = (mask.long().cumsum(1) - 1)
        h = lm.embedding(ids)
        layers = []
        for block, st in zip(lm.blocks, state.layers):
            h, st = block(h, st, mask=mask, positions=positions)
            layers.append(st)
        lb = lm.lm_head(lm.norm_f(h).to(lm.lm_head.weight.dtype))
    assert torch.allclose(la[mask], lb[mask], atol=1e-6), (la - lb).abs().max()
    for a, b in zip(sa.layers, layers):
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_modules_take_the_reference_on_cpu():
    from jrt_prompt.layers.fla_norm import FlaRMSNorm
    from jrt_prompt.layers.norm import RMSNorm
    from jrt_prompt.ops.norm import naive
    x = torch.randn(2, 5, 16)
    for norm, hf in ((RMSNorm(16), True), (FlaRMSNorm(16), False)):
        with torch.no_grad():
            norm.weight.mul_(1.5)
        assert torch.equal(norm(x, cast=torch.bfloat16),
                           naive.rms_norm(x, norm.weight, norm.eps, hf_rounding=hf, cast=torch.bfloat16))


@pytest.mark.gpu
def test_gpu_checks():
    with on_device(globals(), "cuda"):
        for fn in CHECKS.values():
            fn()


if __name__ == "__main__":
    child_main(CHECKS)
