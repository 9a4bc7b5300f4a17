"""Crash-safe file primitives: atomic writes (temp + fsync + rename + directory fsync) and flock locks.

Every file is written as a temp file on which its writer holds an flock until it is committed. The
kernel drops that lock when the writer dies, so "temp file whose lock can be taken" means exactly
"left behind by a dead (or finished) writer": sweepers use ``try_flock`` + ``unlink_if_same`` and
never guess with ages. Not for Windows (fcntl); best effort on NFS (flock is emulated there).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import stat
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


CHECK_CHUNK = 16 << 20  # tensor files are checked in 16 MiB pieces, several at once (see check_chunks)
_pool = None


def digests(buffers, chunk: int = CHECK_CHUNK) -> tuple[str, list[str]]:
    """sha256 of the concatenated ``buffers`` and of each ``chunk``-byte piece of it (the last may be shorter)."""
    whole, cur, filled, pieces = hashlib.sha256(), hashlib.sha256(), 0, []
    for b in buffers:
        view = memoryview(b).cast("B")
        whole.update(view)
        pos = 0
        while pos < len(view):
            take = min(chunk - filled, len(view) - pos)
            cur.update(view[pos:pos + take])
            filled, pos = filled + take, pos + take
            if filled == chunk:
                pieces.append(cur.hexdigest())
                cur, filled = hashlib.sha256(), 0
    if filled:
        pieces.append(cur.hexdigest())
    return whole.hexdigest(), pieces


def check_chunks(data, pieces: list[str], chunk: int = CHECK_CHUNK) -> bool:
    """Whether every ``chunk``-byte piece of ``data`` has its sha256 in ``pieces``, checked on a few
    threads at once (hashlib releases the GIL): a 500 MB entry is checked in a fraction of the time
    of one whole-file sha256, with the same strength."""
    global _pool
    view = memoryview(data).cast("B")
    if len(pieces) != -(-len(view) // chunk):  # one per started piece (none for an empty file)
        return False
    if len(pieces) <= 1:
        return all(hashlib.sha256(view).hexdigest() == p for p in pieces)
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="vidqa-check")
    got = _pool.map(lambda i: hashlib.sha256(view[i * chunk:(i + 1) * chunk]).hexdigest(), range(len(pieces)))
    return list(got) == list(pieces)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (the new name survives a power cut, not only the data)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Every file of the store is opened without following a final symlink and without blocking on a FIFO,
# and every directory below the store's root is reached through ``open_dir`` (no symlinks either): a
# link planted inside the store is never followed out of it, so nothing outside is read, written or
# deleted. (The root itself may be a link: that is the user's choice of where the store lives.)
NOFOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_dir(root: Path, parts: tuple[str, ...] | list[str], create: bool = False) -> int:
    """An fd of the directory ``root/parts...``, each part a real directory, never a symlink.

    ``create``: make missing parts. OSError if a part is missing (FileNotFoundError), a link or not a
    directory (NotADirectoryError / ELOOP), or cannot be made.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def dir_fd(root: Path, *parts: str, create: bool = False):
    """``open_dir`` as a context: the fd, or None if the directory is missing, a link or not a directory."""
    try:
        fd = open_dir(root, parts, create)
    except OSError:
        if create:
            raise
        fd = None
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def is_regular(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


def same_file(fd: int, path: Path | str, dir_fd: int | None = None) -> bool:
    """Does ``path`` still name the inode open as ``fd``? (It may have been unlinked or replaced.)"""
    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)


def try_flock(path: Path | str, dir_fd: int | None = None) -> int | None:
    """Open ``path`` and take its exclusive flock without blocking: the fd, or None if held/gone, or
    not a regular file (a link, a FIFO: nothing vidqa wrote)."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW, dir_fd=dir_fd)  # flock needs no write access: works read-only
    except OSError:
        return None
    if not is_regular(fd):
        os.close(fd)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def unlink_if_same(fd: int, path: Path | str, dir_fd: int | None = None) -> str | None:
    """Unlink ``path`` only if it is still the inode we locked (a writer may have renamed a new one
    there): "removed", "could not remove: <why>" (read-only store), or None if it is not ours to remove."""
    if not same_file(fd, path, dir_fd):
        return None
    try:
        os.unlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"could not remove: {e.strerror or e}"
    return "removed"


def drop_free_lock_file(path: Path | str, dir_fd: int | None = None) -> None:
    """Delete a lock file nobody holds (lockers re-check the inode after flock, so this is safe)."""
    if (fd := try_flock(path, dir_fd)) is not None:
        try:
            unlink_if_same(fd, path, dir_fd)
        finally:
            os.close(fd)


class LockHeld(Exception):
    """``hold_flock(blocking=False)`` found the lock taken; ``pid``: the holder's, if it wrote one."""

    def __init__(self, pid: int | None):
        super().__init__(pid)
        self.pid = pid


def hold_flock(path: Path | str, blocking: bool, dir_fd: int | None = None) -> int:
    """Open (or create) ``path``, take its exclusive flock and write our pid into it; the fd.

    Closing the fd releases the lock, and so does the kernel when the holder exits or is killed: a
    crash never leaves a stale lock. ``LockHeld`` if it is held and not ``blocking``; OSError if the
    file cannot be opened. flock locks belong to an open file, so a second ``hold_flock`` of the
    same path in the same process also finds it held.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644, dir_fd=dir_fd)
        if not is_regular(fd):
            os.close(fd)
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
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
        if same_file(fd, path, dir_fd):
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
    name no longer points at our inode) and start over with a new name. ``dir_fd``: an open fd of
    ``directory`` (from ``open_dir``: names are then resolved in that very directory, never through
    a link); else the directory is opened here.
    """

    def __init__(self, directory: Path, stem: str, dir_fd: int | None = None):
        self.dir = directory
        self._own_dir = dir_fd is None
        self.dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if dir_fd is None else dir_fd
        try:
            while True:
                self.name = f".{stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
                self.fd = os.open(self.name, os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644, dir_fd=self.dir_fd)
                fcntl.flock(self.fd, fcntl.LOCK_EX)  # waits out a sweeper that grabbed it first, if any
                if same_file(self.fd, self.name, self.dir_fd):
                    break
                os.close(self.fd)
        except BaseException:
            if self._own_dir:
                os.close(self.dir_fd)
            raise

    @property
    def path(self) -> Path:
        return self.dir / self.name

    def write(self, data: bytes | memoryview | list[memoryview]) -> None:
        for chunk in data if isinstance(data, list) else [data]:
            view = memoryview(chunk).cast("B")
            while view:  # os.write may write less than asked
                view = view[os.write(self.fd, view):]
        os.fsync(self.fd)  # the data is on disk before any name points at it

    def commit(self, final: Path | str) -> None:
        """Rename into place (``final``: a name in the directory). The fd (and its lock) stays valid:
        it now guards ``final``."""
        final = Path(final).name
        os.replace(self.name, final, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        self.name = final
        os.fsync(self.dir_fd)

    def close(self, *, discard: bool = False) -> None:
        if self.fd < 0:
            return
        if discard and self.name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(self.name, dir_fd=self.dir_fd)
        os.close(self.fd)
        self.fd = -1
        if self._own_dir:
            os.close(self.dir_fd)


def write_atomic(path: Path, data: bytes, dir_fd: int | None = None) -> None:
    """Write a small file atomically (temp + fsync + rename); ``dir_fd``: an open fd of its directory."""
    if dir_fd is None:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = LockedTemp(path.parent, path.name, dir_fd)
    try:
        tmp.write(data)
        tmp.commit(path)
    except BaseException:
        tmp.close(discard=True)
        raise
    tmp.close()
