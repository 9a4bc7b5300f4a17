"""`vidqa search`: which indexed videos, and which moments in them, show something."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vidqa.cli import common
from vidqa.cli import params as P
from vidqa.cli.writers import get_writer, note
from vidqa.errors import VidqaError

HELP = """Rank indexed videos by how likely the model says they show QUERY.

Each video's stored cache (from `vidqa index`, same model and sampling) is asked "Does this video
show QUERY?"; the score is the probability of yes against no. The shown videos also get the times of
the frames that, each on its own, score highest. Videos not indexed are skipped with a note. Nothing
is decoded or compressed: run `vidqa index PATHS --model M` first.
"""


def search(
    query: Annotated[str, typer.Argument(help="What to look for, e.g. \"a red circle\".", show_default=False)],
    paths: Annotated[list[str], typer.Argument(help="Indexed video files and folders.", show_default=False)],
    model: P.Model = None, method: P.Method = None, vision_tower: P.VisionTower = None,
    tokens_per_frame: P.TokensPerFrame = None, fps: P.Fps = 1.0, num_frames: P.NumFrames = None,
    max_frames: P.MaxFrames = None, start: P.Start = None, end: P.End = None,
    top_k: Annotated[int, typer.Option(min=1, help="How many videos to show.")] = 5,
    template: Annotated[Optional[str], typer.Option(show_default=False,
                                                    help="The yes/no question, with {query} in it.")] = None,
    device: P.Device = "auto", dtype: P.Dtype = "auto", batch_size: P.BatchSize = None,
    quantize: P.Quantize = "none", cache_dtype: P.CacheDtype = "auto",
    cache_dir: P.CacheDir = None,
    as_json: P.json_flag("Print a JSON list of {video, score, times} instead.") = False,
):
    from vidqa import library
    from vidqa import search as S

    out = get_writer(as_json)
    videos = library.find_videos(paths)
    if not videos:
        raise VidqaError("no video files under the given paths")
    S.question_for(query, template=template or S.TEMPLATE)  # check the query and template before loading
    sampling = P.sampling(fps, num_frames, max_frames, start, end)
    compute = P.compute_options(device, dtype, batch_size, quantize, cache_dtype)  # the store keys on both
    qa = common.load(P.model_options(model, method, vision_tower, tokens_per_frame), compute, as_json)
    named, missing = S.indexed(qa, library.open_store(P.cache_options(cache_dir)), videos, sampling)
    if not named:
        raise VidqaError(f"none of the {len(videos)} videos is indexed for this model and sampling: "
                         "run `vidqa index PATHS --model M` first")
    if missing:
        note(f"{len(missing)} of {len(videos)} videos are not indexed for this model and sampling (skipped); "
             "`vidqa index` them to include them")
    hits = S.rank(qa, named, query, top_k=top_k, template=template, batch_size=compute.batch_size)
    if out.json:
        out.result([h.as_dict() for h in hits])
        return
    from rich.table import Table

    table = Table(title=f"videos showing {query!r}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("video")
    table.add_column("score", justify="right")
    table.add_column("times (s)")
    for i, h in enumerate(hits, 1):
        table.add_row(str(i), h.video, f"{h.score:.3f}", ", ".join(f"{t:.1f}" for t in h.times))
    out.result([h.as_dict() for h in hits], table)
    out.summary(f"{len(named)} indexed videos scored with {qa.model_id}")
