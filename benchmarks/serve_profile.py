"""Where the server's first request and a library search spend their time (VoCo, Vicuna-7B + CLIP-L shapes).

    python benchmarks/serve_profile.py --out OUT.json              # on a GPU
    python benchmarks/serve_profile.py --tiny --out OUT.json       # a CPU smoke run of the same code

Parts (``--parts first,search``):

  first   a warmed-up engine (``Engine.warm_up``: the question "what is in this video?" on 1,000 frames)
          answers other questions on the same 1,000-frame cache: per request the server's split
          (prefill, first token), for a new question length the first time and again. Then the LLM's
          forward alone at prompt lengths it has not run yet, first call against second call: the
          cost of a shape seen for the first time (cuBLAS / attention kernel selection).
  search  ``--videos`` 8-frame caches: ``search.score_caches`` from host memory and from GPU memory,
          each step timed on its own (copy in, ``prefill_batch``, the LLM forward), and the top
          kernels and CPU ops of one call from GPU memory (torch.profiler).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def frames_of(n: int):
    return SimpleNamespace(pixels=np.random.default_rng(0).integers(0, 255, (n, 64, 64, 3), dtype=np.uint8),
                           timestamps=[i + 0.5 for i in range(n)], indices=list(range(n)))


def part_first(qa, frames: int, res: dict) -> None:
    from vidqa import fast
    from vidqa.serve.engine import Engine, Prepared
    from vidqa.serve.schema import ChatRequest

    engine = Engine(qa, None, warmup_frames=frames)
    _, warm_s = timed(engine.warm_up)
    cache = qa.compress(frames_of(1)).select([0] * frames).to(qa.device)
    out = {"warm_up_s": warm_s, "requests": []}
    for q in ["what is in this video?", "what happens in this video?", "what happens in this video?",
              "what happens after the door opens?", "what happens after the door opens?"]:
        req = ChatRequest(video="", question=q, max_tokens=64)
        a, wall = timed(lambda: engine.answer(Prepared(Path(), cache), req, stop_after=1))
        out["requests"].append({"question": q, "prompt_tokens": len(qa.method.prompt_ids(q)), "wall_s": wall,
                                "prefill_s": a.split.prefill_s, "first_token_s": a.split.first_token_s})
    # the LLM alone at prompt lengths it has not seen, on a 1,000-token past: first call vs second, with
    # cuDNN attention allowed (torch's default) and without it (vidqa's setting, fast.plan_free_attention)
    past = qa.method.prefill(cache, "what is in this video?").past_key_values
    shapes = []
    for n, cudnn in ((11, True), (19, True), (23, True), (37, True), (13, False), (17, False), (29, False), (41, False)):
        if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
            torch.backends.cuda.enable_cudnn_sdp(cudnn)
        ids = torch.randint(0, 1000, (1, n), device=qa.device)
        pos = torch.arange(frames + 50, frames + 50 + n, device=qa.device)[None]
        times = []
        for _ in range(3):
            p = _copy_cache(past)
            _, s = timed(lambda: qa.llm(input_ids=ids, position_ids=pos, past_key_values=p, use_cache=True,
                                        logits_to_keep=1))
            times.append(s)
        shapes.append({"prompt_tokens": n, "cudnn_attention": cudnn, "first_s": times[0], "second_s": times[1],
                       "third_s": times[2]})
    fast.plan_free_attention(qa.device)
    out["llm_forward_new_lengths"] = shapes
    res["first"] = out
    for r in out["requests"]:
        print(f"first: {r['prompt_tokens']:3d} tokens: wall {1e3 * r['wall_s']:.1f} ms, prefill {1e3 * r['prefill_s']:.1f}, "
              f"first token {1e3 * r['first_token_s']:.1f}")
    for s in shapes:
        print(f"first: llm forward {s['prompt_tokens']} new tokens (cuDNN attention {s['cudnn_attention']}): {1e3 * s['first_s']:.1f} / {1e3 * s['second_s']:.1f} / "
              f"{1e3 * s['third_s']:.1f} ms")


def _copy_cache(cache):
    from transformers import DynamicCache

    c = DynamicCache()
    for i, layer in enumerate(cache.layers):
        c.update(layer.keys.clone(), layer.values.clone(), i)
    return c


def part_search(qa, videos: int, res: dict, profile_rows: int) -> None:
    from vidqa import fast, search

    one = qa.compress(frames_of(8))
    host = [one.to("cpu") for _ in range(videos)]
    gpu = [one.to(qa.device) for _ in range(videos)]
    probe = search.Probe(search.question_for("a red circle", qa.model_id))
    search.score_caches(qa, gpu[:8], probe)  # warm
    out = {"videos": videos, "prompt_tokens": len(qa.method.prompt_ids(probe.question)),
           "batch_size": search.batch_size_for(qa, one, len(qa.method.prompt_ids(probe.question)), videos)}
    _, out["score_from_host_s"] = timed(lambda: search.score_caches(qa, host, probe))
    _, out["score_from_gpu_s"] = timed(lambda: search.score_caches(qa, gpu, probe))
    # the steps of one batch of the chosen size, each on its own
    b = out["batch_size"]
    moved, out["batch_copy_in_s"] = timed(lambda: search._to_device(host[:b], qa.device))
    with torch.inference_mode():
        batch, out["batch_prefill_batch_s"] = timed(lambda: qa.method.prefill_batch(gpu[:b], probe.question))
        _, out["batch_llm_forward_s"] = timed(lambda: qa.llm(
            input_ids=batch.input_ids, inputs_embeds=batch.inputs_embeds, position_ids=batch.position_ids,
            use_cache=True, logits_to_keep=1, **fast.cache_kwargs(batch.past_key_values)))
    out["batch_prompt_positions"] = int(batch.position_ids.shape[1])
    out["batch_past_tokens"] = int(batch.past_key_values.get_seq_length()) if batch.past_key_values is not None else 0
    del moved, batch
    if profile_rows:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profile(activities=acts) as prof:
            search.score_caches(qa, gpu, probe)
            sync()
        key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
        out["profile_gpu"] = prof.key_averages().table(sort_by=key, row_limit=profile_rows)
        out["profile_cpu"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile_rows)
        print(out["profile_gpu"])
        print(out["profile_cpu"])
    res["search"] = out
    print("search:", {k: v for k, v in out.items() if not k.startswith("profile")})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--parts", default="first,search")
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--videos", type=int, default=None)
    ap.add_argument("--profile-rows", type=int, default=25)
    args = ap.parse_args()
    from serve_speed import build

    from vidqa.checkpoint import quiet_transformers

    quiet_transformers()
    qa = build("voco", args.tiny)
    frames = args.frames or (16 if args.tiny else 1000)
    videos = args.videos or (8 if args.tiny else 1000)
    res = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "tiny": args.tiny}
    parts = args.parts.split(",")
    if "first" in parts:
        part_first(qa, frames, res)
    if "search" in parts:
        part_search(qa, videos, res, args.profile_rows)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
