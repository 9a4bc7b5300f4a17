"""The persistent cache store: per-frame caches of whole videos, on disk, shared between processes.

An *entry* is one video compressed with one set of settings (model fingerprint, method, tokens per
frame, dtype, sampling). Its key is ``sha256(store format, video content sha256, settings)``, so a
renamed or copied video still hits, and any change of content or settings misses. Layout::

    root/entries/<key[:2]>/<key>.json                      metadata: readable JSON, the commit record
    root/entries/<key[:2]>/<key>.<sha256[:16]>.safetensors   the tensors, named after their own checksum
    root/entries/<key[:2]>/.<key>.<pid>.<random>.tmp       a file being written (never read as an entry)
    root/locks/<key[:2]>/<key>.lock                        per-entry flock: "someone is computing this"
    root/hashes/<sha256(path)[:2]>/<sha256(path)>.json     memo: (path, size, mtime_ns, inode) -> sha256

Atomicity: the JSON is written last and is the only thing that makes an entry visible; it names the
tensor file it was written with, and that file was complete and fsynced before the JSON existed. The
tensor file name carries its checksum, so a new ``put`` of a key never overwrites the file that the
old JSON still names: a writer killed at any point leaves the old entry (or none) intact, plus garbage
that ``verify``/``remove``/the next ``put`` of that key sweep away.

Every file is written as a temp file on which its writer holds an flock until the entry is committed.
The kernel drops that lock when the writer dies, so "temp file whose lock can be taken" means exactly
"left behind by a dead (or finished) writer" -- no guessing with ages.

Typical use (the lock only avoids computing the same entry twice; correctness never depends on it)::

    store = Store(cache_dir)                   # None: $VIDQA_CACHE_DIR, $XDG_CACHE_HOME/vidqa, ~/.cache/vidqa
    key = store.key(video, settings)           # settings: model_fingerprint, method, tokens_per_frame, dtype, sampling
    with store.lock(key, blocking=True):
        cache = store.get(key, settings)       # None if absent or corrupt (CacheWarning, entry removed)
        if cache is None:
            cache = compute()
            store.put(key, cache, {"source": video, "settings": settings, "model_id": model_id,
                                   "frame_indices": frames.indices.tolist()})

Not for Windows (fcntl); fine on local filesystems, best effort on NFS (flock is emulated there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import mmap
import os
import re
import secrets
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import torch
import struct

import vidqa
from vidqa.methods.base import FrameCache
from vidqa.errors import VideoError, VidqaError
from vidqa.options import cache_root as default_root  # noqa: F401 (the store's default folder)

STORE_FORMAT = 1  # part of every key: a new on-disk format simply misses old entries
REQUIRED_SETTINGS = ("model_fingerprint", "method", "tokens_per_frame", "dtype", "sampling")
HASH_CHUNK = 8 << 20  # streamed hashing: 8 MiB reads, never the whole file in memory
RACY_NS = 2_000_000_000  # a file modified < 2 s before it was hashed is not memoised (coarse mtimes)

_KEY_RE = re.compile(r"[0-9a-f]{64}")
_PREFIX_RE = re.compile(r"[0-9a-f]{1,64}")


class CacheError(VidqaError):
    """The cache store cannot be used as asked (unwritable root, bad key, inconsistent put)."""


class CacheLocked(CacheError):
    """A non-blocking ``Store.lock`` found the entry's lock held by another process (or fd)."""

    def __init__(self, key: str, pid: int | None):
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"cache entry {key[:12]} is being computed by {holder}; wait or try again")
        self.key, self.pid = key, pid


class CacheWarning(UserWarning):
    """``Store.get`` found a corrupt entry, removed it, and returned None so the caller recomputes."""


@dataclasses.dataclass(frozen=True)
class EntryInfo:
    """One line of ``vidqa cache ls``."""

    key: str
    source: str  # absolute path of the video when the entry was made
    frames: int
    bytes: int  # tensor file + metadata on disk
    method: str
    model: str  # model id if known, else the fingerprint
    created: float  # unix time
    tokens_per_frame: int
    dtype: str


class _Bad(Exception):
    """Internal: an entry is unusable; the message is the one-line problem for verify/warnings.

    ``json_stat``: the metadata file it was read from (a removal must not hit a newer one);
    ``removable``: False for I/O errors (EIO, EACCES), where the data may be fine and only unreachable.
    """

    def __init__(self, problem: str, json_stat: os.stat_result | None = None, removable: bool = True):
        super().__init__(problem)
        self.json_stat, self.removable = json_stat, removable


# --------------------------------------------------------------------------------------------------
# small helpers


def _canonical(value: Any, where: str = "settings", fold: bool = True) -> Any:
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
            out[k] = _canonical(v, where, fold)
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v, where, fold) for v in value]
    raise CacheError(f"{where} holds a value that is not JSON-able: {type(value).__name__}")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _sha256_file(f) -> str:
    """Streamed sha256 of an open binary file (reads HASH_CHUNK bytes at a time into one buffer)."""
    h = hashlib.sha256()
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    while n := f.readinto(buf):
        h.update(view[:n])
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    lines = str(e).splitlines()
    return lines[0][:100] if lines else type(e).__name__


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (the new name survives a power cut, not only the data)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Does ``path`` still name the inode open as ``fd``? (It may have been unlinked or replaced.)"""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)


def _try_flock(path: Path) -> int | None:
    """Open ``path`` and take its exclusive flock without blocking: the fd, or None if held/gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # flock needs no write access: works read-only
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _drop_free_lock_file(path: Path) -> None:
    """Delete a lock file nobody holds (lockers re-check the inode after flock, so this is safe)."""
    if (fd := _try_flock(path)) is not None:
        try:
            _unlink_if_same(fd, path)
        finally:
            os.close(fd)


def _unlink_if_same(fd: int, path: Path) -> str | None:
    """Unlink ``path`` only if it is still the inode we locked (a writer may have renamed a new one
    there): "removed", "could not remove: <why>" (read-only store), or None if it is not ours to remove."""
    if not _same_file(fd, path):
        return None
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"could not remove: {e.strerror or e}"
    return "removed"


# ---- safetensors, written and read without a serialisation copy ---------------------------------
# The files are plain safetensors (any safetensors reader opens them). They are encoded and decoded
# here because safetensors.torch.save()/load() on bytes copy every byte through Python: measured
# 3-4 s per GB each way, against ~0 for handing the tensors' own memory to write() and building
# tensors over the checksummed read buffer with torch.frombuffer.
_ST_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}
_ST_TORCH = {v: k for k, v in _ST_DTYPES.items()}


def _st_encode(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> list[memoryview]:
    """The chunks of a safetensors file: length, JSON header (space-padded to 8 bytes), raw data."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in _ST_DTYPES:
            raise CacheError(f"cannot store tensor {name!r} of dtype {t.dtype}")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    chunks = [memoryview(struct.pack("<Q", len(text))), memoryview(text)]
    for name in sorted(tensors):
        t = tensors[name]
        if t.numel():
            chunks.append(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return chunks


def _st_decode(data) -> dict[str, torch.Tensor]:
    """Tensors viewing ``data`` (no copy). ValueError for anything that is not a valid file."""
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > len(data) - 8:
        raise ValueError("header runs past the end of the file")
    header = json.loads(bytes(data[8:8 + n]))
    base, view, out = 8 + n, memoryview(data), {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _ST_TORCH[info["dtype"]]
        shape = [int(x) for x in info["shape"]]
        if not 0 <= start <= end <= len(data) - base or end - start != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"bad offsets for {name!r}")
        if end == start:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            out[name] = torch.frombuffer(view[base + start:base + end], dtype=dtype).view(shape)
    return out


class _LockedTemp:
    """A new temp file in ``directory``, exclusively flocked by us for as long as it is open.

    Sweepers delete a temp file only if they can take its lock, i.e. its writer is gone. Between our
    ``O_EXCL`` create and our flock a sweeper could take the lock and unlink the file; we notice (the
    name no longer points at our inode) and start over with a new name.
    """

    def __init__(self, directory: Path, stem: str):
        self.dir = directory
        while True:
            self.path = directory / f".{stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)  # waits out a sweeper that grabbed it first, if any
            if _same_file(self.fd, self.path):
                break
            os.close(self.fd)

    def write(self, data: bytes | memoryview | list[memoryview]) -> None:
        for chunk in data if isinstance(data, list) else [data]:
            view = memoryview(chunk).cast("B")
            while view:  # os.write may write less than asked
                view = view[os.write(self.fd, view):]
        os.fsync(self.fd)  # the data is on disk before any name points at it

    def commit(self, final: Path) -> None:
        """Rename into place. The fd (and its lock) stays valid: it now guards ``final``."""
        os.replace(self.path, final)
        self.path = final
        _fsync_dir(self.dir)

    def close(self, *, discard: bool = False) -> None:
        if self.fd < 0:
            return
        if discard and self.path.name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a small file atomically (temp + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _LockedTemp(path.parent, path.name)
    try:
        tmp.write(data)
        tmp.commit(path)
    except BaseException:
        tmp.close(discard=True)
        raise
    tmp.close()


# --------------------------------------------------------------------------------------------------


class Store:
    """The on-disk cache of per-frame caches. Safe to share between processes; see the module doc."""

    def __init__(self, root: str | Path | None = None):
        self.root = (Path(root).expanduser() if root is not None else default_root()).absolute()
        self._entries = self.root / "entries"
        self._locks = self.root / "locks"
        self._hashes = self.root / "hashes"

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # ---- keys ------------------------------------------------------------------------------------

    def content_hash(self, video: str | Path) -> str:
        """sha256 of the video's bytes, memoised by (absolute path, size, mtime_ns, inode).

        A multi-GB file is hashed once; a file whose size, mtime or inode changed is hashed again
        (``touch`` alone gives the same hash back, just not for free).
        """
        return self._identify(video)[0]

    def _identify(self, video: str | Path) -> tuple[str, dict]:
        """(sha256, stamp): the stamp is the stat of the very inode that was hashed."""
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
        memo = self._hashes / name[:2] / f"{name}.json"
        with f:
            st = os.fstat(f.fileno())  # of the inode we read, not of whatever the name points at later
            stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
            with contextlib.suppress(OSError, ValueError):  # no memo, or a damaged one: just hash
                record = json.loads(memo.read_text())
                if {k: record.get(k) for k in stamp} == stamp and isinstance(record.get("sha256"), str):
                    return record["sha256"], stamp
            digest = _sha256_file(f)
            after = os.fstat(f.fileno())
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise VideoError(f"{path} changed while it was being read; try again when it is complete")
        # A file written within the mtime granularity of "now" (1-2 s on FAT, HFS+, some NFS) could
        # still change without its mtime moving: hash it again next time rather than trust the memo.
        if time.time_ns() - st.st_mtime_ns >= RACY_NS:
            with contextlib.suppress(OSError):  # the memo is an optimisation: a read-only cache still works
                _write_atomic(memo, _dumps({**stamp, "sha256": digest}).encode())
        return digest, stamp

    def key(self, video: str | Path, settings: dict) -> str:
        """The entry key of ``video`` under ``settings``.

        ``settings`` must hold ``model_fingerprint``, ``method``, ``tokens_per_frame``, ``dtype`` and
        ``sampling`` (a dict); anything else in it (e.g. the method's ``cache_meta``) is covered too.
        Values must be JSON-able; integral floats equal ints (``fps=1`` is ``fps=1.0``).
        """
        return self._key_of(self.content_hash(video), self._settings(settings))

    @staticmethod
    def _settings(settings: dict) -> dict:
        if not isinstance(settings, dict):
            raise CacheError(f"cache settings must be a dict, not {type(settings).__name__}")
        missing = [k for k in REQUIRED_SETTINGS if k not in settings]
        if missing:  # a key that silently ignored e.g. the dtype would return wrong caches
            raise CacheError(f"cache settings lack {', '.join(missing)}")
        return _canonical(settings)

    @staticmethod
    def _key_of(content_sha: str, settings: dict) -> str:
        blob = _dumps({"format": STORE_FORMAT, "content": content_sha, "settings": settings})
        return hashlib.sha256(blob.encode()).hexdigest()

    # ---- paths -----------------------------------------------------------------------------------

    @staticmethod
    def _check_key(key: str) -> str:
        # keys become file names: refuse anything but 64 hex digits (no "../" from a CLI argument)
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise CacheError(f"not a cache key: {key!r} (expected 64 hex digits)")
        return key

    def _dir(self, key: str) -> Path:
        return self._entries / key[:2]

    def _json(self, key: str) -> Path:
        return self._dir(key) / f"{key}.json"

    # ---- read ------------------------------------------------------------------------------------

    def get(self, key: str, settings: dict | None = None) -> FrameCache | None:
        """The cached frames of ``key``, or None if there is no usable entry.

        The tensor file's sha256 is checked against the metadata. A corrupt or truncated entry is
        reported with ``warnings.warn(..., CacheWarning)``, removed, and None is returned, so the
        caller recomputes. With ``settings`` (pass the ones the key was made from), the stored
        settings must match them too, else None (defence in depth: never a cache of another model).
        """
        self._check_key(key)
        try:
            record, tensors = self._load(key)
        except FileNotFoundError:
            return None
        except _Bad as bad:
            removed = bad.removable and self._discard(key, bad.json_stat)
            warnings.warn(f"cache entry {key[:12]} is unusable ({bad}); "
                          f"{'removed it' if removed else 'could not remove it'}, recomputing", CacheWarning,
                          stacklevel=2)
            return None
        if settings is not None:
            wanted = self._settings(settings)
            if wanted != record["settings"]:
                # The entry itself is consistent (its key recomputes from its metadata), so it is
                # someone else's valid entry and the caller's key does not belong to its settings.
                warnings.warn(f"cache entry {key[:12]} was made with other settings than asked; ignoring it",
                              CacheWarning, stacklevel=2)
                return None
        return FrameCache(record["method"], tensors, list(record["timestamps"]), record["tokens_per_frame"],
                          dict(record.get("cache_meta") or {}))

    def metadata(self, key: str) -> dict | None:
        """The stored metadata of ``key`` (unverified JSON), or None."""
        try:
            return json.loads(self._json(self._check_key(key)).read_text())
        except (OSError, ValueError):
            return None

    def _read_record(self, key: str) -> tuple[dict, os.stat_result]:
        """The parsed metadata and the stat of the JSON inode it came from; FileNotFoundError if absent."""
        try:
            with open(self._json(key), "rb") as f:
                st = os.fstat(f.fileno())
                raw = f.read()
        except FileNotFoundError:
            raise
        except OSError as e:
            raise _Bad(f"cannot read the metadata: {e.strerror or e}", None, removable=False) from None
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not an object")
            for field, kind in (("key", str), ("format", int), ("source", dict), ("settings", dict),
                                ("method", str), ("tokens_per_frame", int), ("timestamps", list),
                                ("tensors", dict)):
                if not isinstance(record.get(field), kind):
                    raise ValueError(f"no valid {field!r}")
            if not (isinstance(record["source"].get("sha256"), str) and isinstance(record["tensors"].get("file"), str)):
                raise ValueError("no tensor file or content hash")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise _Bad(f"unreadable metadata: {_first_line(e)}", st) from None
        if record["format"] != STORE_FORMAT:
            # Written by another vidqa version into a shared cache. Its keys can never equal ours
            # (the format is hashed into them), so it is simply not ours: absent, and never deleted.
            raise FileNotFoundError(f"store format {record['format']} entry")
        # The key must be the hash of the metadata's own content hash and settings: catches a JSON
        # that was edited, corrupted in a still-parseable way, or copied under another key's name.
        if record["key"] != key or self._key_of(record["source"]["sha256"], record["settings"]) != key:
            raise _Bad("metadata does not belong to this key", st)
        settings = record["settings"]
        if (record["method"], record["tokens_per_frame"]) != (settings.get("method"), settings.get("tokens_per_frame")):
            raise _Bad("metadata disagrees with its own settings", st)
        if record["tensors"]["file"] != Path(record["tensors"]["file"]).name:
            raise _Bad("metadata names a tensor file outside the entry directory", st)
        return record, st

    def _load(self, key: str) -> tuple[dict, dict[str, torch.Tensor]]:
        """Read and check one entry. FileNotFoundError if absent; ``_Bad`` if present but unusable."""
        for _ in range(3):  # a concurrent put/remove may swap the JSON between our two reads
            record, st = self._read_record(key)
            tensor_path = self._dir(key) / record["tensors"]["file"]
            try:
                # A private (copy-on-write) map: the checksum pass pages the file in once and the
                # tensors then view those same pages, with no copy. Committed tensor files are never
                # modified in place (a new put writes a new file and renames), so what was checked
                # is what is used.
                with open(tensor_path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else bytearray()
            except FileNotFoundError:
                if not self._json_is(key, st):
                    continue  # the JSON changed under us (new put, or removed): look again
                raise _Bad("missing tensor file", st) from None
            except OSError as e:
                raise _Bad(f"cannot read the tensor file: {e.strerror or e}", st, removable=False) from None
            if len(data) != record["tensors"].get("bytes", len(data)):
                raise _Bad(f"truncated tensor file ({len(data)} of {record['tensors']['bytes']} bytes)", st)
            if hashlib.sha256(data).hexdigest() != record["tensors"].get("sha256"):
                raise _Bad("checksum mismatch in the tensor file", st)
            try:
                tensors = _st_decode(data)
            except Exception as e:  # a checksummed file that does not parse: written by something else
                raise _Bad(f"unreadable tensor file: {_first_line(e)}", st) from None
            frames = len(record["timestamps"])
            for name, t in tensors.items():
                if t.ndim == 0 or t.shape[0] != frames:
                    raise _Bad(f"tensor {name!r} has {tuple(t.shape)}, not {frames} frames first", st)
            return record, tensors
        raise FileNotFoundError(key)  # it kept changing: treat as absent, the caller recomputes

    def _json_is(self, key: str, st: os.stat_result | None) -> bool:
        try:
            now = os.stat(self._json(key))
        except FileNotFoundError:
            return False
        return st is None or (now.st_ino, now.st_dev, now.st_mtime_ns) == (st.st_ino, st.st_dev, st.st_mtime_ns)

    # ---- write -----------------------------------------------------------------------------------

    def put(self, key: str, cache: FrameCache, meta: dict) -> Path:
        """Store ``cache`` as entry ``key``; returns the metadata path. Atomic and crash-safe.

        ``meta`` must hold ``source`` (the video path) and ``settings`` (those given to ``key``);
        optional: ``model_id`` (str), ``frame_indices`` (ints, one per frame), ``extra`` (JSON-able).
        The key is recomputed from them: if the video changed since ``key`` was computed, or the
        settings disagree with the cache, CacheError (nothing is stored).
        """
        self._check_key(key)
        unknown = set(meta) - {"source", "settings", "model_id", "frame_indices", "extra"}
        if "source" not in meta or "settings" not in meta or unknown:
            raise CacheError(f"put() metadata needs source and settings (unknown: {sorted(unknown)})")
        settings = self._settings(meta["settings"])
        source = Path(os.path.abspath(Path(meta["source"]).expanduser()))
        content, stamp = self._identify(source)  # memoised: free unless the video changed
        if self._key_of(content, settings) != key:
            raise CacheError(f"cache key {key[:12]} does not match {source.name} and these settings "
                             "(did the video change while it was processed?)")
        if cache.method != settings["method"] or cache.tokens_per_frame != settings["tokens_per_frame"]:
            raise CacheError(f"a {cache.method} cache with {cache.tokens_per_frame} tokens/frame does not "
                             f"match settings {settings['method']}/{settings['tokens_per_frame']}")
        frames = cache.num_frames
        for name, t in cache.tensors.items():
            if t.ndim == 0 or t.shape[0] != frames:
                raise CacheError(f"cache tensor {name!r} has shape {tuple(t.shape)}, not {frames} frames first")
        indices = meta.get("frame_indices")
        if indices is not None:
            indices = [int(i) for i in indices]
            if len(indices) != frames:
                raise CacheError(f"{len(indices)} frame indices for {frames} frames")

        # contiguous CPU tensors; their memory is written as it is (see _st_encode), checksummed on
        # the way, through our locked temp file
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in cache.tensors.items()}
        data = _st_encode(tensors, {"vidqa_key": key, "vidqa_store_format": str(STORE_FORMAT)})
        digest = hashlib.sha256()
        for chunk in data:
            digest.update(chunk)
        checksum = digest.hexdigest()
        timestamps = _canonical([float(t) for t in cache.timestamps], "cache timestamps", fold=False)
        now = time.time()
        record = {
            "format": STORE_FORMAT,
            "key": key,
            "source": {"path": str(source), "sha256": content, "size": stamp["size"],
                       "mtime_ns": stamp["mtime_ns"], "mtime": stamp["mtime_ns"] / 1e9},
            "settings": settings,
            "model": {"fingerprint": settings["model_fingerprint"], "id": meta.get("model_id")},
            "method": cache.method,
            "tokens_per_frame": cache.tokens_per_frame,
            "dtype": settings["dtype"],
            "sampling": settings["sampling"],
            "timestamps": timestamps,
            "frame_indices": indices,
            "cache_meta": _canonical(cache.meta, "cache meta", fold=False),
            "extra": _canonical(meta.get("extra"), "extra metadata", fold=False),
            "tensors": {"file": f"{key}.{checksum[:16]}.safetensors", "sha256": checksum, "bytes": sum(c.nbytes for c in data),
                        "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()},
                        "shapes": {k: list(v.shape) for k, v in tensors.items()}},
            "vidqa_version": vidqa.__version__,
            "created": now,
            "created_utc": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
        }
        text = json.dumps(record, indent=1, allow_nan=False) + "\n"

        directory = self._dir(key)
        temps: list[_LockedTemp] = []
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # 1. tensors: temp, fsync, rename to their checksum name. Our lock stays on the file, so
            #    no sweeper deletes it while it is not yet named by a JSON.
            temps.append(tensor_tmp := _LockedTemp(directory, key))
            tensor_tmp.write(data)
            tensor_tmp.commit(directory / record["tensors"]["file"])
            # 2. metadata last: its rename is the commit point of the whole entry.
            temps.append(json_tmp := _LockedTemp(directory, key))
            json_tmp.write(text.encode())
            json_tmp.commit(self._json(key))
        except OSError as e:
            for t in temps:
                t.close(discard=True)
            raise CacheError(f"cannot write cache entry {key[:12]} under {self.root}: "
                             f"{e.strerror or e} (set VIDQA_CACHE_DIR or --cache-dir)") from None
        except BaseException:
            for t in temps:
                t.close(discard=True)
            raise
        for t in temps:
            t.close()
        self._sweep(directory, key)  # the tensor file of the entry we replaced, temps of dead writers
        return self._json(key)

    # ---- locking ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, key: str, blocking: bool = False) -> Iterator[None]:
        """Hold the entry's exclusive lock: ``with store.lock(key): get or compute + put``.

        ``fcntl.flock`` on ``root/locks/<key[:2]>/<key>.lock``; the kernel releases it when the
        holder exits or is killed, so a crash never leaves a stale lock. Non-blocking (the default)
        raises ``CacheLocked`` (with the holder's pid, if it wrote one) when it is held. flock locks
        belong to an open file, so a second ``lock(key)`` in the same process also finds it held
        (and ``blocking=True`` there would wait forever).
        """
        self._check_key(key)
        path = self._locks / key[:2] / f"{key}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"cannot create a lock file under {self.root}: {e.strerror or e}") from None
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise CacheError(f"cannot create a lock file under {self.root}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                pid = None
                with contextlib.suppress(OSError, ValueError):
                    pid = int(os.pread(fd, 32, 0).decode().strip() or 0) or None
                os.close(fd)
                raise CacheLocked(key, pid) from None
            except BaseException:
                os.close(fd)
                raise
            # ``remove`` deletes lock files it can lock; if that happened between our open and our
            # flock we hold a lock on an unlinked inode that nobody else will see: open again.
            if _same_file(fd, path):
                break
            os.close(fd)
        try:
            with contextlib.suppress(OSError):  # for CacheLocked's message only
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing the last fd of the open file releases the flock

    # ---- listing and maintenance -----------------------------------------------------------------

    def _keys(self) -> list[str]:
        """Keys that have a metadata file (committed entries, good or bad)."""
        if not self._entries.is_dir():
            return []
        return sorted(p.name[:-5] for p in self._entries.glob("??/*.json") if _KEY_RE.fullmatch(p.name[:-5]))

    def entries(self) -> list[EntryInfo]:
        """Committed entries, oldest first (metadata only: cheap; ``verify`` checks the tensors)."""
        out = []
        for key in self._keys():
            try:
                record, st = self._read_record(key)
                size = (self._dir(key) / record["tensors"]["file"]).stat().st_size
            except (OSError, _Bad):
                continue  # gone meanwhile, or broken: verify reports those
            model = record.get("model") or {}
            out.append(EntryInfo(key=key, source=record["source"].get("path", "?"), frames=len(record["timestamps"]),
                                 bytes=size + st.st_size, method=record["method"],
                                 model=str(model.get("id") or model.get("fingerprint") or "?"),
                                 created=float(record.get("created", st.st_mtime)),
                                 tokens_per_frame=record["tokens_per_frame"], dtype=str(record.get("dtype", "?"))))
        out.sort(key=lambda e: (e.created, e.key))
        return out

    def remove(self, key: str | None = None, *, source: str | Path | None = None,
               older_than: float | timedelta | None = None, all: bool = False) -> int:
        """Remove entries; returns how many. Criteria combine with AND.

        ``key``: a full key or a unique prefix of one (as ``cache ls`` shows); ``source``: a video
        path, or a directory (every entry of a video under it); ``older_than``: seconds (or a
        timedelta) since creation; ``all``: everything, including the hash memo. Every call also
        sweeps temp files of dead writers and unreferenced tensor files.
        """
        if all and (key is not None or source is not None or older_than is not None):
            raise CacheError("remove: --all cannot be combined with a key, --source or --older-than")
        if not all and key is None and source is None and older_than is None:
            raise CacheError("remove: say what to remove: a key, --source, --older-than or --all")
        keys = self._keys()
        if key is not None:
            if not isinstance(key, str) or not _PREFIX_RE.fullmatch(key.lower()):
                raise CacheError(f"not a cache key: {key!r}")
            keys = [k for k in keys if k.startswith(key.lower())]
            if len(keys) > 1 and len(key) < 64:
                raise CacheError(f"cache key prefix {key} is ambiguous ({len(keys)} entries); give more digits")
        if source is not None or older_than is not None:
            src = Path(os.path.abspath(Path(source).expanduser())) if source is not None else None
            srcs = {str(src), str(src.resolve())} if src is not None else set()
            age = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
            now, picked = time.time(), []
            for k in keys:
                record = self.metadata(k)  # unreadable metadata matches no filter (verify removes it)
                if not isinstance(record, dict) or not isinstance(record.get("source"), dict):
                    continue
                path = str(record["source"].get("path", ""))
                if srcs and not any(path == s or path.startswith(s.rstrip(os.sep) + os.sep) for s in srcs):
                    continue
                if age is not None and not now - float(record.get("created", now)) > age:
                    continue
                picked.append(k)
            keys = picked
        removed = sum(self._discard(k) for k in keys)
        if all:
            self._sweep_memo()
            for p in sorted(self._hashes.glob("??/*.json")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            for p in sorted(self._locks.glob("??/*.lock")):  # also of keys never put; free ones only
                _drop_free_lock_file(p)
        if self._entries.is_dir():
            for d in sorted(self._entries.iterdir()):
                self._sweep(d, None)
        return removed

    def verify(self, repair: bool = True) -> list[tuple[str, str]]:
        """Check every entry fully (metadata, key, tensor checksum, shapes): ``(key, problem)`` for
        each bad one, and ``(file name, "orphan ...")`` for each file left by a dead writer.

        With ``repair`` (the default) bad entries and orphans are removed as they are reported; a
        bad entry can never be used anyway (``get`` would remove it too). Slow: reads every tensor.
        """
        problems: list[tuple[str, str]] = []
        for key in self._keys():
            try:
                self._load(key)
            except FileNotFoundError:
                continue
            except _Bad as bad:
                problems.append((key, str(bad)))
                if repair and bad.removable:
                    self._discard(key, bad.json_stat)
        if self._entries.is_dir():
            for d in sorted(self._entries.iterdir()):
                problems += self._sweep(d, None, delete=repair)
        problems += self._sweep_memo(delete=repair)
        return problems

    def _discard(self, key: str, json_stat: os.stat_result | None = None) -> bool:
        """Remove an entry: its JSON first (so it is invisible at once), then its files and lock.

        With ``json_stat``, only if the JSON is still that file: a concurrent ``put`` may have just
        replaced a bad entry with a good one, which must survive.
        """
        json_path = self._json(key)
        if json_stat is not None and not self._json_is(key, json_stat):
            return False
        try:
            json_path.unlink()
        except FileNotFoundError:
            return False
        except OSError:
            return False  # read-only store: the caller still gets None and recomputes
        self._sweep(self._dir(key), key)
        _drop_free_lock_file(self._locks / key[:2] / f"{key}.lock")
        return True

    def _sweep(self, directory: Path, key: str | None, *, delete: bool = True) -> list[tuple[str, str]]:
        """Orphans in one entry directory (of one key, or all): temp files whose writer is gone, and
        tensor files that no JSON names. A file whose flock is held belongs to a live writer: kept."""
        found: list[tuple[str, str]] = []
        try:
            names = sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return found
        for name in names:
            if name.endswith(".tmp") and name.startswith("."):
                owner, what = name[1:65], "orphan temp file"
            elif name.endswith(".safetensors"):
                owner, what = name[:64], "orphan tensor file"
            else:
                continue
            if key is not None and owner != key:
                continue
            path = directory / name
            fd = _try_flock(path)
            if fd is None:
                continue  # a writer is working on it (or it is already gone)
            try:
                if what == "orphan tensor file":
                    # decided only now, under the lock: the writer that made it may have committed
                    record = self.metadata(owner) if _KEY_RE.fullmatch(owner) else None
                    tensors = record.get("tensors") if isinstance(record, dict) else None
                    if isinstance(tensors, dict) and tensors.get("file") == name:
                        continue
                outcome = _unlink_if_same(fd, path) if delete else "kept"
                if outcome is not None:
                    found.append((owner if _KEY_RE.fullmatch(owner) else name,
                                  f"{what} {name}" + (f" ({outcome})" if delete else "")))
            finally:
                os.close(fd)
        return found

    def _sweep_memo(self, *, delete: bool = True) -> list[tuple[str, str]]:
        """Temp files of dead writers of the hash memo."""
        found: list[tuple[str, str]] = []
        if not self._hashes.is_dir():
            return found
        for path in sorted(self._hashes.glob("??/.*.tmp")):
            fd = _try_flock(path)
            if fd is None:
                continue
            try:
                outcome = _unlink_if_same(fd, path) if delete else "kept"
                if outcome is not None:
                    found.append((path.name, "orphan temp file in the hash memo" + (f" ({outcome})" if delete else "")))
            finally:
                os.close(fd)
        return found
