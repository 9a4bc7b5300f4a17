"""Where a demo-model training step spends its time (one process alone on the GPU).

    python benchmarks/train_profile.py --method voco --batch-size 256

Times steps/s alone on the GPU, then profiles a few steps with torch.profiler and prints the top
operators by GPU and by CPU time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vidqa import synthetic
from vidqa.train import SyntheticData, TinyConfig, build_tiny, load_batch, make_word_tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="voco")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = SyntheticData(1000, seed=1, workers=4)
    family = "mini" if args.method == "mini" else "voco"
    tok = make_word_tokenizer(Path("/tmp/prof-tok"), data.texts() + list(synthetic.ANSWERS), family)
    learner = build_tiny(args.method, tok, TinyConfig()).to(device).train()
    opt = torch.optim.AdamW(learner.parameters(), lr=1e-3)
    auto = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    idx = list(range(args.batch_size))

    def step():
        pixels, samples = load_batch(data, idx, device)
        with auto:
            loss, _, _ = learner(pixels, samples)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize() if device.type == "cuda" else None
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize() if device.type == "cuda" else None
    dt = (time.perf_counter() - t0) / args.steps
    print(f"{args.method} batch {args.batch_size}: {1000 * dt:.1f} ms/step, {args.batch_size / dt:.0f} samples/s alone")
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize() if device.type == "cuda" else None
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=50))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=50))


if __name__ == "__main__":
    main()
