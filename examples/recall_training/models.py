"""The five small models: HF configs and classes, and the differentiable view each one trains through.

Every model is built as its library's transformers-style class (so ``save_pretrained`` writes a folder that
``jrt_prompt.load`` and ``AutoModelForCausalLM`` read): BasedForCausalLM (jrt_prompt.adapters.based),
MambaForCausalLM and Mamba2ForCausalLM (transformers), GLAForCausalLM (fla), LlamaForCausalLM (the attention
baseline). The recurrent ones train through ``jrt_prompt``'s RecurrentLM over the very same parameter storage
(``wrap``'s adapters), because its layers have the fast training paths this machine lacks elsewhere:

- by default (``ops="reference"``) every recurrent model trains on CUDA through the PyTorch references
  (``reference_ops``): nothing to compile or autotune, so five runs sharing a GPU start training within seconds
  (fla's kernels spent minutes compiling and autotuning per shape in the last run); Mamba's scan through
  ``selective_scan_cumsum`` (a few dozen launches a layer and a few [B, L, C, N] tensors; ``selective_scan_blocks``,
  run 10's, keeps 8 times that; ``selective_scan_two_level``, runs 1-4's, walks about 2 sqrt(L) sequential
  steps), Mamba-2 through ``ssd_chunked``;
- with ``ops="fast"``: fla's chunk kernels for GLA (``chunk_gla``) and Mamba-2 (``chunk_simple_gla``, unless fla
  refuses its gated backward here: then ``ssd_chunked``, see ``checked_mamba2_ssd``), Mamba's scan as gated linear
  attention (``selective_scan_as_gla``, checked against the reference first);
- Based: always the references: its Triton prefill kernel has no backward.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = ("based", "mamba", "mamba2", "gla", "llama")
RECURRENT = ("based", "mamba", "mamba2", "gla")
VOCAB_MULTIPLE = 8


@dataclass
class ModelSize:
    """The knobs the command line exposes; each architecture derives its own config from them."""

    d_model: int = 128
    n_layer: int = 4  # blocks with an MLP; Mamba and Mamba-2 (no MLP) get twice as many mixer layers
    state: int | None = None  # d_state (Mamba 16, Mamba-2 32); ignored elsewhere
    heads: int | None = None  # linear-attention / GLA / attention heads (default d_model // 32)
    based_pattern: str | None = None  # one letter per layer: c BaseConv, l linear attention, w window
    window: int = 64  # Based window_size (each token sees window // 2 back)
    init_range: float | None = None  # std of the normal init of embeddings and linear layers (None: the library's:
    # 0.02 for Based, GLA and Llama, 0.1 for transformers' Mamba and Mamba-2)

    def n_heads(self) -> int:
        return self.heads or max(1, self.d_model // 32)


def padded_vocab(n: int) -> int:
    return -(-n // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def default_based_pattern(n_layer: int) -> str:
    """BaseConv, then a window layer (binds a record's name to its values, and a question to the answer cue), then
    linear attention (the lookup over the whole document), repeated; the last layer is always linear attention.
    2 layers: "wl"; 4: "cwll"; 6: "cwlcwl"."""
    if n_layer <= 2:
        return "wl"[-n_layer:]
    pattern = ("cwl" * n_layer)[:n_layer]
    return pattern if pattern.endswith("l") else pattern[:-1] + "l"


# --------------------------------------------------------------------------- configs
def based_config(size: ModelSize, vocab: int, eos: int) -> dict:
    pattern = size.based_pattern or default_based_pattern(size.n_layer)
    if len(pattern) != size.n_layer or set(pattern) - set("clw"):
        raise ValueError(f"--based-pattern {pattern!r} must have one of c/l/w per layer ({size.n_layer} layers)")
    d, heads = size.d_model, size.n_heads()
    return {
        "model_type": "based", "architectures": ["BasedForCausalLM"],
        "vocab_size": vocab, "n_embd": d, "n_inner": 2 * d, "n_layer": size.n_layer, "n_head": heads,
        "n_positions": 0, "activation_function": "swiglu", "rms_norm": True, "residual_in_fp32": True,
        "layer_norm_epsilon": 1e-5, "pad_vocab_size_multiple": VOCAB_MULTIPLE, "tie_word_embeddings": True,
        "rotary_emb_fraction": 1, "rotary_emb_base": 10000, "qkv_proj_bias": False, "out_proj_bias": False,
        "mlp_fc1_bias": False, "mlp_fc2_bias": False,
        "initializer_range": 0.02 if size.init_range is None else size.init_range,
        "mixer": {"_target_": "based.models.mixers.convolution.BaseConv", "expand_proj": 4, "kernel_sizes": 3,
                  "use_bias": True, "l_max": 8192},
        "alt_mixer": {"_target_": "based.models.mixers.linear_attention.LinearAttention", "feature_dim": 16,
                      "feature_map": {"_target_": "based.models.mixers.linear_attention.TaylorExp", "input_dim": 16},
                      "num_heads": heads, "l_max": 8192},
        "alt_mixer_2": {"_target_": "based.models.mixers.slide_attention.SlidingAttention", "causal": True,
                        "num_heads": heads, "window_size": size.window},
        "alt_mixer_layers": [i for i, c in enumerate(pattern) if c == "l"],
        "alt_mixer_2_layers": [i for i, c in enumerate(pattern) if c == "w"],
        "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos,
    }


def _hf_config(arch: str, size: ModelSize, vocab: int, eos: int):
    d, n, heads = size.d_model, size.n_layer, size.n_heads()
    shared = dict(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    if size.init_range is not None:
        shared["initializer_range"] = size.init_range
    if arch == "based":
        from jrt_prompt.adapters.based import BasedConfig

        return BasedConfig(**{k: v for k, v in based_config(size, vocab, eos).items() if k != "model_type"})
    if arch == "mamba":
        from transformers import MambaConfig

        return MambaConfig(vocab_size=vocab, hidden_size=d, state_size=size.state or 16, num_hidden_layers=2 * n,
                           expand=2, conv_kernel=4, tie_word_embeddings=True, **shared)
    if arch == "mamba2":
        from transformers import Mamba2Config

        head_dim = 32
        return Mamba2Config(vocab_size=vocab, hidden_size=d, state_size=size.state or 32, num_hidden_layers=2 * n,
                            expand=2, head_dim=head_dim, num_heads=2 * d // head_dim, n_groups=1, conv_kernel=4,
                            chunk_size=64, tie_word_embeddings=True, **shared)
    if arch == "gla":
        from fla.models import GLAConfig

        return GLAConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=n, num_heads=heads, expand_k=0.5,
                         expand_v=1.0, intermediate_size=3 * d, use_short_conv=True, conv_size=4,
                         tie_word_embeddings=True, fuse_cross_entropy=False, **shared)
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=3 * d, num_hidden_layers=n,
                           num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=16384,
                           tie_word_embeddings=True, attn_implementation="sdpa", **shared)
    raise ValueError(f"--arch must be one of {', '.join(ARCHS)}, got {arch!r}")


def build_hf_model(arch: str, size: ModelSize, vocab: int, eos: int, seed: int) -> nn.Module:
    """The HF model with its library's initialisation, seeded, float32 on CPU."""
    config = _hf_config(arch, size, padded_vocab(vocab), eos)
    torch.manual_seed(seed)
    if arch == "based":
        from jrt_prompt.adapters.based import BasedForCausalLM as cls
    elif arch == "mamba":
        from transformers import MambaForCausalLM as cls
    elif arch == "mamba2":
        from transformers import Mamba2ForCausalLM as cls
    elif arch == "gla":
        from fla.models import GLAForCausalLM as cls
    else:
        from transformers import LlamaForCausalLM as cls
    return cls(config).float()


def count_parameters(model: nn.Module) -> int:
    """Distinct parameter tensors (a tied head counts once)."""
    seen, total = set(), 0
    for p in model.parameters():
        key = (p.data_ptr(), tuple(p.shape))
        if key not in seen:
            seen.add(key)
            total += p.numel()
    return total


# --------------------------------------------------------------------------- the training view
@dataclass
class Trainable:
    """What the training loop needs: logits for token ids (no state), the distinct parameters to optimise, the HF
    model to save, and the RecurrentLM (None for the attention baseline). On CUDA, ``ops`` picks the training
    kernels (see ``training_paths``)."""

    arch: str
    hf_model: nn.Module
    lm: nn.Module | None
    params: list[nn.Parameter] = field(default_factory=list)
    ops: str = "reference"  # CUDA: "reference" (PyTorch only: no Triton compile or autotune) or "fast" (fla)
    mamba_scan: str = "cumsum"  # Mamba: "cumsum" / "blocks" / "two-level" (PyTorch), "gla" (fla's chunk_gla), ...
    mamba2_ssd: str = "reference"  # Mamba-2 with ops="fast": "fla" (chunk_simple_gla) or "reference" (ssd_chunked)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        if self.lm is None:
            return self.hf_model(input_ids=ids, use_cache=False).logits
        with training_paths(self, ids.device):
            return self.lm(ids)[0]

    def train(self, mode: bool = True) -> None:
        self.hf_model.train(mode)
        if self.lm is not None:
            self.lm.train(mode)

    def describe(self) -> dict:
        """The training kernels, for results.json."""
        if self.lm is None:
            return {"ops": "transformers"}
        out = {"ops": self.ops}
        if self.arch == "mamba":
            out["mamba_scan"] = self.mamba_scan
        if self.arch == "mamba2":
            out["mamba2_ssd"] = "reference" if self.ops == "reference" else self.mamba2_ssd
        return out


def retie(module: nn.Module) -> None:
    """Make parameters that share one storage (a tied head loaded as two Parameters) one Parameter object, so
    the optimiser updates them once and their gradients add up as in a tied model."""
    first: dict[tuple, nn.Parameter] = {}
    for name, p in list(module.named_parameters(remove_duplicate=False)):
        key = (p.data_ptr(), tuple(p.shape), p.stride())
        if key not in first:
            first[key] = p
        elif first[key] is not p:
            owner, _, attr = name.rpartition(".")
            setattr(module.get_submodule(owner), attr, first[key])


def make_trainable(arch: str, hf_model: nn.Module) -> Trainable:
    """The model on its final device: the RecurrentLM that ``jrt_prompt.wrap`` would build, sharing storage."""
    if arch == "llama":
        params = list(hf_model.parameters())
        return Trainable(arch, hf_model, None, params)
    from jrt_prompt.loading import as_model

    lm = as_model(hf_model)
    retie(lm)
    hf_ptrs = {p.data_ptr() for p in hf_model.parameters()}
    alien = [n for n, p in lm.named_parameters() if p.data_ptr() not in hf_ptrs]
    if alien:  # training them would not change what save_pretrained writes
        raise RuntimeError(f"the {arch} RecurrentLM does not share these tensors with the HF model: {alien[:4]}")
    for p in lm.parameters():
        p.requires_grad_(True)
    return Trainable(arch, hf_model, lm, list(lm.parameters()))


MAMBA_SCANS = ("cumsum", "blocks", "two-level", "gla")


@contextlib.contextmanager
def training_paths(trainable: Trainable, device: torch.device):
    """The differentiable kernels of a training forward on ``device`` (see the module docstring). On CUDA with
    ``ops="reference"`` every op runs its PyTorch reference (``reference_ops``: nothing to compile or autotune, so
    training starts at once; these models are small), Mamba's scan as ``selective_scan_cumsum``. With
    ``ops="fast"``: fla's kernels for GLA, Mamba-2 (unless ``mamba2_ssd`` is "reference": fla refuses its gated
    backward on some GPU/Triton pairs) and Mamba's scan as GLA (``mamba_scan="gla"``). Based always trains through
    its references (its Triton prefill kernel has no backward). CPU: the layers' own (reference) paths."""
    from jrt_prompt.ops.backend import reference_ops

    arch = trainable.arch
    if device.type != "cuda":
        yield
        return
    reference = arch == "based" or trainable.ops == "reference" or (arch == "mamba2" and trainable.mamba2_ssd != "fla")
    with reference_ops(True) if reference else contextlib.nullcontext():
        if arch != "mamba":
            yield
            return
        import jrt_prompt.layers.mamba as mamba_layer

        original = mamba_layer.selective_scan
        mamba_layer.selective_scan = {"gla": selective_scan_as_gla, "two-level": selective_scan_two_level,
                                      "blocks": selective_scan_blocks}.get(trainable.mamba_scan, selective_scan_cumsum)
        try:
            yield
        finally:
            mamba_layer.selective_scan = original


def selective_scan_as_gla(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                          initial_state=None, mask=None, chunk_size=None):
    """Mamba's selective scan (``jrt_prompt.ops.selective_scan.selective_scan``'s signature and results) as gated
    linear attention with one head per channel: q = C, k = B, v = dt * u, log-decay g[n] = dt * A[c, n], scale 1.
    The state [B, C, N] is GLA's [B, H=C, K=N, V=1]; the value dim is zero-padded to 16 on CUDA (fla's tiles)."""
    from jrt_prompt.ops.gla import chunk_gla
    from jrt_prompt.ops.selective_scan.naive import finish, prepare_dt

    batch, length, channels = u.shape
    n = A.shape[-1]
    dt = prepare_dt(delta, delta_bias, delta_softplus, mask=mask)  # [B, L, C] float32
    work = u.dtype if u.is_cuda else torch.float32
    q = C.to(work)[:, :, None, :].expand(batch, length, channels, n)
    k = B.to(work)[:, :, None, :].expand(batch, length, channels, n)
    v = (dt * u.float()).to(work)[..., None]  # [B, L, C, 1]
    g = dt[..., None] * A.float()  # [B, L, C, N], <= 0
    pad = 16 - 1 if u.is_cuda else 0
    if pad:
        v = F.pad(v, (0, pad))
    h0 = None
    if initial_state is not None:
        h0 = initial_state.float()[..., None]
        h0 = F.pad(h0, (0, pad)) if pad else h0
    o, h = chunk_gla(q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), scale=1.0, initial_state=h0,
                     output_final_state=True)
    return finish(o[..., 0].float(), u, D, z, mask), h[..., 0].float()


def selective_scan_two_level(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                             initial_state=None, mask=None, chunk_size=None):
    """Mamba's selective scan in plain PyTorch for training (autograd), exact and memory-lean: the sequence is cut
    into chunks of ``chunk_size`` (default about sqrt(L)) tokens; (1) every chunk runs the recurrence from a zero
    state, all chunks at once (chunk_size steps over [B, chunks, C, N]); (2) the states at chunk ends are carried
    across chunks (L / chunk_size steps over [B, C, N]); (3) each token adds its chunk's incoming state, decayed.
    Every decay factor is exp of a sum of non-positive terms, so nothing overflows. Autograd keeps a few
    [B, L, C, N] tensors per layer (no [B, t, t, C, N] pair tensors): no Triton, so it starts at once."""
    from jrt_prompt.ops.selective_scan.naive import finish, prepare_dt

    batch, length, channels = u.shape
    n = A.shape[-1]
    dt = prepare_dt(delta, delta_bias, delta_softplus, mask=mask)  # [B, L, C] float32
    T = chunk_size or max(4, int(round(length ** 0.5)))
    chunks = -(-length // T)
    pad = chunks * T - length
    a = dt[..., None] * A.float()  # [B, L, C, N] log-decay, <= 0
    x = (dt * u.float())[..., None] * B.float()[:, :, None, :]  # [B, L, C, N] input
    if pad:
        a, x = F.pad(a, (0, 0, 0, 0, 0, pad)), F.pad(x, (0, 0, 0, 0, 0, pad))
    a = a.view(batch, chunks, T, channels, n)
    x = x.view(batch, chunks, T, channels, n)
    cum = a.cumsum(2)  # log-decay from each chunk's start through t
    local, h = [], torch.zeros_like(x[:, :, 0])
    for t in range(T):  # (1) inside every chunk at once, from zero
        h = a[:, :, t].exp() * h + x[:, :, t]
        local.append(h)
    local = torch.stack(local, 2)  # [B, chunks, T, C, N]
    carry = (initial_state.float() if initial_state is not None
             else u.new_zeros(batch, channels, n, dtype=torch.float32))
    incoming = []
    for k in range(chunks):  # (2) across chunks
        incoming.append(carry)
        carry = cum[:, k, -1].exp() * carry + local[:, k, -1]
    states = local + cum.exp() * torch.stack(incoming, 1)[:, :, None]  # (3)
    states = states.view(batch, chunks * T, channels, n)[:, :length]
    return finish((states * C.float()[:, :, None, :]).sum(-1), u, D, z, mask), carry


def _blocked_states(a, x, h0, blocks):
    """States h_t = exp(a_t) h_{t-1} + x_t of a [B, L, C, N] recurrence from h0 [B, C, N], and the final state, in
    O(len(blocks)) launches: blocks of ``blocks[0]`` tokens are solved at once through their [t, s] decay matrix
    exp(cum_t - cum_s), s <= t (every exponent <= 0: nothing overflows), the block ends form a recurrence of
    L / blocks[0] steps solved the same way with ``blocks[1:]``, and so on; the last level takes what is left whole."""
    length = a.shape[1]
    size = blocks[0] if len(blocks) > 1 and length > blocks[0] else length
    a, x = _in_blocks(a, size), _in_blocks(x, size)
    cum = a.cumsum(2)  # [B, n, size, C, N]
    later = torch.ones(size, size, dtype=torch.bool, device=a.device).triu(1)[:, :, None, None]  # s > t
    decay = (cum[:, :, :, None] - cum[:, :, None]).masked_fill(later, float("-inf")).exp()  # [B, n, t, s, C, N]
    local = (decay * x[:, :, None]).sum(3)  # each block from a zero state
    return _join_blocks(cum, cum.exp(), local, h0, blocks[1:], length)


def _in_blocks(t, size):
    """[B, L, C, N] -> [B, n, size, C, N], the tail padded with zeros (log-decay 0 and input 0: the state passes
    through unchanged)."""
    n = -(-t.shape[1] // size)
    return F.pad(t, (0, 0, 0, 0, 0, n * size - t.shape[1])).unflatten(1, (n, size))


def _join_blocks(cum, grow, local, h0, blocks, length):
    """Every state and the final one from each block's states from zero (``local``) and its in-block decays
    (``cum``, ``grow`` = e^cum): the state entering each block comes from the recurrence over block ends, one level
    up (``_blocked_states`` with ``blocks``)."""
    if cum.shape[1] == 1:
        incoming = h0[:, None]
    else:
        ends, _ = _blocked_states(cum[:, :, -1], local[:, :, -1], h0, blocks)
        incoming = torch.cat([h0[:, None], ends[:, :-1]], 1)
    states = (local + grow * incoming[:, :, None]).flatten(1, 2)[:, :length]
    return states, states[:, -1]


def _scan_through(solve, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, mask):
    """The selective scan's inputs as the linear recurrence h_t = exp(a_t) h_{t-1} + x_t over [B, L, C, N], solved
    by ``solve(a, x, h0) -> (states, final)``, and its output."""
    from jrt_prompt.ops.selective_scan.naive import finish, prepare_dt

    batch, _, channels = u.shape
    dt = prepare_dt(delta, delta_bias, delta_softplus, mask=mask)  # [B, L, C] float32
    a = dt[..., None] * A.float()  # [B, L, C, N] log-decay, <= 0
    x = (dt * u.float())[..., None] * B.float()[:, :, None, :]
    h0 = (initial_state.float() if initial_state is not None
          else u.new_zeros(batch, channels, A.shape[-1], dtype=torch.float32))
    states, final = solve(a, x, h0)
    return finish((states * C.float()[:, :, None, :]).sum(-1), u, D, z, mask), final


def selective_scan_blocks(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                          initial_state=None, mask=None, blocks=(8, 16, 16, 16)):
    """Mamba's selective scan in plain PyTorch for training (autograd), exact, in a few dozen launches a layer
    (``_blocked_states``; the two-level scan runs about 2 sqrt(L) sequential steps). Autograd keeps [B, L, 8, C, N]
    decay blocks: about 8 times the two-level scan's memory."""
    return _scan_through(lambda a, x, h0: _blocked_states(a, x, h0, tuple(blocks)), u, delta, A, B, C, D, z,
                         delta_bias, delta_softplus, initial_state, mask)


# The cumsum scan's first level: blocks of CUMSUM_BLOCK tokens with every per-token log-decay clamped at CUMSUM_FLOOR,
# so that exp(-cum) within a block stays below e^64 (fp32 holds 3e38).
CUMSUM_BLOCK, CUMSUM_FLOOR = 4, -16.0


def _cumsum_states(a, x, h0, size=CUMSUM_BLOCK, floor=CUMSUM_FLOOR, blocks=(16, 16, 16, 16)):
    """``_blocked_states`` with a first level that keeps no [t, s] decay matrix: inside a block of ``size`` tokens
    h_t = e^{cum_t} (h_in + sum_{s <= t} e^{-cum_s} x_s) from two cumsums, so autograd keeps a few [B, L, C, N]
    tensors instead of ``size`` times that. Exact up to rounding (the absolute error of a block's sum is about fp32
    eps times its largest input, since every term is multiplied back by e^{cum_t - cum_s} <= 1) where each log-decay
    is >= ``floor``; below it a token keeps e^floor (1e-7) of the state instead of less, and its log-decay gets no
    gradient. The block ends' recurrence (decays e^{cum}, unclamped sums) is solved exactly by ``_blocked_states``."""
    cum = _in_blocks(a.clamp(min=floor), size).cumsum(2)  # [B, n, size, C, N], >= size * floor
    grow = cum.exp()
    local = grow * ((-cum).exp() * _in_blocks(x, size)).cumsum(2)  # each block from a zero state
    return _join_blocks(cum, grow, local, h0, blocks, a.shape[1])


def selective_scan_cumsum(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                          initial_state=None, mask=None, size=CUMSUM_BLOCK, floor=CUMSUM_FLOOR):
    """Mamba's selective scan in plain PyTorch for training (autograd) through ``_cumsum_states``: the blocked
    scan's few launches with about an eighth of its memory traffic at the first level (run 10: the blocked scan
    trained at 37-45k tokens/s on an H100, a quarter of Mamba-2's rate). Exact where dt * A >= ``floor`` per token
    (Mamba's init: dt <= 0.1, |A| <= 16, so >= -1.6)."""
    return _scan_through(lambda a, x, h0: _cumsum_states(a, x, h0, size, floor), u, delta, A, B, C, D, z,
                         delta_bias, delta_softplus, initial_state, mask)


def checked_mamba_scan(choice: str, device: torch.device, log=print) -> str:
    """``choice`` if it is not "gla", or if ``selective_scan_as_gla`` runs and matches the reference scan (values
    and gradients) on ``device``; else "cumsum" (``selective_scan_cumsum``), with a log line saying why.
    On CUDA the check compiles and autotunes fla's kernels for its shapes (minutes with other jobs compiling)."""
    if choice != "gla":
        return choice
    try:
        worst = _gla_scan_error(device)
    except Exception as e:  # noqa: BLE001 - an unattended run falls back instead of failing
        log(f"Mamba scan as GLA failed ({type(e).__name__}: {e}): training with the cumsum PyTorch scan")
        return "cumsum"
    if not worst < 2e-2:  # fla may use TF32 dots on fp32 inputs; a wrong mapping is off by far more
        log(f"Mamba scan as GLA differs from the reference by {worst:.2e} (relative): training with the cumsum "
            "PyTorch scan")
        return "cumsum"
    return "gla"


def fla_gated_backward_refusal() -> str | None:
    """Why fla's gated chunk backward (``chunk_bwd_dqkwg`` with g, which Mamba-2's ``chunk_simple_gla`` backward
    calls) refuses to run here, read from fla's own guard (fla 0.6.0: Hopper with 3.4.0 <= Triton < 3.7.1, "#640");
    None when it would run."""
    try:
        from fla.ops.common import chunk_o
    except Exception as e:  # noqa: BLE001
        return f"fla's chunk kernels do not import ({type(e).__name__}: {e})"
    if getattr(chunk_o, "IS_NVIDIA_HOPPER", False) and getattr(chunk_o, "TRITON_ABOVE_3_4_0", False) \
            and not getattr(chunk_o, "TRITON_ABOVE_3_7_1", True):
        import triton

        return (f"fla refuses its gated chunk backward on Hopper with Triton {triton.__version__} (needs >= 3.7.1, "
                "fla #640)")
    return None


def checked_mamba2_ssd(device: torch.device, log=print) -> str:
    """"fla" when fla's ``chunk_simple_gla`` runs forward and backward on ``device`` and matches ``ssd_chunked``;
    else "reference" (``jrt_prompt.ops.ssd.ssd_chunked``, plain PyTorch under autograd), with a log line saying
    why. fla's own Hopper/Triton guard is read first, so a refused backward costs no compile."""
    if device.type != "cuda":
        return "reference"
    why = fla_gated_backward_refusal()
    if why is None:
        try:
            worst = _ssd_fla_error(device)
            if not worst < 2e-2:
                why = f"fla's SSD differs from the reference by {worst:.2e} (relative)"
        except Exception as e:  # noqa: BLE001 - an unattended run falls back instead of failing
            why = f"fla's SSD failed ({type(e).__name__}: {e})"
    if why is None:
        return "fla"
    log(f"Mamba-2: {why}: training with the reference chunked SSD (jrt_prompt.ops.ssd.ssd_chunked)")
    return "reference"


def _ssd_fla_error(device: torch.device) -> float:
    """Largest relative difference (outputs, state, gradients) between fla's SSD and ``ssd_chunked``."""
    from jrt_prompt.ops.ssd import ssd_chunked, ssd_fla

    g = torch.Generator(device="cpu").manual_seed(0)
    shapes = dict(x=(2, 150, 4, 32), dt=(2, 150, 4), B=(2, 150, 1, 32), C=(2, 150, 1, 32), D=(4,), dt_bias=(4,))
    inputs = {k: torch.randn(*s, generator=g).to(device) for k, s in shapes.items()}
    A = -torch.rand(4, generator=g).to(device) * 4
    outs = []
    for fn in (ssd_chunked, ssd_fla):
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        y, h = fn(leaves["x"], leaves["dt"], A, leaves["B"], leaves["C"], leaves["D"], dt_bias=leaves["dt_bias"])
        (y.float().square().sum() + h.sum()).backward()
        outs.append([y, h] + [leaves[k].grad for k in ("x", "dt", "B", "C")])
    return max(((a.float() - b.float()).abs().max() / (b.float().abs().max() + 1e-6)).item()
               for a, b in zip(outs[1], outs[0]))


def _gla_scan_error(device: torch.device) -> float:
    """Largest relative difference (outputs, state, gradients) between the GLA form and the reference scan."""
    from jrt_prompt.ops.selective_scan import naive

    g = torch.Generator(device="cpu").manual_seed(0)
    shapes = dict(u=(2, 150, 32), delta=(2, 150, 32), A=(32, 16), B=(2, 150, 16), C=(2, 150, 16), D=(32,),
                  z=(2, 150, 32), delta_bias=(32,))
    inputs = {k: torch.randn(*s, generator=g).to(device) for k, s in shapes.items()}
    inputs["A"] = -torch.rand(32, 16, generator=g).to(device) * 8
    outs = []
    for scan in (naive.selective_scan, selective_scan_as_gla):
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        y, h = scan(**leaves)
        (y.square().sum() + h.sum()).backward()
        outs.append([y, h] + [leaves[k].grad for k in ("u", "delta", "A", "B", "C")])
    return max(((a - b).abs().max() / (b.abs().max() + 1e-6)).item() for a, b in zip(outs[1], outs[0]))


# --------------------------------------------------------------------------- sizes for the report
def state_bytes(trainable: Trainable, prompt_tokens: int | None = None) -> int:
    """Bytes of the recurrent state of one sequence (fixed); for attention, its KV cache after ``prompt_tokens``."""
    if trainable.lm is not None:
        return trainable.lm.init_state(1).nbytes
    c = trainable.hf_model.config
    head_dim = c.hidden_size // c.num_attention_heads
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 4  # k and v, float32
    return per_token * (prompt_tokens or 1)



