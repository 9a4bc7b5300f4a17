"""vidqa.store.io: atomic writes, flocked temp files, lock files, and the sweepers' safe unlink."""

from __future__ import annotations

import hashlib
import os

import pytest

from vidqa.store import io


def test_write_atomic_replaces_whole_files_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a" / "b.json"
    io.write_atomic(path, b"one")
    io.write_atomic(path, b"two")
    assert path.read_bytes() == b"two" and os.listdir(path.parent) == ["b.json"]


def test_write_atomic_failure_removes_its_temp(tmp_path, monkeypatch):
    def fail(src, dst, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        io.write_atomic(tmp_path / "x", b"data")
    assert os.listdir(tmp_path) == []


def test_locked_temp_is_locked_until_closed(tmp_path):
    tmp = io.LockedTemp(tmp_path, "stem")
    assert tmp.path.name.startswith(".stem.") and tmp.path.name.endswith(".tmp")
    tmp.write([memoryview(b"ab"), memoryview(b"cd")])
    assert io.try_flock(tmp.path) is None  # a sweeper cannot take it: its writer is alive
    tmp.commit(tmp_path / "final")
    assert io.try_flock(tmp_path / "final") is None  # the lock now guards the committed name
    tmp.close()
    tmp.close()  # twice is fine
    assert (tmp_path / "final").read_bytes() == b"abcd"
    fd = io.try_flock(tmp_path / "final")
    assert fd is not None
    os.close(fd)
    gone = io.LockedTemp(tmp_path, "gone")
    gone.close(discard=True)
    assert not gone.path.exists()


def test_unlink_if_same_only_removes_the_locked_inode(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    fd = io.try_flock(path)
    (tmp_path / "new").write_bytes(b"new")
    os.replace(tmp_path / "new", path)  # a writer renamed a new file over it
    assert io.unlink_if_same(fd, path) is None and path.read_bytes() == b"new"
    os.close(fd)
    fd = io.try_flock(path)
    assert io.unlink_if_same(fd, path) == "removed" and not path.exists()
    assert io.unlink_if_same(fd, path) is None
    os.close(fd)
    assert io.try_flock(path) is None  # gone


def test_hold_flock_reports_the_holder_and_drop_keeps_held_files(tmp_path):
    path = tmp_path / "k.lock"
    fd = io.hold_flock(path, blocking=False)
    try:
        assert os.pread(fd, 32, 0) == f"{os.getpid()}\n".encode()
        with pytest.raises(io.LockHeld) as held:
            io.hold_flock(path, blocking=False)  # flock belongs to the open file: conflicts in-process too
        assert held.value.pid == os.getpid()
        io.drop_free_lock_file(path)
        assert path.exists()  # held: kept
    finally:
        os.close(fd)
    io.drop_free_lock_file(path)
    assert not path.exists()


def test_sha256_file_streams(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "HASH_CHUNK", 7)
    data = os.urandom(1000)
    (tmp_path / "v").write_bytes(data)
    with open(tmp_path / "v", "rb") as f:
        assert io.sha256_file(f) == hashlib.sha256(data).hexdigest()


def test_fsync_dir(tmp_path):
    io.fsync_dir(tmp_path)  # no error on a real directory
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        io.fsync_dir(tmp_path / "f")


def test_chunk_digests_match_whole_and_catch_any_changed_byte():
    import hashlib

    from vidqa.store import io as sio

    rng = __import__("random").Random(0)
    data = bytes(rng.getrandbits(8) for _ in range(10_000))
    parts = [data[:1234], data[1234:7000], data[7000:]]  # buffers that straddle the pieces
    whole, pieces = sio.digests(parts, chunk=1000)
    assert whole == hashlib.sha256(data).hexdigest()
    assert pieces == [hashlib.sha256(data[i:i + 1000]).hexdigest() for i in range(0, 10_000, 1000)]
    assert sio.check_chunks(data, pieces, chunk=1000)
    for at in (0, 999, 1000, 5555, 9999):
        bad = bytearray(data)
        bad[at] ^= 1
        assert not sio.check_chunks(bad, pieces, chunk=1000)
    assert not sio.check_chunks(data[:9000], pieces, chunk=1000)  # truncated: a piece missing
    assert not sio.check_chunks(data + b"x", pieces, chunk=1000)  # grown: a piece more
    assert sio.digests([b""], chunk=1000)[1] == [] and sio.check_chunks(b"", [], chunk=1000)
