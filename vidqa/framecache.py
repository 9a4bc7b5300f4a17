"""The per-frame cache: what a compression method makes of a video, and what the store keeps.

A ``FrameCache`` is plain data (a method name, tensors with the frame axis first, one timestamp per
frame, tokens per frame, and what a reader must agree on in ``meta``), so it lives below everything
that passes it around: ``vidqa.methods`` make and read them, ``vidqa.store`` writes and reads them
back without knowing any model, the pipeline and the library move them between the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

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
    def compact(self) -> bool:
        """A compact cache (a method's smaller, costlier-per-question form: LLaVA-Mini's raw features)."""
        return self.meta.get("cache_kind") == "features"

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

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "FrameCache":
        """On ``device`` (tensors already there are not copied); ``non_blocking``: copies from page-locked
        memory do not wait for the host (the stream orders them)."""
        return FrameCache(self.method, {k: v.to(device, non_blocking=non_blocking) for k, v in self.tensors.items()},
                          list(self.timestamps), self.tokens_per_frame, dict(self.meta))
