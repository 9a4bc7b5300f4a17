"""A library of videos with stored per-frame caches: load a model, find videos, index them, load or
compute a cache that fits the context, and fit a conversation around it.

``index_videos`` decodes the next video on a CPU thread while the GPU compresses the current one,
takes a per-entry lock so that concurrent ``vidqa index`` processes (or torchrun ranks) never compute
the same entry twice, stores each finished video atomically, and lists the videos it could not read
without stopping for them. A rerun finds finished entries and skips them.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np
import torch

from vidqa import quant
from vidqa.errors import VideoError, VidqaError
from vidqa.methods.base import FrameCache
from vidqa.options import CacheOptions, ComputeOptions, ModelOptions
from vidqa.pipeline import Timings, VideoQA
from vidqa.store import CacheError, CacheLocked, CacheWarning, Store
from vidqa.video import Sampling, VideoInfo, plan

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".ts", ".flv", ".wmv",
                    ".3gp", ".ogv", ".gif"}


class Progress(Protocol):
    """What long library work reports: a named stage (with its size when known), then steps done."""

    def stage(self, name: str, total: int | None = None) -> None: ...

    def advance(self, n: int = 1) -> None: ...


def load_model(model: ModelOptions, compute: ComputeOptions) -> VideoQA:
    """The checkpoint ``model`` names, on the device and in the dtype ``compute`` asks for."""
    if not model.model:
        raise VidqaError("no model given: pass --model DIR_OR_HUB_ID or set VIDQA_MODEL")
    return VideoQA.from_pretrained(model.model, method=model.method, vision_tower=model.vision_tower,
                                   tokens_per_frame=model.tokens_per_frame, compute=compute)


def open_store(cache: CacheOptions) -> Store | None:
    """The cache store ``cache`` names, or None when it is turned off."""
    return Store(cache.root) if cache.enabled else None


def find_videos(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, and folders searched recursively for video extensions; sorted, no repeats."""
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS and not f.name.startswith("."):
                    found[f.resolve()] = None
        elif p.exists():
            found[p.resolve()] = None
        else:
            raise VideoError(f"no such file or folder: {p}")
    return list(found)


def cache_settings(qa, sampling: Sampling) -> dict:
    """Everything a stored cache must agree on with the run that reads it (the sampling as the method
    resolves it: its rule and preprocessing, so explicit and default settings share entries)."""
    sampling = qa.resolve_sampling(sampling)
    return {"model_fingerprint": qa.model_fingerprint, "method": qa.method.name,
            "tokens_per_frame": qa.method.tokens_per_frame, "dtype": str(qa.vision.dtype).replace("torch.", ""),
            "sampling": dataclasses.asdict(sampling), "method_meta": qa.method.cache_meta(),
            **quant_settings(qa)}


def quant_settings(qa) -> dict:
    """The store keys on ``quantize`` and ``cache_dtype`` only when they are not the defaults, so entries
    made before they existed (and by unquantised runs) keep their keys."""
    cache_dtype = quant.check_cache_dtype(qa.compute.cache_dtype if qa.compute else None)
    return {**quant.cache_settings(qa.quantize, qa.method),
            **({"cache_dtype": cache_dtype} if cache_dtype != "auto" else {})}


def thin(cache: FrameCache, limit: int) -> FrameCache:
    """At most ``limit`` frames of a cache, chosen uniformly (as sampling fewer frames would)."""
    if cache.num_frames <= limit:
        return cache
    pick = np.unique(np.linspace(0, cache.num_frames - 1, limit).round().astype(int))
    return cache.select(pick.tolist())


def put(store: Store, key: str, video: Path, settings: dict, cache: FrameCache, frames, model_id: str) -> None:
    if settings.get("cache_dtype") == "fp8":
        cache = quant.encode_cache(cache)
    store.put(key, cache, {"source": str(video), "settings": settings, "model_id": model_id,
                           "frame_indices": [int(i) for i in frames.indices]})


_UNWRITABLE: set[Path] = set()  # stores already warned about in this process


def put_or_warn(store: Store, key: str, video: Path, settings: dict, cache: FrameCache, frames, model_id: str) -> bool:
    """``put``, for a caller whose answer must not depend on the store: a store that cannot be written
    (read-only, full, a link where a directory should be) gives one ``CacheWarning`` per store and
    process, and False."""
    try:
        put(store, key, video, settings, cache, frames, model_id)
    except CacheError as e:
        if store.root not in _UNWRITABLE:
            _UNWRITABLE.add(store.root)
            warnings.warn(CacheWarning(f"{e}; answering without storing"), stacklevel=2)
        return False
    return True


_SPECS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cache_spec(qa) -> list[dict[str, tuple[tuple[int, ...], torch.dtype]]] | None:
    """What ``qa``'s caches look like per frame: for each kind of cache it makes (LLaVA-Mini: K/V or
    compact features), ``{tensor name: (shape without the frame axis, dtype)}``. Found once per model
    by compressing one frame of zero features (the vision tower does not run); None if that fails."""
    try:
        return _SPECS[qa]
    except (KeyError, TypeError):
        pass
    try:
        vision, method = qa.vision, qa.method
        patches = vision.num_patches + (0 if vision.select_feature == "patch" else 1)
        size = vision.spec.size
        views = len(method.views(torch.zeros(1, size, size, 3, dtype=torch.uint8)))
        shape = (1, patches, vision.hidden_size) if views == 1 else (1, views, patches, vision.hidden_size)
        feats = torch.zeros(shape, dtype=vision.dtype, device=vision.device)
        with torch.inference_mode():
            spec = [{k: (tuple(v.shape[1:]), v.dtype) for k, v in method.compress(feats, compact=c).items()}
                    for c in ((False, True) if method.supports_compact else (False,))]
    except Exception:  # a model this probe does not understand: only the cheap checks apply
        spec = None
    try:
        _SPECS[qa] = spec
    except TypeError:
        pass
    return spec


def misfit(qa, cache: FrameCache) -> str | None:
    """Why a stored ``cache`` cannot be used with ``qa`` (None if it can): the store checks each entry
    against its own record; this checks it against the model (method, tokens per frame, and every
    tensor's per-frame shape and dtype: layer count, heads, head dim, hidden size, dtype)."""
    if cache.method != qa.method.name or cache.tokens_per_frame != qa.method.tokens_per_frame:
        return (f"a {cache.method} cache with {cache.tokens_per_frame} tokens/frame, not "
                f"{qa.method.name} with {qa.method.tokens_per_frame}")
    got = {k: (tuple(v.shape[1:]), v.dtype) for k, v in cache.tensors.items()}
    spec = cache_spec(qa)
    # a method's optional tensors (LLaVA-Mini's prompt head) may be missing: an entry stored before them
    optional = set(getattr(qa.method, "optional_cache_tensors", ()))
    if spec is not None and not any(got == {k: v for k, v in kind.items() if k in got or k not in optional}
                                    for kind in spec):
        want = " or ".join(str({k: (list(s), str(d).removeprefix("torch.")) for k, (s, d) in kind.items()})
                           for kind in spec)
        have = {k: (list(s), str(d).removeprefix("torch.")) for k, (s, d) in got.items()}
        return f"its tensors per frame are {have}, this model makes {want}"
    return None


def stored(qa, store: Store, key: str, settings: dict) -> FrameCache | None:
    """The store's entry ``key`` if it is there, intact (``Store.get``) and fits ``qa`` (``misfit``);
    else None, so the caller recomputes (and its ``put`` replaces a misfit)."""
    cache = store.get(key, settings)
    if cache is None:
        return None
    # an fp8-stored cache (--cache-dtype fp8) back to the model's dtype, on the model's device: the
    # host-to-GPU copy moves the 8-bit data (half of bf16), and the GPU decodes it in microseconds
    cache = quant.decode_cache(cache, qa.device)
    problem = misfit(qa, cache)
    if problem:
        warnings.warn(CacheWarning(f"cache entry {key[:12]} does not fit this model ({problem}); recomputing"),
                      stacklevel=2)
        return None
    return cache


def load_or_compress(qa, video: str | Path, sampling: Sampling, *, store: Store | None, decoder: str = "auto",
                     batch_size: int | None = None, timings=None,
                     progress: Progress | None = None) -> tuple[FrameCache, object | None, bool]:
    """The video's cache: from the store when a matching entry exists, else computed (and stored).

    Returns ``(cache, frames or None, hit)``. A hit runs neither the decoder, the vision tower nor the
    compression. ``progress`` hears of the stages ``decoding frames`` and ``compressing`` (frames).
    """
    video = Path(video)
    sampling = qa.resolve_sampling(sampling)  # the method's rule and preprocessing, named in the store's key
    settings = cache_settings(qa, sampling)
    key = None
    if store is not None:
        key = store.key(video, settings)
        cache = stored(qa, store, key, settings)
        if cache is not None:
            return cache, None, True
    if progress:
        progress.stage("decoding frames")
    frames = qa.load_frames(video, sampling, decoder=decoder)  # fitted to the model's input as they decode
    if progress:
        progress.stage("compressing frames", total=len(frames.indices))
    cache = qa.compress(frames, batch_size=batch_size, timings=timings, progress=progress.advance if progress else None)
    if store is not None:
        put_or_warn(store, key, video, settings, cache, frames, qa.model_id)  # the answer never waits on it
    return cache, frames, False


def video_cache(qa, video: str | Path, sampling: Sampling, info: VideoInfo, budget: int, *, store: Store | None,
                decoder: str = "auto", batch_size: int | None = None, timings=None, progress: Progress | None = None,
                on_note: Callable[[str], None] | None = None) -> tuple[FrameCache, bool]:
    """The video's frame cache, from the store if it has it, thinned to ``budget`` frames if needed.

    When the sampling takes more than ``budget`` frames, an indexed cache of the full sampling
    serves (thinned); else only ``budget`` frames are sampled. Returns ``(cache, from_store)``.
    """
    sampling = qa.resolve_sampling(sampling)
    planned = len(plan(info, sampling))
    if planned > budget:
        if on_note:
            on_note(f"{planned} frames do not fit the context with this question; using {budget}, sampled uniformly")
        if store is not None:  # an indexed cache of the full sampling serves, thinned
            settings = cache_settings(qa, sampling)
            full = stored(qa, store, store.key(video, settings), settings)
            if full is not None:
                return thin(full, budget), True
        sampling = dataclasses.replace(sampling, max_frames=budget)
    cache, _, hit = load_or_compress(qa, video, sampling, store=store, decoder=decoder, batch_size=batch_size,
                                     timings=timings, progress=progress)
    return thin(cache, budget), hit


def fit_turn(qa, cache: FrameCache, question: str, max_new_tokens: int,
             history: list[tuple[str, str]]) -> tuple[FrameCache, int]:
    """Make one chat turn fit the context: drop the oldest turns of ``history`` (in place) while the
    frames and the conversation do not fit, then thin the frames if even no history leaves too little
    room. Returns ``(the cache to answer from, turns dropped)``.
    """
    dropped = 0
    while history:
        try:
            if qa.max_frames(question, max_new_tokens, history) >= cache.num_frames:
                break
        except VidqaError:  # not even one frame fits with this history
            pass
        history.pop(0)
        dropped += 1
    room = qa.max_frames(question, max_new_tokens, history)
    return (thin(cache, room) if room < cache.num_frames else cache), dropped


@dataclass
class IndexReport:
    indexed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already in the store
    failed: list[tuple[str, str]] = field(default_factory=list)  # (video, one-line reason)
    frames: int = 0
    seconds: float = 0.0
    compress_s: float = 0.0
    decode_wait_s: float = 0.0  # time the GPU side waited for decoded frames

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {"indexed": self.indexed, "skipped": self.skipped,
                "failed": [{"video": v, "error": e} for v, e in self.failed], "frames": self.frames,
                "seconds": round(self.seconds, 3), "frames_per_second": round(self.frames_per_second, 2),
                "compress_s": round(self.compress_s, 3), "gpu_wait_for_decode_s": round(self.decode_wait_s, 3)}


@dataclass
class _Job:
    video: Path
    key: str
    lock: object  # the entered lock context
    frames: Future


def index_videos(qa, store: Store, videos: list[Path], sampling: Sampling, *, decoder: str = "auto",
                 batch_size: int | None = None, prefetch: int = 2,
                 on_start: Callable[[Path, int], None] | None = None,
                 on_frames: Callable[[int], None] | None = None,
                 on_done: Callable[[Path, str], None] | None = None) -> IndexReport:
    """Compress and store every video not yet in the store; never stops for an unreadable one."""
    report = IndexReport()
    sampling = qa.resolve_sampling(sampling)
    settings = cache_settings(qa, sampling)
    t_start = time.perf_counter()
    todo = deque(videos)
    deferred: list[Path] = []  # entries another process is computing right now
    jobs: deque[_Job] = deque()
    pool = ThreadPoolExecutor(max_workers=max(1, prefetch), thread_name_prefix="vidqa-decode")

    def fail(video: Path, e: Exception) -> None:
        report.failed.append((str(video), str(e)))
        if on_done:
            on_done(video, "failed")

    def claim(video: Path, blocking: bool) -> _Job | None:
        """Lock the video's entry and start decoding it; None if it is done, busy or unreadable."""
        try:
            key = store.key(video, settings)
            if stored(qa, store, key, settings) is not None:
                report.skipped.append(str(video))
                if on_done:
                    on_done(video, "skipped")
                return None
            lock = store.lock(key, blocking=blocking)
            try:
                lock.__enter__()
            except CacheLocked:
                deferred.append(video)
                return None
            if stored(qa, store, key, settings) is not None:  # finished by another process meanwhile
                lock.__exit__(None, None, None)
                report.skipped.append(str(video))
                if on_done:
                    on_done(video, "skipped")
                return None
        except VidqaError as e:
            fail(video, e)
            return None
        return _Job(video, key, lock, pool.submit(qa.load_frames, video, sampling, decoder))

    def refill(blocking: bool = False) -> None:
        while len(jobs) < prefetch and todo:
            job = claim(todo.popleft(), blocking)
            if job:
                jobs.append(job)

    # Stores run on a writer thread: serialising, checksumming and fsyncing ~1 MB per frame would
    # otherwise keep the GPU idle between videos. A job's lock is held until its entry is written.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidqa-store")
    writes: deque[tuple[_Job, Future, int]] = deque()

    def store_job(job: _Job, cache: FrameCache, frames) -> None:
        try:
            put(store, job.key, job.video, settings, cache, frames, qa.model_id)
        finally:
            job.lock.__exit__(None, None, None)

    def settle(keep: int) -> None:
        while len(writes) > keep or (writes and writes[0][1].done()):
            job, fut, n = writes.popleft()
            try:
                fut.result()
                report.indexed.append(str(job.video))
                report.frames += n
                if on_done:
                    on_done(job.video, "indexed")
            except VidqaError as e:
                fail(job.video, e)

    try:
        for pass_blocking in (False, True):
            refill(pass_blocking)
            while jobs:
                job = jobs.popleft()
                try:
                    t0 = time.perf_counter()
                    frames = job.frames.result()
                    report.decode_wait_s += time.perf_counter() - t0
                    refill(pass_blocking)  # the next video decodes while this one is compressed
                    if on_start:
                        on_start(job.video, len(frames.indices))
                    timings = Timings()
                    cache = qa.compress(frames, batch_size=batch_size, timings=timings, progress=on_frames)
                    report.compress_s += timings.vision_s + timings.compress_s
                except BaseException as e:  # release the lock, then fail this video or stop
                    job.lock.__exit__(None, None, None)
                    if not isinstance(e, VidqaError):
                        raise
                    fail(job.video, e)
                else:
                    writes.append((job, writer.submit(store_job, job, cache, frames), cache.num_frames))
                settle(keep=1)
                refill(pass_blocking)
            settle(keep=0)  # the waiting pass below must see every entry of this one
            # second pass: wait for the entries other processes held, then take what they left
            todo.extend(deferred)
            deferred.clear()
    finally:
        for job in jobs:  # interrupted: release what was claimed but not started
            job.frames.cancel()
            job.lock.__exit__(None, None, None)
        pool.shutdown(wait=False, cancel_futures=True)
        writer.shutdown(wait=True)  # finished videos are written even on Ctrl-C
        settle(keep=0)
    report.seconds = time.perf_counter() - t_start
    return report

