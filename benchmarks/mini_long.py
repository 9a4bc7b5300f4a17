"""One question on a very long video at LLaVA-3.1-8B + CLIP-L/336 shapes: GPU memory and time.

    python benchmarks/mini_long.py --frames 10000 --out long.json
    python benchmarks/mini_long.py --tiny                  # a CPU smoke run of the same code (seconds)

``VideoQA.compress`` sees that the pre-fusion K/V (9.46 MB a frame, 95 GB here) would not fit in host
memory and keeps the compact cache (raw CLIP features, 1.18 MB a frame) in pinned host memory; the
question streams it to the GPU 16 frames at a time. Reports peak GPU memory during compression and
during the question (torch's allocated and reserved peaks).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from vidqa.generate import GenerationConfig, generate
from vidqa.methods import mini

sys.path.insert(0, str(Path(__file__).parent))
from mini_speed import build  # noqa: E402
from voco_speed import sync  # noqa: E402

FULL_FRAMES, TINY_FRAMES = 10000, 24


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=None, help=f"{FULL_FRAMES} ({TINY_FRAMES} with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="small shapes and sizes, for a CPU smoke run")
    ap.add_argument("--prompt-tokens", type=int, default=100)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.frames is None:
        args.frames = TINY_FRAMES if args.tiny else FULL_FRAMES
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    qa, _, _ = build(args.tiny, device, dtype)
    m, llm = qa.method, qa.llm
    g = torch.Generator().manual_seed(0)
    body = torch.randint(1, 120000, (args.prompt_tokens - 3,), generator=g).tolist()
    ids = [128000, 128000] + body[:20] + [mini.IMAGE_TOKEN_INDEX] + body[20:]
    m.prompt_ids = lambda question, history=(): ids  # timing only: the tokenizer here is a stand-in
    base = torch.randint(0, 256, (64, 336, 336, 3), dtype=torch.uint8, generator=g).numpy()
    n = args.frames
    frames = SimpleNamespace(pixels=base[np.arange(n) % 64], timestamps=np.arange(n, dtype=np.float64))
    res = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "frames": n,
           "torch": torch.__version__}
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        res["weights_gib"] = torch.cuda.memory_allocated() / 2**30
    t0 = time.perf_counter()
    cache = qa.compress(frames, batch_size=32)
    sync()
    res["compress_ms_per_frame"] = 1000 * (time.perf_counter() - t0) / n
    res["cache_kind"] = cache.meta.get("cache_kind")
    res["cache_gb"] = cache.nbytes / 1e9
    res["cache_device"] = str(next(iter(cache.tensors.values())).device)
    if cuda:
        res["compress_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    tokens = list(generate(llm, m.prefill(cache, "q"), GenerationConfig(max_new_tokens=1), set()))
    sync()
    res["question_to_first_token_s"] = time.perf_counter() - t0
    res["context_tokens"] = n * m.tokens_per_frame + len(ids) - 1
    if cuda:
        res["question_peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["question_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    res["answered"] = len(tokens) == 1
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
