"""`vidqa bench`: accuracy and efficiency on a video-QA dataset (the work is in ``vidqa.bench``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vidqa.cli import common
from vidqa.cli import params as P
from vidqa.cli.common import relaunch_on_gpus
from vidqa.cli.writers import err, error_line, get_writer, live_progress, note
from vidqa.errors import VidqaError
from vidqa.options import DistEnv, judge_key

HELP = "\n\n".join([
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


def bench(
    dataset: Annotated[Optional[str], typer.Argument(help="msrvtt, msvd, activitynet or synthetic.",
                                                     show_default=False)] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="The dataset folder (annotations and videos).",
                                                show_default=False)] = None,
    split: Annotated[str, typer.Option(help="test or val (where the dataset has it).")] = "test",
    out: Annotated[Optional[str], typer.Option(
        "--out", "-o", show_default=False,
        help="Results folder (default: vidqa-bench/DATASET-SPLIT-MODELNAME).")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, show_default=False,
                                                 help="Only the first N questions, in annotation order.")] = None,
    shard: Annotated[Optional[str], typer.Option(
        show_default=False, help="I/N: answer shard I of N only (split by video); --merge combines.")] = None,
    merge: Annotated[bool, typer.Option("--merge", help="Answer nothing: combine the prediction files in --out "
                                                        "into one report (judging them with --judge-model).")] = False,
    prompt: Annotated[Optional[str], typer.Option(
        show_default=False, help="Template around each question; {question} is replaced. Default: the model's own "
                                 "(config.json vidqa_prompt; the demo models: the bare question), else its paper's "
                                 "evaluation prompt (PARITY.md); '{question}' asks it bare.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest answer, in tokens (greedy decoding).")] = 32,
    judge_model: Annotated[Optional[str], typer.Option(
        show_default=False, help="Also score with the Video-ChatGPT GPT-judge protocol, with this model (recorded "
                                 "in the report).")] = None,
    judge_url: Annotated[Optional[str], typer.Option(
        show_default=False, help="OpenAI-compatible base URL (default https://api.openai.com/v1); the key comes "
                                 "from VIDQA_JUDGE_KEY or OPENAI_API_KEY.")] = None,
    judge_workers: Annotated[int, typer.Option(min=1, help="Judge requests in flight at once.")] = 8,
    judge_timeout: Annotated[float, typer.Option(
        help="Seconds a judge request waits for its reply; a judge that does not answer in time stops the "
             "judging with one error (retries of refusals honour Retry-After, within a bound).")] = 60.0,
    model: P.Model = None, method: P.Method = None, vision_tower: P.VisionTower = None,
    tokens_per_frame: P.TokensPerFrame = None, fps: P.Fps = 1.0, num_frames: P.NumFrames = None,
    max_frames: P.MaxFrames = None, decoder: P.Decoder = "auto", device: P.Device = "auto", dtype: P.Dtype = "auto",
    batch_size: P.BatchSize = None,
    sampling_rule: P.SamplingRule = None, preprocess: P.PreprocessMode = None, quantize: P.Quantize = "none",
    cache_dtype: P.CacheDtype = "auto", cache_dir: P.CacheDir = None, no_cache: P.NoCache = False, gpus: P.Gpus = 1,
    as_json: P.json_flag("Print the final report as one JSON object.") = False,
):
    from vidqa import bench as B  # heavy (torch): imported when the command runs, not for `vidqa --help`
    from vidqa import library

    common.quiet_native_logs()
    dist = DistEnv.from_env()
    relaunch_on_gpus(gpus, dist)
    if dataset not in B.DATASETS:
        raise VidqaError(f"unknown dataset {dataset!r} (use {', '.join(B.DATASETS)})" if dataset else
                         f"name a dataset: vidqa bench {'|'.join(B.DATASETS)} --data DIR", exit_code=2)
    if not data:
        raise VidqaError("pass --data DIR: the dataset folder (annotations and videos)", exit_code=2)
    if judge_url and not judge_model:
        raise VidqaError("--judge-url needs --judge-model", exit_code=2)
    rank, world = dist.rank, dist.world_size
    shard_t = B.parse_shard(shard)
    if world > 1:
        if shard_t:
            raise VidqaError("--shard and torchrun ranks do not mix: each rank takes its own shard", exit_code=2)
        if not merge:
            shard_t = (rank, world)
    compute = P.compute_options(device, dtype, batch_size, quantize, cache_dtype).for_rank(dist)
    cache = P.cache_options(cache_dir, no_cache)
    template = B.check_prompt(prompt)
    ds = B.load_dataset(dataset, data, split)  # a missing dataset fails before the model loads
    out_dir = Path(out) if out else B.default_out(dataset, split, model)
    quiet = as_json or rank > 0
    writer = get_writer(as_json)
    selection = B.select(ds.items, limit)
    judge = None
    if judge_model:
        judge = B.Judge(judge_model, judge_url, key=judge_key(), cache_dir=cache.root / "judge", timeout=judge_timeout)
    say = (lambda msg: None) if quiet else note

    def finish(report: dict, written: bool = True) -> None:
        writer.result(report, B.render_table(report))
        if written:
            writer.summary(f"report: {out_dir / 'report.json'}; predictions: {out_dir}")
        else:
            writer.summary(f"shard {shard_t[0]}/{shard_t[1]} done; combine the shards with --merge --out {out_dir}")

    def judged_report(items, **kw) -> dict:
        if judge is None or quiet or not live_progress():
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

    sampling = P.sampling(fps, num_frames, max_frames, rule=sampling_rule, preprocess=preprocess)
    qa = common.load(P.model_options(model, method, vision_tower, tokens_per_frame), compute, quiet)
    settings = B.run_settings(qa, ds, prompt=template, max_new_tokens=max_new_tokens, sampling=sampling)
    out_dir.mkdir(parents=True, exist_ok=True)
    B.check_run_settings(out_dir, settings)
    mine = B.select(ds.items, limit, shard_t)
    part = out_dir / B.part_name(shard_t)
    kwargs = dict(sampling=sampling, prompt=template, max_new_tokens=max_new_tokens, store=library.open_store(cache),
                  decoder=decoder, batch_size=compute.batch_size,
                  shard_label=f"{shard_t[0]}/{shard_t[1]}" if shard_t else None, on_note=say)
    if quiet:
        summary = B.answer_all(qa, ds, mine, part, **kwargs)
    else:
        with writer.progress() as progress:
            progress.stage("questions", total=B.todo_count(ds, mine, B.done_ids(part)))
            summary = B.answer_all(qa, ds, mine, part, on_question=lambda it: progress.advance(), **kwargs)
        if summary.torn_line_repaired:
            say(f"{part.name} ended in a torn line (an interrupted write); it was cut and that question redone")
        if summary.missing_videos:
            say(f"{len(summary.missing_videos)} videos not found under {ds.root} (e.g. "
                f"{summary.missing_videos[0]}); their questions are counted as missing")
        for video, message in summary.failed_videos[:10]:
            error_line(f"{video}: {message}", label="failed")
    if shard_t:
        B.write_marker(out_dir, shard_t, summary)
    if world > 1:
        if rank > 0:
            return
        B.wait_for_shards(out_dir, world, dist.run_id, on_wait=lambda ranks: say(f"waiting for ranks {ranks} to finish"))
        finish(judged_report(selection))
    elif shard_t:
        if judge is not None:
            say("the judge runs on the merged report: run again with --merge")
        finish(B.report_for(ds, mine, out_dir, write=False), written=False)
    else:
        finish(judged_report(selection))
