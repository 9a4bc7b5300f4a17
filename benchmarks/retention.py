"""The retention table (VoCo-LLaMA's Table 1 protocol) on the synthetic set, and the demo models.

    python benchmarks/retention.py --out OUT --steps 1200 --max-minutes 6

Trains, in parallel and with the same architecture, data and step budget, one model per row:
  full   upper bound: every vision token of every frame visible to the text
  voco1  VoCo, 1 token per frame          voco4  VoCo, 4 tokens per frame
  mini   LLaVA-Mini, 1 token per frame    pool   average pooling + linear to 1 token per frame
and evaluates the lower bound: the upper-bound model read through VoCo-1 without VoCo training.
Retention = (row - lower) / (upper - lower). Accuracy = the first answer word, greedy, on held-out
clips (seed 10,000). The VoCo and Mini models are exported as vidqa checkpoints, then checked again
through the real inference path (VideoQA.compress + answer on decoded pixels).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROWS = {"full": ["--method", "full"], "voco1": ["--method", "voco", "--tokens-per-frame", "1"],
        "voco4": ["--method", "voco", "--tokens-per-frame", "4"], "mini": ["--method", "mini"],
        "pool": ["--method", "pool"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/retention")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--clips", type=int, default=4000)
    ap.add_argument("--eval-clips", type=int, default=300)
    ap.add_argument("--max-minutes", type=float, default=6.0)
    ap.add_argument("--rows", nargs="+", default=list(ROWS))
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VIDQA_MAX_MINUTES": str(args.max_minutes), "PYTHONUNBUFFERED": "1"}
    procs = {}
    for row in args.rows:
        cmd = [sys.executable, "-m", "vidqa.train", *ROWS[row], "--out", str(work / row), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--clips", str(args.clips), "--eval-clips",
               str(args.eval_clips), "--workers", "2", "--max-minutes", str(args.max_minutes)]
        procs[row] = subprocess.Popen(cmd, stdout=open(work / f"{row}.log", "w"), stderr=subprocess.STDOUT, env=env)
    for row, p in procs.items():
        p.wait()
        print(f"{row}: exit {p.returncode}", flush=True)
    results = {row: json.loads((work / row / "result.json").read_text()) for row in args.rows
               if (work / row / "result.json").exists()}

    import torch

    from vidqa.train import SyntheticData, TinyConfig, build_tiny, evaluate
    from vidqa.checkpoint import load_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    eval_data = SyntheticData(args.eval_clips, seed=10_000, size=TinyConfig().image_size, workers=4)
    table = {row: r["eval"]["accuracy"] for row, r in results.items() if "eval" in r}
    if "full" in results:  # lower bound: the upper-bound weights read through untrained VoCo-1
        tok = load_tokenizer(work / "full" / "tokenizer")
        learner = build_tiny("voco", tok, TinyConfig(), tokens_per_frame=1)
        state = torch.load(work / "full" / "train_state.pt", map_location="cpu", weights_only=False)["model"]
        learner.load_state_dict(state, strict=False)
        learner.to(device)
        table["lower"] = evaluate(learner, eval_data, device)["accuracy"]

    # the exported checkpoints, through the inference path
    import numpy as np
    from types import SimpleNamespace

    from vidqa.generate import GenerationConfig
    from vidqa.pipeline import VideoQA

    through_pipeline = {}
    for row in ("voco1", "voco4", "mini"):
        model_dir = work / row / "model"
        if not model_dir.exists():
            continue
        qa = VideoQA.from_pretrained(str(model_dir), device=str(device), dtype="float32")
        right = total = 0
        for clip in range(min(100, len(eval_data.frames))):
            frames = eval_data.frames[clip]
            cache = qa.compress(SimpleNamespace(pixels=frames, timestamps=np.arange(len(frames)) + 0.5))
            for c, q, a, _ in [x for x in eval_data.qa if x[0] == clip]:
                pred = "".join(qa.answer(cache, q, GenerationConfig(max_new_tokens=6))).strip().split()
                right += bool(pred) and pred[0] == a
                total += 1
        through_pipeline[row] = {"accuracy": right / max(1, total), "n": total}
        with tarfile.open(out / f"{row}.tar", "w") as tar:
            tar.add(model_dir, arcname=f"tiny-{row}")

    upper, lower = table.get("full"), table.get("lower")
    report = {"accuracy": table, "through_pipeline": through_pipeline, "steps_done": {r: v["steps"] for r, v in results.items()},
              "seconds": {r: round(v["seconds"]) for r, v in results.items()},
              "per_category": {r: v["eval"]["per_category"] for r, v in results.items() if "eval" in v},
              "settings": vars(args)}
    if upper is not None and lower is not None and upper > lower:
        report["retention"] = {r: (a - lower) / (upper - lower) for r, a in table.items()}
    (out / "retention.json").write_text(json.dumps(report, indent=1))
    with open(out / "train_logs.txt", "w") as f:
        for row in args.rows:
            f.write(f"==== {row}\n" + (work / f"{row}.log").read_text()[-4000:])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
