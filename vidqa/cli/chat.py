"""`vidqa chat`: several questions in a row about one video, compressed once."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vidqa.cli import common, remote
from vidqa.cli import params as P
from vidqa.cli.writers import err, error_line, get_writer, note
from vidqa.errors import VidqaError


def chat(
    video: Annotated[str, typer.Argument(help="Video file or image to talk about.", show_default=False)],
    model: P.Model = None, method: P.Method = None, vision_tower: P.VisionTower = None,
    tokens_per_frame: P.TokensPerFrame = None, fps: P.Fps = 1.0, num_frames: P.NumFrames = None,
    max_frames: P.MaxFrames = None, start: P.Start = None, end: P.End = None, decoder: P.Decoder = "auto",
    max_new_tokens: P.MaxNewTokens = 256, temperature: P.Temperature = 0.0, top_p: P.TopP = 1.0,
    seed: P.Seed = None, device: P.Device = "auto", dtype: P.Dtype = "auto", batch_size: P.BatchSize = None,
    sampling_rule: P.SamplingRule = None, preprocess: P.PreprocessMode = None, quantize: P.Quantize = "none",
    cache_dtype: P.CacheDtype = "auto",
    cache_dir: P.CacheDir = None, no_cache: P.NoCache = False, server: remote.Server = None,
    as_json: P.json_flag("Print one JSON object per turn (question, answer, frames), one line each.") = False,
):
    """Ask several questions in a row about one video, compressed once.

    Questions are read one per line (type them, or pipe a file); an empty line, `exit` or Ctrl-D
    ends the chat. Earlier turns are kept in the prompt as the model's chat template expects; when
    they no longer fit the context, the oldest turns are dropped, with a note.
    """
    if server:  # a running `vidqa serve` answers (cli/remote.py)
        return remote.chat(server, video, as_json=as_json, fps=fps, num_frames=num_frames, max_frames=max_frames,
                              start=start, end=end, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    from vidqa import library  # heavy (torch): imported when the command runs, not for `vidqa --help`
    from vidqa.video import probe

    common.quiet_native_logs()
    out = get_writer(as_json)
    gen = P.generation(max_new_tokens, temperature, top_p, seed)  # options first, then the file, then the model
    sampling = P.sampling(fps, num_frames, max_frames, start, end, rule=sampling_rule, preprocess=preprocess)
    compute = P.compute_options(device, dtype, batch_size, quantize, cache_dtype)
    model_opts = P.model_options(model, method, vision_tower, tokens_per_frame)
    info = probe(video)
    qa = common.load(model_opts, compute, as_json)
    budget = qa.max_frames("", max_new_tokens)
    with out.progress() as progress:
        cache, hit = library.video_cache(qa, video, sampling, info, budget,
                                         store=library.open_store(P.cache_options(cache_dir, no_cache)),
                                         decoder=decoder, batch_size=compute.batch_size, progress=progress,
                                         on_note=note)
    if not as_json:
        err.print(f"[dim]{cache.num_frames} frames ready{' (from the cache store)' if hit else ''}; "
                  "ask away (empty line to end)[/dim]", soft_wrap=True)
    history: list[tuple[str, str]] = []
    interactive = sys.stdin.isatty()
    if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 become lone surrogates, refused per turn
        sys.stdin.reconfigure(errors="surrogateescape")
    turn = 0
    while True:
        if interactive:
            err.print("[bold]you>[/bold] ", end="")
        line = sys.stdin.readline()
        if not line or not line.strip() or line.strip() in ("exit", "quit"):
            break
        try:  # a bad question is reported and the chat goes on
            question = P.question(line)
            turn_cache, dropped = library.fit_turn(qa, cache, question, max_new_tokens, history)
        except VidqaError as e:
            error_line(e)
            continue
        for _ in range(dropped):
            err.print("[dim]note: the oldest turn was dropped to fit the context[/dim]")
        answer = out.answer(qa.answer(turn_cache, question, gen, history=history))
        out.result({"turn": turn, "question": question, "answer": answer, "frames": turn_cache.num_frames,
                    "history_turns": len(history), "dropped_turns": dropped, "from_cache": hit})
        history.append((question, answer))
        turn += 1
