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

# LLaVA-1.5's short-answer prompt (its VQAv2/GQA question files), which VoCo-LLaMA's evaluation
# (llava/eval/model_vqa_loader.py, scripts/eval/*.sh) feeds; VoCo then deletes the newline.
DEFAULT_PROMPT = "{question}\nAnswer the question using a single word or phrase."
# LLaVA-Mini's video QA evaluation prompts, put before the question: MSVD-QA and MSRVTT-QA
# (llavamini/eval/video/run_inference_video_qa.py, PROMPT + question) and ActivityNet-QA
# (llavamini/eval/video/run_inference_video_qa_act.py).
_MINI_HEAD = ("Answer the question based on the video. Provide a complete sentence that directly mirrors the phrasing "
              "of the question and focuses on giving a clear, relevant answer.\n\nFor example:\n")
_MINI_TAIL = "\nAnswer the question with one complete sentence:\n{question}"
_MINI_SHARED = [
    ("Who is the man talking to while driving?", "The man is talking to a woman while driving.",
     "The man is talking to a friend while driving."),
    ("Where is the boy standing when the cat jumps onto the table?",
     "The boy is standing next to the door when the cat jumps onto the table.",
     "The boy is standing in the kitchen when the cat jumps onto the table."),
    ("What is the dog in?", "The dog is in a box.", "The dog is in the car."),
    ("what does the man evade the clutches of?", "The man evade the clutches of gangster.",
     "The man evade the clutches of an eagle."),
    ("What does the man do 2 times?", "The man jumps 2 times.", "The man waves 2 times."),
    ("What does the woman who is standing next to the window do before picking up the phone?",
     "The woman who is standing next to the window looks outside before picking up the phone.",
     "The woman who is standing next to the window adjusts the curtains before picking up the phone."),
]
_MINI_QA = [("Who is driving a car?", "A man is driving a car.", "A person without clear face is driving a car."),
            ("What is the man doing?", "The man is driving a car.", "The man is walking."), *_MINI_SHARED]
_MINI_ACT = [
    ("How challenging is the game being played?", "The game being played is secondary.",
     "The game being played is simple."),
    ("How risky is it to practice gymnastics indoors?",
     "Practicing gymnastics indoors can be dangerous if safety mats are not used.",
     "It is somewhat risky to practice gymnastics indoors because of hard surfaces."),
    ("What did the girl experience after finishing her dessert?", "The girl felt a sugar rush after finishing her dessert.",
     "The girl felt satisfied after finishing her dessert."),
    ("Is the runner wearing a jacket?", "The runner is wearing a lightweight shirt instead of a jacket.",
     "The runner is not wearing a jacket, but has on a tank top."),
    *_MINI_SHARED,
]


def _mini_prompt(examples) -> str:
    lines = "".join(f"For the question '{q}', answer with '{a}' or '{b}'\n" for q, a, b in examples)
    return _MINI_HEAD + lines + _MINI_TAIL


MINI_VIDEO_QA_PROMPT = _mini_prompt(_MINI_QA)
MINI_ACTIVITYNET_PROMPT = _mini_prompt(_MINI_ACT)
# The official evaluation prompt per method and dataset (``official_prompt``), and where it comes from.
OFFICIAL_PROMPTS = {
    "voco": (DEFAULT_PROMPT, "LLaVA-1.5 short-answer prompt (VoCo-LLaMA llava/eval/model_vqa_loader.py)"),
    "pool": (DEFAULT_PROMPT, "LLaVA-1.5 short-answer prompt (the VoCo prompt; vidqa's pool row)"),
    "mini": (MINI_VIDEO_QA_PROMPT, "LLaVA-Mini llavamini/eval/video/run_inference_video_qa.py"),
    ("mini", "activitynet"): (MINI_ACTIVITYNET_PROMPT, "LLaVA-Mini llavamini/eval/video/run_inference_video_qa_act.py"),
}


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


def official_prompt(method: str, dataset: str) -> tuple[str, str]:
    """The paper's evaluation prompt for a method on a dataset, and where it is from."""
    return OFFICIAL_PROMPTS.get((method, dataset)) or OFFICIAL_PROMPTS.get(method) or \
        (DEFAULT_PROMPT, "LLaVA-1.5 short-answer prompt (no official one for this method)")


def model_prompt(qa, dataset: str) -> tuple[str, str]:
    """The default template of a bench run, and its source: the checkpoint's own ``vidqa_prompt`` in
    config.json (the demo models state their training format, the bare question), else the method's
    official evaluation prompt (``official_prompt``)."""
    from vidqa import checkpoint
    from vidqa.checkpoint.llava import PROMPT_KEY, prompt_template

    try:
        cfg = checkpoint.read_config(checkpoint.resolve(qa.model_id))
    except (VidqaError, OSError, TypeError):
        cfg = {}
    own = prompt_template(cfg, dataset)
    if own is not None:
        return own, f"checkpoint config.json {PROMPT_KEY}"
    return official_prompt(qa.method.name, dataset)


def resolve_prompt(qa, dataset: str, template: str | None) -> tuple[str, str]:
    """``(template, source)``: ``--prompt`` when given, else the model's (``model_prompt``)."""
    if template is not None:
        return template, "--prompt"
    return model_prompt(qa, dataset)


def check_prompt(template: str | None) -> str | None:
    """``--prompt`` checked (``\\n`` read as a newline); None (not given): the model's, chosen once it is loaded."""
    if template is None:
        return None
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


def answer_all(qa, dataset: Dataset, items: list[Item], out_file: Path, *, sampling, prompt: str | None,
               max_new_tokens: int, store=None, decoder: str = "auto", batch_size: int | None = None,
               shard_label: str | None = None, on_question: Callable[[Item], None] | None = None,
               on_note: Callable[[str], None] | None = None) -> RunSummary:
    """Answer every question of ``items`` not yet in ``out_file``, video by video, one compression each.

    ``prompt``: the template around each question; None: the model's (``resolve_prompt``)."""
    prompt, _ = resolve_prompt(qa, dataset.name, prompt)
    summary = RunSummary()
    t_start = time.perf_counter()
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    noted_thin = False
    with PredictionWriter(out_file) as writer:
        summary.torn_line_repaired = writer.torn

        def failed(it: Item, path: Path, error: str) -> None:  # an error record in place of the answer
            writer.write(_record(it, path, None, error=error, shard=shard_label))
            summary.errors += 1
            if on_question:
                on_question(it)

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
                    failed(it, path, f"video: {e}")
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
                    failed(it, path, f"context: {e}")
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


def run_settings(qa, dataset: Dataset, *, prompt: str | None, max_new_tokens: int, sampling) -> dict:
    """The run's settings for run.json; ``prompt`` None: the model's, recorded with its source."""
    prompt, source = resolve_prompt(qa, dataset.name, prompt)
    return {"prompt_source": source, **{"dataset": dataset.name, "split": dataset.split, "data": str(dataset.root), "format": dataset.format,
            "model": qa.model_id, "model_fingerprint": qa.model_fingerprint, "method": qa.method.name,
            "tokens_per_frame": qa.method.tokens_per_frame, "dtype": str(qa.vision.dtype).replace("torch.", ""),
            "device": str(qa.device), "prompt": prompt, "max_new_tokens": max_new_tokens,
            "sampling": asdict(sampling), "vidqa_version": __version__}}

