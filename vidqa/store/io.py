"""Crash-safe file primitives: atomic writes (temp + fsync + rename + directory fsync) and flock locks.

Every file is written as a temp file on which its writer holds an flock until it is committed. The
kernel drops that lock when the writer dies, so "temp file whose lock can be taken" means exactly
"left behind by a dead (or finished) writer": sweepers use ``try_flock`` + ``unlink_if_same`` and
never guess with ages. Not for Windows (fcntl); best effort on NFS (flock is emulated there).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
from pathlib import Path

HASH_CHUNK = 8 << 20  # streamed hashing: 8 MiB reads, never the whole file in memory


def sha256_file(f) -> str:
    """Streamed sha256 of an open binary file (reads HASH_CHUNK bytes at a time into one buffer)."""
    h = hashlib.sha256()
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    while n := f.readinto(buf):
        h.update(view[:n])
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (the new name survives a power cut, not only the data)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def same_file(fd: int, path: Path) -> bool:
    """Does ``path`` still name the inode open as ``fd``? (It may have been unlinked or replaced.)"""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)


def try_flock(path: Path) -> int | None:
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


def unlink_if_same(fd: int, path: Path) -> str | None:
    """Unlink ``path`` only if it is still the inode we locked (a writer may have renamed a new one
    there): "removed", "could not remove: <why>" (read-only store), or None if it is not ours to remove."""
    if not same_file(fd, path):
        return None
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"could not remove: {e.strerror or e}"
    return "removed"


def drop_free_lock_file(path: Path) -> None:
    """Delete a lock file nobody holds (lockers re-check the inode after flock, so this is safe)."""
    if (fd := try_flock(path)) is not None:
        try:
            unlink_if_same(fd, path)
        finally:
            os.close(fd)


class LockHeld(Exception):
    """``hold_flock(blocking=False)`` found the lock taken; ``pid``: the holder's, if it wrote one."""

    def __init__(self, pid: int | None):
        super().__init__(pid)
        self.pid = pid


def hold_flock(path: Path, blocking: bool) -> int:
    """Open (or create) ``path``, take its exclusive flock and write our pid into it; the fd.

    Closing the fd releases the lock, and so does the kernel when the holder exits or is killed: a
    crash never leaves a stale lock. ``LockHeld`` if it is held and not ``blocking``; OSError if the
    file cannot be opened. flock locks belong to an open file, so a second ``hold_flock`` of the
    same path in the same process also finds it held.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            pid = None
            with contextlib.suppress(OSError, ValueError):
                pid = int(os.pread(fd, 32, 0).decode().strip() or 0) or None
            os.close(fd)
            raise LockHeld(pid) from None
        except BaseException:
            os.close(fd)
            raise
        # ``drop_free_lock_file`` deletes lock files it can lock; if that happened between our open
        # and our flock we hold a lock on an unlinked inode that nobody else will see: open again.
        if same_file(fd, path):
            break
        os.close(fd)
    with contextlib.suppress(OSError):  # for the "held by process N" message only
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class LockedTemp:
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
            if same_file(self.fd, self.path):
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
        fsync_dir(self.dir)

    def close(self, *, discard: bool = False) -> None:
        if self.fd < 0:
            return
        if discard and self.path.name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1


def write_atomic(path: Path, data: bytes) -> None:
    """Write a small file atomically (temp + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = LockedTemp(path.parent, path.name)
    try:
        tmp.write(data)
        tmp.commit(path)
    except BaseException:
        tmp.close(discard=True)
        raise
    tmp.close()
