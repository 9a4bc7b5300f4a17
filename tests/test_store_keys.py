"""vidqa.store.keys: entry keys follow content and settings, canonical settings, the video hash memo."""

from __future__ import annotations

import hashlib
import math
import os
import time

import pytest
import torch

from vidqa.errors import VideoError
from vidqa.store import CacheError, Store, io
from vidqa.store.keys import HashMemo, canonical, check_key, key_of
from vidqa.video import Sampling
from store_helpers import OLD, make_video, settings, store, video  # noqa: F401 (fixtures)


@pytest.mark.parametrize("change", [
    {"model_fingerprint": "e" * 16}, {"method": "mini"}, {"tokens_per_frame": 4}, {"dtype": "float16"},
    {"sampling": {"fps": 2.0, "num_frames": None, "max_frames": 64, "start": None, "end": None}},
    {"sampling": {"fps": 1.0, "num_frames": None, "max_frames": 64, "start": 5.0, "end": None}},
    {"p0": 36},  # anything extra the caller puts in the settings is covered too
])
def test_key_changes_with_every_setting(store, video, change):
    assert store.key(video, settings(**change)) != store.key(video, settings())


def test_key_follows_content_not_name(store, video, tmp_path):
    key = store.key(video, settings())
    assert len(key) == 64 and store.key(video, settings()) == key
    copy = make_video(tmp_path / "renamed copy.mp4", video.read_bytes())
    assert store.key(copy, settings()) == key  # same bytes, same entry
    data = video.read_bytes()
    other = make_video(tmp_path / "other.mp4", data[:-1] + bytes([data[-1] ^ 1]))  # always one byte different
    assert store.key(other, settings()) != key
    # equal values in another spelling give the same key: fps 1 == 1.0, a Sampling dataclass == its dict
    assert store.key(video, settings(sampling=Sampling(fps=1, max_frames=64))) == key
    with pytest.raises(CacheError, match="lack dtype"):
        store.key(video, {k: v for k, v in settings().items() if k != "dtype"})
    with pytest.raises(CacheError, match="not JSON-able"):
        store.key(video, settings(extra=object()))
    with pytest.raises(VideoError, match="no such file"):
        store.key(tmp_path / "missing.mp4", settings())


def test_unchanged_file_is_hashed_once(store, video, monkeypatch):
    calls = []
    real = io.sha256_file
    monkeypatch.setattr(io, "sha256_file", lambda f: calls.append(1) or real(f))
    monkeypatch.setattr(io, "HASH_CHUNK", 4096)  # streamed in many chunks; same digest
    truth = hashlib.sha256(video.read_bytes()).hexdigest()

    assert store.content_hash(video) == truth and len(calls) == 1
    assert store.content_hash(video) == truth and len(calls) == 1
    assert Store(store.root).content_hash(str(video)) == truth and len(calls) == 1  # the memo is on disk

    # touched, same bytes: hashed again (mtime differs), same hash
    os.utime(video, (OLD + 10, OLD + 10))
    assert store.content_hash(video) == truth and len(calls) == 2
    assert store.content_hash(video) == truth and len(calls) == 2

    # same size and a restored mtime but new bytes written in place: the inode is the same, so only
    # size/mtime can tell -- a changed mtime does
    data = bytearray(video.read_bytes())
    data[1000] ^= 0xFF
    video.write_bytes(bytes(data))
    os.utime(video, (OLD + 20, OLD + 20))
    assert store.content_hash(video) == hashlib.sha256(bytes(data)).hexdigest() != truth and len(calls) == 3

    # a file modified "just now" may still change within the same mtime tick: never memoised
    fresh = make_video(video.parent / "fresh.mp4", b"x" * 1000, mtime=time.time())
    store.content_hash(fresh)
    store.content_hash(fresh)
    assert len(calls) == 5


def test_memo_survives_damage(store, video):
    truth = store.content_hash(video)
    for memo in (store.root / "hashes").rglob("*.json"):
        memo.write_text("{not json")
    assert store.content_hash(video) == truth


def test_canonical_folds_integral_floats_only_in_settings():
    assert canonical({"fps": 1.0, "t": (0.5, 2.0), "d": torch.float16}) == {"fps": 1, "t": [0.5, 2], "d": "float16"}
    assert canonical([1.0, 2.5], fold=False) == [1.0, 2.5] and type(canonical([1.0], fold=False)[0]) is float
    assert canonical(torch.tensor(3)) == 3 and canonical(Sampling(fps=2)) == canonical({**Sampling(fps=2).__dict__})
    with pytest.raises(CacheError, match="non-finite"):
        canonical({"x": math.nan})
    with pytest.raises(CacheError, match="non-string key"):
        canonical({1: 2})


def test_key_of_and_check_key():
    k = key_of("a" * 64, canonical(settings()))
    assert check_key(k) == k and key_of("a" * 64, canonical(settings())) == k != key_of("b" * 64, canonical(settings()))
    for bad in ("../../etc/passwd", "A" * 64, "a" * 63, None):
        with pytest.raises(CacheError, match="not a cache key"):
            check_key(bad)


def test_hash_memo_stamp_and_sweep(tmp_path):
    memo = HashMemo(tmp_path / "hashes")
    v = make_video(tmp_path / "v.mp4", b"abc")
    digest, stamp = memo.identify(v)
    assert digest == hashlib.sha256(b"abc").hexdigest()
    assert stamp == {"path": str(v), "size": 3, "mtime_ns": v.stat().st_mtime_ns, "ino": v.stat().st_ino}
    [memo_file] = (tmp_path / "hashes").rglob("*.json")
    dead = memo_file.parent / ".x.99999.deadbeef.tmp"  # left by a killed writer
    dead.write_bytes(b"{")
    assert memo.sweep(delete=False) == [(dead.name, "orphan temp file in the hash memo")] and dead.exists()
    assert memo.sweep() == [(dead.name, "orphan temp file in the hash memo (removed)")] and not dead.exists()
    memo.clear()
    assert list((tmp_path / "hashes").rglob("*.json")) == []
    with pytest.raises(VideoError, match="directory"):
        memo.identify(tmp_path)


def test_in_place_edit_with_mtime_put_back_is_hashed_again(store, video):
    """issue 13.4: same size, same inode, mtime restored: the ctime moved, so the memo is not trusted."""
    first = store.content_hash(video)
    st = video.stat()
    data = bytearray(video.read_bytes())
    data[1000] ^= 0xFF
    with open(video, "r+b") as f:  # in place: same inode
        f.write(bytes(data))
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = video.stat()
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert store.content_hash(video) == hashlib.sha256(bytes(data)).hexdigest() != first


def test_key_without_computing_answers_only_from_the_memo(store, video, monkeypatch, tmp_path):
    """``key(compute=False)``: None (and nothing hashed) until the video's hash is memoised; then the key."""
    calls = []
    real = io.sha256_file
    monkeypatch.setattr(io, "sha256_file", lambda f: calls.append(1) or real(f))
    assert store.key(video, settings(), compute=False) is None and calls == []
    key = store.key(video, settings())
    assert calls == [1] and store.key(video, settings(), compute=False) == key and calls == [1]
    os.utime(video, (OLD + 10, OLD + 10))  # changed stamp: the memo no longer answers
    assert store.key(video, settings(), compute=False) is None and calls == [1]
    with pytest.raises(VideoError, match="no such file"):
        store.key(tmp_path / "missing.mp4", settings(), compute=False)
