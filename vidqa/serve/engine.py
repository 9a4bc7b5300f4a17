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
from vidqa.generate import DecodeStats, Detokenizer, GenerationConfig, generate
from vidqa.serve.schema import ChatRequest, RequestError, SearchRequest

WARMUP_QUESTION = "what is in this video?"


class FrameLRU:
    """Frame caches by key under a GPU budget and a host budget (bytes), least recently used out first.

    A cache that fits the GPU budget is kept on ``device``; the GPU tier's oldest entries move to the
    host tier, whose oldest entries are dropped. On a CPU device there is only the host tier.
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

    def put(self, key, cache: FrameCache) -> None:
        with self._lock:
            self.gpu.pop(key, None)
            self.host.pop(key, None)
            if cache.nbytes <= self.gpu_bytes:
                self.gpu[key] = cache.to(self.device)
                while self._size(self.gpu) > self.gpu_bytes:
                    k, old = self.gpu.popitem(last=False)
                    self.host[k] = old.to("cpu")
            elif cache.nbytes <= self.host_bytes:
                self.host[key] = cache.to("cpu")
            while self.host and self._size(self.host) > self.host_bytes:
                self.host.popitem(last=False)

    def stats(self) -> dict:
        with self._lock:
            return {"gpu_entries": len(self.gpu), "gpu_bytes": self._size(self.gpu), "host_entries": len(self.host),
                    "host_bytes": self._size(self.host)}


@dataclass
class Prepared:
    """A request's frames, ready to answer from."""

    video: Path
    cache: FrameCache | None = None
    from_cache: bool = False  # from memory or the store: nothing was compressed
    notes: list[str] = field(default_factory=list)
    info: object = None
    budget: int = 0
    key: tuple = ()
    frames_s: float = 0.0


@dataclass
class Answer:
    text: str
    stats: DecodeStats
    frames: int
    history_dropped: int = 0


class Cancelled(Exception):
    """The client went away; the answer stopped early."""


def within(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


class Engine:
    """One resident model and its lanes. ``answer``/``prepare``/``search`` are blocking; the app runs
    them in the lanes (``lane_*`` executors)."""

    def __init__(self, qa, store=None, *, allow_roots: Iterable[str | os.PathLike] | None = None,
                 cache_gpu_bytes: int = 4 << 30, cache_host_bytes: int = 16 << 30, decoder: str = "auto",
                 batch_size: int | None = None, warmup_frames: int = 1000, default_max_tokens: int = 256,
                 lookup_threads: int = 4):
        self.qa, self.store = qa, store
        roots = list(allow_roots) if allow_roots else [Path.cwd()]
        self.allow_roots = [Path(r).expanduser().resolve() for r in roots]
        self.memory = FrameLRU(qa.device, cache_gpu_bytes, cache_host_bytes)
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
        self.warmup_s = time.perf_counter() - t0
        self.ready = True
        return self.warmup_s

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
        cache = self.memory.get(prep.key)
        if cache is None and self.store is not None:
            settings = library.cache_settings(self.qa, sampling)
            if planned > prep.budget:
                full = library.stored(self.qa, self.store, self.store.key(video, settings), settings)
                cache = library.thin(full, prep.budget) if full is not None else None
            else:
                cache = library.stored(self.qa, self.store, self.store.key(video, settings), settings)
            if cache is not None:
                self.memory.put(prep.key, cache)
                cache = self.memory.get(prep.key) or cache
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
        every token). The steps of ``VideoQA.answer``, token by token."""
        qa = self.qa
        gen = GenerationConfig(max_new_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                               seed=req.seed)
        history = list(req.history)
        cache, dropped = prep.cache, 0
        if req.chat or history:
            cache, dropped = library.fit_turn(qa, cache, req.question, req.max_tokens, history)
        if cache.meta.get("model") not in (None, qa.model_fingerprint):
            raise ModelError("this frame cache was made by another model; recompute it")
        stats = DecodeStats()
        prefill = qa.method.prefill(cache, req.question, history)
        past = prefill.past_key_values.get_seq_length() if prefill.past_key_values is not None else 0
        decoder = qa.decoder(past + prefill.position_ids.shape[1] + gen.max_new_tokens)
        detok = Detokenizer(qa.tokenizer, qa.method.answer_prefix)
        out: list[str] = []
        tokens = generate(qa.llm, prefill, gen, qa.method.stop_ids, stats, decoder=decoder)
        try:
            for token in tokens:
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                if stats.tokens == 1 and on_first is not None:
                    on_first()
                if stop_after is not None and stats.tokens > stop_after:
                    break
                delta = detok.push(token)
                if delta:
                    out.append(delta)
                    if emit is not None:
                        emit(delta)
        finally:
            tokens.close()
        return Answer("".join(out), stats, cache.num_frames, dropped)

    # ---- search --------------------------------------------------------------------------------
    def search(self, req: SearchRequest) -> dict:
        videos = [self.check_path(v) for v in req.videos]
        if self.store is None:
            raise RequestError(400, "this server runs without a cache store (--no-cache): nothing is indexed")
        sampling = req.frames.sampling()
        named, missing = search.indexed(self.qa, self.store, videos, sampling)
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
