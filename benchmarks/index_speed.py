"""`vidqa index` throughput and `ask` time to first token from the store, at Vicuna-7B + CLIP-L/336 shapes.

    python benchmarks/index_speed.py --out index.json                          # one GPU
    torchrun --nproc-per-node 2 benchmarks/index_speed.py --index-only         # several GPUs, one store
    python benchmarks/index_speed.py --tiny                                    # a CPU smoke run (seconds)

Videos are made here with PyAV (640x360, 10 fps). Everything runs through vidqa.library, the code
behind `vidqa index` and `vidqa ask`, with the random-weight model built in memory (benchmarks/voco_speed.py).
  index     index_videos(): decoding on a CPU thread overlapping GPU compression, atomic stores.
  naive     the official code's shape: decode a video, then one frame at a time through
            CLIPVisionModel(output_hidden_states) and a full LlamaForCausalLM forward.
  ask       load_or_compress() + the first answer token, for a 1,000-frame video that is indexed
            (store hit: no decode, no vision tower) and one that is not.
Under torchrun each rank indexes its share (videos[rank::world]) into the same store.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from vidqa.generate import GenerationConfig, generate
from vidqa.library import index_videos, load_or_compress
from vidqa.store import Store
from vidqa.video import Sampling, load_frames
from vidqa.vision import preprocess

sys.path.insert(0, str(Path(__file__).parent))
from voco_speed import build, sizes, sync  # noqa: E402

FULL = {"videos": 6, "seconds": 60, "long_frames": 1000}
TINY = {"videos": 2, "seconds": 2, "long_frames": 20}


def make_video(path: Path, seconds: int, fps: int = 10, size=(640, 360), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(seconds * fps):
            img = np.roll(base, i, axis=1).repeat(8, 0).repeat(8, 1)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="small shapes and sizes, for a CPU smoke run")
    ap.add_argument("--videos", type=int, default=None, help=f"{FULL['videos']} ({TINY['videos']} with --tiny)")
    ap.add_argument("--seconds", type=int, default=None, help=f"{FULL['seconds']} ({TINY['seconds']} with --tiny)")
    ap.add_argument("--fps", type=float, default=2.0, help="sampling rate for index")
    ap.add_argument("--long-frames", type=int, default=None,
                    help=f"{FULL['long_frames']} ({TINY['long_frames']} with --tiny)")
    ap.add_argument("--index-only", action="store_true")
    ap.add_argument("--work", default=None, help="folder for videos and the store (shared by ranks)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sizes(args, FULL, TINY)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    work = Path(args.work or tempfile.mkdtemp())
    vids_dir = work / "videos"
    vids_dir.mkdir(parents=True, exist_ok=True)
    videos = [vids_dir / f"v{i}.mp4" for i in range(args.videos)]
    if rank == 0:
        for i, v in enumerate(videos):
            if not v.exists():
                make_video(v.with_suffix(".tmp.mp4"), args.seconds, seed=i).rename(v)
    while not all(v.exists() for v in videos):  # other ranks wait for rank 0's videos
        time.sleep(0.5)

    qa, naive_tower, _, _ = build(args.tiny, device, dtype, 2)
    qa.model_fingerprint = "random-7b"
    store = Store(work / "store")
    sampling = Sampling(fps=args.fps)
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "rank": rank,
           "world_size": world, "videos": args.videos, "seconds_each": args.seconds, "sample_fps": args.fps}

    # ---- index: this rank's share -------------------------------------------------------------------
    mine = videos[rank::world]
    warm = load_frames(mine[0], Sampling(num_frames=8))
    qa.compress(warm, batch_size=8)  # kernels and allocator warm
    sync()
    t0 = time.perf_counter()
    report = index_videos(qa, store, mine, sampling, batch_size=32)
    sync()
    res["index"] = report.as_dict()
    res["index"]["wall_s"] = time.perf_counter() - t0
    res["index_frames_per_s"] = report.frames / res["index"]["wall_s"]
    res["index_gpu_idle_waiting_for_decode"] = report.decode_wait_s / res["index"]["wall_s"]
    if args.index_only:
        print(json.dumps(res))
        if rank == 0 and world > 1:
            while len(store.entries()) < len(videos):
                time.sleep(0.5)
            print(f"store holds {len(store.entries())} entries for {len(videos)} videos; verify: {store.verify()}")
        return

    # ---- naive: the same videos, decoded then one frame at a time --------------------------------------
    m, llm = qa.method, qa.llm
    seq = m.p0 + m.tokens_per_frame
    frames_done = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for v in mine:
            frames = load_frames(v, sampling)
            for i in range(len(frames.indices)):
                px = preprocess(torch.from_numpy(frames.pixels[i:i + 1]).to(device), qa.vision.spec, dtype)
                hs = naive_tower(pixel_values=px, output_hidden_states=True).hidden_states[-2][:, 1:]
                out = llm(inputs_embeds=m.frame_embeds(hs), use_cache=True)
                _ = [(layer.keys[:, :, m.p0:seq].cpu(), layer.values[:, :, m.p0:seq].cpu())
                     for layer in out.past_key_values.layers]
                frames_done += 1
    sync()
    res["naive_frames_per_s"] = frames_done / (time.perf_counter() - t0)

    # ---- ask: time to first token on a 1,000-frame video, indexed vs not ----------------------------------
    long = make_video(work / "long.mp4", int(np.ceil(args.long_frames / 10)), seed=99)
    long_sampling = Sampling(fps=10.0)
    q = "what happens after the door opens?"

    def ttft(store_or_none) -> tuple[float, bool, int]:
        sync()
        t = time.perf_counter()
        cache, _, hit = load_or_compress(qa, long, long_sampling, store=store_or_none, batch_size=32)
        for _ in generate(llm, m.prefill(cache, q), GenerationConfig(max_new_tokens=1), set()):
            pass
        sync()
        return time.perf_counter() - t, hit, cache.num_frames

    cold, hit0, n = ttft(None)
    index_videos(qa, store, [long], long_sampling, batch_size=32)
    warm_s, hit1, _ = ttft(store)
    warm_s2, _, _ = ttft(store)
    res.update({"long_frames": n, "ask_ttft_unindexed_s": cold, "ask_ttft_indexed_s": min(warm_s, warm_s2),
                "indexed_hit": hit1, "unindexed_hit": hit0})
    if device.type == "cuda":
        res["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(res, indent=2))
    print(f"index: {res['index_frames_per_s']:.1f} frames/s (GPU waited for decoding "
          f"{100 * res['index_gpu_idle_waiting_for_decode']:.1f}% of the time) | naive per-frame loop: "
          f"{res['naive_frames_per_s']:.1f} frames/s | {res['index_frames_per_s'] / res['naive_frames_per_s']:.2f}x")
    print(f"ask, {n}-frame video, time to first token: indexed {res['ask_ttft_indexed_s']:.2f} s | "
          f"not indexed {res['ask_ttft_unindexed_s']:.2f} s | {res['ask_ttft_unindexed_s'] / res['ask_ttft_indexed_s']:.1f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
