"""`vidqa serve`: keep a model resident behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vidqa.cli import common
from vidqa.cli import params as P
from vidqa.cli.writers import err
from vidqa.errors import VidqaError

HELP = """Load a model once and answer questions over HTTP, OpenAI-style (POST /v1/chat/completions).

Messages carry the video as a content part {"type": "video_url", "video_url": {"url": "file:///abs/path.mp4"}}
(or image_url) plus text; fps, num_frames, max_frames, start and end go as extra body fields. Also
GET /v1/models, POST /v1/search and GET /health (ready once warm-up is done). Weights, CUDA graphs
and compiled code stay warm; hot frame caches stay in GPU and host memory (least recently used out
first), on top of the cache store. Listens on 127.0.0.1 unless --host says otherwise; a request may
only read files under --allow-root folders (default: the current folder). `vidqa ask` and `vidqa chat`
use a running server with --server URL or VIDQA_SERVER.
"""

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def gpu_budget(value: str) -> int | None:
    """``--cache-gpu-gb``: None for auto (decided after warm-up), else bytes."""
    if value.strip().lower() == "auto":
        return None
    try:
        gb = float(value)
    except ValueError:
        gb = -1.0
    if not gb >= 0:  # also NaN
        raise VidqaError(f"--cache-gpu-gb {value}: give a number of GB (0 or more) or auto")
    return int(gb * 2**30)


def serve(
    model: P.Model = None, method: P.Method = None, vision_tower: P.VisionTower = None,
    tokens_per_frame: P.TokensPerFrame = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface; then use --api-key).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(envvar="VIDQA_API_KEY", show_default=False,
                                                   help="Require Authorization: Bearer KEY on /v1 routes.")] = None,
    allow_root: Annotated[Optional[list[str]], typer.Option(show_default=False,
                                                            help="A folder requests may read files under (repeatable; default: the current folder).")] = None,
    cache_gpu_gb: Annotated[str, typer.Option(help="GPU memory for hot frame caches, GB, or auto: 60% of the GPU "
                                                   "memory free after warm-up (the rest is for activations).")] = "auto",
    cache_host_gb: Annotated[float, typer.Option(min=0.0, help="Host memory for hot frame caches, GB.")] = 16.0,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body, MB.")] = 1.0,
    warmup_frames: Annotated[int, typer.Option(min=0, help="Frames of the warm-up question (0: no warm-up).")] = 1000,
    preload: Annotated[int, typer.Option(min=0, help="Before ready, read up to N of this model's newest stored frame "
                                                     "caches into memory (within the cache budgets).")] = 32,
    no_preload: Annotated[bool, typer.Option("--no-preload", help="Read no stored caches at start.")] = False,
    decoder: P.Decoder = "auto", device: P.Device = "auto", dtype: P.Dtype = "auto", batch_size: P.BatchSize = None,
    quantize: P.Quantize = "none", cache_dtype: P.CacheDtype = "auto",
    cache_dir: P.CacheDir = None, no_cache: P.NoCache = False,
):
    from pathlib import Path

    cache = P.cache_options(cache_dir, no_cache)
    gpu_bytes = gpu_budget(cache_gpu_gb)
    from vidqa.serve import compile as compile_cache  # before torch compiles anything

    compile_dir = compile_cache.use_cache_dir(P.cache_options(cache_dir).root)
    try:
        import uvicorn  # noqa: F401
        import fastapi  # noqa: F401
    except ImportError:
        raise VidqaError("vidqa serve needs its extra: pip install 'vidqa[serve]'")
    from vidqa import library
    from vidqa.serve.engine import Engine
    from vidqa.serve.schema import Limits
    from vidqa.serve.server import Server

    if host not in LOOPBACK and not api_key:
        err.print(f"[yellow]warning:[/yellow] listening on {host} without --api-key: anyone who can reach it can use it",
                  soft_wrap=True)
    roots = [Path(r) for r in (allow_root or [])]
    for r in roots:
        if not r.expanduser().is_dir():
            raise VidqaError(f"--allow-root {r}: no such folder")
    compute = P.compute_options(device, dtype, batch_size, quantize, cache_dtype)
    compile_cache.load(compile_dir, None)
    qa = common.load(P.model_options(model, method, vision_tower, tokens_per_frame), compute)
    engine = Engine(qa, library.open_store(cache), allow_roots=roots or None,
                    cache_gpu_bytes=gpu_bytes, cache_host_bytes=int(cache_host_gb * 2**30),
                    decoder=decoder, batch_size=compute.batch_size, warmup_frames=warmup_frames,
                    preload=0 if no_preload else preload)
    try:
        server = Server(engine, host, port, api_key=api_key, max_body_bytes=int(max_body_mb * 2**20), limits=Limits(),
                        log_level="warning")
    except OSError as e:
        raise VidqaError(f"cannot listen on {host}:{port}: {e.strerror or e}")
    err.print(f"vidqa serve: {qa.model_id} on {server.url} (warming up; GET /health says when ready); "
              f"files under {', '.join(map(str, engine.allow_roots))}", soft_wrap=True)

    def warm():
        engine.warm_up()
        if compute.compile:
            compile_cache.save(compile_dir, qa.device)
        mem = engine.memory.stats()
        err.print(f"ready after {engine.warmup_s:.1f} s of warm-up; {len(engine.preloaded)} stored caches preloaded; "
                  f"frame cache budgets {mem['gpu_budget'] / 2**30:.1f} GB GPU, {mem['host_budget'] / 2**30:.1f} GB host",
                  soft_wrap=True)

    import threading

    threading.Thread(target=warm, name="vidqa-warmup", daemon=True).start()
    server.serve_forever(warm_up=False)
