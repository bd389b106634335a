"""Does a model's second read of the document depend on the question asked in between? (CPU, saved weights.)

For each test question (the synthetic suite's test split, as ``evaluation.py`` builds it) the JRT prompt is
C + M + C + F, with C the document, M = "\\n\\nQuestion: Q\\n\\n" and F = "\\n\\nQuestion: Q\\nAnswer:"; the plain
prompt is C + F. The control replaces M with "\\n\\n" only: C + "\\n\\n" + C, the document read twice without the
question in between. Per layer with a recurrent matrix state (Based: the linear-attention layers' "kv";
Mamba-2: "ssm") it prints, averaged over questions:

- ``state``: ||S(C,M,C) - S(C,sep,C)|| / ||S(C,sep,C)||, the whole state after the second read;
- ``2nd read``: ||D_q - D_0|| / ||D_0|| with D_q = S(C,M,C) - S(C,M) and D_0 = S(C,sep,C) - S(C,sep), what the
  second read changed in the state, with and without the question before it. For a layer without decay (Based's
  linear attention) D is exactly the sum of the second copy's phi(k) v^T, so this is how much the question changed
  the keys and values the layer stores on the second read; for a decaying layer it also contains what was erased.
- ``past N``: the same for the second copy's tokens after its first N (``--near``, default 32: how far back
  Based's sliding window sees), i.e. D = S(C,M,C) - S(C,M,C[:N]): what the question changed where the layers
  below it could reach the question only through earlier linear-attention layers (Based: none below its first).

and at the answer position (the last token of F): KL(p_jrt || p_plain), the share of questions whose greedy next
token differs between JRT and plain, the same two for JRT vs the control C + "\\n\\n" + C + F, and the share of
greedy first tokens that start the answer (plain / JRT / control).

    python examples/recall_training/probe_jrt_states.py --model-dir /tmp/based --records 24,48 --documents 25

``--model-dir`` is a folder ``jrt_prompt.load`` reads (config.json, model.safetensors, tokenizer files).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jrt_prompt  # noqa: E402
from examples.recall_training.data import SampleEncoder  # noqa: E402
from examples.recall_training.evaluation import test_examples  # noqa: E402


def find_copy(ids: list[int], n: int) -> int:
    """Start of the second copy of ids[:n] in ids."""
    for s in range(n, len(ids) - n + 1):
        if ids[s:s + n] == ids[:n]:
            return s
    raise RuntimeError("second context copy not found in the JRT prompt ids")


def matrix_states(state) -> dict[str, torch.Tensor]:
    """{"L<i>.<name>": tensor} for the recurrent matrix states (Based kv, Mamba-2 ssm)."""
    out = {}
    for i, layer in enumerate(state.layers):
        for name in ("kv", "ssm"):
            if name in layer:
                out[f"L{i}.{name}"] = layer[name].float()
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@torch.no_grad()
def probe(model_dir: str, sizes: list[int], documents: int, questions: int, near: int = 32) -> dict:
    """Prints the tables; returns {records: {"state" | "read" | "far": {layer: mean}}}."""
    torch.set_grad_enabled(False)
    engine = jrt_prompt.load(model_dir)
    model, tok = engine.model.float().eval(), engine.tokenizer
    enc = SampleEncoder(tok, check_every=0)
    sep = enc.first_question[:len(enc.first_question) - len(enc.question_head)]  # "\n\n"

    def read(ids, state=None):
        logits, st = model(torch.tensor([ids]), state=state.fork() if state is not None else None)
        return logits[0, -1].float(), st

    print(f"model {model_dir}  arch {model.config.arch}  layers {len(model.blocks)}")
    results = {}
    for records in sizes:
        t0 = time.time()
        examples = test_examples(records, documents, questions=questions)
        state_d, read_d, far_d, kl_plain, kl_ctrl, diff_plain, diff_ctrl = {}, {}, {}, [], [], [], []
        first_ok = {"plain": [], "jrt": [], "ctrl": []}
        cache = {}
        for ex in examples:
            ids, n = enc.prompt_ids("jrt", ex.context, ex.question, tokenizer=tok)
            s2 = find_copy(ids, n)
            C, M, F = ids[:n], ids[n:s2], ids[s2 + n:]
            plain, n_plain = enc.prompt_ids("plain", ex.context, ex.question, tokenizer=tok)
            if plain != C + F or n_plain != n:
                raise RuntimeError("plain prompt is not C + F")
            key = tuple(C)
            if key not in cache:  # per document: S(C), S(C,sep), S(C,sep,C)
                _, sc = read(C)
                _, scs = read(sep, sc)
                _, scsn = read(C[:near], scs)
                _, scsc = read(C[near:], scsn)
                cache = {key: (sc, scs, scsn, scsc)}
            sc, scs, scsn, scsc = cache[key]
            _, scm = read(M, sc)
            _, scmn = read(C[:near], scm)
            _, scmc = read(C[near:], scmn)
            lp_jrt = torch.log_softmax(read(F, scmc)[0], -1)
            lp_plain = torch.log_softmax(read(F, sc)[0], -1)
            lp_ctrl = torch.log_softmax(read(F, scsc)[0], -1)
            a, b, c, d, e, f = (matrix_states(x) for x in (scmc, scsc, scm, scs, scmn, scsn))
            for name in a:
                state_d.setdefault(name, []).append(rel(a[name], b[name]))
                read_d.setdefault(name, []).append(rel(a[name] - c[name], b[name] - d[name]))
                far_d.setdefault(name, []).append(rel(a[name] - e[name], b[name] - f[name]))
            kl = lambda p, q: float((p.exp() * (p - q)).sum())  # noqa: E731
            kl_plain.append(kl(lp_jrt, lp_plain))
            kl_ctrl.append(kl(lp_jrt, lp_ctrl))
            g = {k: int(v.argmax()) for k, v in (("jrt", lp_jrt), ("plain", lp_plain), ("ctrl", lp_ctrl))}
            diff_plain.append(g["jrt"] != g["plain"])
            diff_ctrl.append(g["jrt"] != g["ctrl"])
            answer_first = {tuple(enc.fast(f" {a}")["input_ids"][:1]) for a in ex.answers}
            for k in first_ok:
                first_ok[k].append((g[k],) in answer_first)
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        print(f"\n{records} records, {len(examples)} questions, context {n} tokens ({time.time() - t0:.0f} s)")
        print(f"| layer.state | state: (C,Q,C) vs (C,sep,C) | 2nd read: D_q vs D_0 | past {near}: D_q vs D_0 |")
        print("|---|---|---|---|")
        for name in state_d:
            print(f"| {name} | {mean(state_d[name]):.3f} | {mean(read_d[name]):.3f} | {mean(far_d[name]):.3g} |")
        print(f"answer position: KL(jrt||plain) {mean(kl_plain):.3f} nats, greedy token differs "
              f"{100 * mean(diff_plain):.0f}%; KL(jrt||ctrl) {mean(kl_ctrl):.3f}, differs {100 * mean(diff_ctrl):.0f}%")
        print("greedy first token = answer's first token: " +
              ", ".join(f"{k} {100 * mean(v):.0f}%" for k, v in first_ok.items()))
        results[records] = {key: {name: mean(xs) for name, xs in d.items()}
                            for key, d in (("state", state_d), ("read", read_d), ("far", far_d))}
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--records", default="24,48")
    ap.add_argument("--documents", type=int, default=25)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--near", type=int, default=32, help="the second copy's first tokens left out of 'past N'")
    args = ap.parse_args()
    probe(args.model_dir, [int(r) for r in args.records.split(",")], args.documents, args.questions, args.near)


if __name__ == "__main__":
    main()
