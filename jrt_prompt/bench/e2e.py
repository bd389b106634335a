"""End-to-end timings on random-weight models of real shapes: time to first token (plain vs JRT prompt),
the JRT cost per question with the first read cached, decode tokens/s, and transformers' own numbers.

Weights are random: speed does not depend on them. Prompts are random token ids of the stated lengths.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from ..cuda_graph import GraphedPrefill, GraphedStep
from ..generate import prefill
from ..model import RecurrentLM

QUESTION_TOKENS = 16  # a question's length in tokens
DECODE_PROMPT = 128  # decode speed does not depend on context length for a recurrent model


# --------------------------------------------------------------------------- models of real shapes
def based_config(size: str) -> dict:
    """hazyresearch based-360m / based-1b shapes (REFERENCE section 3)."""
    if size == "360m":
        d, n_layer, lin, win = 1024, 27, [1, 6, 11, 16, 21], [2, 7, 12, 17, 22]
    elif size == "1.3b":
        d, n_layer, lin, win = 1792, 36, [1, 6, 11, 16, 21, 27, 33], [2, 7, 12, 17, 22, 28, 34]
    else:
        raise ValueError(size)
    return {
        "activation_function": "swiglu", "n_embd": d, "n_inner": 2 * d, "n_layer": n_layer, "n_head": 16,
        "n_positions": 0, "vocab_size": 50264, "pad_vocab_size_multiple": 8, "rms_norm": True,
        "residual_in_fp32": True, "layer_norm_epsilon": 1e-5, "rotary_emb_fraction": 1, "rotary_emb_base": 10000,
        "qkv_proj_bias": False, "out_proj_bias": False, "mlp_fc1_bias": False, "mlp_fc2_bias": False,
        "tie_word_embeddings": True, "bos_token_id": 50256, "eos_token_id": 50256,
        "mixer": {"_target_": "based.models.mixers.convolution.BaseConv", "expand_proj": 4, "kernel_sizes": 3,
                  "l_max": 2048, "use_bias": True},
        "alt_mixer": {"_target_": "based.models.mixers.linear_attention.LinearAttention", "feature_dim": 16,
                      "feature_map": {"_target_": "based.models.mixers.linear_attention.TaylorExp", "input_dim": 16},
                      "l_max": 2048, "num_heads": 16, "parallel_implementation": "fla_parallel"},
        "alt_mixer_2": {"_target_": "based.models.mixers.slide_attention.SlidingAttention", "causal": True,
                        "num_heads": 16, "window_size": 256},
        "alt_mixer_layers": lin, "alt_mixer_2_layers": win,
    }


def mamba2_370m_config():
    from transformers import Mamba2Config

    return Mamba2Config(vocab_size=50288, hidden_size=1024, num_hidden_layers=48, state_size=128, expand=2,
                        head_dim=64, num_heads=32, n_groups=1, conv_kernel=4, chunk_size=256)


GLA_1_3B = {  # fla-hub/gla-1.3B-100B's shape
    "model_type": "gla", "hidden_size": 2048, "num_hidden_layers": 24, "num_heads": 4, "num_kv_heads": None,
    "expand_k": 0.5, "expand_v": 1, "hidden_ratio": 4, "intermediate_size": None, "attn_mode": "chunk",
    "use_short_conv": False, "conv_size": 4, "use_output_gate": True, "clamp_min": None, "hidden_act": "swish",
    "feature_map": None, "elementwise_affine": True, "norm_eps": 1e-6, "attn": None, "fuse_norm": True,
    "fuse_swiglu": True, "vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None,
    "tie_word_embeddings": False, "use_cache": True, "initializer_range": 0.02, "max_position_embeddings": 2048,
    "gate_logit_normalizer": 16, "gate_low_rank_dim": 16,
}


def build(name: str, device="cuda", dtype=torch.bfloat16):
    """(our RecurrentLM, the transformers model it wraps or None) for a benchmark model name."""
    from jrt_prompt.adapters import based, gla, mamba2

    with torch.device(device):
        if name.startswith("based-"):
            hf = based.BasedForCausalLM(based.BasedConfig(**based_config(name.split("-", 1)[1])))
            hf = hf.to(dtype).eval()
            return based.from_model(hf), hf
        if name == "mamba2-370m":
            from transformers import Mamba2ForCausalLM

            hf = Mamba2ForCausalLM(mamba2_370m_config()).to(dtype).eval()
            return mamba2.from_model(hf), hf
        if name == "gla-1.3b":
            lm = gla.build(dict(GLA_1_3B), device=device, dtype=dtype)
            with torch.no_grad():
                for pname, p in lm.named_parameters():
                    p.copy_(torch.ones_like(p) if "norm" in pname else torch.randn_like(p) * 0.02)
            return lm, None
    raise ValueError(f"unknown benchmark model {name!r}")


# --------------------------------------------------------------------------- timing
def cuda_ms(fn: Callable[[], object], reps: int = 5, warmup: int = 1) -> float:
    """Median milliseconds of ``fn`` between CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_mb(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def _ids(n: int, vocab: int, g: torch.Generator) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=g).tolist()


def ttft(lm: RecurrentLM, context: int, chunk: int, vocab: int, questions: int = 8, reps: int = 5,
         graph: GraphedPrefill | None = None) -> dict:
    """Time to first token at one context length: plain (C, Q), JRT (C, Q, C, Q), and JRT per question with
    the first read of C cached and shared by ``questions`` questions. ``graph``: prefills replayed from CUDA
    graphs (each piece length captured in the warm-up calls), else eager."""
    g = torch.Generator().manual_seed(context)
    ctx = _ids(context, vocab, g)
    qs = [_ids(QUESTION_TOKENS, vocab, g) for _ in range(questions)]

    def read(ids, state=None):
        return prefill(lm, [ids], state, chunk_size=chunk, graph=graph)

    def first_token(ids, state=None):
        return read(ids, state)[0].argmax(-1)

    # two warm-up calls each: the first call of a new shape compiles and autotunes kernels (seconds, once)
    plain = cuda_ms(lambda: first_token(ctx + qs[0]), reps, warmup=2)
    jrt = cuda_ms(lambda: first_token(ctx + qs[0] + ctx + qs[0]), reps, warmup=2)
    read_ms = cuda_ms(lambda: read(ctx), reps, warmup=2)
    _, doc = read(ctx)
    per_q = [cuda_ms(lambda q=q: first_token(q + ctx + q, doc), reps=1, warmup=1) for q in qs]
    cached = (read_ms + sum(per_q)) / questions
    mem = peak_mb(lambda: first_token(ctx + qs[0] + ctx + qs[0]))
    return {"context": context, "prefill": "graphs" if graph is not None else "eager",
            "plain_ms": plain, "jrt_ms": jrt, "jrt_over_plain": jrt / plain,
            "read_ms": read_ms, "jrt_cached_per_question_ms": cached, "jrt_cached_over_plain": cached / plain,
            "questions": questions, "peak_mb_jrt": mem}


def decode_speed(lm: RecurrentLM, batch: int, vocab: int, steps: int = 128, compile: bool = False) -> dict:
    """Greedy decode tokens/s through the CUDA-graph step, and the bandwidth that implies (weights read once
    per step plus the state read and written)."""
    g = torch.Generator().manual_seed(batch)
    prompts = [_ids(DECODE_PROMPT, vocab, g) for _ in range(batch)]
    logits, state = prefill(lm, prompts)
    graphed = GraphedStep(lm, batch, compile=compile)
    graphed.load(state)
    tokens = logits.argmax(-1)

    def run():
        t = tokens
        for _ in range(steps):
            out, _ = graphed.step(t)
            t = out.argmax(-1)
        return t

    ms = cuda_ms(run, reps=3)
    weight_bytes = sum(p.numel() * p.element_size() for p in lm.parameters())
    bytes_per_step = weight_bytes + 2 * graphed.state.nbytes
    secs = ms / 1e3
    return {"batch": batch, "compiled": compile, "tokens_per_s": batch * steps / secs, "ms_per_step": ms / steps,
            "gb_per_s": bytes_per_step * steps / secs / 1e9, "weight_gb": weight_bytes / 1e9,
            "state_mb": graphed.state.nbytes / 2**20}


def hf_numbers(hf, vocab: int, prompt: int = 2048, decode_tokens: int = 16, batches=(1,)) -> dict:
    """transformers' own forward (time to first token) and generate() (decode tokens/s) on the same model."""
    g = torch.Generator().manual_seed(7)
    out = {"version": __import__("transformers").__version__}
    ids = torch.tensor([_ids(prompt, vocab, g)], device="cuda")
    with torch.no_grad():
        out["ttft_ms"] = cuda_ms(lambda: hf(ids, use_cache=False).logits[:, -1].argmax(-1), reps=2)
        for b in batches:
            short = torch.tensor([_ids(DECODE_PROMPT, vocab, g) for _ in range(b)], device="cuda")
            kw = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(short))
            pre = cuda_ms(lambda: hf.generate(short, max_new_tokens=1, min_new_tokens=1, **kw), reps=1)
            full = cuda_ms(lambda: hf.generate(short, max_new_tokens=decode_tokens + 1,
                                               min_new_tokens=decode_tokens + 1, **kw), reps=1)
            out[f"decode_tokens_per_s_b{b}"] = b * decode_tokens / max(1e-9, (full - pre) / 1e3)
    return out


def run(models: list[str], contexts: list[int], batches: list[int], chunk: int = 8192, hf_compare: bool = True,
        log=print, on_result=None, compile: bool = False, graph_prefill: bool = True) -> list[dict]:
    """Every measurement for each model in turn; ``on_result(results)`` after each model (partial saves).
    Time to first token is measured eager, and with ``graph_prefill`` also replayed from CUDA graphs."""
    results = []
    for name in models:
        t0 = time.time()
        lm, hf = build(name)
        vocab = lm.config.vocab_size
        entry = {"model": name, "params_m": sum(p.numel() for p in lm.parameters()) / 1e6,
                 "state_bytes_per_row": lm.init_state(1).nbytes, "ttft": [], "decode": []}
        graphs = [None, GraphedPrefill(lm, 1, chunk)] if graph_prefill else [None]
        for n in contexts:
            for graph in graphs:
                try:
                    entry["ttft"].append(ttft(lm, n, chunk, vocab, graph=graph))
                except torch.cuda.OutOfMemoryError as e:
                    entry["ttft"].append({"context": n, "prefill": "graphs" if graph else "eager",
                                          "error": f"out of memory: {e}"[:200]})
                log(f"{name} ttft {entry['ttft'][-1]}")
                torch.cuda.empty_cache()
        del graphs
        for b in batches:
            entry["decode"].append(decode_speed(lm, b, vocab, compile=compile))
            log(f"{name} decode {entry['decode'][-1]}")
        if hf is not None and hf_compare and name == "mamba2-370m":
            entry["transformers"] = hf_numbers(hf, vocab, batches=(1, 16))
            log(f"{name} transformers {entry['transformers']}")
        entry["seconds"] = time.time() - t0
        results.append(entry)
        if on_result is not None:
            on_result(results)
        del lm, hf
        torch.cuda.empty_cache()
    return results
