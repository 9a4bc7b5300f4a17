"""The training loop: AdamW with warmup + cosine decay, bf16 autocast on GPU, DistributedDataParallel
under torchrun, resumable from ``out/train_state`` (safetensors + JSON, ``vidqa.train.state``); and the held-out evaluation."""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from vidqa.options import DistEnv
from vidqa.train.data import load_batch
from vidqa.train.model import Learner, TinyConfig
from vidqa.train.state import load_state, save_state, state_dir


@dataclass
class TrainConfig:
    variant: str = "voco"
    tokens_per_frame: int = 1
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    freeze_vision: bool = False
    grad_checkpointing: bool = False
    save_every: int = 500
    log_every: int = 50
    seed: int = 0
    minutes: float | None = None  # a time budget: the schedule ends at `steps` or after this long, the first to come
    samples: int | None = None  # a budget in questions seen (equal data for every row of a comparison)
    max_minutes: float | None = None  # a hard wall-clock cap; the steps done are reported
    eval_every: float = 0.0  # seconds between held-out checks during training (0: only at the end)
    pack: bool = False  # synthetic data: a batch is `batch_size` clips with all their questions
    tiny: TinyConfig = field(default_factory=TinyConfig)


@torch.no_grad()
def evaluate(learner: Learner, data, device, batch_size: int = 64, limit: int | None = None) -> dict:
    """First-answer-word accuracy (the answers are single words), overall and per category."""
    learner.eval()
    n = len(data) if limit is None else min(limit, len(data))
    hits: dict[int, list[int]] = {}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    for i in range(0, n, batch_size):
        idx = list(range(i, min(n, i + batch_size)))
        pixels, samples = load_batch(data, idx, device)
        with autocast:
            _, right, _ = learner(pixels, samples)
        for s, r in zip(samples, right.tolist()):
            hits.setdefault(s.category, []).append(int(r))
    learner.train()
    every = [h for v in hits.values() for h in v]
    return {"accuracy": sum(every) / max(1, len(every)), "n": len(every),
            "per_category": {c: sum(v) / len(v) for c, v in sorted(hits.items())}}


def _save(learner, opt, step, elapsed, seen, history, cfg, out: Path) -> None:
    """Safetensors + JSON (``vidqa.train.state``): swapped in whole, so a kill never leaves half a state."""
    save_state(out, learner, opt, {"step": step, "elapsed": elapsed, "seen": seen, "history": history,
                                   "config": asdict(cfg)})


def progress(cfg: TrainConfig, step: int, elapsed: float, seen: int = 0) -> float:
    """How far through the schedule: by steps, by questions seen, or by the time budget, the first to end."""
    done = step / max(1, cfg.steps)
    if cfg.minutes:
        done = max(done, elapsed / (60 * cfg.minutes))
    if cfg.samples:
        done = max(done, seen / cfg.samples)
    return min(1.0, done)


def learning_rate(cfg: TrainConfig, step: int, elapsed: float, seen: int = 0) -> float:
    """Linear warmup over ``cfg.warmup`` steps, then cosine decay to zero at the end of the schedule."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * progress(cfg, step, elapsed, seen)))


def train(learner: Learner, data, cfg: TrainConfig, out: Path, device, log: Callable[[str], None] = print,
          eval_data=None) -> dict:
    """AdamW with warmup + cosine decay; bf16 autocast on GPU; resumable from ``out/train_state`` (safetensors + JSON, ``vidqa.train.state``)."""
    env = DistEnv.from_env()
    rank, world = env.rank, env.world_size
    out.mkdir(parents=True, exist_ok=True)
    learner.to(device).train()
    if cfg.freeze_vision:
        learner.vision.requires_grad_(False)
    if cfg.grad_checkpointing:
        learner.llm.gradient_checkpointing_enable()
    model: nn.Module = learner
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        model = nn.parallel.DistributedDataParallel(learner, device_ids=[device.index] if device.type == "cuda" else None,
                                                    find_unused_parameters=True)
    params = [p for p in learner.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    step, before, seen_before = 0, 0.0, 0
    history: list[dict] = []
    state = load_state(out, learner, opt)
    if state is not None:
        step, before, seen_before = state["step"], state.get("elapsed", 0.0), state.get("seen", 0)
        history = state.get("history", [])
        log(f"resumed from {state_dir(out)} at step {step}")
    rng = random.Random(cfg.seed * 1000 + rank + step)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    t0, seen = time.perf_counter(), 0
    last_eval = t0
    loss_sum = torch.zeros((), device=device)
    right_sum = torch.zeros((), device=device)
    n_recent = 0

    def elapsed() -> float:
        return before + time.perf_counter() - t0

    while step < cfg.steps and progress(cfg, step, elapsed(), seen_before + seen) < 1.0:
        if cfg.max_minutes and time.perf_counter() - t0 > 60 * cfg.max_minutes:
            log(f"stopping at step {step}: the {cfg.max_minutes} minute cap")
            break
        for g in opt.param_groups:
            g["lr"] = learning_rate(cfg, step, elapsed(), seen_before + seen)
        if cfg.pack and hasattr(data, "by_clip"):
            clips = [rng.randrange(len(data.by_clip)) for _ in range(cfg.batch_size)]
            items = [(c, k) for c_i, c in enumerate(clips) for k in data.by_clip[c]]
            pixels = data.clip_pixels(clips, device)
            samples = [data[k] for _, k in items]
            owner = [c_i for c_i, c in enumerate(clips) for _ in data.by_clip[c]]
        else:
            idx = [rng.randrange(len(data)) for _ in range(cfg.batch_size)]
            pixels, samples = load_batch(data, idx, device)
            owner = None
        with autocast:
            loss, right, _ = model(pixels, samples, owner)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        seen += len(samples)
        loss_sum += loss.detach()  # summed on the device: no host sync per step
        right_sum += right.float().mean()
        n_recent += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            entry = {"step": step, "seconds": round(elapsed(), 1), "loss": loss_sum.item() / n_recent,
                     "train_acc": right_sum.item() / n_recent}
            loss_sum.zero_(), right_sum.zero_()
            n_recent = 0
            if eval_data is not None and cfg.eval_every and time.perf_counter() - last_eval > cfg.eval_every and rank == 0:
                check = evaluate(learner, eval_data, device, limit=512)
                entry.update(eval_acc=check["accuracy"], eval_per_category=check["per_category"])
                last_eval = time.perf_counter()
            history.append(entry)
            if rank == 0:
                extra = f" held-out {entry['eval_acc']:.3f}" if "eval_acc" in entry else ""
                log(f"step {step}/{cfg.steps} loss {entry['loss']:.4f} acc {entry['train_acc']:.3f}{extra} "
                    f"lr {opt.param_groups[0]['lr']:.2e} {seen / (time.perf_counter() - t0):.0f} samples/s")
        if step % cfg.save_every == 0:
            _save(learner, opt, step, elapsed(), seen_before + seen, history, cfg, out)
    _save(learner, opt, step, elapsed(), seen_before + seen, history, cfg, out)
    result = {"steps": step, "history": history, "seconds": elapsed(), "samples": seen_before + seen}
    if eval_data is not None and rank == 0:
        result["eval"] = evaluate(learner, eval_data, device)
    return result

