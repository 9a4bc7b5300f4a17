"""The resident engine behind ``vidqa serve``: one loaded ``VideoQA``, kept warm, and three lanes of work.

- **lookup** (a few threads): checks the request's file, probes it, and finds its frame cache in
  memory (``FrameLRU``) or in the store. Reading a stored cache never waits behind a compression.
- **compress** (one thread): decodes and compresses a video that has no stored cache (and stores it).
- **answer** (one thread): prefill and decoding, one request at a time, from start to end. Requests
  wait in this lane's queue (first come, first served), so no two answers ever share the decoder's
  static KV cache or interleave in one another's caches, and a long compression in the compress
  lane does not hold up a question on an indexed video. ``search`` runs in this lane too.

An answer checks a cancel flag between tokens: a client that goes away frees the lane at the next
token. Frame caches are kept under two budgets, least recently used first out: GPU memory (caches
already on the device skip the host-to-device copy) and host memory (evicted from the GPU tier).

``warm_up`` runs before the server says it is ready: a batch through the vision tower and the
compression, and a question on ``warmup_frames`` frames with the default answer budget, so that the
CUDA-graph decoder is captured (and, with compile on, the compiled code built) at the size a long
video needs, before the first request.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import warnings
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from vidqa import library, search
from vidqa.errors import ContextError, ModelError, VideoError, VidqaError
from vidqa.framecache import FrameCache
from vidqa.generate import DecodeStats, GenerationConfig
from vidqa.serve.schema import ChatRequest, RequestError, SearchRequest
from vidqa.store import CacheWarning

WARMUP_QUESTION = "what is in this video?"
PRELOAD = 32  # stored caches read into memory at start, at most (newest first, within the budgets)


def _index(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def _on(cache: FrameCache, device: torch.device) -> bool:
    """Every tensor of ``cache`` is on ``device`` (``cuda`` and ``cuda:N`` of the current device are one)."""
    device = torch.device(device)
    return all(v.device.type == device.type and _index(v.device) == _index(device) for v in cache.tensors.values())


def to_host(cache: FrameCache, pin: bool = True) -> FrameCache:
    """``cache`` in host memory, page-locked where CUDA is there and ``pin`` (so that copies to the GPU
    run at full speed and asynchronously); pageable when pinning fails (no CUDA, or locked memory
    exhausted). A server on the CPU does not pin: pinning would start CUDA for nothing."""
    tensors = {}
    for k, v in cache.tensors.items():
        v = v.to("cpu")
        if pin and torch.cuda.is_available() and not v.is_pinned():
            try:
                v = v.pin_memory()
            except RuntimeError:  # silently pageable: slower copies, same results
                pass
        tensors[k] = v
    return FrameCache(cache.method, tensors, list(cache.timestamps), cache.tokens_per_frame, dict(cache.meta))


def auto_gpu_bytes(device: torch.device, share: float = 0.6) -> int:
    """The GPU tier's budget for ``--cache-gpu-gb auto``: ``share`` of the GPU memory free now (call it
    after warm-up: the weights, CUDA graphs and a long question's activations are then accounted
    for), counting blocks torch holds but does not use as free. 0 on a CPU device."""
    device = torch.device(device)
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    idle = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(share * (free + max(0, idle)))


class FrameLRU:
    """Frame caches by key under a GPU budget and a host budget (bytes), least recently used out first.

    A cache that fits the GPU budget is kept on ``device``; the GPU tier's oldest entries move to the
    host tier, whose oldest entries are dropped. On a CPU device there is only the host tier. The
    host tier is page-locked memory where CUDA is there (``to_host``).
    """

    def __init__(self, device: torch.device, gpu_bytes: int, host_bytes: int):
        self.device = torch.device(device)
        self.gpu_bytes = gpu_bytes if self.device.type == "cuda" else 0
        self.host_bytes = host_bytes
        self.gpu: OrderedDict[object, FrameCache] = OrderedDict()
        self.host: OrderedDict[object, FrameCache] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _size(tier: OrderedDict) -> int:
        return sum(c.nbytes for c in tier.values())

    def get(self, key) -> FrameCache | None:
        with self._lock:
            for tier in (self.gpu, self.host):
                if key in tier:
                    tier.move_to_end(key)
                    return tier[key]
        return None

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self.gpu or key in self.host

    def fits(self, nbytes: int) -> bool:
        return nbytes <= max(self.gpu_bytes, self.host_bytes)

    def put(self, key, cache: FrameCache) -> None:
        with self._lock:
            self.gpu.pop(key, None)
            self.host.pop(key, None)
            if cache.nbytes <= self.gpu_bytes:
                self.gpu[key] = cache if _on(cache, self.device) else cache.to(self.device, non_blocking=True)
                while self._size(self.gpu) > self.gpu_bytes:
                    k, old = self.gpu.popitem(last=False)
                    self.host[k] = to_host(old)
            elif cache.nbytes <= self.host_bytes:
                self.host[key] = to_host(cache, pin=self.device.type == "cuda")
            while self.host and self._size(self.host) > self.host_bytes:
                self.host.popitem(last=False)

    def stats(self) -> dict:
        with self._lock:
            return {"gpu_entries": len(self.gpu), "gpu_bytes": self._size(self.gpu), "host_entries": len(self.host),
                    "host_bytes": self._size(self.host), "gpu_budget": self.gpu_bytes, "host_budget": self.host_bytes}


@dataclass
class Prepared:
    """A request's frames, ready to answer from."""

    video: Path
    cache: FrameCache | None = None
    from_cache: bool = False  # from memory or the store: nothing was compressed
    notes: list[str] = field(default_factory=list)
    info: object = None
    budget: int = 0
    key: tuple = ()  # the request's memory key: file, size, mtime, sampling, frame budget
    frames_s: float = 0.0  # lookup (memory or store) and, on a miss, compression


@dataclass
class Split:
    """Where an answer's time to first token went (seconds, from the start of the answer lane's work)."""

    copy_s: float = 0.0  # the frame cache from the host tier to the GPU (0 when it was there already)
    prefill_s: float = 0.0  # the method's prefill: frames to the LLM's inputs (LLaVA-Mini: the pre-fusion)
    first_token_s: float = 0.0  # the LLM's prefill forward and the first token's sampling
    frames_on: str = ""  # where the cache was when the answer started: "device" (the model's) or "host"

    @property
    def total_s(self) -> float:
        return self.copy_s + self.prefill_s + self.first_token_s


@dataclass
class Answer:
    text: str
    stats: DecodeStats
    frames: int
    history_dropped: int = 0
    split: Split = field(default_factory=Split)


class Cancelled(Exception):
    """The client went away; the answer stopped early."""


def within(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


class Engine:
    """One resident model and its lanes. ``answer``/``prepare``/``search`` are blocking; the app runs
    them in the lanes (``lane_*`` executors)."""

    def __init__(self, qa, store=None, *, allow_roots: Iterable[str | os.PathLike] | None = None,
                 cache_gpu_bytes: int | None = None, cache_host_bytes: int = 16 << 30, decoder: str = "auto",
                 batch_size: int | None = None, warmup_frames: int = 1000, default_max_tokens: int = 256,
                 lookup_threads: int = 4, preload: int = PRELOAD):
        self.qa, self.store = qa, store
        roots = list(allow_roots) if allow_roots else [Path.cwd()]
        self.allow_roots = [Path(r).expanduser().resolve() for r in roots]
        # cache_gpu_bytes None: "auto", a share of the GPU memory free after warm-up (auto_gpu_bytes)
        self.gpu_auto = cache_gpu_bytes is None
        self.memory = FrameLRU(qa.device, 0 if cache_gpu_bytes is None else cache_gpu_bytes, cache_host_bytes)
        self.preload_limit = preload
        self.preloaded: list[str] = []  # store keys read into memory at start
        self._entry_of: dict[tuple, str] = {}  # (file, size, mtime, sampling) -> its store key
        self.decoder, self.batch_size = decoder, batch_size
        self.warmup_frames, self.default_max_tokens = warmup_frames, default_max_tokens
        self.lane_lookup = ThreadPoolExecutor(lookup_threads, thread_name_prefix="vidqa-lookup")
        self.lane_compress = ThreadPoolExecutor(1, thread_name_prefix="vidqa-compress")
        self.lane_answer = ThreadPoolExecutor(1, thread_name_prefix="vidqa-answer")
        self.ready = False
        self.started = time.time()
        self.warmup_s: float | None = None
        self._compressing: dict[tuple, Future] = {}
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.qa.model_id

    # ---- start and stop ------------------------------------------------------------------------
    def warm_up(self) -> float:
        """Compress one batch of blank frames and answer once on ``warmup_frames`` of them (see the
        module docstring); then ``ready``. Returns the seconds it took."""
        t0 = time.perf_counter()
        if self.warmup_frames > 0:
            qa = self.qa
            n = self.batch_size or (16 if qa.device.type == "cuda" else 1)
            frames = SimpleNamespace(pixels=np.zeros((n, 64, 64, 3), np.uint8), timestamps=[float(i) for i in range(n)],
                                     indices=list(range(n)))
            one = qa.compress(frames, batch_size=n).select([0])
            room = qa.max_frames(WARMUP_QUESTION, self.default_max_tokens)
            cache = one.select([0] * max(1, min(self.warmup_frames, room)))
            # the default answer budget sizes the decoder as a real request will; four tokens capture its step
            req = ChatRequest(video="", question=WARMUP_QUESTION, max_tokens=self.default_max_tokens)
            self.answer(Prepared(Path(), cache), req, stop_after=4)
            if qa.device.type == "cuda":
                torch.cuda.synchronize(qa.device)
        if self.gpu_auto:
            self.memory.gpu_bytes = auto_gpu_bytes(self.qa.device)
        if self.preload_limit > 0 and self.store is not None:
            self.preload(self.preload_limit)
        self.warmup_s = time.perf_counter() - t0
        self.ready = True
        return self.warmup_s

    def preload(self, limit: int) -> list[str]:
        """Read this model's newest stored caches into memory (at most ``limit``, within the budgets),
        so that the first question on a recently used video is as fast as the tenth. Entries of other
        models (or other settings of this one) are never read; a corrupt entry is skipped with one
        warning. Returns the keys it loaded."""
        from vidqa.store.keys import check_settings
        from vidqa.video import Sampling

        qa, store = self.qa, self.store
        ours = {k: v for k, v in check_settings(library.cache_settings(qa, Sampling())).items() if k != "sampling"}
        room = self.memory.gpu_bytes + self.memory.host_bytes
        picked = []
        for e in sorted(store.entries(), key=lambda e: e.created, reverse=True):  # newest first
            if len(picked) >= limit or room <= 0:
                break
            if e.method != qa.method.name or e.tokens_per_frame != qa.method.tokens_per_frame or e.bytes > room:
                continue
            record = store.metadata(e.key) or {}
            settings = record.get("settings")
            if not isinstance(settings, dict) or {k: v for k, v in settings.items() if k != "sampling"} != ours:
                continue  # another model's (or this model's with other settings): not even read
            picked.append((e.key, settings))
            room -= e.bytes
        for key, settings in reversed(picked):  # oldest first in: the newest end up most recently used
            try:
                cache = library.stored(qa, store, key, settings)  # a corrupt entry: warned about, removed, None
            except Exception as ex:  # noqa: BLE001 (a start must not fail on one bad entry)
                warnings.warn(CacheWarning(f"cache entry {key[:12]} could not be preloaded ({ex}); skipped"),
                              stacklevel=2)
                continue
            if cache is not None and self.memory.fits(cache.nbytes):
                self.memory.put(("entry", key), cache)
                self.preloaded.append(key)
        return self.preloaded

    def close(self) -> None:
        for lane in (self.lane_lookup, self.lane_compress, self.lane_answer):
            lane.shutdown(wait=False, cancel_futures=True)

    # ---- files ---------------------------------------------------------------------------------
    def check_path(self, path: str) -> Path:
        """The resolved file, if it lies under an allowed root and exists (403 / 404 otherwise)."""
        p = Path(path).expanduser()
        if not p.is_absolute():
            raise RequestError(400, f"the file path must be absolute: {path}", param="messages")
        real = p.resolve()
        if not within(real, self.allow_roots):
            raise RequestError(403, f"{path} is outside the folders this server may read (--allow-root)",
                               type="permission_error", code="path_not_allowed")
        if not real.is_file():
            raise RequestError(404, f"no such file: {path}", type="not_found_error", code="file_not_found")
        return real

    # ---- frames --------------------------------------------------------------------------------
    def _budget(self, req: ChatRequest) -> int:
        if req.chat or req.history:
            return self.qa.max_frames("", req.max_tokens)
        return self.qa.max_frames(req.question, req.max_tokens)

    def lookup(self, video: Path, req: ChatRequest) -> Prepared:
        """Memory, then the store; ``cache`` stays None when the video must be compressed."""
        from vidqa.video import plan, probe

        t0 = time.perf_counter()
        prep = Prepared(video)
        prep.info = probe(video)
        prep.budget = self._budget(req)
        sampling = req.frames.sampling()
        st = video.stat()
        prep.key = (str(video), st.st_size, st.st_mtime_ns, dataclasses.astuple(sampling), prep.budget)
        planned = len(plan(prep.info, sampling))
        if planned > prep.budget:
            prep.notes.append(f"{planned} frames do not fit the context with this question; using {prep.budget}, "
                              "sampled uniformly")
        cache = self.memory.get(prep.key)  # a cache this server computed for the same request shape
        if cache is None and self.store is not None:
            # stored caches live in memory under their store key (preloaded ones too), whole: thinned per request
            settings = library.cache_settings(self.qa, sampling)
            file_key = prep.key[:4]
            entry = self._entry_of.get(file_key)
            if entry is None:
                entry = self._entry_of[file_key] = self.store.key(video, settings)  # the content hash is memoised
            full = self.memory.get(("entry", entry))
            if full is None:
                full = library.stored(self.qa, self.store, entry, settings)
                if full is not None:
                    full = self._keep_entry(entry, full)
            if full is not None:
                cache = library.thin(full, prep.budget) if planned > prep.budget else full
        if cache is not None:
            prep.cache, prep.from_cache = cache, True
        prep.frames_s = time.perf_counter() - t0
        return prep

    def compute(self, prep: Prepared, req: ChatRequest) -> Prepared:
        """Decode and compress (and store) the video of ``prep``; in the compress lane."""
        t0 = time.perf_counter()
        cache = self.memory.get(prep.key)  # another request for the same video may have made it meanwhile
        if cache is None:
            cache, hit = library.video_cache(self.qa, prep.video, req.frames.sampling(), prep.info, prep.budget,
                                             store=self.store, decoder=self.decoder, batch_size=self.batch_size)
            prep.from_cache = hit
            self.memory.put(prep.key, cache)
            cache = self.memory.get(prep.key) or cache
        else:
            prep.from_cache = True
        prep.cache = cache
        prep.frames_s += time.perf_counter() - t0
        return prep

    def prepare(self, req: ChatRequest) -> Prepared:
        """``lookup`` then, on a miss, ``compute`` (blocking, on the calling thread)."""
        prep = self.lookup(self.check_path(req.video), req)
        return prep if prep.cache is not None else self.compute(prep, req)

    # ---- answers -------------------------------------------------------------------------------
    def answer(self, prep: Prepared, req: ChatRequest, emit: Callable[[str], None] | None = None,
               cancel: threading.Event | None = None, on_first: Callable[[], None] | None = None,
               stop_after: int | None = None) -> Answer:
        """Answer ``req`` from ``prep``'s frames; ``emit`` hears each text delta, ``on_first`` the first
        token (even one that is not yet text). Raises ``Cancelled`` when ``cancel`` is set (checked at
        every token). The token loop is ``VideoQA.tokens``, the one ``vidqa ask`` runs."""
        qa = self.qa
        gen = GenerationConfig(max_new_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                               seed=req.seed)
        history = list(req.history)
        cache, dropped = prep.cache, 0
        if req.chat or history:
            cache, dropped = library.fit_turn(qa, cache, req.question, req.max_tokens, history)
        if cache.meta.get("model") not in (None, qa.model_fingerprint):
            raise ModelError("this frame cache was made by another model; recompute it")
        split = Split(frames_on="device" if _on(cache, qa.device) else "host")
        cache, split.copy_s = self._to_gpu(cache)
        stats, timings = DecodeStats(), {}
        out: list[str] = []
        steps = qa.tokens(cache, req.question, gen, stats, history,
                          cancel=cancel.is_set if cancel is not None else None, timings=timings)
        try:
            for _token, delta in steps:
                if stats.tokens == 1:
                    split.prefill_s, split.first_token_s = timings.get("prefill_s", 0.0), stats.prefill_s
                    if on_first is not None:
                        on_first()
                if stop_after is not None and stats.tokens > stop_after:
                    break
                if delta:
                    out.append(delta)
                    if emit is not None:
                        emit(delta)
        finally:
            steps.close()
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if stats.tokens == 0:  # stopped at once (a stop token first)
            split.prefill_s, split.first_token_s = timings.get("prefill_s", 0.0), stats.prefill_s
        return Answer("".join(out), stats, cache.num_frames, dropped, split)

    def _keep_entry(self, key, cache: FrameCache) -> FrameCache:
        """A stored cache just read (by ``lookup`` or a search), kept in memory under the budgets; returns
        the copy to use (the memory's, on the GPU tier where it fits)."""
        self.memory.put(("entry", key), cache)
        return self.memory.get(("entry", key)) or cache

    def _to_gpu(self, cache: FrameCache) -> tuple[FrameCache, float]:
        """A host-tier cache copied to the GPU whole (from pinned memory: at full speed) when it fits in
        half the free GPU memory, with the seconds it took; else as it is (the method then streams it in
        chunks inside its prefill)."""
        dev = self.qa.device
        if dev.type != "cuda" or _on(cache, dev):
            return cache, 0.0
        free, _ = torch.cuda.mem_get_info(dev)
        if cache.nbytes > 0.5 * free:
            return cache, 0.0
        t0 = time.perf_counter()
        moved = cache.to(dev, non_blocking=True)
        torch.cuda.synchronize(dev)
        return moved, time.perf_counter() - t0

    # ---- search --------------------------------------------------------------------------------
    def search(self, req: SearchRequest) -> dict:
        videos = [self.check_path(v) for v in req.videos]
        if self.store is None:
            raise RequestError(400, "this server runs without a cache store (--no-cache): nothing is indexed")
        sampling = req.frames.sampling()
        named, missing = search.indexed(self.qa, self.store, videos, sampling,
                                        hot=lambda key: self.memory.get(("entry", key)),  # hot caches: no read
                                        keep=self._keep_entry)  # read ones stay for the next request

        hits = search.rank(self.qa, named, req.query, top_k=req.top_k, template=req.template,
                           evidence=req.evidence) if named else []
        return {"object": "list", "query": req.query, "data": [h.as_dict() for h in hits], "not_indexed": missing}


def status_of(e: BaseException) -> RequestError:
    """The HTTP error for an exception raised while serving a request."""
    if isinstance(e, RequestError):
        return e
    if isinstance(e, ContextError):
        return RequestError(400, str(e), code="context_length_exceeded", param="messages")
    if isinstance(e, VideoError):
        return RequestError(422, str(e), code="unreadable_video")
    if isinstance(e, (ModelError, VidqaError)):
        return RequestError(400, str(e))
    msg = str(e).splitlines()[0] if str(e) else ""
    return RequestError(500, f"internal error: {type(e).__name__}: {msg}", type="server_error", code="internal_error")
