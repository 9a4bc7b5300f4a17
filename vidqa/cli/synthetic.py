"""`vidqa synthetic`: write synthetic video-QA clips and their annotations (``vidqa.synthetic``)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer


def synthetic(
    out_dir: Annotated[str, typer.Argument(help="Folder for videos/, {split}_qa.json and the summaries.",
                                           show_default=False)],
    videos: Annotated[int, typer.Option(help="Number of clips.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of every clip's timeline and questions.")] = 0,
    first_index: Annotated[int, typer.Option(help="Index of the first clip.")] = 0,
    size: Annotated[int, typer.Option(help="Frame side in pixels (even).")] = 112,
    fps: Annotated[float, typer.Option(help="Frames per second of the mp4s.")] = 4,
    seconds: Annotated[int, typer.Option(help="Length of each clip, in seconds.")] = 8,
    split: Annotated[str, typer.Option(help="Writes {split}_qa.json.")] = "test",
    per_category: Annotated[int, typer.Option(help="Questions per category per clip.")] = 1,
    workers: Annotated[Optional[int], typer.Option(
        help="Processes that render and encode (default: up to 4 CPUs; 1 = in this process).",
        show_default=False)] = None,
    no_videos: Annotated[bool, typer.Option("--no-videos", help="Write the annotations only.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Write synthetic video-QA clips (mp4) and MSRVTT-style annotations, then print a summary
    (question counts per category and the majority baselines)."""
    from vidqa.synthetic import format_summary, generate  # numpy, PyAV: not for `vidqa --help`

    summary = generate(out_dir, videos, seed=seed, size=size, fps=fps, seconds=seconds, split=split,
                       first_index=first_index, per_category=per_category, workers=workers,
                       write_videos=not no_videos)
    print(json.dumps(summary, indent=1) if as_json else format_summary(summary))
