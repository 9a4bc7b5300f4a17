"""The method interface and registry (vidqa.methods.base)."""

import pytest
import torch

from vidqa.errors import ModelError
from vidqa.methods.base import METHODS, FrameCache, Method, get_method, method_names
from vidqa.methods.mini import Mini
from vidqa.methods.pool import Pool
from vidqa.methods.voco import VoCo


def test_registry_names_the_three_methods():
    assert method_names() == ["mini", "pool", "voco"]
    assert get_method("voco") is VoCo and get_method("mini") is Mini and get_method("pool") is Pool
    assert all(issubclass(cls, Method) and cls.name == name for name, cls in METHODS.items())
    with pytest.raises(ModelError, match="unknown method 'nope'"):
        get_method("nope")


def test_a_method_missing_part_of_the_interface_cannot_be_built():
    class Half(Method):
        name = "half"

        def compress(self, features, compact=False):
            return {}

    with pytest.raises(TypeError, match="abstract"):
        Half()


def test_default_views_is_the_frames_and_mini_hd_splits(voco_qa, mini_qa):
    px = torch.zeros(2, 48, 64, 3, dtype=torch.uint8)
    assert len(voco_qa.method.views(px)) == 1 and voco_qa.method.views(px)[0] is px
    assert len(mini_qa.method.views(px)) == 1
    mini_qa.method.resolution_ratio = 2
    try:
        views = mini_qa.method.views(px)
    finally:
        mini_qa.method.resolution_ratio = 1
    assert [tuple(v.shape[1:3]) for v in views] == [(24, 32)] * 4 + [(48, 64)]


def test_frame_cache_compact_select_cat():
    t = {"clip": torch.arange(6.0).view(3, 2)}
    c = FrameCache("mini", t, [0.0, 1.0, 2.0], 1, {"cache_kind": "features", "frame_indices": [0, 5, 9]})
    assert c.compact and not FrameCache("voco", t, [0.0, 1.0, 2.0], 1).compact
    s = c.select([2, 0])
    assert s.meta["frame_indices"] == [9, 0] and s.tensors["clip"][0].tolist() == [4.0, 5.0]
    both = FrameCache.cat([s, c])
    assert both.num_frames == 5 and both.meta["frame_indices"] == [9, 0, 0, 5, 9] and both.compact
