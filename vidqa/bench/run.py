"""Answering a bench run: select and shard the questions, answer each video's questions from one
compression, append every answer to the run's prediction file, and mark finished shards (torchrun)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from vidqa import __version__, library
from vidqa.bench.datasets import Dataset, Item
from vidqa.bench.files import PredictionWriter, read_records, write_json_atomic
from vidqa.bench.metrics import score
from vidqa.errors import ContextError, VidqaError
from vidqa.generate import DecodeStats, GenerationConfig
from vidqa.options import DistEnv
from vidqa.pipeline import Timings

DEFAULT_PROMPT = "{question}\nAnswer the question using a single word or phrase."


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or int(m[2]) < 1 or int(m[1]) >= int(m[2]):
        raise VidqaError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4), not {text!r}", exit_code=2)
    return int(m[1]), int(m[2])


def shard_of(video: str, n: int) -> int:
    """The shard of a video: stable (a hash of its name), so its questions stay together."""
    return int.from_bytes(hashlib.sha256(str(video).encode()).digest()[:8], "big") % n


def select(items: list[Item], limit: int | None = None, shard: tuple[int, int] | None = None) -> list[Item]:
    """The first ``limit`` questions, then the ones whose video falls in ``shard``."""
    chosen = items[:limit] if limit else list(items)
    if shard:
        i, n = shard
        chosen = [it for it in chosen if shard_of(it.video, n) == i]
    return chosen


def group_by_video(items: list[Item]) -> list[tuple[str, list[Item]]]:
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(it.video, []).append(it)
    return list(groups.items())


def render_prompt(template: str, question: str) -> str:
    return template.replace("{question}", question)


def check_prompt(template: str | None) -> str:
    if template is None:
        return DEFAULT_PROMPT
    template = template.replace("\\n", "\n")
    if "{question}" not in template:
        raise VidqaError("--prompt must contain {question}, e.g. '{question} Answer in one word.'", exit_code=2)
    return template


@dataclass
class RunSummary:
    answered: int = 0
    skipped: int = 0  # already in the prediction file
    errors: int = 0
    missing_videos: list[str] = field(default_factory=list)
    failed_videos: list[tuple[str, str]] = field(default_factory=list)
    compressed: int = 0
    from_store: int = 0
    torn_line_repaired: bool = False
    seconds: float = 0.0


def peak_gpu_memory(device) -> int | None:
    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated(device))
    return None


def todo_count(dataset: Dataset, items: list[Item], done: set[str]) -> int:
    return sum(1 for it in items if it.id not in done and dataset.video_path(it.video) is not None)


def done_ids(path: Path) -> set[str]:
    return {str(r["id"]) for r in read_records(path) if r.get("prediction") is not None}


def answer_all(qa, dataset: Dataset, items: list[Item], out_file: Path, *, sampling, prompt: str,
               max_new_tokens: int, store=None, decoder: str = "auto", batch_size: int | None = None,
               shard_label: str | None = None, on_question: Callable[[Item], None] | None = None,
               on_note: Callable[[str], None] | None = None) -> RunSummary:
    """Answer every question of ``items`` not yet in ``out_file``, video by video, one compression each."""
    summary = RunSummary()
    t_start = time.perf_counter()
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    noted_thin = False
    with PredictionWriter(out_file) as writer:
        summary.torn_line_repaired = writer.torn
        done = done_ids(out_file)
        for video, group in group_by_video(items):
            todo = [it for it in group if it.id not in done]
            summary.skipped += len(group) - len(todo)
            path = dataset.video_path(video)
            if path is None:
                summary.missing_videos.append(video)
                continue
            if not todo:
                continue
            timings = Timings()
            t0 = time.perf_counter()
            try:
                cache, _, hit = library.load_or_compress(qa, path, sampling, store=store, decoder=decoder,
                                                         batch_size=batch_size, timings=timings)
            except VidqaError as e:
                summary.failed_videos.append((video, str(e)))
                for it in todo:
                    writer.write(_record(it, path, None, error=f"video: {e}", shard=shard_label))
                    summary.errors += 1
                    if on_question:
                        on_question(it)
                continue
            summary.from_store += bool(hit)
            summary.compressed += not hit
            video_cache = {"from_store": bool(hit), "frames": cache.num_frames,
                           "load_s": round(time.perf_counter() - t0, 4), "vision_s": round(timings.vision_s, 4),
                           "compress_s": round(timings.compress_s, 4)}
            for it in todo:
                text = render_prompt(prompt, it.question)
                try:
                    budget = qa.max_frames(text, max_new_tokens)
                except ContextError as e:
                    writer.write(_record(it, path, None, error=f"context: {e}", shard=shard_label))
                    summary.errors += 1
                    if on_question:
                        on_question(it)
                    continue
                used = library.thin(cache, budget)
                if used.num_frames < cache.num_frames and not noted_thin and on_note:
                    on_note(f"{cache.num_frames} frames do not fit the context with the question; "
                            f"using {used.num_frames}, sampled uniformly (noted once)")
                    noted_thin = True
                stats = DecodeStats()
                prediction = "".join(qa.answer(used, text, gen, stats)).strip()
                timing = {
                    "frames": used.num_frames,
                    "tokens_per_frame": used.tokens_per_frame,
                    "kv_bytes_per_frame": used.bytes_per_frame,
                    "ttft_ms": round(1000 * stats.prefill_s, 3),
                    "ms_per_token": round(stats.ms_per_token, 3) if stats.decode_steps else None,
                    "decode_ms": round(1000 * stats.decode_s, 3),
                    "decode_steps": stats.decode_steps,
                    "answer_tokens": stats.tokens,
                    "peak_gpu_mem_bytes": peak_gpu_memory(qa.device),
                }
                rec = _record(it, path, prediction, timing=timing, shard=shard_label)
                if video_cache is not None:
                    rec["video_cache"] = video_cache  # on the first question answered from this compression
                    video_cache = None
                writer.write(rec)
                done.add(it.id)
                summary.answered += 1
                if on_question:
                    on_question(it)
    summary.seconds = time.perf_counter() - t_start
    return summary


def _record(it: Item, path: Path | None, prediction: str | None, *, timing: dict | None = None,
            error: str | None = None, shard: str | None = None) -> dict:
    rec: dict[str, Any] = {"id": it.id, "video": it.video, "question": it.question, "answer": it.answer,
                           "category": it.category, "prediction": prediction}
    if prediction is not None:
        rec["metrics"] = score(prediction, it.answer)
        rec["timings"] = timing or {}
    if error is not None:
        rec["error"] = error
    rec["video_path"] = str(path) if path else None
    if shard:
        rec["shard"] = shard
    return rec


def marker_path(out: Path, shard: tuple[int, int]) -> Path:
    return out / f"predictions.part-{shard[0]}-of-{shard[1]}.done"


def write_marker(out: Path, shard: tuple[int, int], summary: RunSummary) -> None:
    write_json_atomic(marker_path(out, shard), {
        "shard": list(shard), "run_id": DistEnv.from_env().run_id, "finished": time.time(),
        "answered": summary.answered, "errors": summary.errors, "missing_videos": len(summary.missing_videos),
    })


def wait_for_shards(out: Path, world: int, run_id: str | None, *, poll_s: float = 2.0,
                    on_wait: Callable[[list[int]], None] | None = None) -> None:
    """Block until every rank's done marker of this torchrun (same run id) is there."""
    told = False
    while True:
        waiting = []
        for r in range(world):
            try:
                m = json.loads(marker_path(out, (r, world)).read_text())
            except (OSError, ValueError):
                m = None
            if not m or m.get("run_id") != run_id:
                waiting.append(r)
        if not waiting:
            return
        if on_wait and not told:
            on_wait(waiting)
            told = True
        time.sleep(poll_s)


def default_out(dataset: str, split: str, model: str | None) -> Path:
    if not model:
        raise VidqaError("pass --out DIR (the run's folder) or --model", exit_code=2)
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(model).rstrip("/")).name) or "model"
    return Path("vidqa-bench") / f"{dataset}-{split}-{tag}"


def run_settings(qa, dataset: Dataset, *, prompt: str, max_new_tokens: int, sampling) -> dict:
    return {"dataset": dataset.name, "split": dataset.split, "data": str(dataset.root), "format": dataset.format,
            "model": qa.model_id, "model_fingerprint": qa.model_fingerprint, "method": qa.method.name,
            "tokens_per_frame": qa.method.tokens_per_frame, "dtype": str(qa.vision.dtype).replace("torch.", ""),
            "device": str(qa.device), "prompt": prompt, "max_new_tokens": max_new_tokens,
            "sampling": asdict(sampling), "vidqa_version": __version__}

