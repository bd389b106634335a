"""Gated linear attention ops: chunked and recurrent forms equal the quadratic definition (state in and out,
strong decays, left padding), the in-place step equals the recurrence, and fla's naive reference agrees."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jrt_prompt.ops import gla
from jrt_prompt.ops.gla import naive
from tests.checkpoints_gla import require


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def inputs(B=2, T=19, H=3, K=8, V=5, seed=0, decay=1.0, dtype=torch.float32):
    """Random q, k, v, log-decays g <= 0 (``decay`` scales how strong), and an initial state."""
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, K, generator=gen) * 2) * decay
    h0 = torch.randn(B, H, K, V, generator=gen)
    return [t.to(dtype) for t in (q, k, v, g)] + [h0]


FORMS = {
    "recurrent": naive.recurrent_gla,
    "chunk64": naive.chunk_gla,
    "chunk5": lambda *a, **kw: naive.chunk_gla(*a, **kw, chunk_size=5),
    "chunk1": lambda *a, **kw: naive.chunk_gla(*a, **kw, chunk_size=1),
    "dispatched": gla.chunk_gla,
    "dispatched_recurrent": gla.recurrent_gla,
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", [(2, 19, 3, 8, 5), (1, 70, 2, 4, 16), (3, 1, 1, 16, 4)])
@pytest.mark.parametrize("with_state", [False, True])
def test_forms_equal_quadratic_definition(form, shape, with_state):
    B, T, H, K, V = shape
    q, k, v, g, h0 = inputs(B, T, H, K, V, seed=T)
    h0 = h0 if with_state else None
    want_o, want_s = naive.quadratic_gla(q, k, v, g, initial_state=h0)
    o, s = FORMS[form](q, k, v, g, initial_state=h0)
    assert o.shape == (B, T, H, V) and s.shape == (B, H, K, V) and s.dtype == torch.float32
    assert rel_err(o, want_o) < 1e-5
    assert rel_err(s, want_s) < 1e-5


def test_definition_matches_hand_computed_two_tokens():
    """The quadratic definition itself, against the recurrence written out for two tokens."""
    q, k, v, g, h0 = inputs(1, 2, 1, 3, 2, seed=5)
    scale = 3 ** -0.5
    a0, a1 = g[0, 0, 0].exp(), g[0, 1, 0].exp()
    s1 = a0[:, None] * h0[0, 0] + torch.outer(k[0, 0, 0], v[0, 0, 0])
    s2 = a1[:, None] * s1 + torch.outer(k[0, 1, 0], v[0, 1, 0])
    o, s = naive.quadratic_gla(q, k, v, g, initial_state=h0)
    torch.testing.assert_close(o[0, 0, 0], scale * q[0, 0, 0] @ s1)
    torch.testing.assert_close(o[0, 1, 0], scale * q[0, 1, 0] @ s2)
    torch.testing.assert_close(s[0, 0], s2)


def test_strong_decays_do_not_overflow():
    """Gates of -30 per step over 64-token chunks: exp(-sum g) would be exp(1920); the chunk form stays finite
    and equal to the recurrence. Some dims have no decay at all (g = 0), so the state is not simply zero."""
    q, k, v, g, h0 = inputs(2, 150, 2, 8, 4, seed=3)
    g = torch.where(torch.arange(8) < 4, torch.full_like(g, -30.0), torch.zeros_like(g))
    want_o, want_s = naive.recurrent_gla(q, k, v, g, initial_state=h0)
    for chunk in (64, 16):
        o, s = naive.chunk_gla(q, k, v, g, initial_state=h0, chunk_size=chunk)
        assert torch.isfinite(o).all() and torch.isfinite(s).all()
        assert rel_err(o, want_o) < 1e-5 and rel_err(s, want_s) < 1e-5
    o, s = naive.quadratic_gla(q[:, :40], k[:, :40], v[:, :40], g[:, :40], initial_state=h0)
    assert torch.isfinite(o).all()
    assert rel_err(o, want_o[:, :40]) < 1e-5


@pytest.mark.parametrize("form", ["quadratic", *FORMS])
def test_left_padding_leaves_state_unchanged(form):
    fn = naive.quadratic_gla if form == "quadratic" else FORMS[form]
    q, k, v, g, h0 = inputs(3, 12, 2, 4, 3, seed=7)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, :5] = False
    mask[2, :11] = False
    o, s = fn(q, k, v, g, initial_state=h0, mask=mask)
    for row, pads in enumerate((0, 5, 11)):
        r = slice(row, row + 1)
        o_r, s_r = fn(q[r, pads:], k[r, pads:], v[r, pads:], g[r, pads:], initial_state=h0[r])
        assert rel_err(o[r, pads:], o_r) < 1e-5
        assert rel_err(s[r], s_r) < 1e-5
        assert (o[row, :pads] == 0).all()
    all_pad = torch.zeros(1, 12, dtype=torch.bool)
    _, s_none = fn(q[:1], k[:1], v[:1], g[:1], initial_state=h0[:1], mask=all_pad)
    assert torch.equal(s_none, h0[:1])


def test_step_updates_state_in_place_and_equals_recurrence():
    q, k, v, g, h0 = inputs(2, 9, 3, 8, 5, seed=11)
    want_o, want_s = naive.recurrent_gla(q, k, v, g, initial_state=h0)
    state = h0.clone()
    ptr = state.data_ptr()
    outs = [gla.gla_step(q[:, t], k[:, t], v[:, t], g[:, t], state) for t in range(9)]
    assert state.data_ptr() == ptr
    assert rel_err(torch.stack(outs, 1), want_o) < 1e-5
    assert rel_err(state, want_s) < 1e-5


@pytest.mark.parametrize("split", [1, 17, 64, 99])
def test_reading_in_pieces_equals_one_read(split):
    q, k, v, g, h0 = inputs(2, 100, 2, 8, 8, seed=13)
    want_o, want_s = gla.chunk_gla(q, k, v, g, initial_state=h0)
    o1, s1 = gla.chunk_gla(q[:, :split], k[:, :split], v[:, :split], g[:, :split], initial_state=h0)
    o2, s2 = gla.chunk_gla(q[:, split:], k[:, split:], v[:, split:], g[:, split:], initial_state=s1)
    assert rel_err(torch.cat([o1, o2], 1), want_o) < 1e-5
    assert rel_err(s2, want_s) < 1e-5


def test_initial_state_is_not_modified_and_final_state_optional():
    q, k, v, g, h0 = inputs(seed=17)
    before = h0.clone()
    for fn in (gla.chunk_gla, gla.recurrent_gla, naive.quadratic_gla):
        fn(q, k, v, g, initial_state=h0)
    assert torch.equal(h0, before)
    assert gla.chunk_gla(q, k, v, g, output_final_state=False)[1] is None
    assert gla.recurrent_gla(q, k, v, g, output_final_state=False)[1] is None


def test_scale_and_default_scale():
    q, k, v, g, _ = inputs(K=16, seed=19)
    o_default, _ = gla.chunk_gla(q, k, v, g)
    o_one, _ = gla.chunk_gla(q, k, v, g, scale=1.0)
    assert rel_err(o_default * 4, o_one) < 1e-6  # default 1/sqrt(16)


def test_low_precision_inputs_keep_a_float32_state():
    q, k, v, g, h0 = inputs(T=40, seed=23)
    o32, s32 = gla.chunk_gla(q, k, v, g, initial_state=h0)
    ob, sb = gla.chunk_gla(*(t.bfloat16() for t in (q, k, v, g)), initial_state=h0)
    assert ob.dtype == torch.bfloat16 and sb.dtype == torch.float32
    assert rel_err(ob, o32) < 3e-2 and rel_err(sb, s32) < 3e-2
    state = h0.clone()
    step = gla.gla_step(*(t[:, 0].bfloat16() for t in (q, k, v, g)), state)
    assert step.dtype == torch.bfloat16 and state.dtype == torch.float32


@pytest.mark.parametrize("with_state", [False, True])
def test_equal_fla_naive_reference(with_state):
    fla_naive = require("fla.ops.gla.naive")
    q, k, v, g, h0 = inputs(2, 33, 2, 8, 6, seed=29)
    h0 = h0 if with_state else None
    want_o, want_s = fla_naive.naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True)
    for fn in (naive.quadratic_gla, naive.recurrent_gla, naive.chunk_gla):
        o, s = fn(q, k, v, g, initial_state=h0)
        assert rel_err(o, want_o) < 1e-5 and rel_err(s, want_s) < 1e-5
