"""``python -m vidqa.train``: the argparse front end of ``vidqa train``, moved here unchanged.

To be deleted when ``vidqa train`` is a Typer command of its own (``vidqa/cli/train.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vidqa import synthetic
from vidqa.options import DistEnv
from vidqa.train.data import JsonData, SyntheticData, make_word_tokenizer
from vidqa.train.export import export
from vidqa.train.loop import TrainConfig, train
from vidqa.train.model import build_tiny, load_vision_from

DESCRIPTION = "`vidqa train`: learn VoCo-LLaMA or LLaVA-Mini compression, and make small demo models from scratch."


def main(argv: list[str] | None = None) -> int:
    """``python -m vidqa.train``: the same as ``vidqa train`` (see its --help)."""
    ap = argparse.ArgumentParser(prog="vidqa train", description=DESCRIPTION)
    ap.add_argument("--method", choices=["voco", "mini", "full", "pool"], default="voco",
                    help="what to train (full and pool are the retention table's reference rows)")
    ap.add_argument("--data", default="synthetic", help="'synthetic' or a LLaVA-style JSON file")
    ap.add_argument("--media-root", default=None)
    ap.add_argument("--on-bad", choices=["skip", "refuse"], default="skip")
    ap.add_argument("--out", required=True, help="run directory: train_state.pt (resumable) and model/")
    ap.add_argument("--tokens-per-frame", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--clips", type=int, default=4000, help="synthetic training clips")
    ap.add_argument("--eval-clips", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--freeze-vision", action="store_true")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--minutes", type=float, default=None,
                    help="time budget: the learning-rate schedule ends after this long, or at --steps if sooner")
    ap.add_argument("--samples", type=int, default=None,
                    help="budget in questions seen: the schedule ends there (equal data across compared runs)")
    ap.add_argument("--vision-from", default=None,
                    help="start the vision tower from another run's train_state.pt (with --freeze-vision: a fixed, "
                         "pretrained tower, as VoCo-LLaMA's comparisons use a frozen CLIP)")
    ap.add_argument("--max-minutes", type=float, default=None, help="hard stop after this long (steps done are reported)")
    ap.add_argument("--warmup", type=int, default=100, help="warmup steps")
    ap.add_argument("--pack", action="store_true",
                    help="synthetic data: --batch-size counts clips, and all of a clip's questions share one "
                         "sequence after its frames (each sees the frames and itself only)")
    ap.add_argument("--eval-every", type=float, default=0.0, help="seconds between held-out checks in the log (0: only at the end)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    local = DistEnv.from_env().local_rank
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() and args.device in ("auto", "cuda") else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    cfg = TrainConfig(variant=args.method, tokens_per_frame=args.tokens_per_frame, steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, freeze_vision=args.freeze_vision,
                      grad_checkpointing=args.grad_checkpointing, seed=args.seed, minutes=args.minutes,
                      max_minutes=args.max_minutes, warmup=args.warmup, eval_every=args.eval_every,
                      pack=args.pack, samples=args.samples)
    if args.data == "synthetic":
        data = SyntheticData(args.clips, seed=args.seed + 1, size=cfg.tiny.image_size, workers=args.workers)
        eval_data = SyntheticData(args.eval_clips, seed=10_000 + args.seed, size=cfg.tiny.image_size,
                                  workers=args.workers)
    else:
        data = JsonData(args.data, args.media_root, on_bad=args.on_bad,
                        report=lambda m: print(m, file=sys.stderr))
        eval_data = None
    family = "mini" if args.method == "mini" else "voco"
    tok_dir = out / "tokenizer"
    corpus = data.texts() + list(synthetic.ANSWERS)
    tokenizer = make_word_tokenizer(tok_dir, corpus, family)
    learner = build_tiny(args.method, tokenizer, cfg.tiny, args.tokens_per_frame)
    if args.vision_from:
        load_vision_from(learner, Path(args.vision_from))
    result = train(learner, data, cfg, out, device, eval_data=eval_data)
    if DistEnv.from_env().rank == 0:
        if args.method in ("voco", "mini"):
            export(learner.float(), out / "model", cfg.tiny, note=f"vidqa demo model ({args.method}), trained on "
                   "synthetic clips only; random-init, not a general video model")
        (out / "result.json").write_text(json.dumps(result, indent=1))
        print(json.dumps({k: v for k, v in result.items() if k != "history"}))
    return 0


