"""The retention table (VoCo-LLaMA's Table 1 protocol) on the synthetic set, and the demo models.

    python benchmarks/retention.py --out OUT --minutes 6

Trains, at the same time on one GPU, with the same architecture, data, batch and time budget, one
model per row (``--minutes``: each row's learning-rate schedule runs to zero in that time; the steps
each row managed are reported):
  full   upper bound: every vision token of every frame visible to the text
  voco1  VoCo, 1 token per frame          voco4  VoCo, 4 tokens per frame
  mini   LLaVA-Mini, 1 token per frame    pool   average pooling + linear to 1 token per frame
and evaluates the lower bound: the upper-bound model read through VoCo-1 without VoCo training.
Retention = (row - lower) / (upper - lower). Accuracy = the first answer word on held-out clips
(seed 10,000), teacher-forced argmax, which is what greedy decoding writes first.

Then the VoCo-1 and Mini models are exported as vidqa checkpoints and measured end to end through
the CLI: ``vidqa synthetic`` writes held-out mp4 clips, ``vidqa bench synthetic`` decodes them,
samples 1 fps, compresses and answers greedily. Their folders come back as ``OUT/<row>.tar``.
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

import torch

from vidqa.checkpoint import load_tokenizer
from vidqa.train import SyntheticData, TinyConfig, build_tiny, evaluate
from vidqa.train.state import read_model_tensors

ROWS = {"full": ["--method", "full"], "voco1": ["--method", "voco", "--tokens-per-frame", "1"],
        "voco4": ["--method", "voco", "--tokens-per-frame", "4"], "mini": ["--method", "mini"],
        "pool": ["--method", "pool"]}
SHIP = ("voco1", "mini")  # the demo models


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/retention")
    ap.add_argument("--minutes", type=float, default=6.0, help="time budget per row (all rows run at once)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--clips", type=int, default=30000)
    ap.add_argument("--eval-clips", type=int, default=300)
    ap.add_argument("--bench-videos", type=int, default=100)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--threads", type=int, default=3, help="CPU threads per row process")
    ap.add_argument("--pack", action="store_true", help="batches of whole clips, questions packed (vidqa train --pack)")
    ap.add_argument("--samples", type=int, default=None,
                    help="the same number of questions for every row (the schedule ends there; --minutes caps)")
    ap.add_argument("--frozen-tower", type=float, default=0.0, metavar="MINUTES",
                    help="first pretrain a vision tower (the upper-bound row, this long), then train every row "
                         "with that tower frozen, as VoCo-LLaMA's rows share a frozen CLIP")
    ap.add_argument("--eval-every", type=float, default=60.0, help="seconds between held-out checks in the logs")
    ap.add_argument("--rows", nargs="+", default=list(ROWS))
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    # each row is a separate process on the one GPU: keep their CPU threads from fighting over the cores
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(args.threads)}

    def command(row: str, out_dir: Path, minutes: float, extra: list[str]) -> list[str]:
        return [sys.executable, "-m", "vidqa", "train", *ROWS[row], "--out", str(out_dir), "--steps", "1000000000",
                "--minutes", str(minutes), "--max-minutes", str(minutes + 0.5), "--batch-size",
                str(args.batch_size), "--lr", str(args.lr), "--warmup", str(args.warmup), "--clips", str(args.clips),
                "--eval-clips", str(args.eval_clips), "--workers", str(args.workers), "--eval-every",
                str(args.eval_every)] + (["--pack"] if args.pack else []) + \
            (["--samples", str(args.samples)] if args.samples else []) + extra

    extra: list[str] = []
    if args.frozen_tower:
        tower = work / "tower"
        subprocess.run(command("full", tower, args.frozen_tower, []), check=True, env=env,
                       stdout=open(work / "tower.log", "w"), stderr=subprocess.STDOUT)
        extra = ["--vision-from", str(tower), "--freeze-vision"]
    procs = {}
    for row in args.rows:
        procs[row] = subprocess.Popen(command(row, work / row, args.minutes, extra), stdout=open(work / f"{row}.log", "w"),
                                      stderr=subprocess.STDOUT, env=env)
    # the held-out mp4 set for the end-to-end check, written while the rows train
    bench_data = work / "bench-data"
    if args.bench_videos:
        subprocess.run([sys.executable, "-m", "vidqa", "synthetic", str(bench_data), "--videos", str(args.bench_videos),
                        "--seed", "10000", "--size", "64", "--workers", "2"], check=True, capture_output=True)
    for row, p in procs.items():
        p.wait()
        print(f"{row}: exit {p.returncode} after {time.time() - t_start:.0f} s", flush=True)
    results = {row: json.loads((work / row / "result.json").read_text()) for row in args.rows
               if (work / row / "result.json").exists()}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    table = {row: r["eval"]["accuracy"] for row, r in results.items() if "eval" in r}
    per_category = {r: v["eval"]["per_category"] for r, v in results.items() if "eval" in v}
    if "full" in results:  # lower bound: the upper-bound weights read through untrained VoCo-1
        eval_data = SyntheticData(args.eval_clips, seed=10_000, size=TinyConfig().image_size, workers=4)
        tok = load_tokenizer(work / "full" / "tokenizer")
        learner = build_tiny("voco", tok, TinyConfig(), tokens_per_frame=1)
        state = read_model_tensors(work / "full")  # safetensors: nothing here unpickles
        learner.load_state_dict(state, strict=False)
        learner.to(device)
        lower = evaluate(learner, eval_data, device)
        table["lower"], per_category["lower"] = lower["accuracy"], lower["per_category"]

    upper, lower = table.get("full"), table.get("lower")
    report = {"accuracy": table, "per_category": per_category, "end_to_end_bench": {},
              "steps_done": {r: v["steps"] for r, v in results.items()},
              "samples_seen": {r: v.get("samples") for r, v in results.items()},
              "seconds": {r: round(v["seconds"]) for r, v in results.items()},
              "curves": {r: [{k: h[k] for k in ("step", "seconds", "loss", "train_acc", "eval_acc") if k in h}
                             for h in v["history"]] for r, v in results.items()},
              "settings": vars(args), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    if args.frozen_tower and (work / "tower" / "result.json").exists():  # the tower's own (upper-bound) run
        tower = json.loads((work / "tower" / "result.json").read_text())
        report["tower"] = {k: tower.get(k) for k in ("steps", "samples", "seconds")} | \
            {"accuracy": tower.get("eval", {}).get("accuracy")}
    if upper is not None and lower is not None and upper > lower:
        report["retention"] = {r: (a - lower) / (upper - lower) for r, a in table.items()}
    for row in SHIP:  # the models first, so that a run cut short still brings them back
        if (work / row / "model").exists():
            with tarfile.open(out / f"{row}.tar", "w") as tar:
                tar.add(work / row / "model", arcname=f"tiny-{row}")
    (out / "retention.json").write_text(json.dumps(report, indent=1))
    with open(out / "train_logs.txt", "w") as f:
        for row in (["tower"] if args.frozen_tower else []) + args.rows:
            f.write(f"==== {row}\n" + (work / f"{row}.log").read_text()[-6000:])
    for row in SHIP if args.bench_videos else ():
        model_dir = work / row / "model"
        if not model_dir.exists():
            continue
        run = work / f"bench-{row}"
        proc = subprocess.run([sys.executable, "-m", "vidqa", "bench", "synthetic", "--data", str(bench_data),
                               "--model", str(model_dir), "--prompt", "{question}", "--out", str(run)],
                              capture_output=True, text=True)
        path = run / "report.json"
        report["end_to_end_bench"][row] = json.loads(path.read_text()) if path.exists() else {"error": proc.stderr[-2000:]}
    (out / "retention.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("accuracy", "retention", "steps_done") if k in report}, indent=1))
    print(f"total {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
