"""vidqa.store.codec: plain safetensors files, written and read without a serialisation copy."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save

from vidqa.store import codec


def test_entries_are_plain_safetensors_files(tmp_path):
    """vidqa writes the bytes itself (no serialisation copy); any safetensors reader must agree."""
    tensors = {"keys": torch.randn(3, 2, 5).bfloat16(), "values": torch.randn(3, 4).float(),
               "ids": torch.arange(6).view(3, 2), "empty": torch.zeros(3, 0), "flags": torch.tensor([True, False, True])}
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"".join(bytes(c) for c in codec.encode(tensors, {"a": "b"})))
    for loaded in (load_file(str(path)), codec.decode(bytearray(path.read_bytes()))):
        assert set(loaded) == set(tensors)
        for k, v in tensors.items():
            assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)


def test_decode_views_the_buffer_without_a_copy():
    buf = bytearray(b"".join(bytes(c) for c in codec.encode({"x": torch.zeros(4, dtype=torch.int32)}, {})))
    x = codec.decode(buf)["x"]
    buf[-4:] = (7).to_bytes(4, "little")
    assert x.tolist() == [0, 0, 0, 7]  # the tensor is the buffer's memory


def test_bad_input_is_refused():
    with pytest.raises(TypeError, match="dtype"):
        codec.encode({"c": torch.zeros(2, dtype=torch.complex64)}, {})
    good = save({"x": torch.arange(6.0)})
    with pytest.raises(ValueError, match="past the end"):
        codec.decode(good[:20])
    with pytest.raises(ValueError, match="bad offsets"):
        codec.decode(good[:-4])
