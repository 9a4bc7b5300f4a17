"""Training speed of real VoCo runs at Vicuna-7B + CLIP-L/336 shapes (random weights, synthetic frames).

    # FSDP2 full fine-tune, sequence length 2,048, 2 GPUs:
    torchrun --nproc-per-node 2 benchmarks/train_speed.py --mode full --out full.json
    # LoRA on one GPU:
    python benchmarks/train_speed.py --mode lora --out lora.json
    # video, 8 frames per sample (FSDP on the GPUs torchrun gives it): frames/s and the data-wait share
    torchrun --nproc-per-node 2 benchmarks/train_speed.py --mode video --out video.json
    # the suite's check, on the CPU in a few seconds (tiny shapes, every mode in one process):
    python benchmarks/train_speed.py --tiny --out tiny.json

Speed knobs (each a flag of ``vidqa train`` too; see ``vidqa.train.scale``): ``--checkpointing full|none|every:N``
(LLM layers that recompute activations), ``--compile`` (torch.compile of each decoder layer), ``--adam
auto|fused|foreach``, ``--no-reshard`` and ``--prefetch N`` (FSDP2), ``--attention sdpa|flex`` (the VoCo mask
as a dense SDPA mask or as a FlexAttention block mask), ``--pack``, ``--micro-batch-size``; ``--profile DIR`` adds a
torch.profiler trace of two steps after the warmup.

Self-contained: no checkpoint, no PyAV (frames are random uint8 made in the DataLoader workers at 480x640
and fitted to the tower's size there, as real decoding hands them on). The steps run ``vidqa.train.scale.fit``,
the loop ``vidqa train --base`` runs. Reported per mode: tokens/s, samples/s, frames/s, MFU against
``--peak-tflops`` (800 bf16 per GPU by default), the share of step time spent waiting for data, and the
peak memory per GPU. The first ``--warmup-steps`` steps are left out of the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from vidqa.checkpoint import quiet_transformers
from vidqa.train import scale
from vidqa.train.data import make_word_tokenizer
from vidqa.train.inputs import VoCoInputs
from vidqa.train.model import Learner
from vidqa.train.stream import InstructionData, Record
from vidqa.vision import Preprocess, VisionEncoder, build_projector

WORDS = [f"w{i}" for i in range(500)]


def synthetic_frames(rec: Record) -> np.ndarray:
    """Random frames at 480x640, as a decoder would hand them on (module level: DataLoader workers pickle it)."""
    n = 1 if rec.kind == "image" else int(rec.where)
    rng = np.random.default_rng(len(rec.turns[0][1]))
    return rng.integers(0, 256, size=(n, 480, 640, 3), dtype=np.uint8)


def shapes(tiny: bool) -> tuple[LlamaConfig, CLIPVisionConfig]:
    if tiny:
        return (LlamaConfig(vocab_size=32001, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192,
                            tie_word_embeddings=False),
                CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                 image_size=56, patch_size=14))
    return (LlamaConfig(vocab_size=32001, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=8192,
                        tie_word_embeddings=False),  # Vicuna-7B v1.5 with <voco>
            CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                             image_size=336, patch_size=14, projection_dim=768))  # CLIP ViT-L/14-336


def build(tiny: bool, device: torch.device, tokens_per_frame: int, workdir: Path) -> Learner:
    llm_cfg, clip_cfg = shapes(tiny)
    llm_cfg._attn_implementation = "sdpa"
    tok = make_word_tokenizer(workdir / "tok", [" ".join(WORDS)], "voco")
    torch.manual_seed(0)
    with torch.device(device):  # random weights made where they run (fp32 masters; FSDP casts to bf16)
        llm = LlamaForCausalLM(llm_cfg)
        tower = CLIPVisionModel(clip_cfg)
        projector = build_projector("mlp2x_gelu", clip_cfg.hidden_size, llm_cfg.hidden_size)
    vision = VisionEncoder(tower, -2, "patch", Preprocess(size=clip_cfg.image_size, aspect="pad"))
    inputs = VoCoInputs.create(llm, projector, tok, num_patches=vision.num_patches, vision_hidden=clip_cfg.hidden_size,
                               tokens_per_frame=tokens_per_frame)
    learner = Learner(vision, projector, llm, tok, inputs)
    learner.mm = {}
    return learner


def records(n: int, frames: int, text_tokens: int) -> list[Record]:
    """Samples whose sequences come to the wanted length: a question and a long answer of single-token words."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        answer = " ".join(rng.choice(WORDS, size=max(1, text_tokens)))
        out.append(Record(Path(f"s{i}"), "image" if frames == 1 else "video", [("describe it .", answer)],
                          str(frames)))
    return out


@contextlib.contextmanager
def profiled(where: str, mode: str, warmup: int, device: torch.device):
    """``--profile DIR``: torch.profiler over 2 steps after the warmup (fit's per-step log line moves it on);
    rank 0's Chrome trace in DIR and its top operators by device time on stdout."""
    if not where or int(os.environ.get("RANK", "0")) != 0:  # fit logs its step lines on rank 0 only
        yield lambda m: None
        return
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    Path(where).mkdir(parents=True, exist_ok=True)
    prof = torch.profiler.profile(activities=acts, schedule=torch.profiler.schedule(wait=max(0, warmup - 1), warmup=1,
                                                                                   active=2, repeat=1))
    with prof:
        yield lambda m: prof.step() if m.startswith("step ") else None
    prof.export_chrome_trace(str(Path(where) / f"{mode}_rank0.json"))
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60))


def run_mode(mode: str, args, device: torch.device, world: int, workdir: Path) -> dict:
    tiny = args.tiny
    frames = args.frames if mode == "video" else 1
    learner = build(tiny, device, args.tokens_per_frame, workdir)
    n_patches = learner.vision.num_patches
    block = 1 + n_patches + 1 + args.tokens_per_frame  # [BOS, image, "\n", VoCo x N] per frame
    prompt = len(learner.inputs.voco.prompt_ids("describe it ."))
    seq = (args.seq if mode != "video" else frames * block + args.video_text) if not tiny else frames * block + 64
    text = max(1, seq - frames * block - prompt - 2)
    data = InstructionData(records(max(64, args.batch_size * 4), frames, text), learner.vision.spec, frames,
                           frames_fn=synthetic_frames)
    steps = args.steps if not tiny else 3
    cfg = scale.ScaleConfig(steps=steps, batch_size=args.batch_size * world if not tiny else 2,
                            micro_batch_size=args.micro_batch_size if not tiny else 1, lr=1e-5, warmup=1,
                            lora_r=args.lora_r if mode == "lora" else 0, checkpointing=args.checkpointing,
                            compile="inductor" if args.compile and not tiny else "", adam=args.adam,
                            reshard_after_forward=not args.no_reshard, prefetch=args.prefetch,
                            attention=args.attention, pack=args.pack,
                            bf16=device.type == "cuda", fsdp=mode != "lora", max_frames=frames, max_length=seq + 8,
                            workers=args.workers if not tiny else 0, save=False, log_every=1,
                            peak_tflops=args.peak_tflops)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with profiled(args.profile, mode, args.warmup_steps if not tiny else 0, device) as step_hook:
        result = scale.fit(learner, data, cfg, workdir / mode, device, log=step_hook)
    wall = time.perf_counter() - t0
    hist = result["history"][args.warmup_steps if not tiny else 1:] or result["history"]

    def med(key):
        return statistics.median(h[key] for h in hist)
    out = {"mode": mode, "processes": world, "sequence_length": seq, "frames_per_sample": frames,
           "checkpointing": args.checkpointing, "compile": args.compile, "adam": args.adam,
           "reshard_after_forward": not args.no_reshard, "prefetch": args.prefetch, "attention": args.attention,
           "pack": args.pack,
           "global_batch": cfg.batch_size, "micro_batch": cfg.micro_batch_size, "steps": steps,
           "tokens_per_s": med("tokens_per_s"), "samples_per_s": med("samples_per_s"),
           "frames_per_s": med("frames_per_s"), "mfu": med("mfu"), "data_wait_share": med("data_wait"),
           "seconds": wall, "loss_first_last": [result["history"][0]["loss"], result["history"][-1]["loss"]]}
    if device.type == "cuda":
        out["peak_memory_gib_per_gpu"] = torch.cuda.max_memory_allocated() / 2**30
        out["gpu"] = torch.cuda.get_device_name()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["full", "lora", "video"], default="full")
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny shapes, every mode, a few seconds")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8, help="samples per GPU per step")
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--video-text", type=int, default=128, help="text tokens after a video's frames")
    ap.add_argument("--tokens-per-frame", type=int, default=2)
    ap.add_argument("--lora-r", type=int, default=64)
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--peak-tflops", type=float, default=800.0)
    ap.add_argument("--checkpointing", default="full", help="LLM layers that recompute: full, none, every:N")
    ap.add_argument("--compile", action="store_true", help="torch.compile each decoder layer (inductor)")
    ap.add_argument("--adam", choices=["auto", "fused", "foreach"], default="auto", help="auto: fused on CUDA")
    ap.add_argument("--no-reshard", action="store_true", help="FSDP2: keep each layer's full weights forward to backward")
    ap.add_argument("--prefetch", type=int, default=0, help="FSDP2: layers all-gathered ahead explicitly")
    ap.add_argument("--attention", choices=["sdpa", "flex"], default="sdpa",
                    help="sdpa: dense VoCo mask; flex: FlexAttention block mask")
    ap.add_argument("--pack", action="store_true", help="turns share sequences of --seq (block-diagonal masks)")
    ap.add_argument("--profile", default="", help="write a torch.profiler Chrome trace of 2 steps after the run here")
    args = ap.parse_args()
    quiet_transformers()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cpu") if args.tiny else scale.local_device("auto")
    if args.tiny:
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        modes = ["full", "lora", "video"] if args.tiny else [args.mode]
        report = {"results": [run_mode(m, args, device, world, Path(tmp)) for m in modes],
                  "settings": vars(args), "torch": torch.__version__}
    scale.cleanup()
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.out).write_text(json.dumps(report, indent=1))
        for r in report["results"]:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
