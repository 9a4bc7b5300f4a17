"""The metadata record of an entry, ``<key>.json``: readable JSON, written last (the commit point).

It names the entry's tensor file and its checksum, and holds everything the key was made from (the
video's content hash and the settings), so a reader can check that the record belongs to its key.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import torch

import vidqa
from vidqa.framecache import FrameCache
from vidqa.store.keys import STORE_FORMAT, canonical

_FIELDS = (("key", str), ("format", int), ("source", dict), ("settings", dict), ("method", str),
           ("tokens_per_frame", int), ("timestamps", list), ("tensors", dict))


def build(key: str, *, source: dict, settings: dict, cache: FrameCache, model_id: str | None,
          frame_indices: list[int] | None, extra, tensors: dict[str, torch.Tensor], checksum: str,
          nbytes: int, pieces: list[str] | None = None) -> dict:
    """The record of ``cache`` stored as ``key``: ``settings`` canonical, ``source`` the video's
    path, sha256 and stat; ``tensors`` as written, ``checksum`` and ``nbytes`` of their file."""
    now = time.time()
    return {
        "format": STORE_FORMAT,
        "key": key,
        "source": source,
        "settings": settings,
        "model": {"fingerprint": settings["model_fingerprint"], "id": model_id},
        "method": cache.method,
        "tokens_per_frame": cache.tokens_per_frame,
        "dtype": settings["dtype"],
        "sampling": settings["sampling"],
        "timestamps": canonical([float(t) for t in cache.timestamps], "cache timestamps", fold=False),
        "frame_indices": frame_indices,
        "cache_meta": canonical(cache.meta, "cache meta", fold=False),
        "extra": canonical(extra, "extra metadata", fold=False),
        "tensors": {"file": f"{key}.{checksum[:16]}.safetensors", "sha256": checksum, "bytes": nbytes,
                    **({"chunk_sha256": pieces} if pieces is not None else {}),
                    "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()},
                    "shapes": {k: list(v.shape) for k, v in tensors.items()}},
        "vidqa_version": vidqa.__version__,
        "created": now,
        "created_utc": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
    }


def dumps(record: dict) -> bytes:
    return (json.dumps(record, indent=1, allow_nan=False) + "\n").encode()


def parse(raw: bytes) -> dict:
    """A record read back, with the fields a reader relies on present and of the right types.

    ValueError (JSONDecodeError and UnicodeDecodeError are ValueErrors too) if it is not one.
    Whether it belongs to its key is the store's check (``vidqa.store.keys.key_of``).
    """
    record = json.loads(raw)
    if not isinstance(record, dict):
        raise ValueError("not an object")
    for field, kind in _FIELDS:
        if not isinstance(record.get(field), kind):
            raise ValueError(f"no valid {field!r}")
    if not (isinstance(record["source"].get("sha256"), str) and isinstance(record["tensors"].get("file"), str)):
        raise ValueError("no tensor file or content hash")
    dtypes, shapes = record["tensors"].get("dtypes"), record["tensors"].get("shapes")
    if not (isinstance(dtypes, dict) and isinstance(shapes, dict) and all(isinstance(v, str) for v in dtypes.values())
            and all(isinstance(v, list) and all(type(n) is int for n in v) for v in shapes.values())):
        raise ValueError("no tensor shapes and dtypes")
    pieces = record["tensors"].get("chunk_sha256")
    if pieces is not None and not (isinstance(pieces, list) and all(isinstance(p, str) for p in pieces)):
        raise ValueError("bad chunk_sha256")
    return record
