"""The whole path in one object: load a checkpoint, compress frames, answer questions.

    qa = VideoQA.from_pretrained("path/or/hub-id")
    frames = qa.load_frames("movie.mp4", Sampling(fps=1, max_frames=qa.max_frames(question)))
    cache = qa.compress(frames)              # question-independent: store it, reuse it
    for text in qa.answer(cache, question):  # streamed text deltas
        print(text, end="")

``qa.load_frames`` samples by the method's official rule (unless ``Sampling.rule`` says otherwise)
and fits every frame to the tower's input size as soon as it is decoded (``Sampling.preprocess``:
``official`` by default, or ``fast``), so memory holds model-sized uint8 frames, not source-sized ones.
``compress`` fits frames that are not fitted yet (from ``vidqa.video.load_frames``) batch by batch.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch

from vidqa import checkpoint, fast, quant
from vidqa.errors import ModelError
from vidqa.generate import DecodeStats, Detokenizer, GenerationConfig, StaticDecoder, generate
from vidqa.methods.base import FrameCache, Method, get_method
from vidqa.options import ComputeOptions, ModelOptions
from vidqa.vision import Preprocess, VisionEncoder, fit

if TYPE_CHECKING:  # annotations only: video decoding is not needed to answer from a cache
    from vidqa.video import Frames, Sampling

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r} (use cpu, cuda or cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but torch sees no CUDA GPU")
    return dev


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r} (use {', '.join(sorted(set(DTYPES)))})")
    return DTYPES[dtype]


@dataclass
class Timings:
    vision_s: float = 0.0
    compress_s: float = 0.0
    frames: int = 0
    extra: dict = field(default_factory=dict)


class VideoQA:
    """A method, its vision encoder and tokenizer, and how they run (``compute``)."""

    def __init__(self, method: Method, vision: VisionEncoder, tokenizer, *, model_id: str = "",
                 model_fingerprint: str = "", compute: ComputeOptions | None = None):
        self.method, self.vision, self.tokenizer = method, vision, tokenizer
        self.model_id, self.model_fingerprint = model_id, model_fingerprint
        # None: torch.compile follows ComputeOptions.from_env() at each call (the kernels' own default)
        self.compute = compute
        if compute is not None:
            method.compile_kernels = vision.compile_kernels = compute.compile
            quant.quantize(method, compute.quantize)  # after loading, before any decoder fuses weights
        self.quantize = quant.quantized_mode(method)
        self.device = vision.device
        fast.plan_free_attention(self.device)  # no per-shape cuDNN plans: a new question is not a slow one
        # CUDA-graph decoding where it applies; the transformers path everywhere else
        self.fast = self.device.type == "cuda" and fast.supports(method.llm)
        self._decoder = None

    @property
    def llm(self):
        return self.method.llm

    # ---- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str, *, method: str | None = None, vision_tower: str | None = None,
                        tokens_per_frame: int | None = None, compute: ComputeOptions | None = None,
                        device: str | None = None, dtype: str | None = None) -> "VideoQA":
        """Load a checkpoint (a folder, a built-in demo name, or a hub id) with the method its config names.

        ``compute``: where and how to run (None: ``ComputeOptions.from_env()``); ``device`` and ``dtype``
        override its fields.
        """
        compute = compute or ComputeOptions.from_env()
        compute = dataclasses.replace(compute, **{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
        options = ModelOptions(model=str(model), method=method, vision_tower=vision_tower,
                               tokens_per_frame=tokens_per_frame)
        checkpoint.quiet_transformers()
        dev = pick_device(compute.device)
        dt = pick_dtype(compute.dtype, dev)
        quant.check(compute.quantize, dev, dt)  # before reading any weights
        quant.check_cache_dtype(compute.cache_dtype)
        path = checkpoint.resolve(model)
        cfg = checkpoint.read_config(path)
        method_class = get_method(options.method or checkpoint.detect_method(cfg))
        qa_method, vision, tok = method_class.load(path, cfg, dev, dt, options)
        fp = checkpoint.fingerprint(path, cfg, options.vision_tower)  # its content, the vision tower included
        return cls(qa_method, vision, tok, model_id=str(model), model_fingerprint=fp, compute=compute)

    # ---- frames ------------------------------------------------------------------------------------
    def preprocess_spec(self, still: bool, mode: str | None = None) -> Preprocess:
        """How a frame is fitted to the tower: the method's official path for a still image or a video
        frame (``mode`` None or ``"official"``), or the same geometry with torch's antialiased bicubic
        (``"fast"``)."""
        spec = self.method.preprocess_spec(self.vision.spec, still)
        if mode in (None, "official"):
            return spec
        if mode == "fast":
            return dataclasses.replace(spec, resample="torch")
        raise ModelError(f"unknown preprocessing {mode!r} (use official or fast)")

    def resolve_sampling(self, sampling: Sampling) -> Sampling:
        """``sampling`` with the method's defaults filled in: its official sampling rule and the
        official preprocessing (what a stored cache records)."""
        return dataclasses.replace(sampling, rule=sampling.rule or self.method.sampling_rule,
                                   preprocess=sampling.preprocess or "official")

    def prepare(self, mode: str | None = None) -> Callable[[np.ndarray, bool], np.ndarray]:
        """``prepare(frame, still)`` for ``vidqa.video.load_frames``: one decoded frame to the tower's
        uint8 input (HD-mode still images stay whole: their crops are fitted one by one)."""
        def prepare(frame, still: bool):
            if not self.method.fit_before_views(still):
                return frame
            return fit(frame, self.preprocess_spec(still, mode))
        return prepare

    def load_frames(self, video, sampling: Sampling, decoder: str = "auto", indices=None) -> Frames:
        """The frames this model's cache of ``video`` is made from, fitted to the tower as they decode."""
        from vidqa.video import load_frames

        sampling = self.resolve_sampling(sampling)
        frames = load_frames(video, sampling, decoder=decoder, indices=indices, prepare=self.prepare(sampling.preprocess))
        frames.preprocess = sampling.preprocess
        return frames

    # ---- the two halves --------------------------------------------------------------------------
    def max_frames(self, question: str, max_new_tokens: int = 256, history=()) -> int:
        return self.method.max_frames(question, max_new_tokens, history)

    def cache_meta(self) -> dict:
        meta = {**self.method.cache_meta(), "model": self.model_fingerprint, "dtype": str(self.vision.dtype)}
        return {**meta, **quant.cache_settings(self.quantize, self.method)}

    @torch.inference_mode()
    def compress(self, frames: Frames, batch_size: int | None = None, timings: Timings | None = None,
                 progress: Callable[[int], None] | None = None, offload: bool | None = None,
                 compact: bool | None = None) -> FrameCache:
        """Frames to their question-independent cache, in batches (vision tower, then the method).

        ``offload``: keep the cache in (pinned) CPU memory instead of on the GPU; None decides from
        the first batch: offload when the whole cache would take over a quarter of the free GPU memory.
        ``compact`` (LLaVA-Mini): store the raw vision features instead of the pre-fusion K/V; None
        decides from the first batch: compact when an offloaded K/V cache would take over 40% of the
        available host memory (10,000 frames at 8B: 95 GB of K/V, 12 GB of features). The answer step
        streams either kind to the GPU in chunks.
        """
        can_compact = self.method.supports_compact
        if compact and not can_compact:
            raise ModelError(f"the {self.method.name} method has no compact cache")
        batch_size = batch_size or (self.compute and self.compute.batch_size) or (16 if self.device.type == "cuda" else 4)
        timings = timings if timings is not None else Timings()
        parts: dict[str, list[torch.Tensor]] = {}
        spec = self.preprocess_spec(getattr(frames, "decoder", None) == "image", getattr(frames, "preprocess", None))
        arr = frames.pixels
        n = len(arr)
        cuda = self.device.type == "cuda"

        def staged(i: int) -> torch.Tensor:  # a batch's uint8 frames on the host (pinned: its copy is asynchronous)
            part = arr[i:i + batch_size]
            if cuda and part.dtype == np.uint8:  # one copy, straight into pinned memory
                batch = torch.empty(part.shape, dtype=torch.uint8, pin_memory=True)
                np.copyto(batch.numpy(), part)
                return batch
            batch = torch.from_numpy(part.copy())  # decoders may hand out read-only arrays
            return batch.pin_memory() if cuda else batch

        nxt = None
        for i in range(0, n, batch_size):
            t0 = time.perf_counter()
            # one batch at a time: frames not fitted yet (vidqa.video.load_frames) are fitted here
            batch = nxt if nxt is not None else staged(i)
            if cuda:  # the vision/compression split of the batch's time, without a synchronisation between them
                marks = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                marks[0].record(torch.cuda.current_stream(self.device))
            feats = self.features(batch, batch_size, spec)
            if cuda:
                marks[1].record(torch.cuda.current_stream(self.device))
            t1 = time.perf_counter()
            out = self.method.compress(feats, compact=True) if compact else self.method.compress(feats)
            # the next batch's host copy while the GPU works on this one, which idled through it before (VoCo-7B
            # fp8 on an H200, 64 frames in batches of 32: 0.13 ms/frame of GPU idle time left, session 12)
            nxt = staged(i + batch_size) if i + batch_size < n else None
            if offload is None or compact is None:
                per_frame = sum(v.numel() * v.element_size() for v in out.values()) / feats.shape[0]
                total = per_frame * n
                if offload is None:
                    offload = self.device.type == "cuda" and total > 0.25 * torch.cuda.mem_get_info(self.device)[0]
                if compact is None:
                    compact = bool(can_compact and (offload or self.device.type == "cpu") and total > 0.4 * host_available())
                    if compact:
                        out = self.method.compress(feats, compact=True)
            for k, v in out.items():
                if offload:
                    v = v.to("cpu")
                    v = v.pin_memory() if torch.cuda.is_available() else v
                parts.setdefault(k, []).append(v)
            self._sync()
            wall = time.perf_counter() - t0
            vision = min(wall, marks[0].elapsed_time(marks[1]) / 1000 if cuda else t1 - t0)
            timings.vision_s += vision
            timings.compress_s += wall - vision
            timings.frames += feats.shape[0]
            if progress:
                progress(feats.shape[0])
        tensors = {k: torch.cat(v) for k, v in parts.items()}
        if offload and self.device.type == "cuda":
            # the cache went to the host: hand the compression's cached GPU blocks back, so that the
            # question that follows (which streams the cache back in chunks) starts from its own needs
            torch.cuda.empty_cache()
        meta = {**self.cache_meta(), "frame_indices": [int(i) for i in getattr(frames, "indices", range(n))]}
        if can_compact:
            meta["cache_kind"] = "features" if compact else "kv"
        return FrameCache(self.method.name, tensors, [float(t) for t in frames.timestamps],
                          self.method.tokens_per_frame, meta)

    def features(self, pixels: torch.Tensor, batch_size: int, spec: Preprocess | None = None) -> torch.Tensor:
        """Vision features of uint8 frames: ``[T, P, C]`` for one view per frame, else ``[T, V, P, C]``
        (the method's ``views``, e.g. LLaVA-Mini's HD crops, each through the tower on its own).
        ``spec``: how frames not at the tower's size are fitted (default: the config's)."""
        views = self.method.views(pixels)
        if len(views) == 1:
            return self.vision.encode(views[0], batch_size=batch_size, spec=spec)
        return torch.stack([self.vision.encode(v, batch_size=batch_size, spec=spec) for v in views], dim=1)

    def answer(self, cache: FrameCache, question: str, gen: GenerationConfig = GenerationConfig(),
               stats: DecodeStats | None = None, history: list[tuple[str, str]] = ()) -> Iterator[str]:
        """Stream the answer's text, delta by delta. ``history``: earlier (question, answer) turns."""
        for _, delta in self.tokens(cache, question, gen, stats, history):
            if delta:
                yield delta

    def tokens(self, cache: FrameCache, question: str, gen: GenerationConfig = GenerationConfig(),
               stats: DecodeStats | None = None, history: list[tuple[str, str]] = (), *,
               cancel: Callable[[], bool] | None = None, timings: dict | None = None) -> Iterator[tuple[int, str]]:
        """The answer token by token, as ``(token id, text delta)`` (a delta may be empty: a token that
        ends inside a character). The one token loop behind ``answer`` and ``vidqa serve``.

        ``cancel``: asked before each token; once it returns True the answer stops (the generator
        returns, and the decoder is free again). ``timings``: a dict that gets ``prefill_s``, the
        method's prefill (the frames to the LLM's inputs: any host-to-device copy of the cache and
        LLaVA-Mini's pre-fusion), synchronised; ``stats.prefill_s`` is the LLM's part after it.
        """
        if cache.meta.get("model") not in (None, self.model_fingerprint):
            raise ModelError("this frame cache was made by another model; recompute it")
        t0 = time.perf_counter()
        prefill = self.method.prefill(cache, question, history)  # moves what it needs to the device
        if timings is not None:
            self._sync()
            timings["prefill_s"] = time.perf_counter() - t0
        past = prefill.past_key_values.get_seq_length() if prefill.past_key_values is not None else 0
        decoder = self.decoder(past + prefill.position_ids.shape[1] + gen.max_new_tokens)
        detok = Detokenizer(self.tokenizer, self.method.answer_prefix)
        steps = generate(self.llm, prefill, gen, self.method.stop_ids, stats, decoder=decoder)
        try:
            for token in steps:
                if cancel is not None and cancel():
                    return
                yield token, detok.push(token)
        finally:
            steps.close()

    def decoder(self, needed: int):
        """A static-cache CUDA-graph decoder with room for ``needed`` tokens, reused across questions.

        Its capacity is rounded up to 256 and rebuilt when too small or more than 4x too large (every
        step reads the whole capacity's K/V, so an oversized one costs bandwidth).
        """
        if not self.fast:
            return None
        d = self._decoder
        if d is None or d.capacity < needed or d.capacity > 4 * max(needed, 256):
            self._decoder = None
            compute = self.compute or ComputeOptions.from_env()
            compile = compute.compile or (self.quantize != "none" and compute.compile_quantized)
            self._decoder = StaticDecoder(self.llm, 256 * -(-needed // 256), compile=compile)
        return self._decoder

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def host_available() -> int:
    """Bytes of host memory available now (Linux /proc/meminfo; else a large number: no compaction)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 50
