"""Shared helpers of the store tests (tests/test_store*.py), also imported by their child processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from vidqa.framecache import FrameCache
from vidqa.store import Store

OLD = time.time() - 3600  # mtimes in the past: the memo does not trust files modified "just now"


def settings(**over) -> dict:
    s = {"model_fingerprint": "f" * 16, "method": "voco", "tokens_per_frame": 2, "dtype": "bfloat16",
         "sampling": {"fps": 1.0, "num_frames": None, "max_frames": 64, "start": None, "end": None, "rule": None,
                      "preprocess": None}}
    s.update(over)
    return s


def make_cache(seed: int = 0, frames: int = 3, tpf: int = 2) -> FrameCache:
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(frames, 2, 4, tpf, 8, generator=g)  # K and V as views of one buffer, like a model's
    tensors = {"k": kv[:, 0],  # float32, not contiguous, shares storage with kv
               "v": kv[:, 1].to(torch.bfloat16),
               "emb": torch.randn(frames, tpf, 16, generator=g),
               "ids": torch.arange(frames, dtype=torch.int64)}
    return FrameCache("voco", tensors, [0.5 + i for i in range(frames)], tpf,
                      {"method": "voco", "tokens_per_frame": tpf, "p0": 35, "pre_voco_ids": [1, 319], "scale": 1.0})


def make_video(path: Path, data: bytes | None = None, mtime: float = OLD) -> Path:
    path.write_bytes(data if data is not None else os.urandom(300_000))
    os.utime(path, (mtime, mtime))
    return path


def same(a: FrameCache, b: FrameCache) -> bool:
    """Bit-identical: same fields, same tensor names, dtypes and values."""
    fields = lambda c: (c.method, c.timestamps, c.tokens_per_frame, c.meta, sorted(c.tensors))  # noqa: E731
    return fields(a) == fields(b) and all(
        a.tensors[k].dtype == b.tensors[k].dtype and torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def put(store: Store, video: Path, cache: FrameCache | None = None, **over) -> str:
    s = settings(**over)
    key = store.key(video, s)
    cache = cache or make_cache(tpf=s["tokens_per_frame"])
    store.put(key, cache, {"source": video, "settings": s, "model_id": "tiny/voco",
                           "frame_indices": list(range(0, 3 * cache.num_frames, 3))})
    return key


def files(store: Store) -> list[str]:
    return sorted(p.name for p in (store.root / "entries").rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "cache")


@pytest.fixture
def video(tmp_path) -> Path:
    return make_video(tmp_path / "clip.mp4")


def index_paused(ready_fd: int, after: int, argv: list[str]) -> int:
    """Run ``vidqa ARGV`` (an ``index``) that stops for good once ``after`` videos are stored.

    Deterministic interruption for tests: when the compression of video ``after + 1`` starts, it waits
    until the first ``after`` entries are written (no timing involved), writes one byte to ``ready_fd``
    and then waits (in short sleeps, so that Python runs the signal's handler in this thread whichever
    thread the kernel delivered the signal to) until the test's signal ends the process.
    """
    import threading

    from vidqa import library
    from vidqa.cli import main
    from vidqa.pipeline import VideoQA

    stored = threading.Semaphore(0)
    real_put, real_compress = library.put, VideoQA.compress
    calls = [0]

    def put(*a, **k):
        real_put(*a, **k)
        stored.release()

    def compress(self, *a, **k):
        calls[0] += 1
        if calls[0] == after + 1:
            for _ in range(after):
                stored.acquire()
            os.write(ready_fd, b"x")
            os.close(ready_fd)
            while True:  # until the test's signal: signal.pause() would miss one that the kernel delivers to
                time.sleep(0.05)  # another thread (torch's, the store's); a short sleep lets its handler run here
        return real_compress(self, *a, **k)

    library.put, VideoQA.compress = put, compress
    return main(argv)


WIDTH = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "F8_E4M3": 1,
         "F8_E5M2": 1}  # bytes per element of each safetensors dtype
INT_OF_WIDTH = {1: "I8", 2: "I16", 4: "I32", 8: "I64"}


def tamper(store: Store, key: str, name: str, *, dtype: str | None = None, shape: list[int] | None = None,
           record_too: bool = False) -> None:
    """Rewrite entry ``key``'s tensor file with tensor ``name`` declared as another dtype (same width)
    and/or shape (same count), then recompute the checksum in the record, as an attacker would.
    ``dtype="int"``: the integer dtype of the stored one's width (float32 -> I32, bfloat16 -> I16), so the
    forgery fits the file's byte offsets whatever dtype the entry was made in (float32 on a CPU, bfloat16
    on a GPU); a named dtype of another width is refused (that file is merely unreadable, not forged).
    ``record_too``: also state the new dtype/shape in the record (a fully consistent forgery)."""
    import hashlib
    import json
    import struct

    meta = store.root / "entries" / key[:2] / f"{key}.json"
    record = json.loads(meta.read_text())
    path = meta.parent / record["tensors"]["file"]
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    if dtype:
        was = header[name]["dtype"]
        if dtype == "int":
            dtype = INT_OF_WIDTH[WIDTH[was]]
        if WIDTH[dtype] != WIDTH[was]:
            raise ValueError(f"tamper: {name} is {was}; {dtype} has another width (the offsets would not fit)")
        header[name]["dtype"] = dtype
    if shape:
        header[name]["shape"] = shape
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    new = struct.pack("<Q", len(text)) + text + data[8 + n:]
    path.write_bytes(new)
    record["tensors"]["sha256"] = hashlib.sha256(new).hexdigest()
    if "chunk_sha256" in record["tensors"]:
        from vidqa.store.io import digests

        record["tensors"]["chunk_sha256"] = digests([new])[1]
    record["tensors"]["bytes"] = len(new)
    if record_too:
        names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "I64": "int64",
                 "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8"}
        if dtype:
            record["tensors"]["dtypes"][name] = names[dtype]
        if shape:
            record["tensors"]["shapes"][name] = shape
    meta.write_text(json.dumps(record))
