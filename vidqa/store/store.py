"""The persistent cache store: per-frame caches of whole videos, on disk, shared between processes.

An *entry* is one video compressed with one set of settings (model fingerprint, method, tokens per
frame, dtype, sampling); its key is made in ``vidqa.store.keys``. Layout::

    root/entries/<key[:2]>/<key>.json                      metadata: readable JSON, the commit record
    root/entries/<key[:2]>/<key>.<sha256[:16]>.safetensors   the tensors, named after their own checksum
    root/entries/<key[:2]>/.<key>.<pid>.<random>.tmp       a file being written (never read as an entry)
    root/locks/<key[:2]>/<key>.lock                        per-entry flock: "someone is computing this"
    root/hashes/<sha256(path)[:2]>/<sha256(path)>.json     memo: (path, size, mtime_ns, inode) -> sha256

Atomicity: the JSON is written last and is the only thing that makes an entry visible; it names the
tensor file it was written with, and that file was complete and fsynced before the JSON existed. The
tensor file name carries its checksum, so a new ``put`` of a key never overwrites the file that the
old JSON still names: a writer killed at any point leaves the old entry (or none) intact, plus garbage
that ``verify``/``remove``/the next ``put`` of that key sweep away. Every file is written through
``vidqa.store.io.LockedTemp``, flocked by its writer until committed (see ``vidqa.store.io``).

The store knows no model: it keeps ``FrameCache``s (plain tensors, timestamps and JSON-able meta)
under keys that the caller's settings make.
"""

# Over 500 lines: one class whose read, write, lock and sweep paths share the same invariants (the
# commit order, checks against the record, no link ever followed); split apart they would each need
# the others' internals.
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import mmap
import os
import re
import stat
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import torch

from vidqa.framecache import FrameCache
from vidqa.options import cache_root
from vidqa.store import codec, io, record as entry_record
from vidqa.store.errors import CacheError, CacheLocked, CacheWarning
from vidqa.store.io import (NOFOLLOW, LockedTemp, LockHeld, dir_fd, drop_free_lock_file, hold_flock, is_regular,
                            try_flock, unlink_if_same)
from vidqa.store.keys import KEY_RE, PREFIX_RE, STORE_FORMAT, HashMemo, check_key, check_settings, key_of


def _first_line(e: BaseException) -> str:
    lines = str(e).splitlines()
    return lines[0][:100] if lines else type(e).__name__


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

def _is_link(name: str, dfd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


_TEMP_RE = re.compile(r"\.([0-9a-f]{64})\.\d+\.[0-9a-f]{8}\.tmp")  # what LockedTemp names
_TENSOR_RE = re.compile(r"([0-9a-f]{64})\.[0-9a-f]{16}\.safetensors")  # what put names


class Store:
    """The on-disk cache of per-frame caches. Safe to share between processes; see the module doc."""

    def __init__(self, root: str | Path | None = None):
        """``root`` None: ``$VIDQA_CACHE_DIR``, else ``$XDG_CACHE_HOME/vidqa``, else ``~/.cache/vidqa``."""
        self.root = (Path(root).expanduser() if root is not None else cache_root()).absolute()
        self._entries = self.root / "entries"
        self._locks = self.root / "locks"
        self._memo = HashMemo(self.root / "hashes")

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # ---- keys ------------------------------------------------------------------------------------

    def content_hash(self, video: str | Path) -> str:
        """sha256 of the video's bytes, memoised by (absolute path, size, mtime_ns, inode).

        A multi-GB file is hashed once; a file whose size, mtime or inode changed is hashed again
        (``touch`` alone gives the same hash back, just not for free).
        """
        return self._memo.identify(video)[0]

    def key(self, video: str | Path, settings: dict, *, compute: bool = True) -> str | None:
        """The entry key of ``video`` under ``settings``.

        ``settings`` must hold ``model_fingerprint``, ``method``, ``tokens_per_frame``, ``dtype`` and
        ``sampling`` (a dict); anything else in it (e.g. the method's ``cache_meta``) is covered too.
        Values must be JSON-able; integral floats equal ints (``fps=1`` is ``fps=1.0``).
        ``compute=False``: None when the video's hash is not memoised (nothing is hashed).
        """
        known = self._memo.identify(video, compute=compute)
        return None if known is None else key_of(known[0], check_settings(settings))

    # ---- paths ---------------------------------------------------------------------------------

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
        check_key(key)
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
            wanted = check_settings(settings)
            if wanted != record["settings"]:
                # The entry itself is consistent (its key recomputes from its metadata), so it is
                # someone else's valid entry and the caller's key does not belong to its settings.
                warnings.warn(f"cache entry {key[:12]} was made with other settings than asked; ignoring it",
                              CacheWarning, stacklevel=2)
                return None
        return FrameCache(record["method"], tensors, list(record["timestamps"]), record["tokens_per_frame"],
                          dict(record.get("cache_meta") or {}))

    def metadata(self, key: str) -> dict | None:
        """The stored metadata of ``key`` (unverified JSON), or None (also for a link: never followed)."""
        check_key(key)
        with dir_fd(self.root, "entries", key[:2]) as dfd:
            if dfd is None:
                return None
            try:
                with open(os.open(f"{key}.json", os.O_RDONLY | NOFOLLOW, dir_fd=dfd), "rb") as f:
                    return json.loads(f.read()) if is_regular(f.fileno()) else None
            except (OSError, ValueError):
                return None

    def _read_record(self, key: str) -> tuple[dict, os.stat_result]:
        """The parsed metadata and the stat of the JSON inode it came from; FileNotFoundError if absent."""
        with dir_fd(self.root, "entries", key[:2]) as dfd:
            if dfd is None:  # absent, or a link or file planted where a directory should be: not ours
                raise FileNotFoundError(key)
            try:
                fd = os.open(f"{key}.json", os.O_RDONLY | NOFOLLOW, dir_fd=dfd)
            except FileNotFoundError:
                raise
            except OSError as e:
                if e.errno == errno.ELOOP:  # a symlink: never followed, never ours
                    raise FileNotFoundError(key) from None
                raise _Bad(f"cannot read the metadata: {e.strerror or e}", None, removable=False) from None
            with open(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise FileNotFoundError(key)  # a FIFO, a device...: not ours
                try:
                    raw = f.read()
                except OSError as e:
                    raise _Bad(f"cannot read the metadata: {e.strerror or e}", None, removable=False) from None
        try:
            record = entry_record.parse(raw)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise _Bad(f"unreadable metadata: {_first_line(e)}", st) from None
        if record["format"] != STORE_FORMAT:
            # Written by another vidqa version into a shared cache. Its keys can never equal ours
            # (the format is hashed into them), so it is simply not ours: absent, and never deleted.
            raise FileNotFoundError(f"store format {record['format']} entry")
        # The key must be the hash of the metadata's own content hash and settings: catches a JSON
        # that was edited, corrupted in a still-parseable way, or copied under another key's name.
        if record["key"] != key or key_of(record["source"]["sha256"], record["settings"]) != key:
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
            try:
                # A private (copy-on-write) map: the checksum pass pages the file in once and the
                # tensors then view those same pages, with no copy. Committed tensor files are never
                # modified in place (a new put writes a new file and renames), so what was checked
                # is what is used.
                with dir_fd(self.root, "entries", key[:2]) as dfd:
                    if dfd is None:
                        raise FileNotFoundError(key)
                    fd = os.open(record["tensors"]["file"], os.O_RDONLY | NOFOLLOW, dir_fd=dfd)
                with open(fd, "rb") as f:
                    if not is_regular(f.fileno()):
                        raise _Bad("the tensor file is not a regular file", st)
                    size = os.fstat(f.fileno()).st_size
                    data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else bytearray()
            except FileNotFoundError:
                if not self._json_is(key, st):
                    continue  # the JSON changed under us (new put, or removed): look again
                raise _Bad("missing tensor file", st) from None
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise _Bad("the tensor file is a symlink (not written by vidqa; never followed)", st) from None
                raise _Bad(f"cannot read the tensor file: {e.strerror or e}", st, removable=False) from None
            if len(data) != record["tensors"].get("bytes", len(data)):
                raise _Bad(f"truncated tensor file ({len(data)} of {record['tensors']['bytes']} bytes)", st)
            pieces = record["tensors"].get("chunk_sha256")
            if pieces is not None:  # per-piece digests (new entries): checked on several threads
                ok = io.check_chunks(data, pieces)
            else:
                ok = hashlib.sha256(data).hexdigest() == record["tensors"].get("sha256")
            if not ok:
                raise _Bad("checksum mismatch in the tensor file", st)
            try:
                tensors = codec.decode(data)
            except Exception as e:  # a checksummed file that does not parse: written by something else
                raise _Bad(f"unreadable tensor file: {_first_line(e)}", st) from None
            frames = len(record["timestamps"])
            for name, t in tensors.items():
                if t.ndim == 0 or t.shape[0] != frames:
                    raise _Bad(f"tensor {name!r} has {tuple(t.shape)}, not {frames} frames first", st)
            # the file must hold exactly what the record states: a file rewritten with other shapes or
            # dtypes (and a recomputed checksum) is refused here, before anything computes with it
            dtypes, shapes = record["tensors"]["dtypes"], record["tensors"]["shapes"]
            if set(tensors) != set(dtypes) or set(tensors) != set(shapes):
                raise _Bad(f"tensor names {sorted(tensors)} are not those of the record {sorted(dtypes)}", st)
            for name, t in tensors.items():
                dtype = str(t.dtype).removeprefix("torch.")
                if dtype != dtypes[name] or list(t.shape) != shapes[name]:
                    raise _Bad(f"tensor {name!r} is {dtype} {list(t.shape)}, the record says "
                               f"{dtypes[name]} {shapes[name]}", st)
            return record, tensors
        raise FileNotFoundError(key)  # it kept changing: treat as absent, the caller recomputes

    def _json_is(self, key: str, st: os.stat_result | None) -> bool:
        try:
            now = os.lstat(self._json(key))
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
        check_key(key)
        unknown = set(meta) - {"source", "settings", "model_id", "frame_indices", "extra"}
        if "source" not in meta or "settings" not in meta or unknown:
            raise CacheError(f"put() metadata needs source and settings (unknown: {sorted(unknown)})")
        settings = check_settings(meta["settings"])
        source = Path(os.path.abspath(Path(meta["source"]).expanduser()))
        content, stamp = self._memo.identify(source)  # memoised: free unless the video changed
        if key_of(content, settings) != key:
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

        # contiguous CPU tensors; their memory is written as it is (see codec.encode), checksummed on
        # the way, through our locked temp file
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in cache.tensors.items()}
        try:
            data = codec.encode(tensors, {"vidqa_key": key, "vidqa_store_format": str(STORE_FORMAT)})
        except TypeError as e:
            raise CacheError(str(e)) from None
        checksum, pieces = io.digests(data)
        record = entry_record.build(key, source={"path": str(source), "sha256": content, "size": stamp["size"],
                                                 "mtime_ns": stamp["mtime_ns"], "mtime": stamp["mtime_ns"] / 1e9},
                                    settings=settings, cache=cache, model_id=meta.get("model_id"),
                                    frame_indices=indices, extra=meta.get("extra"), tensors=tensors,
                                    checksum=checksum, pieces=pieces, nbytes=sum(c.nbytes for c in data))

        directory = self._dir(key)
        temps: list[LockedTemp] = []
        dfd = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            dfd = io.open_dir(self.root, ("entries", key[:2]), create=True)  # never through a link
            # 1. tensors: temp, fsync, rename to their checksum name. Our lock stays on the file, so
            #    no sweeper deletes it while it is not yet named by a JSON.
            temps.append(tensor_tmp := LockedTemp(directory, key, dfd))
            tensor_tmp.write(data)
            tensor_tmp.commit(record["tensors"]["file"])
            # 2. metadata last: its rename is the commit point of the whole entry.
            temps.append(json_tmp := LockedTemp(directory, key, dfd))
            json_tmp.write(entry_record.dumps(record))
            json_tmp.commit(f"{key}.json")
        except OSError as e:
            for t in temps:
                t.close(discard=True)
            if dfd is not None:
                os.close(dfd)
            why = ("a link or a file stands where the store has a directory" if e.errno in (errno.ELOOP, errno.ENOTDIR)
                   else e.strerror or str(e))
            raise CacheError(f"cannot write cache entry {key[:12]} under {self.root}: "
                             f"{why} (set VIDQA_CACHE_DIR or --cache-dir)") from None
        except BaseException:
            for t in temps:
                t.close(discard=True)
            if dfd is not None:
                os.close(dfd)
            raise
        for t in temps:
            t.close()
        os.close(dfd)
        self._sweep(key[:2], key)  # the tensor file of the entry we replaced, temps of dead writers
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
        check_key(key)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with dir_fd(self.root, "locks", key[:2], create=True) as dfd:  # never through a link
                fd = hold_flock(f"{key}.lock", blocking, dfd)
        except LockHeld as held:
            raise CacheLocked(key, held.pid) from None
        except OSError as e:
            raise CacheError(f"cannot create a lock file under {self.root}: {e.strerror or e}") from None
        try:
            yield
        finally:
            os.close(fd)  # closing the last fd of the open file releases the flock

    # ---- listing and maintenance -----------------------------------------------------------------

    def _keys(self) -> list[str]:
        """Keys that have a metadata file (committed entries, good or bad)."""
        keys = []
        for sub in self._subdirs("entries"):
            with dir_fd(self.root, "entries", sub) as dfd:
                if dfd is not None:
                    keys += [n[:-5] for n in os.listdir(dfd) if n.endswith(".json") and KEY_RE.fullmatch(n[:-5])
                             and n[:2] == sub]
        return sorted(keys)

    def _subdirs(self, top: str) -> list[str]:
        """The two-hex-digit directories under ``root/top`` (links and other names are not ours)."""
        with dir_fd(self.root, top) as dfd:
            if dfd is None:
                return []
            return sorted(n for n in os.listdir(dfd) if re.fullmatch(r"[0-9a-f]{2}", n))

    def _foreign(self) -> list[tuple[str, str]]:
        """Links planted in the store's directories: reported by ``verify``, never followed or removed."""
        found = []
        for top in ("entries", "locks", "hashes"):
            with dir_fd(self.root, top) as dfd:
                if dfd is None:
                    if os.path.islink(self.root / top):
                        found.append((top, f"{top}/ is a symlink, not written by vidqa: left alone"))
                    continue
                for n in sorted(os.listdir(dfd)):
                    if _is_link(n, dfd):
                        found.append((n, f"{top}/{n} is a symlink, not written by vidqa: left alone"))
                        continue
                    with dir_fd(self.root, top, n) as sub:
                        for m in sorted(os.listdir(sub)) if sub is not None else []:
                            if _is_link(m, sub):
                                found.append((m, f"{top}/{n}/{m} is a symlink, not written by vidqa: left alone"))
        return found

    def entries(self) -> list[EntryInfo]:
        """Committed entries, oldest first (metadata only: cheap; ``verify`` checks the tensors)."""
        out = []
        for key in self._keys():
            try:
                record, st = self._read_record(key)
                size = os.lstat(self._dir(key) / record["tensors"]["file"]).st_size
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
            if not isinstance(key, str) or not PREFIX_RE.fullmatch(key.lower()):
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
        try:
            removed = sum(self._discard(k, strict=True) for k in keys)
            if all:
                self._memo.clear()
                for sub in self._subdirs("locks"):  # also of keys never put; free ones only
                    with dir_fd(self.root, "locks", sub) as dfd:
                        for name in sorted(os.listdir(dfd)) if dfd is not None else []:
                            if name.endswith(".lock") and KEY_RE.fullmatch(name[:-5]):
                                drop_free_lock_file(name, dfd)
        except OSError as e:
            raise CacheError(f"cannot remove from the cache store {self.root}: {e.strerror or e}") from None
        for sub in self._subdirs("entries"):
            self._sweep(sub, None)
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
        for sub in self._subdirs("entries"):
            problems += self._sweep(sub, None, delete=repair)
        problems += self._memo.sweep(delete=repair)
        problems += self._foreign()
        return problems

    def _discard(self, key: str, json_stat: os.stat_result | None = None, strict: bool = False) -> bool:
        """Remove an entry: its JSON first (so it is invisible at once), then its files and lock.

        With ``json_stat``, only if the JSON is still that file: a concurrent ``put`` may have just
        replaced a bad entry with a good one, which must survive. Only regular files in real
        directories of the store are removed (a planted link is not ours). ``strict``: an OSError
        (read-only store) is raised; else the entry stays and False is returned.
        """
        if json_stat is not None and not self._json_is(key, json_stat):
            return False
        with dir_fd(self.root, "entries", key[:2]) as dfd:
            if dfd is None:
                return False
            try:
                if not stat.S_ISREG(os.stat(f"{key}.json", dir_fd=dfd, follow_symlinks=False).st_mode):
                    return False
                os.unlink(f"{key}.json", dir_fd=dfd)
            except FileNotFoundError:
                return False
            except OSError:
                if strict:
                    raise
                return False  # read-only store: the caller still gets None and recomputes
        self._sweep(key[:2], key)
        with dir_fd(self.root, "locks", key[:2]) as dfd:
            if dfd is not None:
                drop_free_lock_file(f"{key}.lock", dfd)
        return True

    def _sweep(self, sub: str, key: str | None, *, delete: bool = True) -> list[tuple[str, str]]:
        """Orphans in one entry directory ``entries/<sub>`` (of one key, or all): temp files whose
        writer is gone, and tensor files that no JSON names. A file whose flock is held belongs to a
        live writer: kept. Only names vidqa writes, only regular files, never through a link."""
        found: list[tuple[str, str]] = []
        with dir_fd(self.root, "entries", sub) as dfd:
            if dfd is None:
                return found
            for name in sorted(os.listdir(dfd)):
                if m := _TEMP_RE.fullmatch(name):
                    owner, what = m.group(1), "orphan temp file"
                elif m := _TENSOR_RE.fullmatch(name):
                    owner, what = m.group(1), "orphan tensor file"
                else:
                    continue
                if (key is not None and owner != key) or owner[:2] != sub:
                    continue
                fd = try_flock(name, dfd)
                if fd is None:
                    continue  # a writer is working on it (or it is gone, or not a regular file)
                try:
                    if what == "orphan tensor file":
                        # decided only now, under the lock: the writer that made it may have committed
                        record = self.metadata(owner)
                        tensors = record.get("tensors") if isinstance(record, dict) else None
                        if isinstance(tensors, dict) and tensors.get("file") == name:
                            continue
                    outcome = unlink_if_same(fd, name, dfd) if delete else "kept"
                    if outcome is not None:
                        found.append((owner, f"{what} {name}" + (f" ({outcome})" if delete else "")))
                finally:
                    os.close(fd)
        return found
