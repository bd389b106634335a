"""lm-evaluation-harness integration (the optional ``eval`` extra): the ``jrt`` model's scores and generations
equal direct computations, and ``jrt-lm-eval`` runs our twice tasks on fixture files with a tiny model, offline."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval is the optional 'eval' extra: pip install 'jrt-prompt[eval]'")

from lm_eval.api.instance import Instance  # noqa: E402

from jrt_prompt.engine import Engine  # noqa: E402
from jrt_prompt.errors import JRTError  # noqa: E402
from jrt_prompt.eval.fixtures import save_tiny_mamba, write_fixtures  # noqa: E402
from jrt_prompt.eval.lm_eval_model import TASKS_DIR, JRTLM  # noqa: E402
from jrt_prompt.eval.tasks import TASKS, build_examples  # noqa: E402
from jrt_prompt.prompt import JRTPrompt  # noqa: E402
from tests.tokenizer_fixture import tiny_tokenizer  # noqa: E402
from tests.toy_model import toy_lm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lm():
    tok = tiny_tokenizer()
    return JRTLM(engine=Engine(toy_lm(len(tok), eos=tok.eos_token_id), tok), batch_size=3)


def _req(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@torch.no_grad()
def _full_logprobs(lm, ids):
    logits, _ = lm.model(torch.tensor([ids]))
    return torch.log_softmax(logits[0].float(), -1)


def test_loglikelihood_equals_a_full_forward(lm):
    pairs = [("Alice was born in", " Paris"), ("The quick brown fox", " jumps over the lazy dog"),
             ("Bob works at the", " bakery."), ("", "Question: Where was Alice born?"), ("é", "t\u00e9 à Zürich")]
    got = lm.loglikelihood([_req("loglikelihood", c, x) for c, x in pairs], disable_tqdm=True)
    for (ctx, cont), (score, greedy) in zip(pairs, got):
        if ctx:
            c_ids, x_ids = lm._encode_pair(ctx, cont)
        else:
            x_ids = lm.tok_encode(cont)
            c_ids, x_ids = [lm.eot_token_id], x_ids
        lp = _full_logprobs(lm, c_ids + x_ids)[len(c_ids) - 1:-1]
        target = torch.tensor(x_ids)
        assert score == pytest.approx(float(lp.gather(-1, target[:, None]).sum()), rel=1e-4, abs=1e-4)
        assert greedy == bool((lp.argmax(-1) == target).all())


def test_greedy_flag_is_true_for_the_models_own_continuation(lm):
    ctx = "Alice was born in Paris in 1990."
    ids = lm.tok_encode(ctx)
    own = lm.engine.generate_ids([ids], max_new_tokens=4, stop_at_eos=False)[0]
    (score, greedy), = lm._loglikelihood_tokens([((ctx, "?"), ids, own)], disable_tqdm=True)
    assert greedy and score < 0


def test_loglikelihood_rolling_equals_a_full_forward(lm):
    text = "Les élèves naïfs mangent des crêpes à Zürich. The quick brown fox jumps over the lazy dog."
    lm.engine.chunk_size = 7  # several chunks, the state carried between them
    try:
        (got,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", text)], disable_tqdm=True)
    finally:
        lm.engine.chunk_size = 4096
    tokens = lm.tok_encode(text)
    lp = _full_logprobs(lm, [lm.eot_token_id] + tokens[:-1])
    assert got == pytest.approx(float(lp.gather(-1, torch.tensor(tokens)[:, None]).sum()), rel=1e-4)


def test_generate_until_equals_the_engine(lm):
    prompts = ["Alice was born in", "The quick brown fox jumps over the lazy", "Bob works at the bakery on",
               "Question: Where was Alice born? Answer:"]
    kwargs = [{"until": ["\n"], "max_gen_toks": 6}, {"until": "o", "max_gen_toks": 6},
              {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}, {"until": ["\n", "e"], "max_gen_toks": 3}]
    got = lm.generate_until([_req("generate_until", p, k) for p, k in zip(prompts, kwargs)], disable_tqdm=True)
    for p, k, text in zip(prompts, kwargs, got):
        until = [k["until"]] if isinstance(k["until"], str) else k["until"]
        ids = lm.engine.generate_ids([lm.tok_encode(p)], max_new_tokens=k["max_gen_toks"], stop=until)[0]
        want = lm.tokenizer.decode(ids, skip_special_tokens=True)
        for s in until:
            want = want.split(s)[0]
        assert text == want and not any(s in text for s in until)


def test_model_args_errors():
    with pytest.raises(JRTError, match="pretrained=PATH"):
        JRTLM()
    with pytest.raises(JRTError, match="unknown model_args colour"):
        JRTLM(pretrained="x", colour="red")
    with pytest.raises(JRTError, match="batch_size"):
        JRTLM(engine=object.__new__(Engine), batch_size="many")


def test_task_files_read_the_datasets_of_lm_evals_own_tasks():
    """Our once/twice variants read the data sets lm-eval's swde, fda and squad_completion read."""
    import yaml
    from lm_eval.tasks.fda.task import FDA
    from lm_eval.tasks.squad_completion.task import SQUADCompletion
    from lm_eval.tasks.swde.task import SWDE

    names = sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))
    assert names == ["fda_once", "fda_twice", "jrt_recall_once", "jrt_recall_twice", "squad_completion_once",
                     "squad_completion_twice", "swde_once", "swde_twice"]
    for task, cls in (("swde", SWDE), ("fda", FDA), ("squad_completion", SQUADCompletion)):
        for mode in ("once", "twice"):
            text = (TASKS_DIR / f"{task}_{mode}.yaml").read_text()
            cfg = yaml.safe_load(text.replace("!function", ""))
            assert cfg["dataset_path"] == cls.DATASET_PATH and cfg["task"] == f"{task}_{mode}"
            assert cfg["doc_to_text"].strip().endswith(f"_{mode}")


def _fixture_tasks(folder: Path, data: dict[str, Path]) -> None:
    """Our task yaml files, pointed at local JSONL fixtures (lm-eval's json loader) instead of the hub."""
    folder.mkdir()
    for task, rows in (("swde", "swde"), ("fda", "fda"), ("squad_completion", "squad")):
        for mode in ("once", "twice"):
            (folder / f"fixture_{task}_{mode}.yaml").write_text(
                f"include: {TASKS_DIR / f'{task}_{mode}.yaml'}\ntask: fixture_{task}_{mode}\n"
                f"dataset_path: json\ndataset_name: null\n"
                f"dataset_kwargs:\n  data_files:\n    validation: {data[rows]}\n")


def test_jrt_lm_eval_runs_twice_tasks_offline(tmp_path):
    """`jrt-lm-eval --model jrt --model_args pretrained=PATH --tasks ...` on fixture files with a tiny random
    MambaForCausalLM: every task scores, and the prompts lm-eval sent are our JRTPrompt texts."""
    tok = tiny_tokenizer()
    save_tiny_mamba(tmp_path / "tiny", tok)
    data = write_fixtures(tmp_path / "data")
    _fixture_tasks(tmp_path / "tasks", data)
    names = ["fixture_swde_once", "fixture_swde_twice", "fixture_fda_twice", "fixture_squad_completion_twice"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "jrt_prompt.eval.lm_eval_cli", "--model", "jrt", "--model_args",
           f"pretrained={tmp_path / 'tiny'}", "--tasks", ",".join(names), "--include_path", str(tmp_path / "tasks"),
           "--device", "cpu", "--batch_size", "2", "--gen_kwargs", "max_gen_toks=4", "--log_samples",
           "--output_path", str(tmp_path / "out")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    for name in names:
        assert 0.0 <= results[name]["contains,none"] <= 1.0
    for name in names:
        (samples_file,) = (tmp_path / "out").rglob(f"samples_{name}_*.jsonl")
        samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
        task_name = name.removeprefix("fixture_").rsplit("_", 1)[0]
        task = TASKS["squad" if task_name == "squad_completion" else task_name]
        repeats = 2 if name.endswith("twice") else 1
        rows = [json.loads(line) for line in data[task.name].read_text().splitlines()]
        examples, skipped = build_examples(task, rows, tok, window=False)
        assert len(samples) == len(examples)  # one-character answers dropped, as in jrt-eval
        sent = sorted(s["arguments"]["gen_args_0"]["arg_0"] for s in samples)
        want = sorted(JRTPrompt(task.template, repeats).text(e.context, e.question, e.original_question)
                      for e in examples)
        assert sent == want
        assert all(not math.isnan(s["contains"]) for s in samples)


@pytest.mark.gpu
def test_jrt_model_scores_on_cuda_match_cpu(tmp_path):
    """The same tiny checkpoint on CUDA and on CPU: lm-eval scores agree (fp32), and generation runs."""
    from jrt_prompt.loading import load

    folder = save_tiny_mamba(tmp_path / "tiny", tiny_tokenizer())
    cpu, gpu = (JRTLM(engine=load(folder, device=d, dtype="float32")) for d in ("cpu", "cuda"))
    assert gpu.model.device.type == "cuda"
    pairs = [_req("loglikelihood", "Alice was born in", " Paris"), _req("loglikelihood", "The fox", " is quick.")]
    for (a, _), (b, _) in zip(cpu.loglikelihood(pairs, disable_tqdm=True), gpu.loglikelihood(pairs, disable_tqdm=True)):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-3)
    (text,) = gpu.generate_until([_req("generate_until", "Alice was born in", {"until": ["\n"], "max_gen_toks": 5})],
                                 disable_tqdm=True)
    assert isinstance(text, str) and "\n" not in text
