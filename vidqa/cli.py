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

MODEL_HELP = ("Checkpoint: a local directory or a hub id (HF cache; HF_HUB_OFFLINE=1 works offline). "
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


@app.command()
def ask(
    video: str = typer.Argument(..., help="Video file (mp4, mkv, webm, avi, ...) or an image."),
    question: str = typer.Argument(..., help="The question, in quotes."),
    model: Optional[str] = typer.Option(None, "--model", "-m", envvar="VIDQA_MODEL", help=MODEL_HELP),
    method: Optional[str] = typer.Option(None, help="voco or mini. Default: what the checkpoint's config says."),
    vision_tower: Optional[str] = typer.Option(None, help="Override the config's mm_vision_tower (dir or hub id)."),
    tokens_per_frame: Optional[int] = typer.Option(None, help="VoCo tokens per frame. Default: config voco_num, or 2."),
    fps: float = typer.Option(1.0, help="Frames per second to sample (segment midpoints)."),
    num_frames: Optional[int] = typer.Option(None, help="Sample exactly this many frames, uniformly (overrides --fps)."),
    max_frames: Optional[int] = typer.Option(None, help="Cap on frames; more are thinned out uniformly."),
    start: Optional[float] = typer.Option(None, help="Start of the window, in seconds."),
    end: Optional[float] = typer.Option(None, help="End of the window, in seconds."),
    decoder: str = typer.Option("auto", help="auto (decord, PyAV on failure), decord or av."),
    max_new_tokens: int = typer.Option(256, min=1, help="Longest answer, in tokens."),
    temperature: float = typer.Option(0.0, min=0.0, help="0 decodes greedily; above 0 samples."),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0, help="Nucleus sampling mass (with --temperature > 0)."),
    seed: Optional[int] = typer.Option(None, help="Seed for sampling, for repeatable answers."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Frames compressed per batch (16 on GPU, 4 on CPU)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (answer, frames, timings) instead."),
):
    """Stream an answer about VIDEO to the terminal.

    Frames are sampled (default 1 per second), compressed to a few tokens each, concatenated in time
    order, and the model answers from that. If the frames do not fit the model's context with the
    question, fewer frames are sampled uniformly and a note says so on stderr.
    """
    from vidqa.generate import DecodeStats, GenerationConfig
    from vidqa.pipeline import Timings, VideoQA
    from vidqa.video import Sampling, load_frames, plan, probe

    t_start = time.perf_counter()
    info = probe(video)  # fail on a bad file before the model is loaded
    sampling = Sampling(fps=fps, num_frames=num_frames, max_frames=max_frames, start=start, end=end)
    indices = plan(info, sampling)
    if not model:
        raise VidqaError("no model given: pass --model DIR_OR_HUB_ID or set VIDQA_MODEL")
    with err.status("loading model", spinner="dots") if not as_json else _nullcontext():
        qa = VideoQA.from_pretrained(model, device=device, dtype=dtype, method=method, vision_tower=vision_tower,
                                     tokens_per_frame=tokens_per_frame)
    budget = qa.max_frames(question, max_new_tokens)
    if len(indices) > budget:
        err.print(f"note: {len(indices)} frames do not fit the context with this question; "
                  f"sampling {budget} uniformly instead")
        indices = plan(info, Sampling(fps=fps, num_frames=num_frames, max_frames=budget, start=start, end=end))
    t0 = time.perf_counter()
    frames = load_frames(video, indices=indices, decoder=decoder)
    decode_s = time.perf_counter() - t0
    timings = Timings()
    cache = qa.compress(frames, batch_size=batch_size, timings=timings)
    stats = DecodeStats()
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    pieces: list[str] = []
    if as_json:
        pieces = list(qa.answer(cache, question, gen, stats))
    else:
        if not sys.stdout.isatty():  # a pipe: plain streamed text, no terminal control codes
            for piece in qa.answer(cache, question, gen, stats):
                pieces.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            out = Console()
            with Live(Text(""), console=out, refresh_per_second=20, transient=False) as live:
                for piece in qa.answer(cache, question, gen, stats):
                    pieces.append(piece)
                    live.update(Text("".join(pieces)))
    answer = "".join(pieces).strip()
    report = {
        "answer": answer,
        "video": video,
        "question": question,
        "model": qa.model_id,
        "method": qa.method.name,
        "tokens_per_frame": qa.method.tokens_per_frame,
        "frames": [{"index": int(i), "time": round(float(t), 3)} for i, t in zip(frames.indices, frames.timestamps)],
        "decoder": frames.decoder,
        "kv_bytes_per_frame": cache.bytes_per_frame,
        "device": str(qa.device),
        "dtype": str(qa.vision.dtype).replace("torch.", ""),
        "stopped": stats.stopped,
        "timings": {
            "decode_video_s": round(decode_s, 4),
            "vision_s": round(timings.vision_s, 4),
            "compress_s": round(timings.compress_s, 4),
            "compress_ms_per_frame": round(1000 * (timings.vision_s + timings.compress_s) / max(1, len(frames.indices)), 3),
            "time_to_first_token_s": round(stats.prefill_s, 4),
            "ms_per_token": round(stats.ms_per_token, 3),
            "answer_tokens": stats.tokens,
            "total_s": round(time.perf_counter() - t_start, 4),
        },
    }
    if as_json:
        print(json.dumps(report))
    else:
        t = report["timings"]
        err.print(f"[dim]{len(frames.indices)} frames x {qa.method.tokens_per_frame} tokens ({qa.method.name}), "
                  f"compress {t['compress_ms_per_frame']:.1f} ms/frame, first token {1000 * stats.prefill_s:.0f} ms, "
                  f"{stats.ms_per_token:.1f} ms/token[/dim]", soft_wrap=True)


@app.command()
def index():
    """Precompute and store per-frame caches for a library of videos (not built yet)."""
    raise VidqaError("`vidqa index` is not built yet", exit_code=EXIT_NOT_BUILT)


@app.command()
def bench():
    """Accuracy and efficiency on MSRVTT-QA and friends (not built yet)."""
    raise VidqaError("`vidqa bench` is not built yet", exit_code=EXIT_NOT_BUILT)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one line on stderr and a non-zero exit for every expected failure."""
    try:
        app(args=argv, standalone_mode=False)
    except VidqaError as e:
        err.print(f"[bold red]error:[/bold red] {e}", soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:  # click usage errors and the unexpected
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Abort):
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
