"""Checks every RecurrentLM must pass: reading in pieces, one step at a time, left-padded in a
batch, or from a forked state gives the logits of one full forward pass."""

from __future__ import annotations

import torch

from jrt_prompt.model import RecurrentLM


def _close(a, b, tol, what):
    err = (a.double() - b.double()).abs().max().item()
    scale = b.double().abs().max().item() + 1e-12
    assert err <= tol * max(1.0, scale), f"{what}: max abs diff {err:.3e} (scale {scale:.3e}, tol {tol})"


@torch.no_grad()
def check_split_points(lm: RecurrentLM, vocab: int, *, length=23, batch=2, trials=3, tol=1e-4, seed=0):
    """[0, a) then [a, b) then one token at a time equals one forward over [0, L)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    full, full_state = lm(ids)
    for _ in range(trials):
        a = int(torch.randint(1, length - 2, (1,), generator=g))
        b = int(torch.randint(a + 1, length, (1,), generator=g))
        l1, s = lm(ids[:, :a])
        l2, s = lm(ids[:, a:b], s)
        steps = []
        for t in range(b, length):
            lt, s = lm.step(ids[:, t], s)
            steps.append(lt[:, None])
        got = torch.cat([l1, l2, *steps], dim=1)
        _close(got, full, tol, f"split at a={a}, b={b} then steps")
        for x, y in zip(s.tensors(), full_state.tensors()):
            _close(x, y, tol, f"final state after split at a={a}, b={b}")


@torch.no_grad()
def check_left_padding(lm: RecurrentLM, vocab: int, *, lengths=(9, 4, 13), pad_id=0, tol=1e-4, seed=1, prefix=5):
    """A left-padded batch (after a shared non-empty state, so pads sit mid-stream) equals each row alone."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(0, vocab, (n,), generator=g) for n in lengths]
    L = max(lengths)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, L - len(r):] = r
        mask[i, L - len(r):] = 1
    pre = torch.randint(0, vocab, (len(rows), prefix), generator=g)
    for start in ("empty", "prefilled"):
        state = None if start == "empty" else lm(pre)[1]
        logits, bstate = lm(ids, state, attention_mask=mask)
        nxt = torch.randint(0, vocab, (len(rows),), generator=g)
        blogits, _ = lm.step(nxt, bstate.fork())
        for i, r in enumerate(rows):
            s_i = None if state is None else state.select([i])
            li, si = lm(r[None], s_i)
            _close(logits[i, L - len(r):], li[0], tol, f"row {i} logits, left-padded batch from {start} state")
            step_i, _ = lm.step(nxt[i:i + 1], si.fork())
            _close(blogits[i], step_i[0], tol, f"row {i} next-step logits after a left-padded batch from {start} state")
            for x, y in zip(bstate.select([i]).tensors(), si.tensors()):
                _close(x, y, tol, f"row {i} state after a left-padded batch from {start} state")


@torch.no_grad()
def check_fork(lm: RecurrentLM, vocab: int, *, tol=1e-4, seed=2):
    """A forked state reused twice equals a fresh read; forward never mutates its input state; step mutates
    only the state it is given."""
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, vocab, (2, 11), generator=g)
    cont = torch.randint(0, vocab, (2, 6), generator=g)
    _, s = lm(prefix)
    before = [t.clone() for t in s.tensors()]
    fresh, _ = lm(torch.cat([prefix, cont], 1))
    for _ in range(2):
        got, _ = lm(cont, s.fork())
        _close(got, fresh[:, 11:], tol, "continuation from a forked state")
    got, _ = lm(cont, s)
    _close(got, fresh[:, 11:], tol, "continuation from the original state after forks")
    f = s.fork()
    lm.step(cont[:, 0], f)
    for x, y in zip(s.tensors(), before):
        assert torch.equal(x, y), "forward or a step on a fork changed the original state"
    empty = lm.init_state(2)
    got, _ = lm(prefix, empty)
    _close(got, lm(prefix)[0], tol, "forward from an explicit empty state")
    assert all(torch.count_nonzero(t) == 0 for t in empty.tensors()), "forward mutated the empty state"


@torch.no_grad()
def check_load_into_static_state(lm: RecurrentLM, vocab: int, *, tol=1e-4, seed=3):
    """A prefilled state copied into ``init_state``'s buffers (what a CUDA-graph decode does before replaying)
    steps like the prefilled state itself (a layer's forward may name its tensors in another order)."""
    g = torch.Generator().manual_seed(seed)
    _, s = lm(torch.randint(0, vocab, (2, 9), generator=g))
    static = lm.init_state(2).copy_(s)
    tok = torch.randint(0, vocab, (2,), generator=g)
    _close(lm.step(tok, static)[0], lm.step(tok, s.fork())[0], tol, "a step from a state loaded into static buffers")


@torch.no_grad()
def check_graphed_prefill(lm: RecurrentLM, vocab: int, *, tol=1e-3, seed=4, chunk=64, capture=True):
    """A prefill replayed from CUDA graphs, in pieces padded to bucket lengths, equals the eager prefill:
    lengths below, at and across the piece length, a ragged left-padded batch, from an empty and from a
    prefilled state (which it must not change), with graphs replayed again for later prompts. ``capture=False``
    (any device): the same pieces on the same static buffers without graphs."""
    from jrt_prompt.cuda_graph import GraphedPrefill
    from jrt_prompt.generate import prefill

    g = torch.Generator().manual_seed(seed)
    graphs = GraphedPrefill(lm, 2, chunk, capture=capture)
    _, start = prefill(lm, [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (7, 3)])
    before = [t.clone() for t in start.tensors()]
    for lengths in ((5, 5), (31, 31), (64, 64), (65, 65), (100, 37), (150, 150)):
        rows = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]
        for name, state in (("empty", None), ("prefilled", start)):
            want, wstate = prefill(lm, rows, state)
            got, gstate = prefill(lm, rows, state, graph=graphs)
            what = f"graphed prefill of {lengths} tokens from the {name} state"
            _close(got, want, tol, what + ": logits")
            for x, y in zip(*gstate.paired(wstate)):  # by name: a forward may order its tensors otherwise
                _close(x, y, tol, what + ": state")
    for x, y in zip(start.tensors(), before):
        assert torch.equal(x, y), "a graphed prefill changed the state it started from"


def check_all(lm: RecurrentLM, vocab: int, tol=1e-4, pieces=True):
    check_split_points(lm, vocab, tol=tol)
    check_left_padding(lm, vocab, tol=tol)
    check_fork(lm, vocab, tol=tol)
    check_load_into_static_state(lm, vocab, tol=tol)
    if pieces:  # the graphed prefill's piece logic, without graphs
        check_graphed_prefill(lm, vocab, tol=tol, chunk=32, capture=False)
