"""Real runs at scale: a VoCo Learner from a base, FSDP2 under torchrun, LoRA, and the loop with its logs.

- ``prepare``: which parts train (``tune``: projector, llm, vision; or LoRA adapters on the LLM through
  ``peft``), activation checkpointing, then FSDP2 (``torch.distributed.fsdp.fully_shard``: each LLM and
  vision layer its own unit, then the whole Learner) with bf16 parameters and fp32 gradient reduction
  on GPUs when torch.distributed runs; one process without FSDP uses bf16 autocast on a GPU.
- ``fit``: AdamW, warmup + cosine; gradient accumulation (``--batch-size`` is the global batch); the loss
  is the mean over every answer token of the global batch, so 1 or N processes give the same curve;
  sharded, resumable state through ``vidqa.train.state`` (safetensors via torch.distributed.checkpoint);
  log lines (loss, tokens/s, samples/s, MFU, ETA) and ``OUT/train_log.jsonl``.

Speed knobs (``ScaleConfig``; flags of ``vidqa train`` and ``benchmarks/train_speed.py``): which LLM layers
recompute their activations (``checkpointing``: full, none, every:N), ``torch.compile`` of each decoder
layer (``compile``), fused AdamW (``adam``), FSDP2 resharding after forward and explicit prefetching, and
the attention kernel (``attention``: ``sdpa`` with the dense VoCo mask, or ``flex``: FlexAttention with a
block mask made from the same dense mask, so fully masked tiles are skipped and unmasked ones run fused).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from vidqa.errors import VidqaError
from vidqa.options import DistEnv
from vidqa.train.model import Learner
from vidqa.train.state import load_state, save_state, state_dir
from vidqa.train.stream import InstructionData, StepSampler, loader


@dataclass
class ScaleConfig:
    steps: int = 1000
    batch_size: int = 128  # global: records per optimiser step, over all processes and accumulation
    micro_batch_size: int = 1  # records per process per forward
    lr: float = 2e-5
    warmup: int = 30  # steps (VoCo-LLaMA: 3% of the run)
    weight_decay: float = 0.0
    tune: tuple[str, ...] = ("projector", "llm")
    lora_r: int = 0
    lora_alpha: int | None = None
    grad_checkpointing: bool = True
    checkpointing: str | None = None  # full | none | every:N (LLM layers 0, N, 2N.. recompute); None: grad_checkpointing
    compile: str = ""  # torch.compile backend for each LLM decoder layer ("inductor"); "": eager
    adam: str = "auto"  # fused | foreach | auto (fused on CUDA)
    reshard_after_forward: bool = True  # FSDP2: False keeps each layer's full weights from forward to backward
    prefetch: int = 0  # FSDP2: all-gather this many next layers ahead explicitly (0: FSDP2's implicit order)
    attention: str = "sdpa"  # sdpa | flex
    pack: bool = False  # several turns/records share one sequence of max_length (block-diagonal masks)
    bf16: bool = True
    fsdp: bool = True  # under torchrun with more than one process
    max_frames: int = 8
    max_length: int = 2048
    workers: int = 4
    save_every: int = 200
    log_every: int = 10
    seed: int = 0
    peak_tflops: float = 800.0  # per device, bf16 dense: the MFU denominator
    save: bool = True  # False: no training state at all (benchmarks)
    stop_after: int | None = None  # stop (state saved) after this many steps of this call: tests, time slices


def _dist_init(device: torch.device) -> tuple[int, int]:
    env = DistEnv.from_env()
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return env.rank, env.world_size


def checkpoint_plan(spec: str | None, n_layers: int, default: bool = True) -> list[bool]:
    """Which of ``n_layers`` LLM layers recompute their activations: ``full``, ``none`` or ``every:N``."""
    s = ("full" if default else "none") if spec is None else spec.strip().lower()
    if s in ("full", "all"):
        return [True] * n_layers
    if s in ("none", "off"):
        return [False] * n_layers
    if s.startswith("every:") and s[6:].isdigit() and int(s[6:]) >= 1:
        k = int(s[6:])
        return [i % k == 0 for i in range(n_layers)]
    raise VidqaError(f"--checkpointing {spec!r}: use full, none or every:N (N >= 1)", exit_code=2)


def make_optimizer(params: list[nn.Parameter], cfg: ScaleConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; ``cfg.adam``: ``fused`` (one kernel for all parameters: CUDA), ``foreach`` or ``auto``."""
    if cfg.adam not in ("auto", "fused", "foreach"):
        raise VidqaError(f"--adam {cfg.adam!r}: use auto, fused or foreach", exit_code=2)
    fused = cfg.adam == "fused" or (cfg.adam == "auto" and device.type == "cuda")
    kind = {"fused": True} if fused else ({"foreach": True} if cfg.adam == "foreach" else {})
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), **kind)


def _compile_layers(layers, backend: str) -> None:
    """Each decoder layer's forward through torch.compile, set on the instance after sharding: FSDP2's
    hooks stay outside the compiled code and transformers' checkpointing wrapper (the outermost
    ``forward``) inside it. The layers share one code object: in case a guard tells them apart (their
    index, their checkpointing flag), the recompile limit leaves room for one entry per layer."""
    limit = 2 * len(layers) + 8
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4 * limit)
    for layer in layers:
        layer.forward = torch.compile(layer.forward, backend=backend)


def prepare(learner: Learner, cfg: ScaleConfig, device: torch.device, world: int) -> nn.Module:
    """Freeze, add LoRA, checkpoint activations, shard. Returns the module to call (the Learner)."""
    tune = set(cfg.tune)
    unknown = tune - {"projector", "llm", "vision"}
    if unknown:
        raise VidqaError(f"--tune: unknown part {sorted(unknown)[0]!r} (projector, llm, vision)", exit_code=2)
    learner.requires_grad_(False)
    if "projector" in tune:
        learner.projector.requires_grad_(True)
    if "vision" in tune:
        learner.vision.requires_grad_(True)
    if cfg.lora_r:
        if world > 1:
            raise VidqaError("--lora-r trains on one GPU (LoRA is what makes a 7B run fit there); run without "
                             "torchrun, or drop --lora-r for FSDP", exit_code=2)
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise VidqaError("--lora-r needs peft: pip install 'vidqa[train]'", exit_code=2) from None
        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_r, lora_dropout=0.0,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        learner.__dict__["peft"] = get_peft_model(learner.llm, lcfg)  # adapters injected into learner.llm in place
        # the new <voco> row learns in full: it has no pretrained value to adapt
        learner.llm.get_input_embeddings().weight.requires_grad_(True)
    elif "llm" in tune:
        learner.llm.requires_grad_(True)
    if not any(p.requires_grad for p in learner.parameters()):
        raise VidqaError("nothing to train: --tune names no part (projector, llm, vision) or --lora-r 0", exit_code=2)
    layers = list(learner.llm.model.layers)
    plan = checkpoint_plan(cfg.checkpointing, len(layers), cfg.grad_checkpointing)
    if any(plan):
        with warnings.catch_warnings():  # transformers 5 renames it (FutureWarning) but both work
            warnings.simplefilter("ignore", FutureWarning)
            learner.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            learner.llm.config.use_cache = False
            if not any(p.requires_grad for p in learner.llm.get_input_embeddings().parameters()):
                learner.llm.enable_input_require_grads()
        for layer, on in zip(layers, plan):
            layer.gradient_checkpointing = on
    if cfg.attention not in ("sdpa", "flex"):
        raise VidqaError(f"--attention {cfg.attention!r}: use sdpa or flex", exit_code=2)
    learner.attention = cfg.attention
    learner.pack = cfg.pack
    if cfg.attention == "flex":
        learner.llm.config._attn_implementation = use_flex_attention()
    learner.to(device)
    learner.max_length = cfg.max_length
    if world > 1 and cfg.fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if cfg.bf16 and device.type == "cuda" else MixedPrecisionPolicy()
        mesh = fsdp_mesh(device)
        for i, layer in enumerate(layers):  # the last layer's weights are needed again at once by the backward
            fully_shard(layer, mesh=mesh, mp_policy=mp,
                        reshard_after_forward=cfg.reshard_after_forward and i < len(layers) - 1)
        for layer in list(learner.vision.layers):
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        fully_shard(learner, mesh=mesh, mp_policy=mp)
        if cfg.prefetch > 0:
            for i, layer in enumerate(layers):
                layer.set_modules_to_forward_prefetch(layers[i + 1: i + 1 + cfg.prefetch])
                layer.set_modules_to_backward_prefetch(layers[max(0, i - cfg.prefetch): i][::-1])
    if cfg.compile:
        _compile_layers(layers, cfg.compile)
    return learner


def fsdp_mesh(device: torch.device):
    """The 1-D mesh of all processes on ``device``'s type. Without one, ``fully_shard`` builds its default
    mesh on the machine's accelerator (CUDA whenever it is available) and moves the parameters there,
    even for a run asked on the CPU (gloo): the loss then comes back on ``cuda:0``."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.get_world_size(),))


def use_flex_attention() -> str:
    """Register vidqa's FlexAttention function with transformers; returns its ``attn_implementation`` name."""
    from transformers import AttentionInterface

    from vidqa.train.model import flex_attention_forward

    AttentionInterface.register(FLEX, flex_attention_forward)
    return FLEX


FLEX = "vidqa_flex"


def flops_per_token(learner: Learner, tokens: int, frames: int, seq_sq: float) -> float:
    """Model FLOPs of one training step's work (recomputed activations not counted, as MFU is defined):
    2 per weight per token forward, 2 more backward for the input gradients, 2 more for a trained weight;
    attention 4·d·L² per layer forward (QKᵀ and AV over the whole L×L, the usual count, whatever the mask),
    twice that backward. The vision tower counts the layers it runs (up to the selected one) on every
    patch, forward only when it is frozen (nothing before it needs gradients); the projector every patch."""
    def dense(named) -> tuple[int, int]:
        total = trained = 0
        for name, p in named:
            if "embed_tokens" in name or "position_embedding" in name or p.ndim < 2:
                continue  # lookups, norms, biases
            total += p.numel()
            trained += p.numel() if p.requires_grad else 0
        return total, trained

    vision = learner.vision
    n_llm, t_llm = dense(learner.llm.named_parameters())
    n_vis, t_vis = dense(list(vision.layers.named_parameters()) + list(vision.core.embeddings.named_parameters()))
    n_prj, t_prj = dense(learner.projector.named_parameters())
    cfg = learner.llm.config
    patches = frames * vision.num_patches
    f = (4 * n_llm + 2 * t_llm) * tokens
    f += 3 * 4 * cfg.num_hidden_layers * cfg.hidden_size * seq_sq  # attention scores and values, fwd + bwd
    vis_fwd = 2 * n_vis * patches + 4 * len(vision.layers) * vision.hidden_size * frames * (vision.num_patches + 1) ** 2
    f += vis_fwd * (3 if t_vis else 1)
    f += (2 * n_prj + 2 * t_prj + (2 * n_prj if t_vis else 0)) * patches
    return float(f)


def fit(learner: Learner, data: InstructionData, cfg: ScaleConfig, out: Path, device: torch.device,
        log: Callable[[str], None] = print) -> dict:
    """Train ``learner`` on ``data`` (see the module docstring); returns a summary."""
    rank, world = _dist_init(device)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = prepare(learner, cfg, device, world)
    model.train()
    params = [p for p in learner.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg, device)
    meta = load_state(out, learner, opt)
    step, before, seen_before = 0, 0.0, 0
    history: list[dict] = []
    if meta is not None:
        step, before, seen_before = meta["step"], meta.get("elapsed", 0.0), meta.get("seen", 0)
        history = meta.get("history", [])
        if rank == 0:
            log(f"resumed from {state_dir(out)} at step {step}")
    sampler = StepSampler(len(data), cfg.batch_size, cfg.micro_batch_size, rank, world, cfg.seed, step, cfg.steps)
    accum = sampler.accumulation
    batches = iter(loader(data, sampler, cfg.workers))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) \
        if device.type == "cuda" and cfg.bf16 and not (world > 1 and cfg.fsdp) else contextlib.nullcontext()
    warmup = max(1, cfg.warmup)
    log_file = out / "train_log.jsonl"
    t0 = time.perf_counter()
    seen = 0
    acc = {"loss": 0.0, "tokens": 0, "samples": 0, "frames": 0, "flops": 0.0, "wait": 0.0, "time": 0.0, "steps": 0}
    bad: set[int] = set()
    done_here = 0
    spare = None  # a decodable record, for a micro-batch whose records all failed
    while step < cfg.steps:
        t_step = time.perf_counter()
        lr = cfg.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        wait = time.perf_counter()
        micro = []
        for _ in range(accum):  # the whole step's data first: the global answer-token count scales the loss
            items = next(batches)
            for it in items:
                if "bad" in it and it["index"] not in bad:
                    bad.add(it["index"])
                    log(f"skipping {it['bad']}")
            micro.append([it for it in items if "bad" not in it])
        wait = time.perf_counter() - wait
        counts = []
        with torch.no_grad():  # answer tokens per micro-batch, to normalise by the global count
            for m in micro:
                counts.append(sum(len(learner.inputs.answer_ids(a)) for r in m for _, a in r["turns"]))
        total = torch.tensor(float(sum(counts)), device=device)
        if world > 1:
            dist.all_reduce(total)
        scale = world / max(1.0, total.item())  # FSDP averages gradients over ranks
        step_loss = torch.zeros((), device=device)
        tokens = frames = samples = 0
        seq_sq = 0.0
        good = [r for m in micro for r in m]
        if good:
            spare = good[0]
        for k, m in enumerate(micro):
            weight = scale
            if not m:  # every record of this micro-batch was bad: a zero-weighted pass keeps the ranks in step
                if spare is None:
                    raise VidqaError("the first training records could not be decoded (see the messages above)")
                m, weight = [spare], 0.0
            with autocast:
                loss_sum, _, n_tok = model(records=m)
            (loss_sum * weight).backward()
            if weight == 0.0:
                continue
            step_loss += loss_sum.detach()
            tokens += n_tok
            seq_sq += getattr(learner, "last_seq_sq", 0.0)
            frames += sum(r["frames"].shape[0] for r in m)
            samples += len(m)
        if world > 1 and not cfg.fsdp:
            for p in params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        done_here += 1
        stats = torch.tensor([step_loss.item(), tokens, samples, frames], device=device, dtype=torch.float64)
        if world > 1:
            dist.all_reduce(stats)
        seen += int(stats[2])
        dt = time.perf_counter() - t_step
        acc["loss"] += stats[0].item() / max(1.0, total.item())
        acc["tokens"] += int(stats[1])
        acc["samples"] += int(stats[2])
        acc["frames"] += int(stats[3])
        acc["flops"] += flops_per_token(learner, tokens, frames, seq_sq) * world  # this rank's work x ranks
        acc["wait"] += wait
        acc["time"] += dt
        acc["steps"] += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            el = before + time.perf_counter() - t0
            secs = acc["time"]
            entry = {"step": step, "seconds": round(el, 2), "loss": acc["loss"] / acc["steps"],
                     "lr": lr, "tokens_per_s": acc["tokens"] / secs, "samples_per_s": acc["samples"] / secs,
                     "frames_per_s": acc["frames"] / secs,
                     "mfu": acc["flops"] / secs / (cfg.peak_tflops * 1e12 * world),
                     "data_wait": acc["wait"] / secs, "eta_s": (cfg.steps - step) * secs / acc["steps"]}
            history.append(entry)
            if rank == 0:
                with open(log_file, "a") as f:
                    f.write(json.dumps(entry) + "\n")
                log(f"step {step}/{cfg.steps} loss {entry['loss']:.4f} lr {lr:.2e} {entry['tokens_per_s']:.0f} tokens/s "
                    f"{entry['samples_per_s']:.2f} samples/s MFU {100 * entry['mfu']:.1f}% "
                    f"data wait {100 * entry['data_wait']:.1f}% ETA {_hms(entry['eta_s'])}")
            acc = dict.fromkeys(acc, 0) | {"loss": 0.0, "flops": 0.0, "wait": 0.0, "time": 0.0}
        stop = cfg.stop_after is not None and done_here >= cfg.stop_after
        if cfg.save and (step % cfg.save_every == 0 or step == cfg.steps or stop):
            save_state(out, learner, opt, {"step": step, "elapsed": before + time.perf_counter() - t0,
                                           "seen": seen_before + seen, "history": history,
                                           "config": {k: (list(v) if isinstance(v, tuple) else v)
                                                      for k, v in asdict(cfg).items()}, "world_size": world})
        if stop:
            break
    return {"steps": step, "history": history, "seconds": before + time.perf_counter() - t0,
            "samples": seen_before + seen, "skipped": sorted(bad)}


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(requested: str = "auto") -> torch.device:
    env = DistEnv.from_env()
    if torch.cuda.is_available() and requested in ("auto", "cuda"):
        dev = torch.device(f"cuda:{env.local_rank}")
        torch.cuda.set_device(dev)
        return dev
    return torch.device("cpu" if requested == "auto" else requested)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # DataLoader workers fork after the tokenizer ran
