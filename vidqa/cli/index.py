"""`vidqa index`: compute and store the per-frame caches of many videos ahead of the questions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vidqa.cli import common
from vidqa.cli import params as P
from vidqa.cli.common import relaunch_on_gpus
from vidqa.cli.writers import err, error_line, escape, get_writer, live_progress
from vidqa.options import DistEnv

HELP = """Precompute and store the per-frame caches of videos, so questions on them are instant.

PATHS are video files or folders (searched recursively for video files). Each video is decoded,
compressed and stored for this model, method and sampling; finished videos are skipped on a rerun,
and an interrupted run loses no finished video. Unreadable videos are listed at the end and make the
exit code 1. Several processes may index the same folder at once: a per-video lock keeps them from
doing the same work. On several GPUs: `vidqa index --gpus 2 ...`, or
`torchrun --nproc-per-node 2 -m vidqa index ...` (each rank takes its share of the videos).
"""


def index(
    paths: Annotated[list[str], typer.Argument(help="Video files and folders.", show_default=False)],
    model: P.Model = None, method: P.Method = None, vision_tower: P.VisionTower = None,
    tokens_per_frame: P.TokensPerFrame = None, fps: P.Fps = 1.0, num_frames: P.NumFrames = None,
    max_frames: P.MaxFrames = None, start: P.Start = None, end: P.End = None, decoder: P.Decoder = "auto",
    device: P.Device = "auto", dtype: P.Dtype = "auto", batch_size: P.BatchSize = None,
    sampling_rule: P.SamplingRule = None, preprocess: P.PreprocessMode = None, quantize: P.Quantize = "none",
    cache_dtype: P.CacheDtype = "auto",
    cache_dir: P.CacheDir = None, gpus: P.Gpus = 1,
    as_json: P.json_flag("Print one JSON report instead of progress.") = False,
):
    from vidqa import library  # heavy (torch): imported when the command runs, not for `vidqa --help`

    common.quiet_native_logs()
    dist = DistEnv.from_env()
    relaunch_on_gpus(gpus, dist)
    out = get_writer(as_json)
    videos = library.find_videos(paths)[dist.rank::dist.world_size]
    sampling = P.sampling(fps, num_frames, max_frames, start, end, rule=sampling_rule, preprocess=preprocess)
    compute = P.compute_options(device, dtype, batch_size, quantize, cache_dtype).for_rank(dist)
    quiet = as_json or dist.rank > 0
    qa = common.load(P.model_options(model, method, vision_tower, tokens_per_frame), compute, quiet)
    store = library.open_store(P.cache_options(cache_dir))
    if quiet or not live_progress():
        report = library.index_videos(qa, store, videos, sampling, decoder=decoder, batch_size=compute.batch_size)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err) as progress:
            vids = progress.add_task("videos", total=len(videos))
            frames = progress.add_task("frames", total=None)
            report = library.index_videos(
                qa, store, videos, sampling, decoder=decoder, batch_size=compute.batch_size,
                on_start=lambda v, n: progress.reset(frames, total=n, description=f"frames of {escape(Path(v).name)}"),
                on_frames=lambda n: progress.advance(frames, n),
                on_done=lambda v, what: progress.advance(vids, 1))
    summary = report.as_dict()
    summary["rank"], summary["world_size"] = dist.rank, dist.world_size
    out.result(summary)
    idle = report.decode_wait_s / report.seconds if report.seconds else 0.0
    if not as_json:
        err.print(f"indexed {len(report.indexed)}, already cached {len(report.skipped)}, failed {len(report.failed)}; "
                  f"{report.frames} frames at {report.frames_per_second:.1f} frames/s; "
                  f"waited {100 * idle:.0f}% of the time for decoding; store: {store.root}", soft_wrap=True, markup=False)
        for video_path, message in report.failed:
            error_line(f"{video_path}: {message}", label="failed")
    if report.failed:
        raise typer.Exit(1)
