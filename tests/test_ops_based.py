"""Based's ops: Taylor linear attention (quadratic = chunked = recurrent = step = fla's reference) and sliding-window
attention with its ring-buffer cache (full = chunked with cache = step, window rule, rotary)."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from jrt_prompt.ops.based import naive as la
from jrt_prompt.ops.based import taylor_linear_attention, taylor_linear_attention_step
from jrt_prompt.ops.window import naive as win

B, H, D, DV = 2, 3, 16, 8


def _qkv(T, seed=0, dv=DV):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, H, D, generator=g), torch.randn(B, T, H, D, generator=g),
            torch.randn(B, T, H, dv, generator=g))


def _state(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, 273, DV, generator=g), 1 + 5 * torch.rand(B, H, 273, generator=g)


def _left_pad(T, pads=(0, 5)):
    mask = torch.ones(B, T, dtype=torch.bool)
    for row, p in enumerate(pads):
        mask[row, :p] = False
    return mask


def _close(a, b, tol=1e-5):
    err = (a.double() - b.double()).abs().max().item()
    assert err <= tol * max(1.0, b.double().abs().max().item()), err


# --------------------------------------------------------------------------- Taylor linear attention
def test_feature_map_order_and_kernel():
    x, y = torch.randn(7, D), torch.randn(7, D)
    phi = la.taylor_features(x)
    assert phi.shape == (7, 273)
    assert torch.equal(phi[:, 0], torch.ones(7))
    _close(phi[:, 1:17], x / 2)
    _close(phi[:, 17:], (x[:, :, None] * x[:, None, :]).flatten(1) / (4 * math.sqrt(2)))
    s = (x * y).sum(-1) / 4
    _close((la.taylor_features(x) * la.taylor_features(y)).sum(-1), 1 + s + s * s / 2)
    _close(torch.diagonal(la.taylor_kernel(x, y)), 1 + s + s * s / 2)


def _direct(q, k, v, state, mask, eps):
    """o_i = phi(q_i).S_i / (phi(q_i).z_i + eps), one (row, token) at a time from the feature vectors."""
    kv, z = (t.clone() for t in state)
    out = torch.zeros(v.shape)
    for t in range(q.shape[1]):
        for b in range(B):
            if mask is not None and not mask[b, t]:
                continue
            pk, pq = la.taylor_features(k[b, t]), la.taylor_features(q[b, t])  # [H, 273]
            kv[b] += pk[:, :, None] * v[b, t][:, None, :]
            z[b] += pk
            out[b, t] = (pq[:, None, :] @ kv[b]).squeeze(1) / ((pq * z[b]).sum(-1, keepdim=True) + eps)
    return out, (kv, z)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_every_form_equals_the_definition(with_state, with_mask):
    T = 21
    q, k, v = _qkv(T)
    state = _state() if with_state else None
    mask = _left_pad(T) if with_mask else None
    zeros = (torch.zeros(B, H, 273, DV), torch.zeros(B, H, 273))
    want, want_state = _direct(q, k, v, state or zeros, mask, 1e-6)
    forms = [la.taylor_linear_attention_quadratic(q, k, v, state, mask),
             la.taylor_linear_attention_recurrent(q, k, v, state, mask),
             taylor_linear_attention(q, k, v, state, mask)]
    forms += [la.taylor_linear_attention_chunked(q, k, v, state, mask, chunk_size=c) for c in (1, 4, 7, 64)]
    for o, (kv, z) in forms:
        _close(o, want)
        _close(kv, want_state[0])
        _close(z, want_state[1])


def test_split_reading_and_steps_equal_one_pass():
    T = 30
    q, k, v = _qkv(T, seed=3)
    mask = _left_pad(T, (0, 9))
    full, full_state = la.taylor_linear_attention_quadratic(q, k, v, None, mask)
    o1, s = taylor_linear_attention(q[:, :12], k[:, :12], v[:, :12], None, mask[:, :12])
    o2, s = taylor_linear_attention(q[:, 12:20], k[:, 12:20], v[:, 12:20], s)
    kv, z = s
    kv_ptr = kv.data_ptr()
    steps = [taylor_linear_attention_step(q[:, t], k[:, t], v[:, t], kv, z) for t in range(20, T)]
    assert kv.data_ptr() == kv_ptr  # in place
    _close(torch.cat([o1, o2, torch.stack(steps, 1)], 1), full)
    _close(kv, full_state[0])
    _close(z, full_state[1])


def test_pads_leave_the_state_exactly_unchanged_and_read_zero():
    q, k, v = _qkv(6, seed=4)
    state = _state()
    mask = torch.zeros(B, 6, dtype=torch.bool)
    before = [t.clone() for t in state]
    for fn in (la.taylor_linear_attention_quadratic, la.taylor_linear_attention_chunked,
               la.taylor_linear_attention_recurrent):
        o, (kv, z) = fn(q, k, v, state, mask)
        assert torch.equal(kv, before[0]) and torch.equal(z, before[1])
        assert torch.count_nonzero(o) == 0
    assert all(torch.equal(a, b) for a, b in zip(state, before)), "an op modified its initial_state"


def test_output_dtype_and_no_final_state():
    q, k, v = (t.to(torch.bfloat16) for t in _qkv(5))
    o, s = taylor_linear_attention(q, k, v, output_final_state=False)
    assert o.dtype == torch.bfloat16 and s is None
    want, _ = la.taylor_linear_attention_quadratic(q.float(), k.float(), v.float())
    _close(o.float(), want, tol=1e-2)


def test_long_prompt_chunked_matches_recurrent_on_its_tail():
    """A 2k-token prompt runs in chunks (no T x T matrix); its state equals the token-by-token one."""
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(1, 2048, 2, D, generator=g), torch.randn(1, 2048, 2, D, generator=g)
    v = torch.randn(1, 2048, 2, 4, generator=g)
    o, (kv, z) = taylor_linear_attention(q, k, v)
    o_r, (kv_r, z_r) = la.taylor_linear_attention_recurrent(q, k, v)
    _close(o[:, -50:], o_r[:, -50:], tol=1e-4)
    _close(kv, kv_r, tol=1e-4)
    _close(z, z_r, tol=1e-4)


def _fla_naive():
    try:
        return importlib.import_module("fla.ops.based.naive")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"fla.ops.based.naive does not import here ({type(e).__name__}): fla comparison skipped")


def test_equals_fla_naive_references():
    fla = _fla_naive()
    q, k, v = _qkv(32, seed=6)
    ours, _ = la.taylor_linear_attention_quadratic(q, k, v, eps=1e-6)
    heads_first = [t.transpose(1, 2) for t in (q, k, v)]
    _close(fla.naive_parallel_based(*heads_first).transpose(1, 2), ours)
    _close(fla.naive_chunk_based(*heads_first, chunk_size=8).transpose(1, 2), ours, tol=1e-4)
    ours_chunked, _ = la.taylor_linear_attention_chunked(q, k, v, eps=1e-6, chunk_size=8)
    _close(ours_chunked, ours)


# --------------------------------------------------------------------------- sliding-window attention
def _win_qkv(T, seed=0, h=2, dh=4):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, T, h, dh, generator=g) for _ in range(3))


def _positions(mask):
    return mask.long().cumsum(1) - 1


def test_full_window_follows_the_rule_per_query():
    """Query at position i attends exactly to keys j with i - W <= j <= i (real tokens), by softmax."""
    T, W = 17, 5
    q, k, v = _win_qkv(T)
    mask = _left_pad(T, (0, 4))
    pos = _positions(mask)
    o = win.sliding_window_attention_full(q, k, v, pos, W, mask)
    for b in range(B):
        for i in range(T):
            if not mask[b, i]:
                assert torch.count_nonzero(o[b, i]) == 0
                continue
            keys = [j for j in range(T) if mask[b, j] and pos[b, i] - W <= pos[b, j] <= pos[b, i]]
            assert len(keys) == min(W + 1, int(pos[b, i]) + 1)
            s = torch.einsum("hd,jhd->hj", q[b, i], k[b, keys]) / 2  # Dh = 4: scale 1/2
            _close(o[b, i], torch.einsum("hj,jhd->hd", s.softmax(-1), v[b, keys]))


def test_window_of_a_256_config_is_128_back():
    """window_size 256 (the released configs) -> W = 128: key 72 reaches query 200, key 71 does not."""
    T, W = 201, 256 // 2
    q, k, v = _win_qkv(T, seed=1)
    pos = torch.arange(T).expand(B, T)
    base = win.sliding_window_attention_full(q, k, v, pos, W)
    for j, seen in ((72, True), (71, False)):
        v2 = v.clone()
        v2[:, j] += 10
        moved = (win.sliding_window_attention_full(q, k, v2, pos, W)[:, 200] - base[:, 200]).abs().max()
        assert (moved > 1e-3) == seen, (j, moved)


@pytest.mark.parametrize("chunk", [1, 3, 256])
def test_cached_pieces_and_steps_equal_the_full_window(chunk):
    T, W = 29, 4  # wraps the ring buffer several times
    q, k, v = _win_qkv(T, seed=2)
    mask = _left_pad(T, (0, 6))
    pos = _positions(mask)
    full = win.sliding_window_attention_full(q, k, v, pos, W, mask)
    cache = win.empty_cache(B, 2, W, 4, "cpu", torch.float32)
    o1, c = win.sliding_window_attention(q[:, :11], k[:, :11], v[:, :11], cache, pos[:, :11], mask[:, :11],
                                         chunk_size=chunk)
    o2, c = win.sliding_window_attention(q[:, 11:19], k[:, 11:19], v[:, 11:19], c, pos[:, 11:19], chunk_size=chunk)
    kc, vc, sc = (t.clone() for t in c)
    steps = [win.sliding_window_attention_step(q[:, t], k[:, t], v[:, t], kc, vc, sc, pos[:, t]) for t in range(19, T)]
    _close(torch.cat([o1, o2, torch.stack(steps, 1)], 1), full)
    _, c_full = win.sliding_window_attention(q, k, v, cache, pos, mask, chunk_size=chunk)
    for a, b in zip((kc, vc, sc), c_full):
        assert torch.equal(a, b)
    assert all(torch.count_nonzero(t) == 0 for t in cache), "the op modified its input cache"


def test_ring_buffer_holds_the_last_W_real_keys_and_never_pads():
    T, W = 10, 4
    q, k, v = _win_qkv(T, seed=3)
    mask = _left_pad(T, (0, 8))  # row 1: 8 pads, then 2 real tokens
    pos = _positions(mask)
    _, (kc, vc, seen) = win.sliding_window_attention(q, k, v, win.empty_cache(B, 2, W, 4, "cpu", torch.float32),
                                                     pos, mask)
    assert seen[0].tolist() == [9, 10, 7, 8]  # positions 8, 9, 6, 7 in slots p % 4, stored as p + 1
    assert torch.equal(kc[0, :, 1], k[0, 9]) and torch.equal(vc[0, :, 2], v[0, 6])
    assert seen[1].tolist() == [1, 2, 0, 0]
    assert torch.equal(kc[1, :, 0], k[1, 8]) and torch.count_nonzero(kc[1, :, 2:]) == 0
    c = (kc, vc, seen)
    _, c2 = win.sliding_window_attention(q[:, :3], k[:, :3], v[:, :3], c, pos[:, :3] * 0 + 99,
                                         torch.zeros(B, 3, dtype=torch.bool))
    assert all(torch.equal(a, b) for a, b in zip(c, c2)), "pads wrote into the cache"


def test_rotary_is_rotate_half_and_relative():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 2, 10, generator=g)  # [T, H, D], rotary on the first 8 channels
    pos = torch.tensor([0, 5, 1000])
    cos, sin = win.rotary_cos_sin(pos, 8, 10000.0, torch.float32)
    y = win.apply_rotary(x, cos, sin)
    inv = 1.0 / 10000 ** (torch.arange(0, 8, 2) / 8)
    ang = pos[:, None, None] * inv
    want = torch.cat([x[..., :4] * ang.cos() - x[..., 4:8] * ang.sin(),
                      x[..., :4] * ang.sin() + x[..., 4:8] * ang.cos(), x[..., 8:]], -1)
    _close(y, want)
    assert torch.equal(y[..., 8:], x[..., 8:])
    _close(y.norm(dim=-1), x.norm(dim=-1))
    q, k = torch.randn(8), torch.randn(8)

    def dot(pq, pk):
        cq, sq = win.rotary_cos_sin(torch.tensor(pq), 8, 10000.0, torch.float32)
        ck, sk = win.rotary_cos_sin(torch.tensor(pk), 8, 10000.0, torch.float32)
        return (win.apply_rotary(q[None], cq, sq) * win.apply_rotary(k[None], ck, sk)).sum()

    _close(dot(7, 3), dot(107, 103), tol=1e-4)


# --------------------------------------------------------------------------- GPU
def _read_state(n=300, seed=9, dv=64):
    """The state after reading ``n`` random tokens, i.e. what a prefill hands over to decoding. Its kv has equal
    x_i x_j and x_j x_i rows and its k-sum is a sum of real phi(k), so phi(q).z is a sum of kernel values
    1 + s + s^2/2 > 0: the normaliser is well conditioned. (A random signed kv with a random positive k-sum, as
    this test used before, is no state any prompt produces: its phi(q).z can nearly cancel, amplifying the
    kernels' operand rounding by up to ~1000x, and the kernels may move weight between the x_i x_j and x_j x_i
    rows of a non-symmetric kv without changing any output.)"""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, n, H, d, generator=g) for d in (D, D, dv))
    return la.taylor_linear_attention_quadratic(q, k, v)[1]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dispatch_on_cuda_equals_the_definition(dtype):
    """On CUDA the dispatchers pick the fast kernels where they import; prefill from a prefilled state with left
    padding, a second piece and steps match the CPU definition on the same (dtype-rounded) inputs. fp32: the
    kernels' fp32 products run as 3 TF32 passes (about 2^-21 relative); bf16: the state is read in bf16
    (2^-9 relative) and outputs are bf16."""
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    T = 150
    q, k, v = (t.to(dtype) for t in _qkv(T, seed=7, dv=64))
    mask = _left_pad(T, (0, 20))
    state = _read_state()
    want, (kv_w, z_w) = la.taylor_linear_attention_quadratic(q.float(), k.float(), v.float(), state, mask)
    qc, kc, vc = (t.cuda() for t in (q, k, v))
    o1, s = taylor_linear_attention(qc[:, :100], kc[:, :100], vc[:, :100], tuple(t.cuda() for t in state),
                                    mask[:, :100].cuda())
    o2, (kv, z) = taylor_linear_attention(qc[:, 100:140], kc[:, 100:140], vc[:, 100:140], s)
    steps = [taylor_linear_attention_step(qc[:, t], kc[:, t], vc[:, t], kv, z) for t in range(140, T)]
    got = torch.cat([o1, o2, torch.stack(steps, 1)], 1)
    assert got.dtype == dtype
    _close(got.float().cpu(), want, tol)
    _close(kv.cpu(), kv_w, tol)
    _close(z.cpu(), z_w, 1e-5)


@pytest.mark.gpu
def test_window_on_cuda_equals_cpu():
    T, W = 300, 128
    q, k, v = _win_qkv(T, seed=8, h=4, dh=64)
    mask = _left_pad(T, (0, 30))
    pos = _positions(mask)
    want = win.sliding_window_attention_full(q, k, v, pos, W, mask)
    cache = win.empty_cache(B, 4, W, 64, "cuda", torch.float32)
    qc, kc, vc, pc, mc = (t.cuda() for t in (q, k, v, pos, mask))
    o1, c = win.sliding_window_attention(qc[:, :250], kc[:, :250], vc[:, :250], cache, pc[:, :250], mc[:, :250])
    steps = [win.sliding_window_attention_step(qc[:, t], kc[:, t], vc[:, t], *c, pc[:, t]) for t in range(250, T)]
    _close(torch.cat([o1, torch.stack(steps, 1)], 1).cpu(), want, 1e-4)
