"""GLA on CUDA (run on a GPU: ``pytest -m gpu tests/test_gla_gpu.py``, with flash-linear-attention installed).

- our adapter's logits equal fla's own GLAForCausalLM forward on the same random weights, in fp32 and bf16,
  through fla's kernels (our fast path) and through our PyTorch references on the GPU;
- our fast-path ops (fla's chunk / fused-recurrent kernels behind jrt_prompt.ops.gla) equal our references;
- reading in pieces and stepping equal one read; a decode step replays inside a CUDA graph.
"""

from __future__ import annotations

import pytest
import torch

from jrt_prompt.adapters import gla as adapter
from jrt_prompt.ops import gla as ops
from jrt_prompt.ops.backend import reference_ops
from jrt_prompt.ops.gla import naive
from tests.checkpoints_gla import VARIANTS, fla_gla_model, gla_config, random_weights, require

pytestmark = pytest.mark.gpu

# fp32 through Triton dots may use TF32 inside fla's chunk kernels; bf16 rounds every layer's output.
REL_TOL = {torch.float32: 1e-3, torch.bfloat16: 1e-2}


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.fixture(scope="module", autouse=True)
def needs_fla():
    require("fla.ops.gla")


def models(variant, dtype, seed=0):
    cfg = gla_config(**VARIANTS[variant])
    theirs = fla_gla_model(cfg, random_weights(cfg, seed=seed)).to("cuda", dtype)
    return theirs, adapter.from_model(theirs)


def batch(length, seed=0, pads=(0, 0)):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (len(pads), length), generator=gen).cuda()
    mask = torch.ones(len(pads), length, dtype=torch.long, device="cuda")
    for row, p in enumerate(pads):
        mask[row, :p] = 0
    return ids, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("length", [40, 200], ids=["recurrent_kernel", "chunk_kernel"])
@pytest.mark.parametrize("ops_kind", ["fast", "reference"])
@torch.no_grad()
def test_logits_equal_fla_forward(dtype, variant, length, ops_kind):
    """fp32: ours == fla's forward. bf16: two bf16 computations of these O(1)-activation random models each sit
    about 1% from the fp32 answer, with independent rounding, so besides ours ~= fla's bf16 we require ours to
    be no further from fla's fp32 forward than fla's own bf16 forward is."""
    theirs, ours = models(variant, dtype)
    ids, mask = batch(length, pads=(0, length // 3, length - 5))
    real = mask.bool()
    want_plain = theirs(ids).logits
    want_padded = theirs(ids, attention_mask=mask).logits
    with reference_ops(ops_kind == "reference"):
        got_plain, _ = ours(ids)
        got_padded, _ = ours(ids, attention_mask=mask)
    if dtype == torch.float32:
        assert rel_err(got_plain, want_plain) < REL_TOL[dtype]
        assert rel_err(got_padded[real], want_padded[real]) < REL_TOL[dtype]
        return
    exact = models(variant, torch.float32)[0]
    truth_plain, truth_padded = exact(ids).logits, exact(ids, attention_mask=mask).logits
    for got, want, truth in ((got_plain, want_plain, truth_plain),
                             (got_padded[real], want_padded[real], truth_padded[real])):
        assert rel_err(got, want) < 2 * REL_TOL[dtype]
        assert rel_err(got, truth) <= 1.25 * rel_err(want, truth) + 1e-3


def test_fast_path_runs_fla_kernels(monkeypatch):
    import fla.ops.gla as fla_gla

    calls = []
    for name in ("chunk_gla", "fused_recurrent_gla"):
        real = getattr(fla_gla, name)
        monkeypatch.setattr(fla_gla, name, lambda *a, _f=real, _n=name, **kw: calls.append(_n) or _f(*a, **kw))
    _, ours = models("default", torch.bfloat16)
    with torch.no_grad():
        ours(batch(200)[0])
        ours(batch(20)[0])
    assert "chunk_gla" in calls and "fused_recurrent_gla" in calls


def op_inputs(B, T, H, K, V, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, generator=gen) * 2) / 4
    h0 = torch.randn(B, H, K, V, generator=gen)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[-1, : T // 2] = False
    return [t.cuda().to(dtype) for t in (q, k, v, g)] + [h0.cuda(), mask.cuda()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("length", [50, 300])
@pytest.mark.parametrize("fn", ["chunk_gla", "recurrent_gla"])
def test_fast_ops_equal_reference(dtype, length, fn):
    q, k, v, g, h0, mask = op_inputs(2, length, 4, 64, 128, dtype)
    o, s = getattr(ops, fn)(q, k, v, g, initial_state=h0, mask=mask)
    want_o, want_s = naive.chunk_gla(q, k, v, g, initial_state=h0, mask=mask)
    tol = 2 * REL_TOL[dtype]
    assert o.dtype == v.dtype and s.dtype == torch.float32
    assert rel_err(o, want_o) < tol and rel_err(s, want_s) < tol
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    # a fully padded row leaves its state exactly as it was
    full_pad = mask.clone()
    full_pad[0] = False
    _, s_pad = getattr(ops, fn)(q, k, v, g, initial_state=h0, mask=full_pad)
    assert torch.equal(s_pad[0], h0[0])


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_pieces_and_steps_equal_one_read_on_gpu(variant):
    _, ours = models(variant, torch.float32)
    ids, _ = batch(220, pads=(0, 0))
    full, full_state = ours(ids)
    a, s = ours(ids[:, :130])  # chunk kernel
    b, s = ours(ids[:, 130:200], s)  # chunk kernel from a state
    c, s = ours(ids[:, 200:210], s)  # recurrent kernel from a state
    steps = [ours.step(ids[:, t], s)[0][:, None] for t in range(210, 220)]
    assert rel_err(torch.cat([a, b, c, *steps], 1), full) < REL_TOL[torch.float32]
    for x, y in zip(s.tensors()[1:], full_state.tensors()[1:]):
        assert rel_err(x, y) < REL_TOL[torch.float32]


@pytest.mark.parametrize("variant", ["default", "conv_gqa_featuremap"])
@torch.no_grad()
def test_decode_step_replays_in_a_cuda_graph(variant):
    _, ours = models(variant, torch.bfloat16)
    ids, _ = batch(30, pads=(0, 0))
    _, state = ours(ids[:, :20])
    eager_state = state.fork()
    token = ids[:, 20].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the graph
        ours.step(token, state.fork())
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits, _ = ours.step(token, state)
    for t in range(20, 30):
        want, _ = ours.step(ids[:, t], eager_state)
        token.copy_(ids[:, t])
        graph.replay()
        assert rel_err(logits, want) < 1e-3
    assert torch.equal(state.seen, eager_state.seen)
    for x, y in zip(state.tensors()[1:], eager_state.tensors()[1:]):
        assert rel_err(x, y) < 1e-3


@pytest.mark.parametrize("variant", ["default", "conv_gqa_featuremap"])
@torch.no_grad()
def test_prefill_replays_in_cuda_graphs(variant):
    """``Engine(graph_prefill=True)``'s prefill (pieces replayed from CUDA graphs) equals the eager one."""
    from tests.properties import check_graphed_prefill
    _, ours = models(variant, torch.float32)
    check_graphed_prefill(ours, 64, tol=2e-3)
