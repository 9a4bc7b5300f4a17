"""The command line: ``vidqa ask``, and the commands still to come.

Rendering only: every decision about frames, caches and decoding lives in the modules it calls.
Bad input ends in one line on stderr (``error: ...``) and a non-zero exit, never a traceback;
set ``VIDQA_DEBUG=1`` to see the traceback of an unexpected failure.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.text import Text

from vidqa import __version__
from vidqa.errors import VidqaError

app = typer.Typer(
    name="vidqa",
    help="Answer questions about videos with compressed per-frame caches (VoCo-LLaMA, LLaVA-Mini).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
err = Console(stderr=True, highlight=False)
EXIT_NOT_BUILT = 2

MODEL_HELP = ("Checkpoint: a local directory, a hub id (HF cache; HF_HUB_OFFLINE=1 works offline), or a built-in "
              "demo model for synthetic shape clips: tiny-voco, tiny-mini. "
              "Defaults to $VIDQA_MODEL.")


def _version(value: bool):
    if value:
        print(f"vidqa {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                              help="Print the version and exit.")):
    """Answer questions about videos. Each frame is compressed to a few tokens on the GPU, once;
    questions then run against the tiny per-frame caches.

    [bold]Examples[/bold]

      vidqa ask movie.mp4 "what happens after the door opens?" --model DIR
      vidqa ask clip.mp4 "how many people?" --fps 2 --max-frames 64 --json
    """


# Options shared by the commands that load a model and sample frames.
MODEL = typer.Option(None, "--model", "-m", envvar="VIDQA_MODEL", help=MODEL_HELP)
METHOD = typer.Option(None, help="voco or mini. Default: what the checkpoint's config says.")
VISION_TOWER = typer.Option(None, help="Override the config's mm_vision_tower (dir or hub id).")
TOKENS = typer.Option(None, help="VoCo tokens per frame. Default: config voco_num, or 2.")
FPS = typer.Option(1.0, help="Frames per second to sample (segment midpoints).")
NUM_FRAMES = typer.Option(None, help="Sample exactly this many frames, uniformly (overrides --fps).")
MAX_FRAMES = typer.Option(None, help="Cap on frames; more are thinned out uniformly.")
START = typer.Option(None, help="Start of the window, in seconds.")
END = typer.Option(None, help="End of the window, in seconds.")
DECODER = typer.Option("auto", help="auto (decord, PyAV on failure), decord or av.")
DEVICE = typer.Option("auto", help="auto, cpu, cuda or cuda:N.")
DTYPE = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32.")
BATCH = typer.Option(None, min=1, help="Frames compressed per batch (16 on GPU, 4 on CPU).")
CACHE_DIR = typer.Option(None, envvar="VIDQA_CACHE_DIR",
                         help="Cache store (default: $XDG_CACHE_HOME/vidqa or ~/.cache/vidqa).")
NO_CACHE = typer.Option(False, "--no-cache", help="Neither read nor write the cache store.")
MAX_NEW = typer.Option(256, min=1, help="Longest answer, in tokens.")
TEMPERATURE = typer.Option(0.0, min=0.0, help="0 decodes greedily; above 0 samples.")
TOP_P = typer.Option(1.0, min=0.0, max=1.0, help="Nucleus sampling mass (with --temperature > 0).")
SEED = typer.Option(None, help="Seed for sampling, for repeatable answers.")


def _load(model, device, dtype, method, vision_tower, tokens_per_frame, quiet: bool):
    from vidqa.pipeline import VideoQA

    if not model:
        raise VidqaError("no model given: pass --model DIR_OR_HUB_ID or set VIDQA_MODEL")
    with err.status("loading model", spinner="dots") if not quiet else _nullcontext():
        return VideoQA.from_pretrained(model, device=device, dtype=dtype, method=method, vision_tower=vision_tower,
                                       tokens_per_frame=tokens_per_frame)


def _video_cache(qa, video, sampling, info, budget, *, store, decoder, batch_size, timings):
    """The video's frame cache, from the store if it has it, thinned to ``budget`` frames if needed."""
    import dataclasses

    from vidqa.library import load_or_compress, thin
    from vidqa.video import plan

    planned = len(plan(info, sampling))
    if planned > budget:
        err.print(f"note: {planned} frames do not fit the context with this question; using {budget}, "
                  "sampled uniformly", soft_wrap=True)
        if store is not None:  # an indexed cache of the full sampling serves, thinned
            from vidqa.library import cache_settings

            settings = cache_settings(qa, sampling)
            full = store.get(store.key(video, settings), settings)
            if full is not None:
                return thin(full, budget), True
        sampling = dataclasses.replace(sampling, max_frames=budget)
    cache, _, hit = load_or_compress(qa, video, sampling, store=store, decoder=decoder, batch_size=batch_size,
                                     timings=timings)
    return thin(cache, budget), hit


def _store(cache_dir, no_cache):
    if no_cache:
        return None
    from vidqa.store import Store

    return Store(cache_dir)


def _stream(pieces_source, as_json: bool) -> str:
    """Render an answer as it is generated: rich live view on a terminal, plain text into a pipe."""
    pieces: list[str] = []
    if as_json:
        pieces = list(pieces_source)
    elif not sys.stdout.isatty():  # a pipe: plain streamed text, no terminal control codes
        for piece in pieces_source:
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()  # before the stats line on stderr
    else:
        with Live(Text(""), console=Console(), refresh_per_second=20, transient=False) as live:
            for piece in pieces_source:
                pieces.append(piece)
                live.update(Text("".join(pieces)))
    return "".join(pieces).strip()


@app.command()
def ask(
    video: str = typer.Argument(..., help="Video file (mp4, mkv, webm, avi, ...) or an image."),
    question: str = typer.Argument(..., help="The question, in quotes."),
    model: Optional[str] = MODEL, method: Optional[str] = METHOD, vision_tower: Optional[str] = VISION_TOWER,
    tokens_per_frame: Optional[int] = TOKENS, fps: float = FPS, num_frames: Optional[int] = NUM_FRAMES,
    max_frames: Optional[int] = MAX_FRAMES, start: Optional[float] = START, end: Optional[float] = END,
    decoder: str = DECODER, max_new_tokens: int = MAX_NEW, temperature: float = TEMPERATURE,
    top_p: float = TOP_P, seed: Optional[int] = SEED, device: str = DEVICE, dtype: str = DTYPE,
    batch_size: Optional[int] = BATCH, cache_dir: Optional[str] = CACHE_DIR, no_cache: bool = NO_CACHE,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (answer, frames, timings) instead."),
):
    """Stream an answer about VIDEO to the terminal.

    Frames are sampled (default 1 per second), compressed to a few tokens each, concatenated in time
    order, and the model answers from that. A video indexed with `vidqa index` (same model and
    sampling) is answered from its stored caches without running the vision tower. If the frames do
    not fit the model's context with the question, fewer frames are used, uniformly, with a note on
    stderr.
    """
    from vidqa.generate import DecodeStats, GenerationConfig
    from vidqa.pipeline import Timings
    from vidqa.video import Sampling, probe

    t_start = time.perf_counter()
    info = probe(video)  # fail on a bad file before the model is loaded
    sampling = Sampling(fps=fps, num_frames=num_frames, max_frames=max_frames, start=start, end=end)
    qa = _load(model, device, dtype, method, vision_tower, tokens_per_frame, as_json)
    budget = qa.max_frames(question, max_new_tokens)
    timings = Timings()
    t0 = time.perf_counter()
    cache, hit = _video_cache(qa, video, sampling, info, budget, store=_store(cache_dir, no_cache),
                              decoder=decoder, batch_size=batch_size, timings=timings)
    cache_s = time.perf_counter() - t0
    stats = DecodeStats()
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    answer = _stream(qa.answer(cache, question, gen, stats), as_json)
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
    if as_json:
        print(json.dumps(report))
    else:
        source = "from the cache store" if hit else f"compressed at {report['timings']['compress_ms_per_frame']:.1f} ms/frame"
        err.print(f"[dim]{cache.num_frames} frames x {qa.method.tokens_per_frame} tokens ({qa.method.name}), {source}, "
                  f"first token {1000 * stats.prefill_s:.0f} ms, {stats.ms_per_token:.1f} ms/token[/dim]", soft_wrap=True)


@app.command()
def chat(
    video: str = typer.Argument(..., help="Video file or image to talk about."),
    model: Optional[str] = MODEL, method: Optional[str] = METHOD, vision_tower: Optional[str] = VISION_TOWER,
    tokens_per_frame: Optional[int] = TOKENS, fps: float = FPS, num_frames: Optional[int] = NUM_FRAMES,
    max_frames: Optional[int] = MAX_FRAMES, start: Optional[float] = START, end: Optional[float] = END,
    decoder: str = DECODER, max_new_tokens: int = MAX_NEW, temperature: float = TEMPERATURE,
    top_p: float = TOP_P, seed: Optional[int] = SEED, device: str = DEVICE, dtype: str = DTYPE,
    batch_size: Optional[int] = BATCH, cache_dir: Optional[str] = CACHE_DIR, no_cache: bool = NO_CACHE,
):
    """Ask several questions in a row about one video, compressed once.

    Questions are read one per line (type them, or pipe a file); an empty line, `exit` or Ctrl-D
    ends the chat. Earlier turns are kept in the prompt as the model's chat template expects; when
    they no longer fit the context, the oldest turns are dropped, with a note.
    """
    from vidqa.generate import GenerationConfig
    from vidqa.video import Sampling, probe

    info = probe(video)
    sampling = Sampling(fps=fps, num_frames=num_frames, max_frames=max_frames, start=start, end=end)
    qa = _load(model, device, dtype, method, vision_tower, tokens_per_frame, False)
    store = _store(cache_dir, no_cache)
    budget = qa.max_frames("", max_new_tokens)
    cache, hit = _video_cache(qa, video, sampling, info, budget, store=store, decoder=decoder,
                              batch_size=batch_size, timings=None)
    err.print(f"[dim]{cache.num_frames} frames ready{' (from the cache store)' if hit else ''}; "
              "ask away (empty line to end)[/dim]", soft_wrap=True)
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    history: list[tuple[str, str]] = []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            err.print("[bold]you>[/bold] ", end="")
        line = sys.stdin.readline()
        question = line.strip()
        if not line or not question or question in ("exit", "quit"):
            break
        while history:  # drop the oldest turns until the frames and the conversation fit
            try:
                if qa.max_frames(question, max_new_tokens, history) >= cache.num_frames:
                    break
            except VidqaError:
                pass
            history.pop(0)
            err.print("[dim]note: the oldest turn was dropped to fit the context[/dim]")
        if qa.max_frames(question, max_new_tokens, history) < cache.num_frames:
            from vidqa.library import thin

            turn_cache = thin(cache, qa.max_frames(question, max_new_tokens, history))
        else:
            turn_cache = cache
        answer = _stream(qa.answer(turn_cache, question, gen, history=history), False)
        history.append((question, answer))


index_help = """Precompute and store the per-frame caches of videos, so questions on them are instant.

PATHS are video files or folders (searched recursively for video files). Each video is decoded,
compressed and stored for this model, method and sampling; finished videos are skipped on a rerun,
and an interrupted run loses no finished video. Unreadable videos are listed at the end and make the
exit code 1. Several processes may index the same folder at once: a per-video lock keeps them from
doing the same work. On several GPUs: `vidqa index --gpus 2 ...`, or
`torchrun --nproc-per-node 2 -m vidqa index ...` (each rank takes its share of the videos).
"""


@app.command(help=index_help)
def index(
    paths: list[str] = typer.Argument(..., help="Video files and folders."),
    model: Optional[str] = MODEL, method: Optional[str] = METHOD, vision_tower: Optional[str] = VISION_TOWER,
    tokens_per_frame: Optional[int] = TOKENS, fps: float = FPS, num_frames: Optional[int] = NUM_FRAMES,
    max_frames: Optional[int] = MAX_FRAMES, start: Optional[float] = START, end: Optional[float] = END,
    decoder: str = DECODER, device: str = DEVICE, dtype: str = DTYPE, batch_size: Optional[int] = BATCH,
    cache_dir: Optional[str] = CACHE_DIR,
    gpus: int = typer.Option(1, min=1, help="Run on this many GPUs (launches torchrun)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON report instead of progress."),
):
    from vidqa.library import find_videos, index_videos
    from vidqa.store import Store
    from vidqa.video import Sampling

    if gpus > 1 and "LOCAL_RANK" not in os.environ:
        import subprocess

        args = [a for a in sys.argv[1:]]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={gpus}", "-m", "vidqa",
               *_without_gpus(args)]
        return_code = subprocess.call(cmd)
        raise typer.Exit(return_code)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and device == "auto":
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    videos = find_videos(paths)[rank::world]
    sampling = Sampling(fps=fps, num_frames=num_frames, max_frames=max_frames, start=start, end=end)
    quiet = as_json or rank > 0
    qa = _load(model, device, dtype, method, vision_tower, tokens_per_frame, quiet)
    store = Store(cache_dir)
    if quiet:
        report = index_videos(qa, store, videos, sampling, decoder=decoder, batch_size=batch_size)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err) as progress:
            vids = progress.add_task("videos", total=len(videos))
            frames = progress.add_task("frames", total=None)
            report = index_videos(
                qa, store, videos, sampling, decoder=decoder, batch_size=batch_size,
                on_start=lambda v, n: progress.reset(frames, total=n, description=f"frames of {Path(v).name}"),
                on_frames=lambda n: progress.advance(frames, n),
                on_done=lambda v, what: progress.advance(vids, 1))
    summary = report.as_dict()
    summary["rank"], summary["world_size"] = rank, world
    if as_json:
        print(json.dumps(summary))
    else:
        idle = report.decode_wait_s / report.seconds if report.seconds else 0.0
        err.print(f"indexed {len(report.indexed)}, already cached {len(report.skipped)}, failed {len(report.failed)}; "
                  f"{report.frames} frames at {report.frames_per_second:.1f} frames/s; "
                  f"waited {100 * idle:.0f}% of the time for decoding; store: {store.root}", soft_wrap=True)
        for video_path, message in report.failed:
            err.print(f"[red]failed:[/red] {video_path}: {message}", soft_wrap=True)
    if report.failed:
        raise typer.Exit(1)


def _without_gpus(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--gpus":
            skip = True
            continue
        if a.startswith("--gpus="):
            continue
        out.append(a)
    return out


cache_app = typer.Typer(help="Show, prune and check the cache store (see `vidqa index`).", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("ls")
def cache_ls(cache_dir: Optional[str] = CACHE_DIR,
             as_json: bool = typer.Option(False, "--json", help="One JSON list instead of a table.")):
    """List stored entries: video, frames, size, method, model."""
    import dataclasses

    from rich.table import Table

    from vidqa.store import Store

    store = Store(cache_dir)
    entries = store.entries()
    if as_json:
        print(json.dumps([dataclasses.asdict(e) for e in entries], default=str))
        return
    table = Table(title=f"{len(entries)} entries in {store.root}")
    for col in ("key", "video", "frames", "MB", "method", "model", "created"):
        table.add_column(col)
    for e in entries:
        table.add_row(e.key[:12], str(e.source), str(e.frames), f"{e.bytes / 1e6:.1f}", e.method, str(e.model)[:12],
                      str(e.created)[:19])
    Console().print(table)


@cache_app.command("rm")
def cache_rm(key: Optional[str] = typer.Argument(None, help="An entry's key (a unique prefix is enough)."),
             source: Optional[str] = typer.Option(None, help="Remove the entries of this video, or of every video under this folder."),
             older_than: Optional[float] = typer.Option(None, help="Remove entries older than this many days."),
             all_entries: bool = typer.Option(False, "--all", help="Remove everything."),
             cache_dir: Optional[str] = CACHE_DIR):
    """Remove entries by key, by video, by age, or all of them."""
    from datetime import timedelta

    from vidqa.store import Store

    if not (key or source or older_than is not None or all_entries):
        raise VidqaError("say what to remove: a KEY, --source PATH, --older-than DAYS or --all", exit_code=2)
    n = Store(cache_dir).remove(key, source=source, all=all_entries,
                                older_than=timedelta(days=older_than) if older_than is not None else None)
    err.print(f"removed {n} entr{'y' if n == 1 else 'ies'}")


@cache_app.command("verify")
def cache_verify(cache_dir: Optional[str] = CACHE_DIR,
                 repair: bool = typer.Option(True, help="Remove what is broken (--no-repair only lists it).")):
    """Check every entry's checksum and files; exit 1 if anything was wrong."""
    from vidqa.store import Store

    problems = Store(cache_dir).verify(repair=repair)
    for key, problem in problems:
        err.print(f"{key[:12]}: {problem}", soft_wrap=True)
    err.print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''}{' (repaired)' if problems and repair else ''}")
    if problems:
        raise typer.Exit(1)


bench_help = "\n\n".join([
    "Accuracy and efficiency on MSRVTT-QA, MSVD-QA, ActivityNet-QA or a synthetic set.",
    "DATASET is msrvtt, msvd, activitynet or synthetic; --data is its folder. The annotation format is detected "
    "(test_qa.json; test_q.json + test_a.json; a CSV with video_name, question, answer, question_id) and videos "
    "are found under their naming variants (video7010 or 7010, v_ prefix, any extension, in videos/, "
    "videos/all/, YouTubeClips/ ...). Each video is compressed once (or taken from the cache store, e.g. after "
    "`vidqa index` with the same sampling) and answers all its questions, greedily. Missing videos are counted, "
    "not fatal.",
    "Predictions go to OUT/predictions.jsonl, one line per question; a rerun continues where the last one "
    "stopped. Metrics: normalised exact match and gold-contained-in-prediction (lowercase, punctuation and "
    "a/an/the removed), per category where the data has one, and with --judge-model the Video-ChatGPT GPT-judge "
    "protocol (verdicts cached on disk). Efficiency: tokens and KV bytes per frame, compression frames/s, ms to "
    "first token, ms per token, peak GPU memory. OUT/report.json holds the report; a table closes the run.",
    "Scale: --limit N; --shard I/N, then --merge combines the parts; several GPUs: --gpus 2, or "
    "`torchrun --nproc-per-node 2 -m vidqa bench ...` (one part per rank; rank 0 prints the merged report).",
    "[bold]Examples[/bold]",
    "  vidqa bench msrvtt --data ~/data/MSRVTT-QA --model DIR --limit 500\n"
    "  vidqa bench msrvtt --data ~/data/MSRVTT-QA --model DIR --shard 0/4 --out runs/a\n"
    "  vidqa bench msrvtt --data ~/data/MSRVTT-QA --out runs/a --merge --judge-model gpt-3.5-turbo-0125",
])


@app.command(help=bench_help)
def bench(
    dataset: Optional[str] = typer.Argument(None, help="msrvtt, msvd, activitynet or synthetic.", show_default=False),
    data: Optional[str] = typer.Option(None, "--data", help="The dataset folder (annotations and videos)."),
    split: str = typer.Option("test", help="test or val (where the dataset has it)."),
    out: Optional[str] = typer.Option(None, "--out", "-o",
                                      help="Results folder (default: vidqa-bench/DATASET-SPLIT-MODELNAME)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N questions, in annotation order."),
    shard: Optional[str] = typer.Option(None, help="I/N: answer shard I of N only (split by video); --merge combines."),
    merge: bool = typer.Option(False, "--merge", help="Answer nothing: combine the prediction files in --out "
                                                      "into one report (judging them with --judge-model)."),
    prompt: Optional[str] = typer.Option(None, help="Template around each question; {question} is replaced. "
                                                    "Default: the question, a newline and 'Answer the question "
                                                    "using a single word or phrase.'; '{question}' asks it bare."),
    max_new_tokens: int = typer.Option(32, min=1, help="Longest answer, in tokens (greedy decoding)."),
    judge_model: Optional[str] = typer.Option(None, help="Also score with the Video-ChatGPT GPT-judge protocol, "
                                                         "with this model (recorded in the report)."),
    judge_url: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL (default "
                                                       "https://api.openai.com/v1); the key comes from "
                                                       "VIDQA_JUDGE_KEY or OPENAI_API_KEY."),
    judge_workers: int = typer.Option(8, min=1, help="Judge requests in flight at once."),
    model: Optional[str] = MODEL, method: Optional[str] = METHOD, vision_tower: Optional[str] = VISION_TOWER,
    tokens_per_frame: Optional[int] = TOKENS, fps: float = FPS, num_frames: Optional[int] = NUM_FRAMES,
    max_frames: Optional[int] = MAX_FRAMES, decoder: str = DECODER, device: str = DEVICE, dtype: str = DTYPE,
    batch_size: Optional[int] = BATCH, cache_dir: Optional[str] = CACHE_DIR, no_cache: bool = NO_CACHE,
    gpus: int = typer.Option(1, min=1, help="Run on this many GPUs (launches torchrun)."),
    as_json: bool = typer.Option(False, "--json", help="Print the final report as one JSON object."),
):
    from vidqa import bench as B

    if gpus > 1 and "LOCAL_RANK" not in os.environ:
        import subprocess

        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={gpus}", "-m", "vidqa",
               *_without_gpus(sys.argv[1:])]
        raise typer.Exit(subprocess.call(cmd))
    if dataset not in B.DATASETS:
        raise VidqaError(f"unknown dataset {dataset!r} (use {', '.join(B.DATASETS)})" if dataset else
                         f"name a dataset: vidqa bench {'|'.join(B.DATASETS)} --data DIR", exit_code=2)
    if not data:
        raise VidqaError("pass --data DIR: the dataset folder (annotations and videos)", exit_code=2)
    if judge_url and not judge_model:
        raise VidqaError("--judge-url needs --judge-model", exit_code=2)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    shard_t = B.parse_shard(shard)
    if world > 1:
        if shard_t:
            raise VidqaError("--shard and torchrun ranks do not mix: each rank takes its own shard", exit_code=2)
        if not merge:
            shard_t = (rank, world)
        if device == "auto":
            device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    template = B.check_prompt(prompt)
    ds = B.load_dataset(dataset, data, split)  # a missing dataset fails before the model loads
    out_dir = Path(out) if out else B.default_out(dataset, split, model)
    quiet = as_json or rank > 0
    selection = B.select(ds.items, limit)
    judge = None
    if judge_model:
        from vidqa.store import default_root

        judge = B.Judge(judge_model, judge_url, cache_dir=(Path(cache_dir) if cache_dir else default_root()) / "judge")

    def finish(report: dict, written: bool = True) -> None:
        if as_json:
            print(json.dumps(report))
            return
        Console().print(B.render_table(report))
        if written:
            err.print(f"[dim]report: {out_dir / 'report.json'}; predictions: {out_dir}[/dim]", soft_wrap=True)
        else:
            err.print(f"[dim]shard {shard_t[0]}/{shard_t[1]} done; combine the shards with --merge --out {out_dir}[/dim]",
                      soft_wrap=True)

    def judged_report(items, **kw) -> dict:
        if judge is None or quiet:
            return B.report_for(ds, items, out_dir, judge=judge, judge_workers=judge_workers, **kw)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(TextColumn("judge"), BarColumn(), MofNCompleteColumn(), console=err, transient=True) as bar:
            task = bar.add_task("judge", total=None)
            return B.report_for(ds, items, out_dir, judge=judge, judge_workers=judge_workers,
                                on_judged=lambda: bar.advance(task), **kw)

    if merge:
        if rank > 0:
            return
        if not any(out_dir.glob("predictions*.jsonl")):
            raise VidqaError(f"nothing to merge in {out_dir}: no predictions*.jsonl (run the bench with this --out)")
        recorded = B.read_settings(out_dir).get("dataset")
        if recorded not in (None, dataset):
            raise VidqaError(f"{out_dir} holds a {recorded} run, not {dataset}", exit_code=2)
        finish(judged_report(selection))
        return

    from vidqa.video import Sampling

    sampling = Sampling(fps=fps, num_frames=num_frames, max_frames=max_frames)
    qa = _load(model, device, dtype, method, vision_tower, tokens_per_frame, quiet)
    settings = B.run_settings(qa, ds, prompt=template, max_new_tokens=max_new_tokens, sampling=sampling)
    out_dir.mkdir(parents=True, exist_ok=True)
    B.check_run_settings(out_dir, settings)
    mine = B.select(ds.items, limit, shard_t)
    part = out_dir / B.part_name(shard_t)
    store = _store(cache_dir, no_cache)
    note = (lambda msg: None) if quiet else (lambda msg: err.print(f"note: {msg}", soft_wrap=True))
    kwargs = dict(sampling=sampling, prompt=template, max_new_tokens=max_new_tokens, store=store, decoder=decoder,
                  batch_size=batch_size, shard_label=f"{shard_t[0]}/{shard_t[1]}" if shard_t else None, on_note=note)
    if quiet:
        summary = B.answer_all(qa, ds, mine, part, **kwargs)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        total = B.todo_count(ds, mine, B.done_ids(part))
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task("questions", total=total)
            summary = B.answer_all(qa, ds, mine, part, on_question=lambda it: bar.advance(task), **kwargs)
        if summary.torn_line_repaired:
            note(f"{part.name} ended in a torn line (an interrupted write); it was cut and that question redone")
        if summary.missing_videos:
            note(f"{len(summary.missing_videos)} videos not found under {ds.root} (e.g. "
                 f"{summary.missing_videos[0]}); their questions are counted as missing")
        for video, message in summary.failed_videos[:10]:
            err.print(f"[red]failed:[/red] {video}: {message}", soft_wrap=True)
    if shard_t:
        B.write_marker(out_dir, shard_t, summary)
    if world > 1:
        if rank > 0:
            return
        B.wait_for_shards(out_dir, world, os.environ.get("TORCHELASTIC_RUN_ID"),
                          on_wait=lambda ranks: note(f"waiting for ranks {ranks} to finish"))
        finish(judged_report(selection))
    elif shard_t:
        if judge is not None:
            note("the judge runs on the merged report: run again with --merge")
        finish(B.report_for(ds, mine, out_dir, write=False), written=False)
    else:
        finish(judged_report(selection))


PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def train(ctx: typer.Context):
    """Train VoCo or LLaVA-Mini compression (or a small demo model from scratch); `vidqa train --help`.

    Runs the same compression code as inference. Data: `--data synthetic` or LLaVA-style JSON.
    Resumable (`--out DIR`), bf16 on GPU, several GPUs with `torchrun --nproc-per-node N -m vidqa train`.
    """
    from vidqa.train import main as train_main

    raise typer.Exit(train_main(list(ctx.args)))


@app.command(context_settings=PASS_THROUGH, add_help_option=False)
def synthetic(ctx: typer.Context):
    """Write synthetic video-QA clips (mp4) and MSRVTT-style annotations; `vidqa synthetic --help`."""
    from vidqa.synthetic import main as synth_main

    raise typer.Exit(synth_main(list(ctx.args)))


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one line on stderr and a non-zero exit for every expected failure."""
    try:
        rc = app(args=argv, standalone_mode=False)  # click returns typer.Exit's code here
        if isinstance(rc, int):
            return rc
    except VidqaError as e:
        err.print(f"[bold red]error:[/bold red] {e}", soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:  # click usage errors and the unexpected
        # usage errors (a missing argument, a bad option): typer may raise click's or its bundled copy's
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            return e.exit_code
        if type(e).__name__ == "Abort":
            err.print("aborted")
            return 130
        if os.environ.get("VIDQA_DEBUG"):
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        err.print(f"[bold red]internal error:[/bold red] {type(e).__name__}: {msg} (VIDQA_DEBUG=1 shows the traceback)",
                  soft_wrap=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
