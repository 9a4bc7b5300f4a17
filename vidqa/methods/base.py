"""Features to per-frame caches: the protocol every compression method implements.

A method turns the raw vision features of a batch of frames into a ``FrameCache`` that does not
depend on the question (so it can be computed once and stored), and later turns a cache plus a
question into a ``Prefill``: what the LLM must run before it decodes the answer.

Implementations: ``vidqa.voco.VoCo`` (the LLM distils each frame into VoCo tokens' K/V) and
``vidqa.mini.Mini`` (a query compressor plus modality pre-fusion layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import torch


@dataclass
class FrameCache:
    """Per-frame, question-independent state. Every tensor has the frame axis first."""

    method: str
    tensors: dict[str, torch.Tensor]
    timestamps: list[float]
    tokens_per_frame: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.timestamps)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def bytes_per_frame(self) -> int:
        return self.nbytes // max(1, self.num_frames)

    def select(self, idx: Sequence[int]) -> "FrameCache":
        """A cache of a subset of frames, in the given order."""
        idx = list(idx)
        ix = torch.as_tensor(idx, dtype=torch.long)
        tensors = {k: v.index_select(0, ix.to(v.device)) for k, v in self.tensors.items()}
        meta = dict(self.meta)
        if "frame_indices" in meta:  # the one per-frame entry of meta
            meta["frame_indices"] = [meta["frame_indices"][i] for i in idx]
        return FrameCache(self.method, tensors, [self.timestamps[i] for i in idx], self.tokens_per_frame, meta)

    @staticmethod
    def cat(caches: Sequence["FrameCache"]) -> "FrameCache":
        first = caches[0]
        tensors = {k: torch.cat([c.tensors[k] for c in caches]) for k in first.tensors}
        stamps = [t for c in caches for t in c.timestamps]
        meta = dict(first.meta)
        if all("frame_indices" in c.meta for c in caches):
            meta["frame_indices"] = [i for c in caches for i in c.meta["frame_indices"]]
        return FrameCache(first.method, tensors, stamps, first.tokens_per_frame, meta)

    def to(self, device: torch.device | str) -> "FrameCache":
        return FrameCache(self.method, {k: v.to(device) for k, v in self.tensors.items()},
                          list(self.timestamps), self.tokens_per_frame, dict(self.meta))


@dataclass
class Prefill:
    """What the LLM runs before decoding: prompt tokens (or embeddings) at explicit positions on a cache."""

    past_key_values: Any  # a transformers Cache, or None
    position_ids: torch.Tensor  # [1, L]
    input_ids: torch.Tensor | None = None  # [1, L]
    inputs_embeds: torch.Tensor | None = None  # [1, L, D]


class Method(Protocol):
    name: str
    tokens_per_frame: int

    def compress(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw vision features ``[B, P, C]`` of B frames to their cache tensors (frame axis first).

        A method with ``supports_compact = True`` also takes ``compact=True``: a smaller cache that
        costs more per question (``vidqa.pipeline.VideoQA.compress`` chooses it for very long videos).
        """
        ...

    def cache_meta(self) -> dict[str, Any]:
        """What a cache must agree on with the model that reads it (method, positions, prefix ids)."""
        ...

    def prompt_ids(self, question: str) -> list[int]:
        """The prompt tokens that follow the frames."""
        ...

    def max_frames(self, question: str, max_new_tokens: int) -> int:
        """How many frames fit the context with this question and answer budget (ContextError if none)."""
        ...

    def prefill(self, cache: FrameCache, question: str) -> Prefill:
        ...

    @property
    def stop_ids(self) -> set[int]:
        ...
