"""The timed training run: AdamW with warmup and a cosine over the time (or step) budget, bf16 autocast on CUDA, a record-count
curriculum that grows when the model recalls, periodic logs, and a guard against parameters that get no gradient.

Loss per batch = mean next-token loss over the supervised tokens (every real token of plain rows, the answer only of
JRT and question-first rows: see data.py) + ``answer_weight`` x mean loss of the answers' values +
``recall_weight`` x mean loss over the second context copies of JRT rows (off by default: it rewards copying the
document, not selecting from it; it needs those rows supervised on every token, i.e. not answer-only).

Two phases (``TrainConfig.phase2``): from ``phase2.start`` of the budget on, batches come from ``phase2.mixture`` and
the recall weight is ``phase2.recall_weight`` (e.g. the first run's dense mixture until recall is learned, then
answer-only question-first and JRT rows on documents around and beyond what the state holds). With
``phase2.when_acc``, phase 2 starts earlier if plain rows at the curriculum's top (batches drawn at a level of at
least ``phase2.acc_level``) reach that accuracy.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .data import Batch, BatchStream, MixtureConfig, SampleEncoder
from .models import Trainable
from .report import bin_start, size_bin


@dataclass
class Phase2:
    """The second phase of a run: from ``start`` (a fraction of the time or step budget) on, batches come from
    ``mixture`` and the second-copy loss weighs ``recall_weight``. The curriculum level carries over."""

    start: float
    mixture: MixtureConfig
    recall_weight: float = 0.0
    when_acc: float | None = None  # start as soon as Curriculum.top_accuracy() reaches this (``start``: the latest)
    acc_level: float = 1.0  # the rows top_accuracy() counts: from batches drawn at this level or above


@dataclass
class TrainConfig:
    minutes: float = 8.0
    max_steps: int | None = None  # also a step budget: the schedule (LR, curriculum floor) follows the nearer one
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    answer_weight: float = 1.0
    recall_weight: float = 0.0
    start_level: float = 1.0  # the curriculum: the fraction of each format's largest record count in use (1: off)
    grow_at: float = 0.8  # rolling value accuracy that grows the level by half
    growth_rule: str = "all-rows"  # which rows that accuracy counts: see Curriculum
    floor_from: float = 0.45  # from this fraction of the time budget, the level is at least a floor that rises
    floor_to: float = 0.8  # geometrically to 1 at this fraction
    log_every_s: float = 30.0
    workers: int = 2  # data-loader processes (0: in this process)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    phase2: Phase2 | None = None  # None: one phase

    def recall_weight_in(self, phase: int) -> float:
        return self.phase2.recall_weight if phase and self.phase2 is not None else self.recall_weight


GROWTH_RULES = ("all-rows", "hard-rows")


class Curriculum:
    """The fraction (0, 1] of each format's largest record count that batches draw from. Grows by half when the
    rolling value accuracy of ``WINDOW`` rows reaches ``grow_at``, and never stays below the time floor.

    Which rows count (``config.growth_rule``): "all-rows", every row of every batch; "hard-rows" (the first GPU
    run's test), only rows with at least half (rounded down) of their batch's top record count, and only from
    batches drawn since the last growth (the loader's prefetched batches of an older level are left out). A batch
    of 1-record documents holds up to 256 rows, one of 16 records a few dozen: with "all-rows", easy small
    documents fill the window and grow the level before the larger ones are learned.

    Separately, ``top_accuracy()``: the rolling value accuracy of the hard plain rows of batches drawn at level 1, or
    at ``phase2.acc_level`` and above (the phase-2 trigger, ``Phase2.when_acc``). Growth by half can leave the level
    just under 1 (run 5's Based: 0.957 from its 130th second, its rows near the top under 80% from then on), and then
    only the time floor brings it to 1."""

    WINDOW = 512

    def __init__(self, config: TrainConfig):
        if config.growth_rule not in GROWTH_RULES:
            raise ValueError(f"growth rule must be one of {GROWTH_RULES}, got {config.growth_rule!r}")
        self.config = config
        self.level = min(1.0, max(1e-3, config.start_level))
        self.counted_from = self.level  # hard-rows: batches drawn below this level are left out
        self.recent: deque[bool] = deque(maxlen=self.WINDOW)
        self.top_plain: deque[bool] = deque(maxlen=self.WINDOW)
        self.grown_at: list[tuple[int, float]] = []  # (step, new level)
        self.top_level = config.phase2.acc_level if config.phase2 is not None else 1.0

    def floor(self, progress: float) -> float:
        c = self.config
        start = min(1.0, max(1e-3, c.start_level))
        if progress <= c.floor_from:
            return start
        f = min(1.0, (progress - c.floor_from) / max(1e-9, c.floor_to - c.floor_from))
        return start ** (1 - f)

    def top_accuracy(self) -> float | None:
        """Value accuracy of the last ``WINDOW`` hard plain rows drawn at level ``top_level`` or above (None until
        there are as many)."""
        return sum(self.top_plain) / self.WINDOW if len(self.top_plain) == self.WINDOW else None

    def update(self, batch: Batch, value_correct: list[bool], progress: float, step: int) -> float:
        level, grown = self.level, False
        drawn_at = level if batch.level is None else batch.level
        least = max(1, (batch.top or max(batch.records)) // 2)
        hard = [(fmt, ok) for fmt, n, ok in zip(batch.formats, batch.records, value_correct) if n >= least]
        if drawn_at >= self.top_level:
            self.top_plain.extend(ok for fmt, ok in hard if fmt == "plain")
        if level < 1.0:
            if self.config.growth_rule == "all-rows":
                self.recent.extend(value_correct)
            elif drawn_at >= self.counted_from:
                self.recent.extend(ok for _, ok in hard)
            if len(self.recent) == self.WINDOW and sum(self.recent) / self.WINDOW >= self.config.grow_at:
                level, grown = level * 1.5, True
                self.recent.clear()
        level = min(1.0, max(level, self.floor(progress)))
        if grown:
            self.counted_from = level
        if level != self.level:
            self.level = level
            self.grown_at.append((step, round(level, 4)))
        return self.level

    def state(self) -> dict:
        """What a resumed run needs to grow (and trigger phase 2) as this one would have."""
        return {"level": self.level, "counted_from": self.counted_from, "recent": list(self.recent),
                "top_plain": list(self.top_plain), "grown_at": list(self.grown_at)}

    def load(self, state: dict) -> None:
        self.level, self.counted_from = state["level"], state["counted_from"]
        self.recent.extend(state["recent"])
        self.top_plain.extend(state["top_plain"])
        self.grown_at = [tuple(g) for g in state["grown_at"]]


class _StreamDataset(torch.utils.data.IterableDataset):
    """Each loader worker runs its own seeded BatchStream; the curriculum level and the phase are shared memory."""

    def __init__(self, tokenizer, mixture: MixtureConfig, seed: int, level, phase2: MixtureConfig | None = None,
                 phase=None):
        self.tokenizer, self.mixture, self.seed, self.level = tokenizer, mixture, seed, level
        self.phase2, self.phase = phase2, phase

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        phase = (lambda: self.phase.value) if self.phase is not None else None
        stream = BatchStream(SampleEncoder(self.tokenizer), self.mixture, self.seed * 1000 + worker,
                             lambda: self.level.value, self.phase2, phase)
        return iter(stream)


def batches(tokenizer, config: TrainConfig, seed: int, level, phase=None) -> torch.utils.data.DataLoader:
    phase2 = config.phase2.mixture if config.phase2 is not None else None
    dataset = _StreamDataset(tokenizer, config.mixture, seed, level, phase2, phase)
    kw = dict(num_workers=config.workers, prefetch_factor=4, persistent_workers=True) if config.workers else {}
    return torch.utils.data.DataLoader(dataset, batch_size=None, pin_memory=torch.cuda.is_available(), **kw)


def phase2_trigger(phase2: Phase2, curriculum: Curriculum, progress: float) -> str | None:
    """Why phase 2 starts now: "accuracy" (plain rows at the curriculum's top reached ``when_acc``), "time"
    (``start`` of the budget reached), or None (not yet)."""
    top = curriculum.top_accuracy()
    if phase2.when_acc is not None and top is not None and top >= phase2.when_acc:
        return "accuracy"
    return "time" if progress >= phase2.start else None


def param_groups(trainable: Trainable, weight_decay: float, vocab_rows: int) -> list[dict]:
    """Weight decay on matrices, not on embeddings/head, norms, biases or SSM scalars."""
    decay, rest = [], []
    for p in trainable.params:
        (decay if p.dim() >= 2 and p.shape[0] != vocab_rows else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def lr_at(config: TrainConfig, step: int, progress: float) -> float:
    warm = min(1.0, (step + 1) / max(1, config.warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * warm * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def batch_loss(logits: torch.Tensor, batch: Batch, answer_weight: float = 1.0, recall_weight: float = 0.0):
    """(loss, {lm, answer, recall} losses as tensors, per-row value correct) for logits [B, L, V] of ``batch``."""
    logits = logits[:, :-1]
    real = batch.lm_mask
    ce = F.cross_entropy(logits[real].float(), batch.ids[:, 1:][real], reduction="none")  # real positions only
    rows = torch.arange(batch.ids.shape[0], device=batch.ids.device)
    value_logits = logits[rows, batch.value_pos].float()
    value_targets = batch.ids[rows, batch.value_pos + 1]
    answers = batch.answer_mask[real]  # every answer's value, follow-up questions included
    parts = {"lm": ce.mean(), "answer": ce[answers].mean()}
    loss = parts["lm"] + answer_weight * parts["answer"]
    if recall_weight and "jrt" in batch.formats:  # known on the host: no sync
        recall = batch.recall_mask[real]  # empty for answer-only JRT rows (e.g. phase 2): a zero loss, not NaN
        parts["recall"] = (ce * recall).sum() / recall.sum().clamp(min=1)
        loss = loss + recall_weight * parts["recall"]
    return loss, parts, value_logits.argmax(-1) == value_targets


def check_gradients(trainable: Trainable) -> None:
    """Every parameter must get a gradient: a kernel without backward would otherwise leave layers untrained."""
    names = {id(p): n for n, p in (trainable.lm or trainable.hf_model).named_parameters()}
    missing = [names.get(id(p), "?") for p in trainable.params if p.grad is None]
    if missing:
        raise RuntimeError(f"{trainable.arch}: no gradient reached {len(missing)} parameters, e.g. {missing[:4]}: "
                           "the training forward used a path without backward")


@dataclass
class TrainResult:
    steps: int = 0
    seconds: float = 0.0
    tokens: int = 0
    skipped_steps: int = 0
    stopped: str = "time"  # time | max_steps | diverged | call (this call's share spent: see train_state)
    level: float = 0.0
    phase2_step: int | None = None  # the first step of phase 2 (None: not reached or no phase 2)
    phase2_by: str | None = None  # what started it: "accuracy" (Phase2.when_acc) or "time"
    curriculum: list = field(default_factory=list)
    history: list = field(default_factory=list)
    final: dict = field(default_factory=dict)  # last log line


class _Meter:
    """Sums between two log lines."""

    def __init__(self):
        self.n = 0
        self.loss = 0.0
        self.parts: dict[str, list[float]] = {}
        self.tokens = 0
        self.by_format: dict[str, list[int]] = {}
        self.by_size: dict[str, dict[str, list[int]]] = {}

    def add(self, loss: float, parts: dict[str, float], batch: Batch, correct: list[bool]):
        self.n += 1
        self.loss += loss
        for k, v in parts.items():
            total = self.parts.setdefault(k, [0.0, 0])
            total[0] += v
            total[1] += 1
        self.tokens += batch.tokens
        for fmt, records, ok in zip(batch.formats, batch.records, correct):
            for hit in (self.by_format.setdefault(fmt, [0, 0]),
                        self.by_size.setdefault(fmt, {}).setdefault(size_bin(records), [0, 0])):
                hit[0] += ok
                hit[1] += 1

    def line(self, step: int, elapsed: float, level: float, lr: float, seconds: float, phase: int = 0) -> dict:
        return {"step": step, "time_s": round(elapsed, 1), "phase": phase + 1, "level": round(level, 4),
                "lr": round(lr, 6),
                "loss": round(self.loss / max(1, self.n), 4),
                **{f"{k}_loss": round(v[0] / v[1], 4) for k, v in sorted(self.parts.items())},
                "tokens_per_s": round(self.tokens / max(seconds, 1e-9)),
                "value_acc": {f: round(h[0] / h[1], 3) for f, h in sorted(self.by_format.items())},
                # per format and record count (training names): question-first rows above plain ones at the same
                # size are what selecting on the question buys
                "value_acc_by_records": {f: {b: [round(h[0] / h[1], 3), h[1]] for b, h in sorted(
                    bins.items(), key=lambda item: bin_start(item[0]))} for f, bins in sorted(self.by_size.items())}}


def make_optimizer(trainable: Trainable, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    vocab_rows = trainable.hf_model.get_input_embeddings().weight.shape[0]
    return torch.optim.AdamW(param_groups(trainable, config.weight_decay, vocab_rows), lr=config.lr,
                             betas=(0.9, 0.98), eps=1e-8, fused=device.type == "cuda")


def train_state(trainable: Trainable, opt, curriculum: Curriculum, result: TrainResult, phase: int,
                seed: int) -> dict:
    """Everything a later call needs to go on with this run (train_recall.py's train_state.pt)."""
    return {"model": {k: v.detach().cpu().clone() for k, v in trainable.hf_model.state_dict().items()},
            "optimizer": opt.state_dict(), "steps": result.steps, "tokens": result.tokens,
            "seconds": result.seconds, "skipped_steps": result.skipped_steps, "curriculum": curriculum.state(),
            "phase": phase, "phase2_step": result.phase2_step, "phase2_by": result.phase2_by,
            "history": list(result.history), "data_seed": seed + result.steps}


def restore(state: dict, trainable: Trainable, opt, curriculum: Curriculum) -> tuple[TrainResult, int]:
    """Load ``train_state`` into the model, optimizer and curriculum; returns the result so far and the phase."""
    trainable.hf_model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    curriculum.load(state["curriculum"])
    result = TrainResult(steps=state["steps"], seconds=state["seconds"], tokens=state["tokens"],
                         skipped_steps=state["skipped_steps"], level=curriculum.level,
                         phase2_step=state["phase2_step"], phase2_by=state["phase2_by"],
                         curriculum=curriculum.grown_at, history=list(state["history"]))
    return result, state["phase"]


def train(trainable: Trainable, tokenizer, config: TrainConfig, seed: int, device: torch.device,
          log: Callable[[str], None] = print, on_log: Callable[[TrainResult], None] | None = None,
          name: str | None = None, resume: dict | None = None, call_seconds: float | None = None,
          call_steps: int | None = None, on_pause: Callable[[dict], None] | None = None) -> TrainResult:
    """Train until the time budget (or max_steps) is spent; returns what happened (the model is trained in place).
    Log lines start with ``[name]`` (default: the architecture).

    A run may span several processes (GPU calls of 10 minutes): this one stops after ``call_seconds`` (or
    ``call_steps``) with ``stopped="call"`` and hands ``on_pause`` the ``train_state``; a later one passes it as
    ``resume`` and goes on with the same schedule (progress counts the seconds of every call) and batches from seed
    + steps, so none repeats."""
    name = name or trainable.arch
    curriculum = Curriculum(config)
    opt = make_optimizer(trainable, config, device)
    result, start_phase = restore(resume, trainable, opt, curriculum) if resume else (TrainResult(), 0)
    result.level = curriculum.level
    data_seed = seed + result.steps
    torch.manual_seed(data_seed)
    budget = config.minutes * 60.0
    level = mp.Value("d", curriculum.level)
    phase = mp.Value("i", start_phase)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    meter, bad_in_a_row = _Meter(), 0
    trainable.train(True)
    last_log = time.time()
    start = last_log - result.seconds  # elapsed: this run's training seconds over all calls
    call_end = last_log + call_seconds if call_seconds is not None else float("inf")
    call_last = result.steps + call_steps if call_steps is not None else None
    lr = config.lr
    loader = iter(batches(tokenizer, config, data_seed, level, phase))
    try:
        while True:
            now = time.time()
            elapsed = now - start
            if elapsed >= budget:
                result.stopped = "time"
                break
            if config.max_steps is not None and result.steps >= config.max_steps:
                result.stopped = "max_steps"
                break
            if now >= call_end or (call_last is not None and result.steps >= call_last):
                result.stopped = "call"
                break
            batch = next(loader).to(device)
            progress = elapsed / budget
            if config.max_steps:  # a step budget too: the schedule follows whichever runs out first
                progress = max(progress, result.steps / config.max_steps)
            by = None if config.phase2 is None or phase.value else phase2_trigger(config.phase2, curriculum, progress)
            if by:
                phase.value = 1  # the loader's prefetched batches of phase 1 still arrive for a few steps
                result.phase2_step, result.phase2_by = result.steps, by
                log(f"[{name}] phase 2 from step {result.steps} ({elapsed:.0f}s, by {by})")
            lr = lr_at(config, result.steps, progress)
            for group in opt.param_groups:
                group["lr"] = lr
            with autocast:
                logits = trainable.logits(batch.ids)
            loss, parts, correct = batch_loss(logits, batch, config.answer_weight,
                                              config.recall_weight_in(phase.value))
            if not torch.isfinite(loss):
                opt.zero_grad(set_to_none=True)
                result.skipped_steps += 1
                bad_in_a_row += 1
                if bad_in_a_row >= 50:
                    result.stopped = "diverged"
                    break
                continue
            bad_in_a_row = 0
            loss.backward()
            if result.steps == 0:
                check_gradients(trainable)
            torch.nn.utils.clip_grad_norm_(trainable.params, config.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            correct_rows = correct.tolist()
            meter.add(loss.item(), {k: v.item() for k, v in parts.items()}, batch, correct_rows)
            result.steps += 1
            result.tokens += batch.tokens
            level.value = curriculum.update(batch, correct_rows, progress, result.steps)
            now = time.time()
            if now - last_log >= config.log_every_s:
                line = meter.line(result.steps, now - start, curriculum.level, lr, now - last_log, phase.value)
                line.update(_peak_memory(device))
                result.history.append(line)
                log(_format(name, line))
                meter, last_log = _Meter(), now
                result.seconds, result.level, result.curriculum = now - start, curriculum.level, curriculum.grown_at
                if on_log is not None:
                    on_log(result)
    finally:
        loader = None  # stops the worker processes
    now = time.time()
    if meter.n:
        line = meter.line(result.steps, now - start, curriculum.level, lr, now - last_log, phase.value)
        line.update(_peak_memory(device))
        result.history.append(line)
        log(_format(name, line))
    result.seconds, result.level, result.curriculum = now - start, curriculum.level, curriculum.grown_at
    result.final = result.history[-1] if result.history else {}
    trainable.train(False)
    if result.stopped == "call" and on_pause is not None:
        on_pause(train_state(trainable, opt, curriculum, result, phase.value, seed))
    return result


def _peak_memory(device: torch.device) -> dict:
    """Peak GPU memory so far (what decides how large a batch the training scans can take)."""
    if device.type != "cuda":
        return {}
    return {"peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}


def _format(arch: str, line: dict) -> str:
    acc = " ".join(f"{k}={v:.2f}" for k, v in line["value_acc"].items())
    parts = ", ".join(f"{k[:-5]} {v:.3f}" for k, v in line.items() if k.endswith("_loss"))
    phase = f" phase {line['phase']}" if "phase" in line else ""
    return (f"[{arch}] step {line['step']} {line['time_s']:.0f}s{phase} level {line['level']:.2f} "
            f"loss {line['loss']:.3f} "
            f"({parts}) value acc {acc} {line['tokens_per_s'] / 1000:.0f}k tok/s lr {line['lr']:.2e}"
            + (f" peak {line['peak_gib']:.1f} GiB" if "peak_gib" in line else ""))
