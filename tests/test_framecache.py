"""vidqa.framecache: selecting, concatenating and moving per-frame caches keeps frames and meta aligned."""

from __future__ import annotations

import torch

from vidqa.framecache import FrameCache


def cache(first: int, n: int) -> FrameCache:
    frames = torch.arange(first, first + n)
    return FrameCache("voco", {"k": frames[:, None].repeat(1, 2).float(), "ids": frames},
                      [float(i) for i in range(first, first + n)], 2,
                      {"p0": 35, "frame_indices": list(range(10 * first, 10 * (first + n), 10))})


def test_sizes():
    c = cache(0, 4)
    assert c.num_frames == 4 and c.nbytes == 4 * 2 * 4 + 4 * 8 and c.bytes_per_frame == c.nbytes // 4
    assert FrameCache("voco", {}, [], 2).bytes_per_frame == 0


def test_select_reorders_tensors_timestamps_and_frame_indices():
    s = cache(0, 4).select([3, 1])
    assert s.tensors["ids"].tolist() == [3, 1] and s.timestamps == [3.0, 1.0]
    assert s.meta == {"p0": 35, "frame_indices": [30, 10]} and s.tokens_per_frame == 2


def test_cat_and_to():
    c = FrameCache.cat([cache(0, 2), cache(2, 3)])
    assert c.tensors["ids"].tolist() == [0, 1, 2, 3, 4] and c.timestamps == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert c.meta["frame_indices"] == [0, 10, 20, 30, 40]
    moved = c.to("cpu")
    assert moved is not c and moved.meta == c.meta and torch.equal(moved.tensors["k"], c.tensors["k"])
