"""vidqa.store.record: the JSON metadata of an entry, built and parsed back."""

from __future__ import annotations

import json

import pytest
import torch

import vidqa
from vidqa.store import STORE_FORMAT, record
from vidqa.store.keys import canonical
from store_helpers import make_cache, settings


def built() -> dict:
    cache = make_cache()
    tensors = {k: v.contiguous() for k, v in cache.tensors.items()}
    return record.build("a" * 64, source={"path": "/v.mp4", "sha256": "b" * 64}, settings=canonical(settings()),
                        cache=cache, model_id="tiny/voco", frame_indices=[0, 3, 6], extra=None, tensors=tensors,
                        checksum="c" * 64, nbytes=123)


def test_build_names_the_tensor_file_after_its_checksum():
    r = built()
    assert r["format"] == STORE_FORMAT and r["vidqa_version"] == vidqa.__version__
    assert r["tensors"]["file"] == f"{'a' * 64}.{'c' * 16}.safetensors" and r["tensors"]["bytes"] == 123
    assert r["tensors"]["dtypes"]["v"] == "bfloat16" and r["tensors"]["shapes"]["emb"] == [3, 2, 16]
    assert r["model"] == {"fingerprint": "f" * 16, "id": "tiny/voco"} and r["timestamps"] == [0.5, 1.5, 2.5]
    assert record.parse(record.dumps(r)) == json.loads(json.dumps(r))


@pytest.mark.parametrize("damage, problem", [
    (lambda r: [1, 2], "not an object"),
    (lambda r: {**r, "tokens_per_frame": "2"}, "tokens_per_frame"),
    (lambda r: {k: v for k, v in r.items() if k != "timestamps"}, "timestamps"),
    (lambda r: {**r, "tensors": {"sha256": "x"}}, "no tensor file"),
])
def test_parse_refuses_records_a_reader_cannot_use(damage, problem):
    with pytest.raises(ValueError, match=problem):
        record.parse(json.dumps(damage(built())).encode())
    with pytest.raises(ValueError):
        record.parse(b"\xff{")


def test_build_refuses_non_finite_timestamps():
    cache = make_cache()
    cache.timestamps[1] = float("nan")
    with pytest.raises(vidqa.VidqaError, match="non-finite"):
        record.build("a" * 64, source={}, settings=canonical(settings()), cache=cache, model_id=None,
                     frame_indices=None, extra=None, tensors={"x": torch.zeros(3)}, checksum="c" * 64, nbytes=0)
