"""`vidqa ask`: one question about one video, the answer streamed."""

from __future__ import annotations

import itertools
import time
from typing import Annotated

import typer

from vidqa.cli import common, remote
from vidqa.cli import params as P
from vidqa.cli.writers import get_writer, note


def ask(
    video: Annotated[str, typer.Argument(help="Video file (mp4, mkv, webm, avi, ...) or an image.", show_default=False)],
    question: Annotated[str, typer.Argument(help="The question, in quotes.", show_default=False)],
    model: P.Model = None, method: P.Method = None, vision_tower: P.VisionTower = None,
    tokens_per_frame: P.TokensPerFrame = None, fps: P.Fps = 1.0, num_frames: P.NumFrames = None,
    max_frames: P.MaxFrames = None, start: P.Start = None, end: P.End = None, decoder: P.Decoder = "auto",
    max_new_tokens: P.MaxNewTokens = 256, temperature: P.Temperature = 0.0, top_p: P.TopP = 1.0,
    seed: P.Seed = None, device: P.Device = "auto", dtype: P.Dtype = "auto", batch_size: P.BatchSize = None,
    sampling_rule: P.SamplingRule = None, preprocess: P.PreprocessMode = None, quantize: P.Quantize = "none",
    cache_dtype: P.CacheDtype = "auto",
    cache_dir: P.CacheDir = None, no_cache: P.NoCache = False, server: remote.Server = None,
    as_json: P.json_flag("Print one JSON object (answer, frames, timings) instead.") = False,
):
    """Stream an answer about VIDEO to the terminal.

    Frames are sampled (default 1 per second), compressed to a few tokens each, concatenated in time
    order, and the model answers from that. A video indexed with `vidqa index` (same model and
    sampling) is answered from its stored caches without running the vision tower. If the frames do
    not fit the model's context with the question, fewer frames are used, uniformly, with a note on
    stderr.
    """
    if server:  # a running `vidqa serve` answers (cli/remote.py)
        return remote.ask(server, video, question, as_json=as_json, fps=fps, num_frames=num_frames, max_frames=max_frames,
                             start=start, end=end, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    from vidqa import library  # heavy (torch): imported when the command runs, not for `vidqa --help`
    from vidqa.generate import DecodeStats
    from vidqa.pipeline import Timings
    from vidqa.video import probe

    t_start = time.perf_counter()
    common.quiet_native_logs()
    out = get_writer(as_json)
    question = P.question(question)  # every option is checked before the video is opened or the model loaded
    gen = P.generation(max_new_tokens, temperature, top_p, seed)
    sampling = P.sampling(fps, num_frames, max_frames, start, end, rule=sampling_rule, preprocess=preprocess)
    compute = P.compute_options(device, dtype, batch_size, quantize, cache_dtype)
    model_opts = P.model_options(model, method, vision_tower, tokens_per_frame)
    info = probe(video)  # fail on a bad file before the model is loaded
    qa = common.load(model_opts, compute, as_json)
    budget = qa.max_frames(question, max_new_tokens)
    timings, stats = Timings(), DecodeStats()
    with out.progress() as progress:
        t0 = time.perf_counter()
        cache, hit = library.video_cache(qa, video, sampling, info, budget,
                                         store=library.open_store(P.cache_options(cache_dir, no_cache)),
                                         decoder=decoder, batch_size=compute.batch_size, timings=timings,
                                         progress=progress, on_note=note)
        cache_s = time.perf_counter() - t0
        progress.stage("reading the frames and the question")
        pieces = qa.answer(cache, question, gen, stats)
        first = next(pieces, None)  # the prefill: the status stays up until the first token
    answer = out.answer(itertools.chain([first] if first is not None else [], pieces))
    indices = cache.meta.get("frame_indices") or [None] * cache.num_frames
    report = {
        "answer": answer,
        "video": video,
        "question": question,
        "model": qa.model_id,
        "method": qa.method.name,
        "tokens_per_frame": qa.method.tokens_per_frame,
        "frames": [{"index": i, "time": round(float(t), 3)} for i, t in zip(indices, cache.timestamps)],
        "decoder": "image" if info.is_image else None,
        "from_cache": hit,
        "kv_bytes_per_frame": cache.bytes_per_frame,
        "device": str(qa.device),
        "dtype": str(qa.vision.dtype).replace("torch.", ""),
        "stopped": stats.stopped,
        "timings": {
            "frames_s": round(cache_s, 4),
            "vision_s": round(timings.vision_s, 4),
            "compress_s": round(timings.compress_s, 4),
            "compress_ms_per_frame": round(1000 * (timings.vision_s + timings.compress_s) / max(1, timings.frames), 3),
            "time_to_first_token_s": round(stats.prefill_s, 4),
            "ms_per_token": round(stats.ms_per_token, 3),
            "answer_tokens": stats.tokens,
            "total_s": round(time.perf_counter() - t_start, 4),
        },
    }
    out.result(report)
    source = "from the cache store" if hit else f"compressed at {report['timings']['compress_ms_per_frame']:.1f} ms/frame"
    out.summary(f"{cache.num_frames} frames x {qa.method.tokens_per_frame} tokens ({qa.method.name}), {source}, "
                f"first token {1000 * stats.prefill_s:.0f} ms, {stats.ms_per_token:.1f} ms/token")
