"""Entry keys: ``sha256(store format, video content sha256, canonical settings)``, and the hash memo.

A renamed or copied video still hits (the key follows the bytes, not the name), and any change of
content or settings misses. Hashing a multi-GB video is slow, so its sha256 is memoised on disk by
(absolute path, size, mtime_ns, inode, ctime_ns) under ``root/hashes/<sha256(path)[:2]>/<sha256(path)>.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

import torch

from vidqa.errors import VideoError
from vidqa.store import io
from vidqa.store.errors import CacheError

STORE_FORMAT = 1  # part of every key: a new on-disk format simply misses old entries
REQUIRED_SETTINGS = ("model_fingerprint", "method", "tokens_per_frame", "dtype", "sampling")
RACY_NS = 2_000_000_000  # a file modified < 2 s before it was hashed is not memoised (coarse mtimes)

_MEMO_RE = re.compile(r"[0-9a-f]{64}\.json")
_MEMO_TEMP_RE = re.compile(r"\..+\.\d+\.[0-9a-f]{8}\.tmp")  # what LockedTemp names
KEY_RE = re.compile(r"[0-9a-f]{64}")
PREFIX_RE = re.compile(r"[0-9a-f]{1,64}")


def canonical(value: Any, where: str = "settings", fold: bool = True) -> Any:
    """A JSON-able copy in one canonical form, so equal settings always hash to the same key.

    With ``fold``, integral floats become ints (``fps=1`` and ``fps=1.0`` are the same sampling);
    stored data (the cache's meta) keeps its floats. Tuples become lists, dataclasses dicts, numpy
    scalars and torch dtypes plain values; anything else is refused rather than hashed through a
    ``repr`` that may change between runs.
    """
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)  # e.g. vidqa.video.Sampling
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        value = value.item()  # numpy / torch scalars
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CacheError(f"{where} holds a non-finite number ({value})")
        return int(value) if fold and value.is_integer() else float(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CacheError(f"{where} has a non-string key {k!r}")
            out[k] = canonical(v, where, fold)
        return out
    if isinstance(value, (list, tuple)):
        return [canonical(v, where, fold) for v in value]
    raise CacheError(f"{where} holds a value that is not JSON-able: {type(value).__name__}")


def dumps(value: Any) -> str:
    """Compact, sorted, ASCII JSON: the one spelling that is hashed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def check_settings(settings: dict) -> dict:
    """The canonical form of a cache's settings; CacheError if a required one is missing."""
    if not isinstance(settings, dict):
        raise CacheError(f"cache settings must be a dict, not {type(settings).__name__}")
    missing = [k for k in REQUIRED_SETTINGS if k not in settings]
    if missing:  # a key that silently ignored e.g. the dtype would return wrong caches
        raise CacheError(f"cache settings lack {', '.join(missing)}")
    return canonical(settings)


def key_of(content_sha: str, settings: dict) -> str:
    """The key of a video's content hash under canonical ``settings``."""
    blob = dumps({"format": STORE_FORMAT, "content": content_sha, "settings": settings})
    return hashlib.sha256(blob.encode()).hexdigest()


def check_key(key: str) -> str:
    """``key`` itself; CacheError unless it is 64 hex digits (keys become file names: no "../")."""
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise CacheError(f"not a cache key: {key!r} (expected 64 hex digits)")
    return key


class HashMemo:
    """Files' sha256, memoised in ``folder`` by (absolute path, size, mtime_ns, inode, ctime_ns).

    The ctime catches an in-place edit whose mtime was put back (no user can set a ctime); the cost is
    one more hash after a ``chmod`` or ``touch``, which give the same hash back."""

    def __init__(self, folder: Path):
        self.folder = folder

    def identify(self, video: str | Path, compute: bool = True) -> tuple[str, dict] | None:
        """(sha256, stamp): the stamp is the stat of the very inode that was hashed.

        A file whose size, mtime or inode changed is hashed again (``touch`` alone gives the same
        hash back, just not for free). VideoError if it cannot be read or changes while it is read.
        ``compute=False``: None instead of hashing (only a valid memo answers).
        """
        path = Path(os.path.abspath(Path(video).expanduser()))
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise VideoError(f"no such file: {path}") from None
        except IsADirectoryError:
            raise VideoError(f"not a file but a directory: {path}") from None
        except OSError as e:
            raise VideoError(f"cannot read {path}: {e.strerror or e}") from None
        name = hashlib.sha256(str(path).encode()).hexdigest()
        memo = f"{name}.json"
        with f:
            st = os.fstat(f.fileno())  # of the inode we read, not of whatever the name points at later
            # ctime too: an in-place edit with its mtime put back (``touch -d``, ``cp -p``) still moves
            # the ctime, which no user can set back
            stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
            memo_key = {**stamp, "ctime_ns": st.st_ctime_ns}
            with contextlib.suppress(OSError, ValueError), self._dir(name) as dfd:  # no memo or a damaged one: hash
                if dfd is not None:
                    with open(os.open(memo, os.O_RDONLY | io.NOFOLLOW, dir_fd=dfd), "rb") as m:
                        record = json.loads(m.read()) if io.is_regular(m.fileno()) else {}
                    if {k: record.get(k) for k in memo_key} == memo_key and isinstance(record.get("sha256"), str):
                        return record["sha256"], stamp
            if not compute:
                return None
            digest = io.sha256_file(f)
            after = os.fstat(f.fileno())
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            raise VideoError(f"{path} changed while it was being read; try again when it is complete")
        # A file written within the mtime granularity of "now" (1-2 s on FAT, HFS+, some NFS) could
        # still change without its mtime moving: hash it again next time rather than trust the memo.
        if time.time_ns() - st.st_mtime_ns >= RACY_NS:
            with contextlib.suppress(OSError):  # the memo is an optimisation: a read-only cache still works
                self.folder.parent.mkdir(parents=True, exist_ok=True)
                with self._dir(name, create=True) as dfd:  # never through a link planted in the store
                    io.write_atomic(self.folder / name[:2] / memo, dumps({**memo_key, "sha256": digest}).encode(), dfd)
        return digest, stamp

    def _dir(self, name: str, create: bool = False):
        """``io.dir_fd`` of the memo's folder for ``name`` (None if absent or a link)."""
        return io.dir_fd(self.folder.parent, self.folder.name, name[:2], create=create)

    def sweep(self, *, delete: bool = True) -> list[tuple[str, str]]:
        """Temp files of dead writers of the memo: ``(file name, problem)`` each."""
        found: list[tuple[str, str]] = []
        for sub in self._subdirs():
            with self._dir(sub) as dfd:
                for name in sorted(os.listdir(dfd)) if dfd is not None else []:
                    if not _MEMO_TEMP_RE.fullmatch(name):
                        continue
                    fd = io.try_flock(name, dfd)
                    if fd is None:
                        continue
                    try:
                        outcome = io.unlink_if_same(fd, name, dfd) if delete else "kept"
                        if outcome is not None:
                            what = "orphan temp file in the hash memo"
                            found.append((name, what + (f" ({outcome})" if delete else "")))
                    finally:
                        os.close(fd)
        return found

    def _subdirs(self) -> list[str]:
        with io.dir_fd(self.folder.parent, self.folder.name) as dfd:
            return sorted(n for n in os.listdir(dfd) if re.fullmatch(r"[0-9a-f]{2}", n)) if dfd is not None else []

    def clear(self) -> None:
        """Forget every memoised hash (and sweep dead writers' temp files)."""
        self.sweep()
        for sub in self._subdirs():
            with self._dir(sub) as dfd:
                for name in sorted(os.listdir(dfd)) if dfd is not None else []:
                    if not _MEMO_RE.fullmatch(name):
                        continue
                    with contextlib.suppress(FileNotFoundError):  # only regular files: a link is not ours
                        if stat.S_ISREG(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                            os.unlink(name, dir_fd=dfd)
