"""Features to per-frame caches: the interface every compression method implements, and the registry.

A method turns the raw vision features of a batch of frames into a ``FrameCache`` that does not
depend on the question (so it can be computed once and stored), and later turns a cache plus a
question into a ``Prefill``: what the LLM must run before it decodes the answer.

``Method`` declares everything ``vidqa.pipeline.VideoQA`` uses of a method, and the pipeline uses
nothing else. It is an abstract base class rather than a Protocol because methods share defaults
(one view per frame, no compact cache, no answer prefix) and are looked up and built by class
(``Method.load``) through the registry; a subclass that misses an abstract method fails when it is
built, not in the middle of an answer.

Implementations register themselves by name with ``@register``: ``voco`` (``vidqa.methods.voco``:
the LLM distils each frame into VoCo tokens' K/V), ``mini`` (``vidqa.methods.mini``: a query
compressor plus modality pre-fusion layers), ``pool`` (``vidqa.methods.pool``: each frame's features
averaged and mapped to one token). ``get_method(name)`` imports the built-in method modules on first use
(``BUILTIN_MODULES``), so that importing ``FrameCache`` (the cache store does) loads no model code.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from vidqa.errors import ModelError
from vidqa.framecache import FrameCache  # noqa: F401 (re-exported: part of the method interface)
from vidqa.options import ModelOptions
from vidqa.vision import Preprocess, VisionEncoder


@dataclass
class Prefill:
    """What the LLM runs before decoding: prompt tokens (or embeddings) at explicit positions on a cache."""

    past_key_values: Any  # a transformers Cache, or None
    position_ids: torch.Tensor  # [1, L]
    input_ids: torch.Tensor | None = None  # [1, L]
    inputs_embeds: torch.Tensor | None = None  # [1, L, D]


class Method(nn.Module, ABC):
    """A compression method: what ``VideoQA`` calls, and all it calls.

    Attributes every method sets: ``llm`` (the causal LM that prefills and decodes; Llama-shaped for
    the CUDA-graph decoder), ``tokenizer``, ``tokens_per_frame`` (LLM context positions per frame).
    """

    name: ClassVar[str]
    supports_compact: ClassVar[bool] = False  # compress(..., compact=True) gives a smaller cache
    answer_prefix: ClassVar[str | None] = None  # text the model writes before its answer (not shown)
    # the LLM's own layers compress every frame (wide matmuls), not only prefill and decode: vidqa.quant
    # gives them the int4 format made for wide matmuls (VoCo; LLaVA-Mini compresses in its pre-fusion layers)
    llm_compresses: ClassVar[bool] = False
    llm: nn.Module
    tokenizer: Any
    tokens_per_frame: int
    compile_kernels: bool | None = None  # torch.compile the fused kernels; None: ``ComputeOptions.from_env()``

    @classmethod
    @abstractmethod
    def load(cls, path: Path, cfg: dict[str, Any], device: torch.device, dtype: torch.dtype,
             options: ModelOptions) -> tuple["Method", VisionEncoder, Any]:
        """The method, its vision encoder and its tokenizer from a checkpoint directory and its config."""

    # The frame-sampling rule of the method's official evaluation (vidqa.video's Sampling.rule):
    # "midpoint" (vidqa's own; VoCo published no video code) or "seq" (LLaVA-Mini's get_seq_frames).
    sampling_rule: ClassVar[str] = "midpoint"

    def preprocess_spec(self, spec: Preprocess, still: bool) -> Preprocess:
        """How a frame is fitted to the tower in the method's official pipeline.

        ``spec`` is the config's image path (LLaVA's ``process_images``: ``image_aspect_ratio`` pad
        or the CLIP processor's crop, PIL bicubic); ``still`` is True for a still image. The default
        uses it for video frames too (LLaVA-1.5 style, as VoCo-LLaMA); a method whose official video
        path differs overrides this.
        """
        return spec

    def fit_before_views(self, still: bool) -> bool:
        """Whether a decoded frame is fitted to the tower's input as it decodes (True), or kept at its
        source resolution because ``views`` crops it first (LLaVA-Mini's HD still images)."""
        return True

    def views(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The views of uint8 frames ``[T, H, W, 3]`` that each go through the vision tower on their own.

        One view (the frames) by default; ``compress`` then gets features ``[T, P, C]``. With several
        views it gets ``[T, V, P, C]`` (LLaVA-Mini's HD mode: r*r crops, then the whole frame).
        """
        return [pixels]

    @abstractmethod
    def compress(self, features: torch.Tensor, compact: bool = False) -> dict[str, torch.Tensor]:
        """Raw vision features of B frames to their cache tensors (frame axis first).

        ``compact=True`` (only where ``supports_compact``): a smaller cache that costs more per
        question (``VideoQA.compress`` chooses it for very long videos).
        """

    @abstractmethod
    def cache_meta(self) -> dict[str, Any]:
        """What a cache must agree on with the model that reads it (method, positions, prefix ids)."""

    @abstractmethod
    def prompt_ids(self, question: str, history: Sequence[tuple[str, str]] = ()) -> list[int]:
        """The prompt tokens that go with the frames (``history``: earlier (question, answer) turns)."""

    @abstractmethod
    def max_frames(self, question: str, max_new_tokens: int, history: Sequence[tuple[str, str]] = ()) -> int:
        """How many frames fit the context with this question and answer budget (ContextError if none)."""

    @abstractmethod
    def prefill(self, cache: FrameCache, question: str, history: Sequence[tuple[str, str]] = ()) -> Prefill:
        """The LLM's input for a question on a cache (moved to the LLM's device)."""

    def prefill_batch(self, caches: Sequence[FrameCache], question: str) -> Prefill:
        """``prefill`` of one question on caches of equal frame counts, as one batch (batch axis first).

        The default runs ``prefill`` per cache and stacks the results; a method with a cheaper batched
        form (one re-layout of the stacked cache tensors, the prompt encoded once) overrides it with the
        same result. ``vidqa search`` scores a library through it.
        """
        return stack_prefills([self.prefill(c, question) for c in caches])

    @property
    @abstractmethod
    def stop_ids(self) -> set[int]:
        """Token ids that end the answer."""


def stack_prefills(prefills: Sequence[Prefill]) -> Prefill:
    """Prefills of equal length and positions as one batch (their caches concatenated on the batch axis)."""
    from transformers import DynamicCache

    per = [[] if p.past_key_values is None or p.past_key_values.get_seq_length() == 0 else
           [(layer.keys, layer.values) for layer in p.past_key_values.layers] for p in prefills]
    kv = DynamicCache()
    for i in range(len(per[0])):
        kv.update(torch.cat([p[i][0] for p in per]), torch.cat([p[i][1] for p in per]), i)
    first = prefills[0]
    ids = torch.cat([p.input_ids for p in prefills]) if first.input_ids is not None else None
    embeds = torch.cat([p.inputs_embeds for p in prefills]) if first.inputs_embeds is not None else None
    return Prefill(past_key_values=kv, position_ids=first.position_ids.expand(len(prefills), -1),
                   input_ids=ids, inputs_embeds=embeds)


# ---- the registry ---------------------------------------------------------------------------------

METHODS: dict[str, type[Method]] = {}
# Modules that register the built-in methods; imported by ``get_method`` and ``method_names`` on first use.
BUILTIN_MODULES = ("vidqa.methods.voco", "vidqa.methods.mini", "vidqa.methods.pool")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name`` (``--method NAME``)."""
    METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return sorted(METHODS)


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name`` (ModelError for an unknown name)."""
    known = method_names()
    if name not in METHODS:
        raise ModelError(f"unknown method {name!r} (use {' or '.join(known)})")
    return METHODS[name]
