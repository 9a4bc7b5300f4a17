"""`vidqa serve` speed at Vicuna-7B + CLIP-L (VoCo, 1 token per frame) and LLaVA-Mini-8B shapes, random weights.

    python benchmarks/serve_speed.py --out OUT                    # on a GPU: every part, JSON under OUT
    python benchmarks/serve_speed.py --out OUT --parts ttft,concurrent
    python benchmarks/serve_speed.py --tiny --out OUT             # a CPU smoke run of the same code (seconds)

Everything goes through a real uvicorn server on 127.0.0.1 (an ephemeral port), with streamed
requests timed by the client from sending the request to the first SSE chunk (the server sends its
first chunk when the first token is sampled), unless said otherwise. Parts (``--parts``):

  ttft        a video of ``--frames`` (1,000) frames at 1 fps is indexed through the server (cold request:
              decode + compression + answer), then a fresh engine on the same weights (a restarted
              server: warm-up before /health says ready, the cache in the store on disk) answers ten
              questions: the first reads the store, the next nine hit the in-memory LRU (GPU tier).
              Reports each request's client TTFT, and the server's own split (frames_s: cache lookup;
              time_to_first_token_s = copy_s (host tier to GPU) + prefill_s (the method's prefill:
              LLaVA-Mini's pre-fusion) + first_token_s (the LLM's prefill forward and first token)).
              The restarted server preloads the stored cache before it is ready (``preloaded_entries``).
  concurrent  8 clients at once (and 1 client alone) ask ``--new-tokens`` tokens each on the indexed
              video: p50 / p99 TTFT and total tokens per second.
  mini        LLaVA-Mini-8B: the same video indexed, then a question on its 1,000 stored frames (TTFT,
              first and tenth request).
  search      ``--search-videos`` (1,000) indexed videos of 8 frames (store entries under distinct files;
              one compressed 8-frame cache stored under each), then POST /v1/search: end-to-end
              seconds (store reads + scoring + evidence), and ``search.rank`` alone on the caches
              in GPU memory.
  compile     VIDQA_COMPILE=1: two fresh processes each build the model and warm up (what `vidqa
              serve` does before it is ready), with the compile caches under OUT/compile-cache; the
              first compiles, the second should load the artifacts. Reports time to ready for both, and
              torch's counters: graphs traced, inductor FX graph cache misses (compiled) and hits
              (loaded); ``second_recompiled`` is true if the second start compiled anything. On the CPU
              vidqa compiles nothing (its compiled kernels are CUDA-only), so a small probe function
              is compiled instead, to show the cache at work.

Random weights decode as fast as real ones; answers from them are noise, and may stop early at
a stop token: the number of tokens is reported with every rate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FULL = {"frames": 1000, "new_tokens": 64, "search_videos": 1000, "clients": 8, "repeats": 10}
TINY = {"frames": 16, "new_tokens": 4, "search_videos": 8, "clients": 8, "repeats": 3}
PARTS = ("ttft", "concurrent", "mini", "search", "compile")


def write_video(path: Path, frames: int, size: int = 64, seed: int = 0) -> Path:
    """An mp4 of ``frames`` seconds at 1 fps (noise frames; cheap to encode and decode)."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=1)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def build(method: str, tiny: bool):
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if method == "voco":
        from voco_speed import build as build_voco

        qa = build_voco(tiny, device, dtype, 1)[0]
    else:
        from mini_speed import build as build_mini

        qa = build_mini(tiny, device, dtype)[0]
    return qa


def stream_ttft(url: str, video: Path, question: str, max_tokens: int, **extra) -> dict:
    """Client TTFT (to the first SSE chunk), total seconds, text chunks, and the server's vidqa fields."""
    import httpx

    body = {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video.as_uri()}},
                                                      {"type": "text", "text": question}]}],
            "stream": True, "max_tokens": max_tokens, **extra}
    t0 = time.perf_counter()
    first, info, chunks = None, {}, 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if first is None:
                first = time.perf_counter() - t0
            if line == "data: [DONE]":
                break
            c = json.loads(line[6:])
            chunks += 1
            info = c.get("vidqa", info)
    total = time.perf_counter() - t0
    return {"ttft_s": first, "total_s": total, "tokens": info.get("answer_tokens", 0), "from_cache": info.get("from_cache"),
            "server_frames_s": info.get("frames_s"), "server_ttft_s": info.get("time_to_first_token_s"),
            "server_copy_s": info.get("copy_s"), "server_prefill_s": info.get("prefill_s"),
            "server_first_token_s": info.get("first_token_s"), "frames_on": info.get("frames_on"),
            "frames": len(info.get("frames", []))}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def serve(qa, store_dir: Path, roots: list[Path], warmup_frames: int):
    from vidqa.serve.engine import Engine
    from vidqa.serve.server import Server
    from vidqa.store import Store

    # the GPU tier's budget as `vidqa serve` sets it by default (auto: 60% of the GPU memory free after warm-up)
    engine = Engine(qa, Store(store_dir), allow_roots=roots, warmup_frames=warmup_frames, cache_host_bytes=60 << 30)
    t0 = time.perf_counter()
    server = Server(engine, own_engine=True).start()
    return server, time.perf_counter() - t0


def part_ttft(qa, work: Path, cfg: dict, res: dict, video: Path) -> None:
    q = "what happens in this video?"
    server, ready_s = serve(qa, work / "store", [work], cfg["frames"])
    try:
        cold = stream_ttft(server.url, video, q, cfg["new_tokens"])
    finally:
        server.stop()
    server, ready_s = serve(qa, work / "store", [work], cfg["frames"])  # a restarted server: the store only
    preloaded = len(server.engine.preloaded)  # read into memory before ready (newest stored caches of this model)
    try:
        runs = [stream_ttft(server.url, video, q, cfg["new_tokens"]) for _ in range(cfg["repeats"])]
    finally:
        server.stop()
    res["ttft"] = {"frames": cold["frames"], "cold_index_request": cold, "time_to_ready_s": ready_s,
                   "preloaded_entries": preloaded,
                   "first_request": runs[0], "tenth_request": runs[-1],
                   "warm_ttft_median_s": statistics.median(r["ttft_s"] for r in runs[1:])}


def part_concurrent(qa, work: Path, cfg: dict, res: dict, video: Path) -> None:
    q = "describe the video in detail."
    server, _ = serve(qa, work / "store", [work], cfg["frames"])
    try:
        stream_ttft(server.url, video, q, cfg["new_tokens"])  # into the memory cache
        out = {}
        for n in (1, cfg["clients"]):
            barrier = threading.Barrier(n)

            def one(_):
                barrier.wait()
                return stream_ttft(server.url, video, q, cfg["new_tokens"])

            t0 = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                runs = list(pool.map(one, range(n)))
            wall = time.perf_counter() - t0
            ttfts = [r["ttft_s"] for r in runs]
            tokens = sum(r["tokens"] for r in runs)
            out[f"{n}_clients"] = {"ttft_p50_s": pct(ttfts, 0.5), "ttft_p99_s": pct(ttfts, 0.99), "tokens": tokens,
                                   "wall_s": wall, "tokens_per_s": tokens / wall}
        out["throughput_ratio"] = out[f"{cfg['clients']}_clients"]["tokens_per_s"] / max(1e-9, out["1_clients"]["tokens_per_s"])
    finally:
        server.stop()
    res["concurrent"] = out


def part_mini(cfg: dict, res: dict, work: Path, video: Path, tiny: bool) -> None:
    import gc

    import torch

    qa = build("mini", tiny)
    q = "what happens in this video?"
    server, ready_s = serve(qa, work / "store-mini", [work], cfg["frames"])
    try:
        cold = stream_ttft(server.url, video, q, cfg["new_tokens"])
        runs = [stream_ttft(server.url, video, q, cfg["new_tokens"]) for _ in range(cfg["repeats"])]
        memory = server.engine.memory.stats()  # the tiers' budgets and use: is the K/V cache on the GPU?
        cached = [c for tier in (server.engine.memory.gpu, server.engine.memory.host) for c in tier.values()]
        mini_bytes = cached[0].bytes_per_frame if cached else None
    finally:
        server.stop()
    # the pre-fusion runs every prompt token once per frame: its cost scales with this count, which the
    # tiny test tokenizer (one token per character or so) makes ~4x what Llama-3.1's tokenizer gives
    res["mini"] = {"frames": cold["frames"], "prompt_tokens": len(qa.method.prompt_ids(q)),
                   "time_to_ready_s": ready_s, "cold_index_request": cold,
                   "cache_bytes_per_frame": mini_bytes, "memory": memory,
                   "first_stored_request": runs[0], "tenth_request": runs[-1],
                   "ttft_median_s": statistics.median(r["ttft_s"] for r in runs)}
    del qa, server
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def part_search(qa, work: Path, cfg: dict, res: dict) -> None:
    import httpx
    import numpy as np
    import torch
    from types import SimpleNamespace

    from vidqa import library, search
    from vidqa.store import Store
    from vidqa.video import Sampling

    n = cfg["search_videos"]
    folder = work / "library"
    folder.mkdir(exist_ok=True)
    store = Store(work / "store-search")
    sampling = Sampling(fps=1.0)
    frames = SimpleNamespace(pixels=np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8),
                             timestamps=[i + 0.5 for i in range(8)], indices=list(range(8)))
    cache = qa.compress(frames).to("cpu")
    settings = library.cache_settings(qa, sampling)
    t0 = time.perf_counter()
    videos = []
    for i in range(n):  # distinct files (the store keys on content); the store never decodes them
        v = folder / f"v{i:05d}.mp4"
        v.write_bytes(i.to_bytes(8, "little") * 16)
        library.put(store, store.key(v, settings), v, settings, cache, frames, qa.model_id)
        videos.append(v)
    store_s = time.perf_counter() - t0
    server, _ = serve(qa, work / "store-search", [work], 8)
    try:
        body = {"query": "a red circle", "videos": [v.as_uri() for v in videos], "top_k": 5}
        t0 = time.perf_counter()
        r = httpx.post(server.url + "/v1/search", json=body, timeout=600)
        first_s = time.perf_counter() - t0
        assert r.status_code == 200, r.text[:300]
        t0 = time.perf_counter()
        r = httpx.post(server.url + "/v1/search", json=body, timeout=600)
        second_s = time.perf_counter() - t0
    finally:
        server.stop()
    on_gpu = [(str(v), cache.to(qa.device)) for v in videos]
    search.rank(qa, on_gpu[:8], "a red circle")  # warm
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    search.rank(qa, on_gpu, "a red circle", top_k=5)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    rank_s = time.perf_counter() - t0

    def timed(fn):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out, time.perf_counter() - t

    # where the time of one search goes: store reads (page cache, thread pool), scoring, evidence
    named, read_s = timed(lambda: search.indexed(qa, store, videos, sampling)[0])
    probes = search.probes_for("a red circle", qa.model_id)
    scores, score_s = timed(lambda: search.score_probes(qa, [c for _, c in named], probes))
    top = [named[i][1] for i in sorted(range(len(named)), key=lambda i: -scores[i])[:5]]
    _, evidence_s = timed(lambda: search.frame_evidence(qa, top, probes))
    res["search"] = {"videos": n, "frames_per_video": 8, "store_write_s": store_s, "http_first_s": first_s,
                     "http_second_s": second_s, "rank_in_gpu_memory_s": rank_s, "read_s": read_s,
                     "score_s": score_s, "evidence_s": evidence_s, "read_workers": search.read_workers(),
                     "cache_mb_per_video": cache.nbytes / 2**20, "top": r.json()["data"][:1]}


def compile_counters() -> dict:
    """What torch compiled in this process: graphs traced by dynamo, and inductor's FX graph cache
    hits and misses (a miss is a graph compiled from scratch; a hit was loaded from the cache)."""
    from torch._dynamo.utils import counters

    ind, aot = counters["inductor"], counters["aot_autograd"]
    return {"graphs": int(counters["stats"]["unique_graphs"]), "fx_cache_hits": int(ind["fxgraph_cache_hit"]),
            "fx_cache_misses": int(ind["fxgraph_cache_miss"]), "fx_cache_bypasses": int(ind["fxgraph_cache_bypass"]),
            "autograd_cache_hits": int(aot["autograd_cache_hit"]), "autograd_cache_misses": int(aot["autograd_cache_miss"])}


def cpu_probe() -> None:
    """On the CPU vidqa compiles nothing (its compiled kernels are CUDA-only): compile one small function
    the way they are compiled, so that a CPU run still shows whether the second start recompiles."""
    import torch

    def step(x, w):
        return torch.nn.functional.silu(x @ w) * x

    torch.compile(step, dynamic=False)(torch.randn(4, 8), torch.randn(8, 8))


def start_once(args) -> None:
    """One fresh start with compile on (a child process of the compile part): build, warm up, report."""
    from vidqa.serve import compile as compile_cache

    base = compile_cache.use_cache_dir(args.compile_root)
    os.environ["VIDQA_COMPILE"] = "1"
    t0 = time.perf_counter()
    loaded = compile_cache.load(base)
    qa = build("voco", args.tiny)
    build_s = time.perf_counter() - t0
    from vidqa.serve.engine import Engine

    engine = Engine(qa, None, allow_roots=[Path.cwd()], warmup_frames=args.frames)
    warm_s = engine.warm_up()
    probe = qa.device.type != "cuda"
    if probe:  # counted in the warm-up: a CPU server would compile it there
        t1 = time.perf_counter()
        cpu_probe()
        warm_s += time.perf_counter() - t1
    saved = compile_cache.save(base, qa.device)
    c = compile_counters()
    print(json.dumps({"build_s": build_s, "warmup_s": warm_s, "ready_s": build_s + warm_s, "artifacts_loaded": loaded,
                      "artifacts_saved": saved, "cpu_probe": probe, **c,
                      "recompiled": c["fx_cache_misses"] > 0}))


def part_compile(args, cfg: dict, res: dict, out: Path) -> None:
    root = out / "compile-cache"
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
    starts = []
    for _ in range(2):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--start-once", "--compile-root", str(root),
               "--frames", str(cfg["frames"])] + (["--tiny"] if args.tiny else [])
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        if p.returncode != 0:
            raise RuntimeError(f"start failed:\n{p.stderr[-3000:]}")
        starts.append(json.loads(p.stdout.strip().splitlines()[-1]))
    res["compile"] = {"first_start": starts[0], "second_start": starts[1],
                      "warmup_speedup": starts[0]["warmup_s"] / max(1e-9, starts[1]["warmup_s"]),
                      "second_recompiled": starts[1]["recompiled"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="small shapes and sizes, for a CPU smoke run")
    ap.add_argument("--out", default=None, help="folder for serve_speed.json (and the compile caches)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--frames", type=int, default=None, help=f"{FULL['frames']} ({TINY['frames']} with --tiny)")
    ap.add_argument("--search-videos", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--start-once", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compile-root", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cfg = dict(TINY if args.tiny else FULL)
    for k in ("frames", "search_videos", "new_tokens"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    if args.start_once:
        args.frames = cfg["frames"]
        return start_once(args)
    from vidqa.checkpoint import quiet_transformers

    quiet_transformers()
    import torch

    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts: {', '.join(sorted(unknown))}")
    out = Path(args.out or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    res = {"tiny": args.tiny, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", **cfg}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        video = write_video(work / "long.mp4", cfg["frames"])
        if {"ttft", "concurrent", "search"} & set(parts):
            qa = build("voco", args.tiny)
            if "ttft" in parts:
                part_ttft(qa, work, cfg, res, video)
            if "concurrent" in parts:
                part_concurrent(qa, work, cfg, res, video)
            if "search" in parts:
                part_search(qa, work, cfg, res)
            del qa
        if "mini" in parts:
            part_mini(cfg, res, work, video, args.tiny)
    if "compile" in parts:
        part_compile(args, cfg, res, out)
    (out / "serve_speed.json").write_text(json.dumps(res, indent=1))
    t = res.get("ttft")
    if t:
        print(f"ttft: {t['frames']} frames, warm median {1000 * t['warm_ttft_median_s']:.1f} ms, first request "
              f"{1000 * t['first_request']['ttft_s']:.1f} ms, tenth {1000 * t['tenth_request']['ttft_s']:.1f} ms, "
              f"ready after {t['time_to_ready_s']:.1f} s")
    c = res.get("concurrent")
    if c:
        k = f"{cfg['clients']}_clients"
        print(f"concurrent: {cfg['clients']} clients TTFT p50 {1000 * c[k]['ttft_p50_s']:.1f} ms p99 "
              f"{1000 * c[k]['ttft_p99_s']:.1f} ms, {c[k]['tokens_per_s']:.1f} tokens/s vs "
              f"{c['1_clients']['tokens_per_s']:.1f} for one client")
    m = res.get("mini")
    if m:
        last = m["tenth_request"]
        print(f"mini: {m['frames']} stored frames, TTFT median {1000 * m['ttft_median_s']:.1f} ms (last request, "
              f"server: copy {1000 * (last['server_copy_s'] or 0):.1f} ms, prefill {1000 * (last['server_prefill_s'] or 0):.1f} "
              f"ms, first token {1000 * (last['server_first_token_s'] or 0):.1f} ms; cache on the {last['frames_on']}, "
              f"{(m['cache_bytes_per_frame'] or 0) / 1e6:.2f} MB/frame)")
    s = res.get("search")
    if s:
        print(f"search: {s['videos']} videos, HTTP {s['http_first_s']:.2f} s first / {s['http_second_s']:.2f} s second, "
              f"rank alone {s['rank_in_gpu_memory_s']:.2f} s")
    cc = res.get("compile")
    if cc:
        a, b = cc["first_start"], cc["second_start"]
        print(f"compile: ready after {a['ready_s']:.1f} s (first start: {a['graphs']} graphs, {a['fx_cache_misses']} "
              f"compiled, {a['fx_cache_hits']} from the cache), {b['ready_s']:.1f} s (second: {b['fx_cache_misses']} "
              f"compiled, {b['fx_cache_hits']} from the cache; {'recompiled' if b['recompiled'] else 'no recompilation'})"
              + (" [CPU: a probe function; vidqa compiles on CUDA only]" if a["cpu_probe"] else ""))
    print(f"wrote {out / 'serve_speed.json'}")


if __name__ == "__main__":
    main()
