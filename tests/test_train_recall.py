"""examples/train_recall.py and its parts (examples/recall_training/): tokenizer, training ids, batches, a few
training steps of every architecture, the Mamba scan written as GLA, saving + loading + answering through the
engine, the demo export, the summary table. CPU, tiny sizes; the GPU checks are marked ``gpu``."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import train_recall  # noqa: E402
from recall_training import data, evaluation, loop, models, report  # noqa: E402
from recall_training.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer, single_token_share  # noqa: E402

import jrt_prompt  # noqa: E402
from jrt_prompt.eval import synthetic  # noqa: E402
from jrt_prompt.prompt import JRTPrompt  # noqa: E402


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(build_tokenizer(), folder)
    return folder


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


# --------------------------------------------------------------------------- tokenizer
def test_tokenizer_loads_offline_and_fits_the_suite(tok_dir, tok):
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(str(tok_dir))
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in tok_dir.iterdir()}
    assert again.eos_token == "<|endoftext|>" and again.pad_token_id == again.eos_token_id
    assert 300 <= len(again) <= 2048
    assert single_token_share(again) == 1.0  # every name, attribute and value is one token with its space
    text = "Zürich, 東京 and ½ — any text still encodes 🙂"
    assert again.decode(again(text, add_special_tokens=False)["input_ids"]) == text


def test_tokenizer_is_deterministic(tok):
    other = build_tokenizer()
    text = synthetic.documents(1, records=5)[0].text
    assert other(text)["input_ids"] == tok(text)["input_ids"]


# --------------------------------------------------------------------------- training ids
@pytest.mark.parametrize("fmt", synthetic.FORMATS)
def test_sample_ids_are_the_inference_ids(tok, fmt):
    enc = data.SampleEncoder(tok, check_every=1)
    doc = synthetic.documents(1, "train", records=3)[0]
    fact = doc.asked[0]
    sample = enc.encode(fmt, doc, fact)
    want = synthetic.prompt_text(fmt, doc.text, fact.question) + f" {fact.value}\n" + tok.eos_token
    assert tok.decode(sample.ids) == want
    prompt = sample.ids[:sample.answer_start]
    if fmt in ("plain", "jrt"):  # exactly what the engine feeds for that prompt
        assert prompt == JRTPrompt("generic", 1 if fmt == "plain" else 2).encode(tok, doc.text, fact.question).ids
    else:  # the JRT prompt's ids without its first read
        jrt = JRTPrompt("generic", 2).encode(tok, doc.text, fact.question)
        assert jrt.ids[-len(prompt) + 2:] == prompt[2:] and len(prompt) < len(jrt.ids)
    assert tok.decode(sample.ids[sample.answer_start:sample.answer_start + 1]).strip() == fact.value


def test_question_first_rows_can_start_as_the_jrt_prompts_second_read(tok):
    """--question-first-lead separator: a question-first row is the JRT prompt's ids minus its first context copy,
    token for token ("\\n\\nQuestion: ..."); the default lead keeps runs 1-6's rows ("Question: ..." first)."""
    enc = data.SampleEncoder(tok, check_every=1)
    doc = synthetic.documents(1, "train", records=3)[0]
    fact = doc.asked[0]
    jrt = JRTPrompt("generic", 2).encode(tok, doc.text, fact.question)
    sep = enc.encode("question_first", doc, fact, lead="separator")
    assert sep.ids[:sep.answer_start] == jrt.ids[jrt.context_tokens:]
    assert tok.decode(sep.ids).startswith("\n\nQuestion: " + fact.question + "\n\n" + doc.text)
    old = enc.encode("question_first", doc, fact)
    assert sep.ids[2:] == old.ids and tok.decode(old.ids).startswith("Question:")  # two "\n" tokens in front
    assert old.ids == data.SampleEncoder(tok).encode("question_first", doc, fact, lead="question").ids
    with pytest.raises(ValueError, match="lead"):
        enc.prompt_ids("question_first", doc.text, fact.question, lead="newline")


def test_distractor_rows_are_a_jrt_prompt_whose_first_copy_is_another_document(tok):
    """distractor_jrt (D', Q, C, Q): the JRT prompt's ids with D' (same size and attributes, other train-split names)
    as its first copy; answer-only; D' shares no name with C while C has at most half the names."""
    enc = data.SampleEncoder(tok, check_every=1)
    rng = __import__("random").Random(0)
    for records, attributes in ((3, 2), (20, 3), (300, 1)):
        doc = synthetic.Generator("train", 5, records=records, attributes=attributes).document()
        other = data.distractor_document(doc, rng)
        names, others = data.entities(doc), data.entities(other)
        assert (other.records, other.attributes) == (records, doc.attributes) and len(others) == records
        assert set(others) <= set(synthetic.names("train")) and len(set(others)) == records
        asked = {f.entity for f in doc.asked}
        assert not set(others) & (set(names) if records <= 256 else asked)
        assert {a for line in other.text.split("\n") for a in doc.attributes if f"{a.capitalize()}: " in line} == \
            set(doc.attributes)
        fact = doc.asked[0]
        sample = enc.encode("distractor_jrt", doc, fact, answer_only=True, distractor=other)
        jrt = JRTPrompt("generic", 2).encode(tok, doc.text, fact.question)
        head = JRTPrompt("generic", 2).encode(tok, other.text, fact.question)
        prompt = sample.ids[:sample.answer_start]
        assert prompt == head.ids[:head.context_tokens] + jrt.ids[jrt.context_tokens:]
        assert tok.decode(sample.ids) == (other.text + "\n\nQuestion: " + fact.question + "\n\n" + doc.text
                                          + "\n\nQuestion: " + fact.question + "\nAnswer: " + fact.value + "\n"
                                          + tok.eos_token)
        assert sample.loss_start == sample.answer_start and sample.recall is None
    with pytest.raises(ValueError, match="answer only"):
        enc.encode("distractor_jrt", doc, fact, distractor=other)
    with pytest.raises(ValueError, match="distractor"):
        enc.encode("distractor_jrt", doc, fact, answer_only=True)


def test_fast_tokenizer_matches_the_tokenizer(tok):
    fast = data.FastTokenizer(tok)
    for text in ["\n\nQuestion:", " What is Kira Voss's city?", synthetic.documents(1, records=12)[0].text, "é"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert fast(text)["input_ids"] == ids == fast(text)["input_ids"]  # memoised twice
        assert fast.decode(ids) == tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_batches_have_few_shapes_right_masks_and_train_names_only(tok):
    records = {"plain": (1, 4), "jrt": (3, 8), "question_first": (3, 8)}
    stream = data.BatchStream(data.SampleEncoder(tok), data.MixtureConfig(tokens_per_batch=2048, records=records),
                              seed=3, level=lambda: 1.0)
    train_names, test_names = set(synthetic.names("train")), set(synthetic.names("test"))
    attribute_counts, formats = set(), set()
    for _ in range(12):
        b = stream.batch()
        B, L = b.ids.shape
        assert L in data.BUCKETS and B * L <= 2048 and b.lm_mask.shape == b.answer_mask.shape == (B, L - 1)
        assert len(set(b.formats)) == 1 and len(set(b.records)) == 1  # one format and size per batch
        fmt = b.formats[0]
        formats.add(fmt)
        assert records[fmt][0] <= b.records[0] <= records[fmt][1]
        assert not b.recall_mask.any()  # no second-copy loss by default
        for i in range(B):
            n = b.lengths[i]
            assert b.ids[i, n - 1] == tok.eos_token_id and not b.lm_mask[i, n - 1:].any()
            text = tok.decode(b.ids[i, :n])
            value = int(b.value_pos[i]) + 1
            assert tok.decode(b.ids[i, :value]).endswith("\nAnswer:")
            supervised = b.lm_mask[i].nonzero().flatten()
            answers = b.answer_mask[i].nonzero().flatten()
            assert b.answer_mask[i, value - 1] and (b.lm_mask[i] | ~b.answer_mask[i]).all()
            if fmt == "plain":  # every token, and up to 4 questions, each answered
                assert len(supervised) == n - 1 and 1 <= len(answers) <= 4
                assert text.count("\nAnswer: ") == len(answers) and not text.startswith("Question:")
            else:  # the answer after the final question only: value, newline, EOS
                assert supervised.tolist() == [value - 1, value, value + 1] and answers.tolist() == [value - 1]
                assert value == n - 3 and text.count("\nAnswer: ") == 1
                assert text.startswith("Question:") == (fmt == "question_first")
            lines = [line for line in text.split("\n") if line.startswith("Name: ")]
            names = {line.split(".")[0][len("Name: "):] for line in lines}
            assert names and names <= train_names and not names & test_names
            attribute_counts |= {line.count(": ") - 1 for line in lines}
    assert attribute_counts == {1, 2, 3} and formats == set(synthetic.FORMATS)  # the default mix: no distractors


def test_batches_of_the_new_row_kinds(tok):
    """A mix with distractor_jrt rows (their own record range, answer-only, D' of train-split names) and
    question-first rows that start with the separator; a distractor_jrt mix that is not answer-only is refused."""
    records = {"plain": (1, 2), "jrt": (1, 2), "question_first": (3, 4), "distractor_jrt": (5, 6)}
    config = data.MixtureConfig(mix={"question_first": 1, "distractor_jrt": 1}, records=records,
                                tokens_per_batch=2048, question_first_lead="separator")
    stream = data.BatchStream(data.SampleEncoder(tok, check_every=1), config, seed=3, level=lambda: 1.0)
    train_names, test_names = set(synthetic.names("train")), set(synthetic.names("test"))
    formats = set()
    for _ in range(10):
        b = stream.batch()
        fmt = b.formats[0]
        formats.add(fmt)
        assert records[fmt][0] <= b.records[0] <= records[fmt][1] and not b.recall_mask.any()
        for i in range(len(b.formats)):
            n = b.lengths[i]
            text = tok.decode(b.ids[i, :n])
            value = int(b.value_pos[i]) + 1
            assert b.lm_mask[i].nonzero().flatten().tolist() == [value - 1, value, value + 1]  # the answer only
            lines = [line for line in text.split("\n") if line.startswith("Name: ")]
            names = [line.split(".")[0][len("Name: "):] for line in lines]
            assert set(names) <= train_names and not set(names) & test_names
            if fmt == "question_first":
                assert text.startswith("\n\nQuestion: ") and len(lines) == b.records[i]
            else:  # D' first, then the question, then C: twice the records, no name in both
                first, second = names[:b.records[i]], names[b.records[i]:]
                assert len(first) == len(second) == b.records[i] and not set(first) & set(second)
                asked = text.split("Question: ")[1].split("\n")[0]
                assert text.count(asked) == 2 and any(asked.split("'s")[0][len("What is "):] == s for s in second)
    assert formats == {"question_first", "distractor_jrt"}
    with pytest.raises(ValueError, match="answer only"):
        data.check_mixture(replace(config, answer_only=("question_first",)))
    with pytest.raises(ValueError, match="lead"):
        data.check_mixture(replace(config, question_first_lead="newline"))
    args = train_recall.parse_args(["--arch", "mamba2", "--out", "x", "--mix", "plain=1,distractor_jrt=1",
                                    "--records", "distractor_jrt=1-36", "--answer-only", "distractor_jrt",
                                    "--question-first-lead", "separator", "--phase2-from", "0.5",
                                    "--phase2-records", "distractor_jrt=8-48"])
    first, second = train_recall.mixtures(args)
    assert first.records["distractor_jrt"] == (1, 36) and second.records["distractor_jrt"] == (8, 48)
    assert first.question_first_lead == second.question_first_lead == "separator"
    assert train_recall.mixtures(train_recall.parse_args(["--arch", "gla", "--out", "x"]))[0].question_first_lead \
        == "question"  # the default: runs 1-6's rows
    for bad in (["--mix", "distractor_jrt=1", "--answer-only", "none"], ["--question-first-lead", "newline"]):
        with pytest.raises(SystemExit):
            train_recall.parse_args(["--arch", "mamba2", "--out", "x", *bad])


def test_jrt_rows_can_still_supervise_the_second_copy(tok):
    """With jrt out of answer_only, the recall mask marks exactly the predictions of the second context copy."""
    enc = data.SampleEncoder(tok)
    doc = synthetic.documents(1, "train", records=3)[0]
    batch = data.collate([enc.encode("jrt", doc, doc.asked[0])], tok.eos_token_id)
    recall = batch.recall_mask[0].nonzero().flatten()
    assert tok.decode(batch.ids[0, int(recall[0]) + 1:int(recall[-1]) + 2]) == doc.text
    assert batch.lm_mask[0, :batch.lengths[0] - 1].all()


def test_answer_only_loss_ignores_everything_but_the_answer(tok):
    """Changing the logits anywhere but at the answer's positions leaves the loss of a JRT row unchanged."""
    enc = data.SampleEncoder(tok)
    doc = synthetic.documents(1, "train", records=3)[0]
    batch = data.collate([enc.encode("jrt", doc, doc.asked[0], answer_only=True)], tok.eos_token_id)
    logits = torch.randn(1, batch.ids.shape[1], len(tok))
    loss, parts, _ = loop.batch_loss(logits, batch)
    value = int(batch.value_pos[0])
    other = logits.clone()
    other[:, :value] += torch.randn_like(other[:, :value]) * 5
    assert torch.allclose(loop.batch_loss(other, batch)[0], loss)
    other[:, value] += 1.0 * torch.nn.functional.one_hot(batch.ids[0, value + 1], len(tok))
    assert loop.batch_loss(other, batch)[0] < loss
    assert set(parts) == {"lm", "answer"}


def test_mixture_rejects_unknown_formats(tok):
    with pytest.raises(ValueError, match="mix"):
        data.BatchStream(data.SampleEncoder(tok), data.MixtureConfig(mix={"chat": 1.0}), 0, lambda: 2)


# --------------------------------------------------------------------------- models and training
TINY = models.ModelSize(d_model=32, n_layer=2, heads=2, based_pattern="wl", window=16)


@pytest.mark.parametrize("arch", models.ARCHS)
def test_each_arch_trains_on_a_learnable_batch(tok, arch):
    """A few AdamW steps on one fixed batch: every parameter gets a gradient and the loss falls."""
    hf = models.build_hf_model(arch, TINY, len(tok), tok.eos_token_id, seed=0)
    trainable = models.make_trainable(arch, hf)
    stream = data.BatchStream(data.SampleEncoder(tok), data.MixtureConfig(
        tokens_per_batch=256, mix={"plain": 1.0}, records={"plain": (1, 1)}), 0, lambda: 1.0)
    batch = stream.batch()
    opt = torch.optim.AdamW(trainable.params, lr=1e-2)
    losses = []
    for step in range(12):
        loss, parts, _ = loop.batch_loss(trainable.logits(batch.ids), batch)
        assert set(parts) <= {"lm", "answer", "recall"}
        assert torch.isfinite(loss)
        loss.backward()
        if step == 0:
            loop.check_gradients(trainable)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("arch", models.RECURRENT)
def test_trainable_shares_storage_with_the_saved_model(tok, tmp_path, arch):
    """Training the RecurrentLM changes what save_pretrained writes, which jrt_prompt.load reads back; a tied head
    is one Parameter (updated once per step)."""
    hf = models.build_hf_model(arch, TINY, len(tok), tok.eos_token_id, seed=0)
    trainable = models.make_trainable(arch, hf)
    assert trainable.lm.lm_head.weight is trainable.lm.embedding.weight
    assert len({id(p) for p in trainable.params}) == len(trainable.params)
    with torch.no_grad():
        for p in trainable.params:
            p.add_(0.01 * torch.randn_like(p))
    hf.save_pretrained(str(tmp_path))
    loaded = jrt_prompt.load(str(tmp_path), tokenizer=tok).model
    assert models.count_parameters(loaded) == models.count_parameters(hf)
    ids = torch.randint(0, len(tok), (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids)[0], trainable.lm(ids)[0])


def test_init_range_sets_the_init_of_every_architecture(tok):
    """--init-range R: embeddings and linear layers drawn with std R (transformers' Mamba and Mamba-2 default to
    0.1, the others to 0.02); R = 0.02 leaves Based unchanged; the saved config records it."""
    size = replace(TINY, d_model=64, heads=2)
    for arch, default in (("mamba2", 0.1), ("mamba", 0.1), ("gla", 0.02)):
        for r in (None, 0.02, 0.05):
            hf = models.build_hf_model(arch, replace(size, init_range=r), len(tok), tok.eos_token_id, seed=0)
            std = hf.get_input_embeddings().weight.std().item()
            assert abs(std / (r or default) - 1) < 0.1 and hf.config.initializer_range == (r or default), (arch, r)
    plain = models.build_hf_model("based", size, len(tok), tok.eos_token_id, seed=0)
    same = models.build_hf_model("based", replace(size, init_range=0.02), len(tok), tok.eos_token_id, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), same.state_dict().values()))
    args = train_recall.parse_args(["--arch", "mamba2", "--out", "x", "--init-range", "0.02"])
    assert train_recall.model_size(args).init_range == 0.02
    assert train_recall.model_size(train_recall.parse_args(["--arch", "gla", "--out", "x"])).init_range is None


def test_missing_gradient_is_an_error(tok):
    hf = models.build_hf_model("gla", TINY, len(tok), tok.eos_token_id, seed=0)
    trainable = models.make_trainable("gla", hf)
    trainable.logits(torch.randint(0, len(tok), (1, 8)))[..., 0].sum().backward()  # the head's other rows idle
    trainable.lm.norm_f.weight.grad = None
    with pytest.raises(RuntimeError, match="no gradient reached"):
        loop.check_gradients(trainable)


def test_mamba_training_scans_match_the_reference():
    """The GLA form (fla's chunk_gla on CUDA, the naive GLA here) and the small-chunk fallback give the reference
    scan's outputs, final state and gradients."""
    from jrt_prompt.ops.selective_scan import naive

    g = torch.Generator().manual_seed(0)
    b, L, C, N = 2, 37, 6, 4
    args = dict(u=torch.randn(b, L, C, generator=g), delta=torch.randn(b, L, C, generator=g),
                A=-torch.rand(C, N, generator=g) * 6, B=torch.randn(b, L, N, generator=g),
                C=torch.randn(b, L, N, generator=g), D=torch.randn(C, generator=g), z=torch.randn(b, L, C, generator=g),
                delta_bias=torch.randn(C, generator=g), initial_state=torch.randn(b, C, N, generator=g))

    def run(scan):
        leaves = {k: v.clone().requires_grad_(True) for k, v in args.items()}
        y, h = scan(**leaves)
        (y.square().sum() + h.square().sum()).backward()
        return [y, h] + [leaves[k].grad for k in ("u", "delta", "A", "B", "C", "initial_state")]

    want = run(naive.selective_scan)
    two_level_5 = lambda **kw: models.selective_scan_two_level(**kw, chunk_size=5)  # noqa: E731
    blocks_3_levels = lambda **kw: models.selective_scan_blocks(**kw, blocks=(4, 3, 2))  # noqa: E731 (37 = 10 x 4 ...)
    cumsum_3 = lambda **kw: models.selective_scan_cumsum(**kw, size=3)  # noqa: E731 (37 = 12 x 3 + 1)
    for scan in (models.selective_scan_as_gla, models.selective_scan_two_level,
                 two_level_5, models.selective_scan_blocks, blocks_3_levels, models.selective_scan_cumsum, cumsum_3):
        for name, got, ref in zip(("y", "h", "du", "ddelta", "dA", "dB", "dC", "dh0"), run(scan), want):
            err = ((got - ref).abs().max() / ref.abs().max()).item()  # fp32 sums in another order
            assert err < 1e-4 if name in ("y", "h") else err < 3e-3, (scan, name, err)
    assert models.checked_mamba_scan("gla", torch.device("cpu")) == "gla"


def test_cumsum_scan_stays_finite_and_close_where_it_clamps():
    """Log-decays far below the cumsum scan's floor (dt up to ~100, |A| up to 16: most tokens clamped): no inf or
    NaN in values or gradients, and both stay within 1e-3 of the exact scan (a clamped token keeps e^-16 of the
    state instead of less; its log-decay's gradient, itself about e^a, is dropped)."""
    from jrt_prompt.ops.selective_scan import naive

    g = torch.Generator().manual_seed(1)
    b, L, C, N = 2, 300, 16, 16
    args = dict(u=torch.randn(b, L, C, generator=g) * 3, delta=torch.randn(b, L, C, generator=g) * 30,
                A=-torch.rand(C, N, generator=g) * 16, B=torch.randn(b, L, N, generator=g) * 3,
                C=torch.randn(b, L, N, generator=g), D=torch.randn(C, generator=g), z=torch.randn(b, L, C, generator=g),
                delta_bias=torch.randn(C, generator=g))
    dt = torch.nn.functional.softplus(args["delta"] + args["delta_bias"])
    assert ((dt[..., None] * args["A"]) < models.CUMSUM_FLOOR).float().mean() > 0.3  # the case under test

    def run(scan):
        leaves = {k: v.clone().requires_grad_(True) for k, v in args.items()}
        y, h = scan(**leaves)
        (y.square().sum() + h.square().sum()).backward()
        return [y, h] + [leaves[k].grad for k in ("u", "delta", "A", "B", "C")]

    for got, ref in zip(run(models.selective_scan_cumsum), run(naive.selective_scan)):
        assert torch.isfinite(got).all()
        assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-3


@pytest.mark.parametrize("scan", ["blocks", "cumsum"])
def test_mamba_trains_through_the_training_scans(tok, monkeypatch, scan):
    """What CUDA training swaps in for Mamba's scan takes the layer's call as it is made and gives the layer's own
    logits and gradients (a tiny model on CPU)."""
    import jrt_prompt.layers.mamba as mamba_layer

    trainable = models.make_trainable("mamba", models.build_hf_model("mamba", TINY, len(tok), tok.eos_token_id, seed=0))
    ids = torch.randint(0, len(tok), (2, 45), generator=torch.Generator().manual_seed(0))

    def run():
        for p in trainable.params:
            p.grad = None
        logits = trainable.logits(ids)
        logits.square().mean().backward()
        return [logits.detach()] + [p.grad.clone() for p in trainable.params if p.grad is not None]

    want = run()
    small = {"blocks": lambda *a, **k: models.selective_scan_blocks(*a, **k, blocks=(4, 3)),
             "cumsum": lambda *a, **k: models.selective_scan_cumsum(*a, **k, size=3)}[scan]
    monkeypatch.setattr(mamba_layer, "selective_scan", small)
    got = run()
    assert len(got) == len(want) > 5
    for g, w in zip(got, want):
        assert ((g - w).abs().max() / w.abs().max()).item() < 1e-3


def test_mamba_scan_check_falls_back_when_the_gla_form_fails(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(models, "selective_scan_as_gla", broken)
    said = []
    assert models.checked_mamba_scan("gla", torch.device("cpu"), log=said.append) == "cumsum"
    assert "no kernel" in said[0]


def test_mamba2_falls_back_to_the_reference_ssd_when_fla_refuses(monkeypatch):
    """fla's Hopper/Triton guard (read statically: no compile) or a failing fla kernel -> ssd_chunked, logged; the
    training forward then runs under reference_ops, whose SSD is ssd_chunked with autograd."""
    said = []
    monkeypatch.setattr(models, "fla_gated_backward_refusal", lambda: "fla refuses (test)")
    monkeypatch.setattr(models, "_ssd_fla_error", lambda device: pytest.fail("no fla check after a refusal"))
    assert models.checked_mamba2_ssd(torch.device("cuda"), log=said.append) == "reference"
    assert "fla refuses (test)" in said[0] and "ssd_chunked" in said[0]

    def broken(device):
        raise RuntimeError("chunk_bwd_dqkwg refused")

    monkeypatch.setattr(models, "fla_gated_backward_refusal", lambda: None)
    monkeypatch.setattr(models, "_ssd_fla_error", broken)
    assert models.checked_mamba2_ssd(torch.device("cuda"), log=said.append) == "reference"
    assert "chunk_bwd_dqkwg refused" in said[1]
    monkeypatch.setattr(models, "_ssd_fla_error", lambda device: 1e-4)
    assert models.checked_mamba2_ssd(torch.device("cuda"), log=said.append) == "fla" and len(said) == 2
    assert models.checked_mamba2_ssd(torch.device("cpu")) == "reference"


def test_training_ops_on_cuda_use_the_references(tok, monkeypatch):
    """What the launcher records and what the training forward runs: reference_ops for every recurrent model with
    --train-ops reference (Mamba's scan blocked), fla's paths with fast (Mamba-2 only where fla's backward runs)."""
    from jrt_prompt.ops import backend

    hf = models.build_hf_model("mamba2", TINY, len(tok), tok.eos_token_id, seed=0)
    trainable = models.make_trainable("mamba2", hf)
    cuda = torch.device("cuda")
    seen = []
    for ops, ssd, forced in (("reference", "fla", True), ("fast", "reference", True), ("fast", "fla", False)):
        trainable.ops, trainable.mamba2_ssd = ops, ssd
        with models.training_paths(trainable, cuda):
            seen.append(bool(backend.reference_forced()))
        assert seen[-1] == forced, (ops, ssd)
    trainable.arch = "mamba"
    import jrt_prompt.layers.mamba as mamba_layer

    with models.training_paths(trainable, cuda):
        assert mamba_layer.selective_scan is models.selective_scan_cumsum
    assert mamba_layer.selective_scan is not models.selective_scan_cumsum
    trainable.mamba_scan = "blocks"
    with models.training_paths(trainable, cuda):
        assert mamba_layer.selective_scan is models.selective_scan_blocks
    trainable.mamba_scan = "cumsum"

    trainable.arch = "mamba2"
    args = train_recall.parse_args(["--arch", "mamba2", "--out", "x", "--train-ops", "fast"])
    monkeypatch.setattr(models, "checked_mamba2_ssd", lambda device, log: (log("refused (test)"), "reference")[1])
    chosen = train_recall.choose_training_ops(args, "mamba2", trainable, cuda, log=lambda m: None)
    assert chosen["mamba2_ssd"] == "reference" and chosen["notes"] == ["refused (test)"]
    args = train_recall.parse_args(["--arch", "mamba", "--out", "x", "--tokens-per-batch", "16384"])
    trainable.arch = "mamba"
    chosen = train_recall.choose_training_ops(args, "mamba", trainable, cuda, log=lambda m: None)
    assert chosen["mamba_scan"] == "cumsum" and chosen["ops"] == "reference" and args.tokens_per_batch == 16384
    args = train_recall.parse_args(["--arch", "mamba", "--out", "x", "--tokens-per-batch", "16384", "--mamba-scan",
                                    "blocks"])
    chosen = train_recall.choose_training_ops(args, "mamba", trainable, cuda, log=lambda m: None)
    assert chosen["mamba_scan"] == "blocks" and args.tokens_per_batch == 8192 and "8192" in chosen["notes"][0]


def test_curriculum_grows_on_recall_and_with_time():
    cfg = loop.TrainConfig(start_level=0.25)
    cur = loop.Curriculum(cfg)
    batch = data.Batch(torch.zeros(4, 8, dtype=torch.long), torch.ones(4, 7, dtype=torch.bool),
                       torch.zeros(4, 7, dtype=torch.bool), torch.zeros(4, dtype=torch.long),
                       torch.zeros(4, 7, dtype=torch.bool), ["jrt"] * 4, [4, 3, 8, 1], [8] * 4)
    for step in range(loop.Curriculum.WINDOW // 4):
        assert cur.level == 0.25
        cur.update(batch, [True] * 4, progress=0.1, step=step)
    assert cur.level == 0.375  # grown by half
    for step in range(200):
        cur.update(batch, [False] * 4, progress=0.1, step=step)
    assert cur.level == 0.375
    assert cur.update(batch, [False] * 4, progress=0.9, step=500) == 1.0  # the time floor
    assert cur.floor(0.0) == 0.25 and cur.floor(cfg.floor_to) == 1.0
    assert loop.Curriculum(loop.TrainConfig()).update(batch, [False] * 4, 0.0, 0) == 1.0  # default: off
    levels = []
    stream = data.BatchStream(data.SampleEncoder.__new__(data.SampleEncoder), data.MixtureConfig(
        records={"plain": (2, 40), "jrt": (4, 64), "question_first": (4, 64)}), 0, lambda: levels[-1])
    for level, top in ((0.1, 4), (0.5, 20), (1.0, 40)):
        levels.append(level)
        assert max(stream.row_records("plain") for _ in range(300)) == top


def _stand_in_batch(rows: int, records: int, level: float, top: int, fmt: str = "plain") -> data.Batch:
    """A batch as the curriculum sees it: its rows' format and record count, and the level and top it was drawn at."""
    return data.Batch(torch.zeros(rows, 8, dtype=torch.long), torch.ones(rows, 7, dtype=torch.bool),
                      torch.zeros(rows, 7, dtype=torch.bool), torch.zeros(rows, dtype=torch.long),
                      torch.zeros(rows, 7, dtype=torch.bool), [fmt] * rows, [records] * rows, [8] * rows, level, top)


def test_hard_rows_growth_holds_on_easy_small_documents():
    """--growth-rule hard-rows: a stand-in model answers every 1-record row and a third of the rows at the level's
    top (4 records), batches alternating as the loader's do. The default rule grows within two steps (256 easy rows
    fill half the window); hard-rows holds until rows of 2-4 records reach 80%, then leaves out the batches drawn
    before that growth (the loader's prefetched ones) however right they are."""
    def run(rule, hard_share, steps, level=0.25, top=4, cur=None):
        cur = cur or loop.Curriculum(loop.TrainConfig(start_level=0.25, growth_rule=rule))
        for step in range(steps):
            cur.update(_stand_in_batch(256, 1, level, top), [True] * 256, progress=0.1, step=step)
            right = int(32 * hard_share)
            cur.update(_stand_in_batch(32, top, level, top), [True] * right + [False] * (32 - right), 0.1, step)
        return cur

    assert run("all-rows", 1 / 3, steps=2).level == 0.375  # grown on the easy rows
    held = run("hard-rows", 1 / 3, steps=100)
    assert held.level == 0.25 and held.grown_at == []
    grown = run("hard-rows", 0.9, steps=16, cur=held)  # 16 x 32 hard rows at 90%: the window is full
    assert grown.level == 0.375 and grown.counted_from == 0.375
    run("hard-rows", 1.0, steps=40, cur=grown)  # drawn at the old level: left out
    assert grown.level == 0.375 and len(grown.recent) == 0
    run("hard-rows", 1.0, steps=16, level=0.375, top=6, cur=grown)  # drawn at the new level
    assert grown.level == 0.375 * 1.5
    with pytest.raises(ValueError):
        loop.Curriculum(loop.TrainConfig(growth_rule="some-rows"))
    args = train_recall.parse_args(["--arch", "based,gla", "--out", "x", "--growth-rule", "hard-rows"])
    assert args.growth_rule == "hard-rows" and train_recall.arch_list(args.arch) == ["based", "gla"]
    assert train_recall.parse_args(["--arch", "all", "--out", "x"]).growth_rule == "all-rows"  # the default


def test_top_half_record_sampling_draws_half_the_batches_near_the_top(tok):
    """--record-sampling top-half (the first GPU run's): half the batches from [top // 2, top], half from [lo, top];
    the batch says the level and top it was drawn at."""
    records = {"plain": (1, 40), "jrt": (1, 20), "question_first": (1, 40)}
    level = [1.0]

    def draws(sampling, n=4000):
        stream = data.BatchStream(data.SampleEncoder.__new__(data.SampleEncoder),
                                  data.MixtureConfig(records=records, sampling=sampling), 0, lambda: level[0])
        return [stream.row_records("plain") for _ in range(n)]

    top_half, uniform = draws("top-half"), draws("uniform")
    assert min(top_half) == 1 and max(top_half) == 40 and min(uniform) == 1 and max(uniform) == 40
    share = lambda d, least: sum(r >= least for r in d) / len(d)  # noqa: E731
    assert abs(share(top_half, 20) - (0.5 + 0.5 * 21 / 40)) < 0.03 and abs(share(uniform, 20) - 21 / 40) < 0.03
    level[0] = 0.25  # top 10
    assert max(draws("top-half")) == 10 and abs(share(draws("top-half"), 5) - (0.5 + 0.5 * 6 / 10)) < 0.03
    stream = data.BatchStream(data.SampleEncoder(tok), data.MixtureConfig(
        mix={"jrt": 1}, records=records, sampling="top-half", tokens_per_batch=1024), 0, lambda: 0.5)
    b = stream.batch()
    assert b.level == 0.5 and b.top == 10 and 1 <= b.records[0] <= 10
    with pytest.raises(ValueError):
        data.check_mixture(data.MixtureConfig(sampling="half"))
    args = train_recall.parse_args(["--arch", "based", "--out", "x", "--record-sampling", "top-half",
                                    "--phase2-from", "0.5"])
    assert [m.sampling for m in train_recall.mixtures(args)] == ["top-half", "top-half"]


def test_phase2_starts_when_plain_rows_at_the_top_are_recalled(tok, monkeypatch):
    """--phase2-when-acc A: phase 2 starts once the plain rows of at least half the top record count, from batches
    drawn at level 1, are A right over the window; rows of other formats, smaller rows and rows drawn below level 1
    do not count; --phase2-from stays the latest start."""
    phase2 = loop.Phase2(0.6, data.MixtureConfig(), when_acc=0.7)
    cur = loop.Curriculum(loop.TrainConfig(start_level=0.5))
    for step in range(40):  # all right, but not plain rows at the top
        for batch in (_stand_in_batch(32, 20, 0.5, 20), _stand_in_batch(32, 40, 1.0, 40, "jrt"),
                      _stand_in_batch(32, 19, 1.0, 40)):
            cur.update(batch, [True] * 32, 0.1, step)
    assert cur.top_accuracy() is None and loop.phase2_trigger(phase2, cur, 0.1) is None
    assert loop.phase2_trigger(phase2, cur, 0.6) == "time"  # the latest start
    for share, want in ((0.5, None), (0.75, "accuracy")):
        for step in range(16):
            right = int(32 * share)
            cur.update(_stand_in_batch(32, 20, 1.0, 40), [True] * right + [False] * (32 - right), 0.3, step)
        assert cur.top_accuracy() == share and loop.phase2_trigger(phase2, cur, 0.3) == want
    with pytest.raises(SystemExit):
        train_recall.parse_args(["--arch", "based", "--out", "x", "--phase2-from", "0.5", "--phase2-when-acc", "2"])

    # --phase2-acc-level L: rows of batches drawn at level L or above count too (run 5's Based stopped at 0.957)
    lower = loop.Phase2(0.6, data.MixtureConfig(), when_acc=0.7, acc_level=0.9)
    cur = loop.Curriculum(loop.TrainConfig(start_level=0.5, phase2=lower))
    for step in range(16):
        cur.update(_stand_in_batch(32, 18, 0.85, 34), [True] * 32, 0.3, step)  # below L: left out
    assert cur.top_accuracy() is None
    for step in range(16):
        cur.update(_stand_in_batch(32, 17, 0.957, 34), [True] * 24 + [False] * 8, 0.3, step)
    assert cur.top_accuracy() == 0.75 and loop.phase2_trigger(lower, cur, 0.3) == "accuracy"
    assert loop.Curriculum(loop.TrainConfig(phase2=phase2)).top_level == 1.0  # the default
    args = train_recall.parse_args(["--arch", "based", "--out", "x", "--phase2-from", "0.6", "--phase2-when-acc",
                                    "0.5", "--phase2-acc-level", "0.9"])
    assert args.phase2_acc_level == 0.9
    for bad in (["--phase2-from", "0.6", "--phase2-acc-level", "0"], ["--phase2-acc-level", "0.9"]):
        with pytest.raises(SystemExit):
            train_recall.parse_args(["--arch", "based", "--out", "x", *bad])

    monkeypatch.setattr(loop.Curriculum, "WINDOW", 4)  # in training: the first batch (4 plain rows) fills it
    args = train_recall.parse_args(["--arch", "gla", "--out", "x", "--mix", "plain=1", "--records", "plain=1-2",
                                    "--plain-questions", "1", "--phase2-from", "1", "--phase2-when-acc", "0",
                                    "--phase2-mix", "jrt=1"])
    first, second = train_recall.mixtures(args)
    config = loop.TrainConfig(minutes=1, max_steps=3, warmup_steps=1, workers=0, log_every_s=0,
                              mixture=replace(first, tokens_per_batch=256),
                              phase2=loop.Phase2(1.0, replace(second, tokens_per_batch=256), when_acc=0.0))
    hf = models.build_hf_model("gla", TINY, len(tok), tok.eos_token_id, seed=0)
    said = []
    result = loop.train(models.make_trainable("gla", hf), tok, config, 0, torch.device("cpu"), log=said.append,
                        name="gla-x")
    assert (result.phase2_step, result.phase2_by) == (1, "accuracy") and any("by accuracy" in m for m in said)
    assert said and all(m.startswith("[gla-x] ") for m in said)  # the run's name, not its architecture
    assert [h["phase"] for h in result.history] == [1, 2, 2]


def test_two_phases_switch_the_mixture_and_the_recall_loss(tok):
    """--phase2-*: phase 1 (dense: JRT rows on every token, second-copy loss) until the switch, then answer-only
    question-first / JRT rows with their own record ranges; the log says which phase and where."""
    args = train_recall.parse_args([
        "--arch", "based", "--out", "x", "--mix", "jrt=1", "--records", "jrt=1-2", "--answer-only", "none",
        "--recall-weight", "1", "--phase2-from", "0.5", "--phase2-mix", "question_first=1,jrt=1",
        "--phase2-records", "question_first=5-6,jrt=3-4", "--phase2-answer-only", "jrt,question_first",
        "--buckets", "64,96,128,192,256,384,512"])
    first, second = train_recall.mixtures(args)
    assert first.answer_only == () and second.answer_only == ("jrt", "question_first")
    assert second.records["plain"] == first.records["plain"] and second.records["jrt"] == (3, 4)
    assert first.buckets == second.buckets == (64, 96, 128, 192, 256, 384, 512)
    phase = [0]
    stream = data.BatchStream(data.SampleEncoder(tok), replace(first, tokens_per_batch=512), 0, lambda: 1.0,
                              replace(second, tokens_per_batch=512), lambda: phase[0])
    b = stream.batch()
    assert b.formats[0] == "jrt" and b.records[0] <= 2 and b.recall_mask.any() and b.ids.shape[1] in first.buckets
    phase[0] = 1
    for _ in range(6):
        b = stream.batch()
        lo, hi = second.records[b.formats[0]]
        assert lo <= b.records[0] <= hi and not b.recall_mask.any() and b.lm_mask.sum() == 3 * len(b.formats)
        loss, parts, _ = loop.batch_loss(torch.randn(*b.ids.shape, len(tok)), b, recall_weight=1.0)
        assert torch.isfinite(loss)  # no second copy in the loss: zero, not NaN
    with pytest.raises(SystemExit):
        train_recall.parse_args(["--arch", "based", "--out", "x", "--phase2-mix", "jrt=1"])

    hf = models.build_hf_model("gla", TINY, len(tok), tok.eos_token_id, seed=0)
    config = loop.TrainConfig(minutes=1, max_steps=4, warmup_steps=1, workers=0, log_every_s=0, recall_weight=1.0,
                              mixture=replace(first, tokens_per_batch=256),
                              phase2=loop.Phase2(0.5, replace(second, tokens_per_batch=256)))
    said = []
    result = loop.train(models.make_trainable("gla", hf), tok, config, 0, torch.device("cpu"), log=said.append)
    assert result.steps == 4 and result.phase2_step == 2 and any("phase 2 from step 2" in m for m in said)
    assert result.phase2_by == "time"
    assert [h["phase"] for h in result.history] == [1, 1, 2, 2]
    assert "recall_loss" in result.history[0] and "recall_loss" not in result.history[-1]
    assert all("peak_gib" not in h for h in result.history)  # CPU: no GPU memory to report
    line = loop._format("gla", {**result.history[0], "peak_gib": 3.25})
    assert line.endswith(" peak 3.2 GiB") and " peak " not in loop._format("gla", result.history[0])
    by_size = result.history[-1]["value_acc_by_records"]
    assert set(by_size) <= {"jrt", "question_first"} and all(set(v) <= {"2-4", "5-8"} for v in by_size.values())
    digest = report.phase2_digest([{"arch": "gla", "size": {"d_model": 32}, "training": asdict(result)}])
    assert digest.startswith("Training value accuracy") and "| gla d32 | 2 |" in digest


# --------------------------------------------------------------------------- the command line end to end
def test_cli_trains_saves_evaluates_and_exports_a_demo(tok_dir, tmp_path, capsys):
    out = tmp_path / "based"
    code = train_recall.main(["--arch", "based", "--out", str(out), "--tokenizer", str(tok_dir), "--minutes", "1",
                              "--max-steps", "3", "--d-model", "32", "--n-layer", "2", "--based-pattern", "wl",
                              "--window", "16", "--workers", "0", "--tokens-per-batch", "512", "--warmup", "2",
                              "--eval-records", "1,2", "--eval-documents", "2", "--device", "cpu",
                              "--eval-modes", "default,jrt,question_first,question_first_sep"])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "done" and res["arch"] == "based" and res["training"]["steps"] == 3
    assert res["training"]["stopped"] == "max_steps" and res["reload_max_abs_logit_diff"] < 1e-5
    assert res["params"] == models.count_parameters(jrt_prompt.load(str(out)).model)
    assert res["state_bytes"] > 0 and res["seeds"]["init"] == 0 and res["train_config"]["lr"] == 2e-3
    assert set(res["accuracy"]) == {"1", "2"}
    for records, row in res["accuracy"].items():
        assert row["examples"] == 2 * min(4, 3 * int(records)) and 0 <= row["default"] <= 1 and 0 <= row["jrt"] <= 1
        assert 0 <= row["question_first"] <= 1 and 0 <= row["question_first_sep"] <= 1
    assert res["eval_modes"] == ["default", "jrt", "question_first", "question_first_sep"]
    printed = capsys.readouterr().out
    assert "| based d32 |" in printed and "Accuracy (%) by prompt, plain / JRT / (Q, C, Q)" in printed

    demo = tmp_path / "demo"
    assert train_recall.main(["--export-demo", str(out), "--demo-dest", str(demo)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= \
        {p.name for p in demo.iterdir()}
    engine = jrt_prompt.load(str(demo))
    doc = synthetic.documents(1, records=2)[0]
    answer = engine.generate(doc.text, doc.asked[0].question, max_new_tokens=4)
    assert isinstance(answer, str)
    doc_read = engine.read(doc.text)  # the engine's read reuse gives the same answer
    assert engine.generate(doc_read, doc.asked[0].question, max_new_tokens=4) == answer


def _paused_gla(tok, config, call_steps):
    """A tiny GLA trained for ``call_steps`` of ``config``'s run, then paused: (trainable, result, train state)."""
    trainable = models.make_trainable("gla", models.build_hf_model("gla", TINY, len(tok), tok.eos_token_id, seed=0))
    states = []
    result = loop.train(trainable, tok, config, 0, torch.device("cpu"), log=lambda m: None, call_steps=call_steps,
                        on_pause=states.append)
    return trainable, result, states[0]


def test_a_run_resumes_across_calls_on_the_same_schedule(tok):
    """--call-steps / --resume in loop.train: two calls make the run's steps, the LR of the resumed steps is the one
    run's (lr_at at the same progress), the curriculum and phase carry over, the history goes on."""
    config = loop.TrainConfig(minutes=10, max_steps=6, warmup_steps=2, workers=0, log_every_s=0, start_level=0.5,
                              mixture=data.MixtureConfig(tokens_per_batch=256, records={
                                  "plain": (1, 2), "jrt": (1, 2), "question_first": (1, 2)}),
                              phase2=loop.Phase2(0.5, data.MixtureConfig(tokens_per_batch=256, mix={"jrt": 1},
                                                                         records={"jrt": (1, 2)})))
    trainable, first, state = _paused_gla(tok, config, 2)
    assert first.stopped == "call" and first.steps == 2 and state["steps"] == 2 and state["phase"] == 0
    assert state["data_seed"] == 2 and len(state["history"]) == 2 and state["seconds"] > 0
    fresh = models.make_trainable("gla", models.build_hf_model("gla", TINY, len(tok), tok.eos_token_id, seed=1))
    second = loop.train(fresh, tok, config, 0, torch.device("cpu"), log=lambda m: None, resume=state)
    assert second.stopped == "max_steps" and second.steps == 6 and second.seconds >= state["seconds"]
    assert [h["step"] for h in second.history] == [1, 2, 3, 4, 5, 6] and second.phase2_step == 3
    assert [h["phase"] for h in second.history] == [1, 1, 1, 2, 2, 2]
    for line in second.history:  # progress = steps / max_steps here (seconds are far from the 10 minutes)
        step = line["step"] - 1
        assert line["lr"] == round(loop.lr_at(config, step, step / 6), 6)
    assert second.level >= loop.Curriculum(config).floor(5 / 6)


def test_the_training_state_round_trips_exactly(tok, tmp_path):
    """train_state.pt: a fresh model and optimizer loaded from it equal the paused ones, curriculum included."""
    config = loop.TrainConfig(minutes=10, max_steps=4, warmup_steps=1, workers=0, log_every_s=0, start_level=0.5,
                              mixture=data.MixtureConfig(tokens_per_batch=256, mix={"plain": 1},
                                                         records={"plain": (1, 2)}))
    trainable, _, state = _paused_gla(tok, config, 2)
    torch.save(state, tmp_path / "train_state.pt")
    loaded = torch.load(tmp_path / "train_state.pt", weights_only=False)
    fresh = models.make_trainable("gla", models.build_hf_model("gla", TINY, len(tok), tok.eos_token_id, seed=1))
    opt, cur = loop.make_optimizer(fresh, config, torch.device("cpu")), loop.Curriculum(config)
    result, phase = loop.restore(loaded, fresh, opt, cur)
    for a, b in zip(trainable.params, fresh.params, strict=True):
        assert torch.equal(a, b)
    saved, now = state["optimizer"], opt.state_dict()
    assert saved["param_groups"] == now["param_groups"] and saved["state"].keys() == now["state"].keys()
    for k, moments in saved["state"].items():
        assert all(torch.equal(v, now["state"][k][name]) for name, v in moments.items())
    assert cur.state() == state["curriculum"] and (result.steps, phase) == (2, 0)
    assert result.history == state["history"] and result.tokens == state["tokens"]


def test_cli_pauses_and_resumes_a_run_and_refuses_another_recipe(tok_dir, tmp_path, capsys):
    """--call-steps: the first call saves train_state.pt and results.json (finished: false) without evaluating;
    --resume with the same recipe trains the rest and evaluates; a changed recipe option is a one-line error."""
    out = tmp_path / "based"
    argv = ["--arch", "based", "--out", str(out), "--tokenizer", str(tok_dir), "--minutes", "1", "--max-steps", "4",
            "--d-model", "32", "--n-layer", "2", "--based-pattern", "wl", "--window", "16", "--workers", "0",
            "--tokens-per-batch", "512", "--warmup", "2", "--eval-records", "1", "--eval-documents", "1",
            "--device", "cpu", "--log-every", "0"]
    assert train_recall.main([*argv, "--call-steps", "3"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["finished"] is False and res["status"] == "paused" and res["training"]["steps"] == 3
    assert "accuracy" not in res and (out / "train_state.pt").is_file() and (out / "model.safetensors").is_file()
    capsys.readouterr()
    assert train_recall.main([*argv[:-4], "--log-every", "5", "--resume", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--log-every" in err and "recipe differs" in err
    assert train_recall.main([*argv, "--resume", str(out), "--out", str(tmp_path / "next")]) == 0
    res = json.loads((tmp_path / "next" / "results.json").read_text())
    assert res["status"] == "done" and res["training"]["steps"] == 4 and res["resumed"]["steps"] == 3
    assert [h["step"] for h in res["training"]["history"]] == [1, 2, 3, 4] and "accuracy" in res
    assert res["training"]["seconds"] >= res["resumed"]["seconds"]
    assert train_recall.main([*argv, "--resume", str(tmp_path / "next")]) == 2  # finished: nothing to resume


def test_demo_export_refuses_big_or_foreign_models(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model_type": "based"}))
    with open(run / "model.safetensors", "wb") as f:
        f.truncate(report.DEMO_MAX_BYTES + 1)
    with pytest.raises(ValueError, match="over the demo's 16 MiB"):
        report.export_demo(run, tmp_path / "demo")
    (run / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ValueError, match="demo is a Based model"):
        report.export_demo(run, tmp_path / "demo")


def test_summary_table_and_targets(tmp_path):
    def result(arch, acc):
        return {"arch": arch, "params": 1_200_000, "state_bytes": 4096, "size": {"d_model": 128},
                "training": {"steps": 10, "seconds": 60}, "accuracy": acc}

    met = result("gla", {"8": {"default": 0.9, "jrt": 0.95}, "32": {"default": 0.3, "jrt": 0.6}})
    small = result("mamba", {"32": {"default": 0.3, "jrt": 0.4}, "64": {"default": 0.1, "jrt": 0.2}})
    never = result("based", {"8": {"default": 0.8, "jrt": 0.9}})
    assert report.target_check(met) == "met at 32 records"
    assert report.target_check(small).startswith("not met: largest gain where plain < 50% is +10 points at 32")
    assert report.target_check(never).startswith("plain prompt >= 50% at every size")
    for i, res in enumerate((met, small, never)):
        (tmp_path / str(i)).mkdir()
        report.write_results(tmp_path / str(i), res)
    out = tmp_path / "RESULTS.md"
    assert train_recall.main(["--summarize", str(tmp_path), "--write", str(out)]) == 0
    table = out.read_text()
    assert table.index("| based") < table.index("| mamba") < table.index("| gla")
    assert "| 90 / 95 | 30 / 60 |" in table and "met at 32 records" in table
    assert "Accuracy (%) by prompt" not in table  # plain and JRT only: one table, as before


def test_summary_shows_the_other_prompts_and_distractor_rows_apart():
    """Runs scored with --eval-modes get a second table (plain / JRT / (Q, C, Q) / sep + (Q, C, Q) per size); the JRT
    target still compares plain and JRT only. The phase-2 digest adds distractor-JRT where a run has such rows."""
    acc = {"8": {"default": 0.37, "jrt": 0.36, "question_first": 0.68, "question_first_sep": 0.12},
           "24": {"default": 0.17, "jrt": 0.18, "question_first": 0.45, "question_first_sep": 0.06}}
    history = [{"step": 9, "phase": 2, "value_acc_by_records": {
        "plain": {"9-16": [0.3, 10]}, "question_first": {"9-16": [0.6, 10]}, "distractor_jrt": {"9-16": [0.5, 4]}}}]
    mamba2 = {"arch": "mamba2", "size": {"d_model": 128}, "training": {"steps": 9, "seconds": 60, "phase2_step": 5,
                                                                       "history": history}, "accuracy": acc}
    gla = {"arch": "gla", "name": "gla-seed1", "size": {"d_model": 128}, "training": {"steps": 9, "seconds": 60},
           "accuracy": {"8": {"default": 0.28, "jrt": 0.6}}}
    assert report.target_check(mamba2).startswith("not met: largest gain where plain < 50% is +1 points at 24")
    text = report.summary_with_digest([gla, mamba2])
    main, prompts = text.split("Accuracy (%) by prompt")[0], text.split("Accuracy (%) by prompt")[1]
    assert "| mamba2 d128 | 0.00M | - | 37 / 36 | 17 / 18 |" in main
    assert prompts.startswith(", plain / JRT / (Q, C, Q) / sep + (Q, C, Q)")
    assert "| mamba2 d128 | 37 / 36 / 68 / 12 | 17 / 18 / 45 / 6 |" in prompts and "gla-seed1) | 28" not in prompts
    assert "plain / JRT / question-first / distractor-JRT (train-split" in text
    assert "| mamba2 d128 | 5 | 9 | 30 / - / 60 / 50 |" in text
    old = report.phase2_digest([{**mamba2, "training": {**mamba2["training"], "history": [
        {"step": 9, "phase": 2, "value_acc_by_records": {"plain": {"9-16": [0.3, 10]}}}]}}])
    assert "plain / JRT / question-first (train-split" in old and "| 30 / - / - |" in old  # runs 1-6: as before


def test_launcher_passes_options_through_to_children():
    argv = ["--arch", "all", "--parallel", "--out", "runs", "--minutes", "6", "--tokenizer=t", "--d-model", "96"]
    assert train_recall.child_argv(argv) == ["--minutes", "6", "--d-model", "96"]
    argv = ["--arch", "based,b6", "--variant", "b6=based --n-layer 6", "--minutes", "6", "--name", "n"]
    assert train_recall.child_argv(argv) == ["--minutes", "6"]
    assert train_recall.child_argv(["--resume", "runs", "--minutes", "6"]) == ["--minutes", "6"]  # DIR/<arch> each


def test_variants_launch_named_runs_with_their_own_options(tok_dir, tmp_path, monkeypatch):
    """--variant NAME=ARCH OPTIONS: NAME in an --arch list is ARCH trained with OPTIONS after the shared ones, into
    DIR/NAME, logging and tabled under its name; malformed variants fail before anything starts."""
    ok = ["--arch", "based,based-6l,mamba2", "--out", "x", "--variant", "based-6l=based --n-layer 6 --lr 1e-3"]
    args = train_recall.parse_args(ok)
    assert train_recall.variants(args.variant) == {"based-6l": ("based", ["--n-layer", "6", "--lr", "1e-3"])}
    for bad in (["--variant", "based=based --n-layer 6"],  # the name of an architecture
                ["--variant", "b6=transformer"], ["--variant", "b6"], ["--variant", "B6=based"],
                ["--variant", "b6=based --out y"],  # set by the launcher
                ["--variant", "b6=based --n-layer six"],  # a bad option fails here, not in the child
                ["--variant", "b6=based", "--variant", "b6=gla"]):
        with pytest.raises(SystemExit):
            train_recall.parse_args(["--arch", "based,b6", "--out", "x", *bad])
    with pytest.raises(SystemExit):  # a variant alone is not an --arch list
        train_recall.parse_args(["--arch", "b6", "--out", "x", "--variant", "b6=based"])
    with pytest.raises(SystemExit):  # an undefined name
        train_recall.parse_args(["--arch", "based,b6", "--out", "x"])

    launched = []

    class Child:  # stands in for a child process: records its command line, leaves a results.json
        def __init__(self, cmd, stdout, stderr, env):
            launched.append(cmd)
            stdout.write("[child] started\n")
            stdout.flush()
            get = lambda opt: cmd[len(cmd) - 1 - cmd[::-1].index(opt) + 1]  # noqa: E731 - the last one wins
            res = {"arch": get("--arch"), "size": {"d_model": 128}, "training": {"steps": 1, "seconds": 60},
                   "accuracy": {"8": {"default": 0.4, "jrt": 0.6}}}
            if "--name" in cmd:
                res["name"] = get("--name")
            report.write_results(Path(get("--out")), res)
            self.pid, self.returncode = 1, 0

        def poll(self):
            return 0

    monkeypatch.setattr(train_recall.subprocess, "Popen", Child)
    monkeypatch.setattr(train_recall.time, "sleep", lambda s: None)
    out = tmp_path / "runs"
    argv = ["--arch", "based,based-6l", "--parallel", "--out", str(out), "--tokenizer", str(tok_dir), "--minutes",
            "2", "--lr", "3e-3", "--variant", "based-6l=based --n-layer 6 --lr 1e-3"]
    assert train_recall.main(argv) == 0
    plain, variant = (cmd[2:] for cmd in launched)
    assert plain[-4:] == ["--arch", "based", "--out", str(out / "based")] and "--variant" not in plain
    assert variant[-10:] == ["--arch", "based", "--out", str(out / "based-6l"), "--n-layer", "6", "--lr", "1e-3",
                             "--name", "based-6l"] and variant.index("3e-3") < variant.index("1e-3")
    child = train_recall.parse_args(variant)  # later options win
    assert (child.lr, child.n_layer, child.name, child.arch) == (1e-3, 6, "based-6l", "based")
    table = (out / "RESULTS.md").read_text()
    assert "| based d128 |" in table and "| based d128 (based-6l) |" in table


def test_evaluation_scores_like_jrt_eval(tok):
    """The examples are jrt-eval's synthetic ones, and a model that always says the answer scores 1."""
    examples = evaluation.test_examples(records=3, documents=2)
    assert len(examples) == 8 and all(ex.context.count("Name: ") == 3 for ex in examples)
    assert examples[0].context in synthetic.documents(1, "test", records=3)[0].text
    assert evaluation.score(examples, [f" {ex.answers[0]}" for ex in examples]) == 1.0
    assert evaluation.score(examples, ["nothing"] * len(examples)) == 0.0


def test_evaluation_records_errors_and_keeps_to_its_deadline():
    calls = []

    def answer(examples, mode, check):
        calls.append(mode)
        if len(calls) == 1:
            raise RuntimeError("boom")
        check()
        return [f" {ex.answers[0]}" if mode == "jrt" else "?" for ex in examples]

    quiet = lambda msg: None  # noqa: E731
    table = evaluation.evaluate_sizes(answer, [1, 2], 1, deadline=time.time() + 60, log=quiet)
    assert table["1"]["error"] == "RuntimeError: boom" and "jrt" not in table["1"]
    assert table["2"]["default"] == 0.0 and table["2"]["jrt"] == 1.0 and table["2"]["examples"] == 4
    assert evaluation.evaluate_sizes(answer, [1], 1, deadline=time.time() - 1, log=quiet) == {}
    table = evaluation.evaluate_sizes(answer, [1, 2], 1, deadline=time.time() + 60, log=quiet, overrun_s=-120)
    assert list(table) == ["1"] and table["1"]["error"].startswith("OutOfTime")
    calls.clear()
    modes = ("question_first_sep", "jrt", "default", "question_first")  # scored in MODES order
    table = evaluation.evaluate_sizes(answer, [1, 2], 1, deadline=time.time() + 60, log=quiet, modes=modes)
    assert calls[-4:] == ["default", "jrt", "question_first", "question_first_sep"]  # size 1 failed (boom)
    assert list(table["2"]) == ["examples", "default", "jrt", "question_first", "question_first_sep", "seconds"]
    for bad in (("default",), ("default", "jrt", "twice")):
        with pytest.raises(ValueError, match="modes"):
            evaluation.evaluate_sizes(answer, [1], 1, deadline=time.time() + 60, log=quiet, modes=bad)


def test_evaluation_prompts_are_the_training_rows_and_answer_like_the_engine(tok):
    """--eval-modes: (Q, C, Q) and "\\n\\n" + (Q, C, Q) feed exactly a question-first training row's prompt ids
    (default and separator leads); their answers come from the engine as jrt-eval's own path would give them (checked
    on the plain and JRT prompts, which both paths can build)."""
    from jrt_prompt.engine import Engine

    examples = evaluation.test_examples(records=2, documents=2)
    enc = data.SampleEncoder(tok)
    ex = examples[0]
    jrt = JRTPrompt("generic", 2).encode(tok, ex.context, ex.question)
    assert evaluation.prompt_ids(tok, ex, "jrt") == jrt.ids
    assert evaluation.prompt_ids(tok, ex, "default") == JRTPrompt("generic", 1).encode(tok, ex.context, ex.question).ids
    assert evaluation.prompt_ids(tok, ex, "question_first_sep") == jrt.ids[jrt.context_tokens:]
    assert evaluation.prompt_ids(tok, ex, "question_first") == enc.prompt_ids(
        "question_first", ex.context, ex.question)[0] == jrt.ids[jrt.context_tokens + 2:]
    hf = models.build_hf_model("gla", TINY, len(tok), tok.eos_token_id, seed=0)
    lm = models.make_trainable("gla", hf).lm.eval()
    with torch.no_grad():
        for mode in ("default", "jrt"):
            engine = Engine(lm, tok, JRTPrompt("generic", evaluation.REPEATS[mode]), cuda_graphs=False)
            assert evaluation.ids_answers(engine, examples, mode, 3) == evaluation.engine_answers(
                lm, tok, examples, mode, 3, cuda_graphs=False)
        for mode in ("question_first", "question_first_sep"):
            answers = evaluation.engine_answers(lm, tok, examples, mode, 3, cuda_graphs=False)
            assert len(answers) == len(examples) and all("\n" not in a for a in answers)
    args = train_recall.parse_args(["--arch", "gla", "--out", "x", "--eval-modes",
                                    "question_first_sep,default,jrt,question_first"])
    assert args.eval_modes == "default,jrt,question_first,question_first_sep"
    assert train_recall.parse_args(["--arch", "gla", "--out", "x"]).eval_modes == "default,jrt"
    for bad in ("default", "default,jrt,qcq"):
        with pytest.raises(SystemExit):
            train_recall.parse_args(["--arch", "gla", "--out", "x", "--eval-modes", bad])


def test_attention_baseline_answers_the_same_prompts(tok):
    """The Llama baseline is scored on the same prompt ids through generate: one line per example."""
    hf = models.build_hf_model("llama", TINY, len(tok), tok.eos_token_id, seed=0).eval()
    examples = evaluation.test_examples(records=2, documents=1)[:3]
    for mode in evaluation.MODES:
        answers = evaluation.hf_answers(hf, tok, examples, mode, batch_size=2)
        assert len(answers) == 3 and all(isinstance(a, str) and "\n" not in a for a in answers)


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_gpu_selective_scan_as_gla_matches_the_reference():
    assert models.checked_mamba_scan("gla", torch.device("cuda")) == "gla"


@pytest.mark.gpu
@pytest.mark.parametrize("arch", models.RECURRENT)
def test_gpu_training_forward_matches_the_reference_and_reaches_every_parameter(tok, arch):
    """The training kernels (fla, the Mamba scan as GLA, Based's references) under bf16 autocast: every parameter gets
    a gradient and the logits match the all-reference forward."""
    from jrt_prompt.ops.backend import reference_ops

    hf = models.build_hf_model(arch, models.ModelSize(d_model=64, n_layer=2), len(tok), tok.eos_token_id, 0).cuda()
    trainable = models.make_trainable(arch, hf)
    ids = torch.randint(0, len(tok), (4, 300), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fast = trainable.logits(ids)
    fast.float().square().mean().backward()
    loop.check_gradients(trainable)
    with torch.no_grad(), reference_ops():
        ref = trainable.lm(ids)[0]
    err = (fast.float() - ref.float()).abs().max() / ref.abs().max()
    assert err < 5e-2, f"{arch}: bf16 training logits differ from the reference by {err:.3e} (relative)"


@pytest.mark.gpu
def test_gpu_training_ops_start_without_fla_and_mamba2_choice_is_logged():
    """The default (reference) training kernels need no compile; --train-ops fast on Mamba-2 either runs fla's SSD
    (it matched ssd_chunked) or names why it fell back."""
    said = []
    choice = models.checked_mamba2_ssd(torch.device("cuda"), log=said.append)
    assert choice == "fla" and not said or choice == "reference" and "ssd_chunked" in said[0]
    g = torch.Generator().manual_seed(0)
    b, L, C, N = 2, 300, 64, 16
    args = dict(u=torch.randn(b, L, C, generator=g), delta=torch.randn(b, L, C, generator=g),
                A=-torch.rand(C, N, generator=g) * 6, B=torch.randn(b, L, N, generator=g),
                C=torch.randn(b, L, N, generator=g), D=torch.randn(C, generator=g), z=torch.randn(b, L, C, generator=g),
                delta_bias=torch.randn(C, generator=g))
    from jrt_prompt.ops.selective_scan import naive

    ref, _ = naive.selective_scan(**args)
    for scan in (models.selective_scan_two_level, models.selective_scan_blocks, models.selective_scan_cumsum):
        got, _ = scan(**{k: v.cuda() for k, v in args.items()})
        assert ((got.cpu() - ref).abs().max() / ref.abs().max()).item() < 1e-4, scan


def test_probe_sees_the_first_linear_attention_layer_blind_past_the_window(capsys):
    """probe_jrt_states.py on the shipped demo (Based: conv, window of 32 back, two linear-attention layers): what
    the first linear-attention layer stores on the second read past the window's reach cannot depend on the
    question (no decay, nothing below it reaches further back), and within the window it does."""
    from recall_training.probe_jrt_states import probe

    demo = Path(jrt_prompt.__file__).parent / "demo"
    torch.manual_seed(0)
    past = probe(str(demo), [4], documents=1, questions=1, near=32)[4]
    close = probe(str(demo), [4], documents=1, questions=1, near=2)[4]
    assert set(past["far"]) == {"L2.kv", "L3.kv"}
    assert past["far"]["L2.kv"] < 1e-5
    assert close["far"]["L2.kv"] > 1e-3 and past["read"]["L2.kv"] > 1e-3
    assert "past 32" in capsys.readouterr().out
