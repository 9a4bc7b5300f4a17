"""vidqa.store.store: round trips, crash safety, corruption, listing and removal, locks across processes.

The crash tests use real child processes killed with SIGKILL (no cleanup handlers run), because
that is what a killed ``vidqa ask`` or an OOM kill does; the children import ``store_helpers`` for
the same ``make_cache``/``settings`` helpers as the parent.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import vidqa
from vidqa.errors import VidqaError
from vidqa.store import CacheError, CacheLocked, CacheWarning, Store, default_root
from store_helpers import OLD, files, make_cache, make_video, put, same, settings, store, video  # noqa: F401 (fixtures)

TESTS = Path(__file__).parent
REPO = TESTS.parent


# ---- round trip ---------------------------------------------------------------------------------


def test_round_trip_float32_bfloat16_and_metadata(store, video):
    cache = make_cache()
    key = put(store, video, cache)
    got = store.get(key, settings())
    assert got is not None and same(got, cache)
    assert got.tensors["v"].dtype == torch.bfloat16 and got.tensors["k"].dtype == torch.float32
    assert type(got.meta["scale"]) is float and type(got.timestamps[0]) is float

    meta = json.loads((store.root / "entries" / key[:2] / f"{key}.json").read_text())
    assert meta["source"]["path"] == str(video.absolute()) and os.path.isabs(meta["source"]["path"])
    assert meta["source"]["sha256"] == hashlib.sha256(video.read_bytes()).hexdigest()
    assert meta["source"]["size"] == video.stat().st_size and meta["source"]["mtime_ns"] == video.stat().st_mtime_ns
    assert meta["sampling"] == {"fps": 1, "num_frames": None, "max_frames": 64, "start": None, "end": None,
                                "rule": None, "preprocess": None}
    assert meta["timestamps"] == [0.5, 1.5, 2.5] and meta["frame_indices"] == [0, 3, 6]
    assert meta["model"] == {"fingerprint": "f" * 16, "id": "tiny/voco"}
    assert (meta["method"], meta["tokens_per_frame"], meta["dtype"]) == ("voco", 2, "bfloat16")
    assert meta["vidqa_version"] == vidqa.__version__ and abs(meta["created"] - time.time()) < 60
    tensor_file = store.root / "entries" / key[:2] / meta["tensors"]["file"]
    assert meta["tensors"]["sha256"] == hashlib.sha256(tensor_file.read_bytes()).hexdigest()
    assert store.get("0" * 64) is None  # absent: None, silently


def test_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("VIDQA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "vidqa"
    monkeypatch.setenv("VIDQA_CACHE_DIR", str(tmp_path / "mine"))
    assert Store().root == tmp_path / "mine"
    assert Store(tmp_path / "arg").root == tmp_path / "arg"  # --cache-dir wins
    monkeypatch.delenv("VIDQA_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_root() == Path.home() / ".cache" / "vidqa"


# ---- atomicity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("failing_replace", [1, 2])  # 1: the tensor file's rename, 2: the JSON's
def test_crash_mid_put_leaves_no_entry(store, video, monkeypatch, failing_replace):
    key = store.key(video, settings())
    real, n = os.replace, []

    def replace(src, dst, **kw):
        n.append(1)
        if len(n) == failing_replace:
            raise OSError(28, "No space left on device")
        return real(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CacheError, match="No space left on device"):
        store.put(key, make_cache(), {"source": video, "settings": settings()})
    monkeypatch.setattr(os, "replace", real)

    assert store.get(key) is None and store.entries() == []
    assert not any(f.endswith(".json") for f in files(store))
    left = files(store)
    if failing_replace == 2:  # the tensor file made it to its final name, the JSON did not
        assert len(left) == 1 and left[0].endswith(".safetensors")
        assert store.verify() == [(key, f"orphan tensor file {left[0]} (removed)")]
    else:  # the failing writer removed its own temp file
        assert left == [] and store.verify() == []
    assert files(store) == [] and store.verify() == []


def test_killed_writer_temp_file_is_invisible_and_swept(store, video):
    key = put(store, video)
    d = store.root / "entries" / key[:2]
    orphan = d / f".{key}.99999.deadbeef.tmp"  # what a SIGKILLed writer leaves: half a tensor file
    orphan.write_bytes(b"\x00" * 100)
    other_key = store.key(video, settings(tokens_per_frame=4))
    (d.parent / other_key[:2]).mkdir(exist_ok=True)
    (d.parent / other_key[:2] / f".{other_key}.99999.cafebabe.tmp").write_bytes(b"{")

    assert store.get(other_key) is None
    assert [e.key for e in store.entries()] == [key]
    # a temp file whose writer is alive (it holds the flock) is left alone
    live = d / f".{key}.{os.getpid()}.0badf00d.tmp"
    live.write_bytes(b"")
    fd = os.open(live, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        problems = store.verify()
        assert sorted(problems) == sorted([(key, f"orphan temp file {orphan.name} (removed)"),
                                           (other_key, f"orphan temp file .{other_key}.99999.cafebabe.tmp (removed)")])
        assert not orphan.exists() and live.exists()
    finally:
        os.close(fd)
    assert store.verify() == [(key, f"orphan temp file {live.name} (removed)")]  # its writer is gone now
    assert store.verify() == [] and store.get(key) is not None


def test_next_put_of_a_key_sweeps_its_orphans(store, video):
    key = put(store, video)
    orphan = store.root / "entries" / key[:2] / f".{key}.99999.deadbeef.tmp"
    orphan.write_bytes(b"junk")
    put(store, video, make_cache(seed=1))
    assert not orphan.exists()
    assert sorted(files(store)) == sorted([f"{key}.json", json.loads(
        (store.root / "entries" / key[:2] / f"{key}.json").read_text())["tensors"]["file"]])


def test_overwrite_replaces_the_entry_and_its_tensor_file(store, video):
    key = put(store, video, make_cache(seed=0))
    put(store, video, make_cache(seed=1))
    assert same(store.get(key), make_cache(seed=1))
    assert len(files(store)) == 2  # the old tensor file is gone


# ---- corruption and defence in depth -----------------------------------------------------------


def _tensor_file(store: Store, key: str) -> Path:
    meta = json.loads((store.root / "entries" / key[:2] / f"{key}.json").read_text())
    return store.root / "entries" / key[:2] / meta["tensors"]["file"]


@pytest.mark.parametrize("pieces", [True, False])
def test_entries_with_and_without_piece_digests_are_checked(store, video, monkeypatch, pieces):
    """New entries carry per-piece sha256 (checked in parallel); entries written before them carry only
    the whole file's sha256, and still read. Either way a flipped byte is refused."""
    import vidqa.store.io as sio

    monkeypatch.setattr(sio, "CHECK_CHUNK", 64)  # several pieces even in a small test file
    monkeypatch.setattr(sio.digests, "__defaults__", (64,))
    monkeypatch.setattr(sio.check_chunks, "__defaults__", (64,))
    cache = make_cache(frames=5)
    key = put(store, video, cache)
    meta = store.root / "entries" / key[:2] / f"{key}.json"
    record = json.loads(meta.read_text())
    assert len(record["tensors"]["chunk_sha256"]) > 3
    if not pieces:  # an entry as older versions wrote it
        del record["tensors"]["chunk_sha256"]
        meta.write_text(json.dumps(record))
    assert same(store.get(key), cache)
    path = _tensor_file(store, key)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="checksum mismatch"):
        assert store.get(key) is None


@pytest.mark.parametrize("damage, problem", [
    ("flip", "checksum mismatch"), ("truncate", "truncated tensor file"), ("delete", "missing tensor file"),
])
def test_corrupt_tensor_file_is_detected(store, video, damage, problem):
    key = put(store, video)
    path = _tensor_file(store, key)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) - 7]))
    else:
        path.unlink()

    [(bad_key, found)] = store.verify(repair=False)
    assert bad_key == key and found.startswith(problem)
    assert store.verify(repair=False) == [(bad_key, found)]  # repair=False: still there
    with pytest.warns(CacheWarning, match=f"{key[:12]} is unusable .{problem}.*removed it"):
        assert store.get(key) is None
    assert store.entries() == [] and files(store) == [] and store.verify() == []
    put(store, video)  # the caller recomputes and stores again
    assert store.get(key) is not None


def test_bad_metadata_is_listed_by_verify(store, video, tmp_path):
    k1 = put(store, video)
    k2 = put(store, video, tokens_per_frame=4)
    k3 = put(store, video, dtype="float32")
    j = lambda k: store.root / "entries" / k[:2] / f"{k}.json"  # noqa: E731
    j(k1).write_text(j(k1).read_text()[:50])  # truncated JSON
    edited = json.loads(j(k2).read_text())
    edited["settings"]["dtype"] = "float16"  # a hand-edited setting: must not pass for the old key
    j(k2).write_text(json.dumps(edited))
    j(k3).write_text(j(k3).read_text().replace(k3, "1" * 64))  # wrong key inside

    problems = dict(store.verify())
    assert problems[k1].startswith("unreadable metadata")
    assert problems[k2] == "metadata does not belong to this key"
    assert problems[k3] == "metadata does not belong to this key"
    assert store.entries() == [] and store.verify() == [] and files(store) == []


def test_get_refuses_other_settings(store, video, tmp_path):
    key = put(store, video)
    assert store.get(key, settings()) is not None
    with pytest.warns(CacheWarning, match="other settings"):
        assert store.get(key, settings(model_fingerprint="other")) is None
    assert store.get(key, settings()) is not None  # a valid entry is not deleted for that
    # a valid entry copied under another key's name is caught by the key check, not returned
    other = store.key(video, settings(method="mini"))
    d = store.root / "entries" / key[:2]
    (d.parent / other[:2]).mkdir(exist_ok=True)
    (d.parent / other[:2] / f"{other}.json").write_text((d / f"{key}.json").read_text())
    with pytest.warns(CacheWarning, match="does not belong"):
        assert store.get(other) is None
    assert store.get(key) is not None


def test_put_refuses_inconsistent_input(store, video, tmp_path):
    key = store.key(video, settings())
    with pytest.raises(CacheError, match="does not match"):
        store.put(key, make_cache(tpf=4), {"source": video, "settings": settings()})
    with pytest.raises(CacheError, match="does not match"):  # the video changed since its key was made
        make_video(video, os.urandom(1000), mtime=OLD + 5)
        store.put(key, make_cache(), {"source": video, "settings": settings()})
    bad = make_cache()
    bad.tensors["k"] = bad.tensors["k"][:2]
    with pytest.raises(CacheError, match="frames first"):
        store.put(store.key(video, settings()), bad, {"source": video, "settings": settings()})
    with pytest.raises(CacheError, match="not a cache key"):
        store.get("../../etc/passwd")
    assert issubclass(CacheError, VidqaError) and files(store) == []


# ---- entries, remove ----------------------------------------------------------------------------


def test_entries_and_remove(store, tmp_path):
    a = make_video(tmp_path / "a.mp4")
    sub = tmp_path / "sub"
    sub.mkdir()
    b = make_video(sub / "b.mp4")
    ka1 = put(store, a)
    ka2 = put(store, a, tokens_per_frame=4)
    kb1 = put(store, b)
    kb2 = put(store, b, dtype="float32")

    info = {e.key: e for e in store.entries()}
    assert set(info) == {ka1, ka2, kb1, kb2}
    e = info[ka2]
    assert (e.source, e.frames, e.method, e.model, e.tokens_per_frame, e.dtype) == \
        (str(a), 3, "voco", "tiny/voco", 4, "bfloat16")
    assert e.bytes == sum(p.stat().st_size for p in (store.root / "entries").rglob(f"{ka2}*"))
    assert abs(e.created - time.time()) < 60

    with pytest.raises(CacheError):
        store.remove()
    with pytest.raises(CacheError):
        store.remove(ka1, all=True)
    assert store.remove(ka1[:10]) == 1 and store.get(ka1) is None
    assert store.remove(ka1) == 0
    assert store.remove(source=a) == 1 and {e.key for e in store.entries()} == {kb1, kb2}
    assert store.remove(older_than=3600) == 0
    assert store.remove(source=sub, older_than=0) == 2  # a directory: everything under it
    assert store.entries() == []
    put(store, a)
    put(store, b)
    assert store.remove(all=True) == 2 and store.entries() == [] and files(store) == []
    assert list((store.root / "hashes").rglob("*.json")) == []


def test_remove_ambiguous_prefix(store, video):
    keys = [put(store, video, tokens_per_frame=n) for n in range(1, 40)]
    first = [k[0] for k in keys]
    shared = next(c for c in first if first.count(c) > 1)
    with pytest.raises(CacheError, match="ambiguous"):
        store.remove(shared)


# ---- locks and crashes in real processes --------------------------------------------------------


def _child(code: str, *args: str) -> subprocess.Popen:
    """A Python child that imports the tests' store helpers; it talks to us line by line on stdout."""
    prelude = f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]\nimport store_helpers as T\n"
    return subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code), *args],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)


def _expect(proc: subprocess.Popen, word: str) -> None:
    line = proc.stdout.readline().strip()
    assert line == word, f"child said {line!r} (exit {proc.poll()})"


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stdout.close()


def test_lock_held_by_another_process_until_it_is_killed(store, video):
    key = store.key(video, settings())
    with store.lock(key):  # in-process: a second open file of the same lock conflicts too
        put(store, video)  # put itself takes no entry lock: fine while we hold it
        with pytest.raises(CacheLocked) as held:
            with store.lock(key):
                pass
        assert held.value.pid == os.getpid()

    child = _child("""
        import time
        from vidqa.store import Store
        with Store(sys.argv[1]).lock(sys.argv[2]):
            print("locked", flush=True)
            time.sleep(120)
    """, str(store.root), key)
    try:
        _expect(child, "locked")
        with pytest.raises(CacheLocked, match=f"{key[:12]} is being computed by process {child.pid}"):
            with store.lock(key):
                pass
        # a blocking waiter gets the lock as soon as the holder dies (flock is released by the kernel)
        killer = threading.Timer(0.3, _kill, [child])
        killer.start()
        t0 = time.monotonic()
        with store.lock(key, blocking=True):
            assert time.monotonic() - t0 >= 0.25
        killer.join()
    finally:
        if child.poll() is None:
            _kill(child)
    with store.lock(key):  # free again, non-blocking
        pass


# The child puts three entries, then overwrites the first one with new tensors and hangs at
# ``stage`` inside that put, until we SIGKILL it.
_HANG_CHILD = """
    import os, time
    from vidqa.store import Store
    from vidqa.store.io import LockedTemp
    root, video, stage = sys.argv[1:4]
    store = Store(root)
    writes, commits = [], []  # counted from the fourth put on: 1 = its tensor file, 2 = its JSON
    armed = False
    real_write, real_commit = LockedTemp.write, LockedTemp.commit

    def hang():
        print("hung", flush=True)
        time.sleep(120)

    def write(self, data):
        writes.extend([1] if armed else [])
        n = len(writes)
        if (stage, n) in (("partial-tensor", 1), ("partial-json", 2)):
            blob = b"".join(bytes(c) for c in data) if isinstance(data, list) else bytes(data)
            os.write(self.fd, blob[: len(blob) // 2])
            hang()
        real_write(self, data)
        if (stage, n) in (("after-tensor-write", 1), ("after-json-write", 2)):
            hang()

    def commit(self, final):
        commits.extend([1] if armed else [])
        real_commit(self, final)
        if (stage, len(commits)) == ("after-tensor-commit", 1):
            hang()

    LockedTemp.write, LockedTemp.commit = write, commit
    from pathlib import Path
    for tpf in (1, 2, 3):
        T.put(store, Path(video), T.make_cache(seed=tpf, tpf=tpf), tokens_per_frame=tpf)
    print("three", flush=True)
    armed = True
    T.put(store, Path(video), T.make_cache(seed=99, tpf=1), tokens_per_frame=1)
    print("finished", flush=True)
"""


@pytest.mark.parametrize("stage, orphans", [
    ("partial-tensor", ["orphan temp file"]),
    ("after-tensor-write", ["orphan temp file"]),
    ("after-tensor-commit", ["orphan tensor file"]),
    ("partial-json", ["orphan temp file", "orphan tensor file"]),
    ("after-json-write", ["orphan temp file", "orphan tensor file"]),
])
def test_writer_killed_in_put_leaves_only_complete_entries(store, video, stage, orphans):
    child = _child(_HANG_CHILD, str(store.root), str(video), stage)
    try:
        _expect(child, "three")
        _expect(child, "hung")
        # while the writer is alive its half-written files are its own: verify leaves them alone
        assert store.verify() == []
    finally:
        _kill(child)

    keys = {tpf: store.key(video, settings(tokens_per_frame=tpf)) for tpf in (1, 2, 3)}
    assert {e.key for e in store.entries()} == set(keys.values())
    for tpf, key in keys.items():  # the interrupted overwrite of tpf=1 left the old entry intact
        assert same(store.get(key, settings(tokens_per_frame=tpf)), make_cache(seed=tpf, tpf=tpf))
    problems = store.verify()
    assert sorted(p.rsplit(" ", 2)[0] for _, p in problems) == orphans  # "orphan temp file <name> (removed)"
    assert all(k == keys[1] and p.endswith("(removed)") for k, p in problems)
    assert store.verify() == [] and len(files(store)) == 6


def test_writer_killed_at_random_in_a_loop_of_puts(store, video):
    child = _child("""
        from pathlib import Path
        from vidqa.store import Store
        store = Store(sys.argv[1])
        for i in range(10_000):
            T.put(store, Path(sys.argv[2]), T.make_cache(seed=i, frames=8), extra_setting=i)
            print(i, flush=True)
    """, str(store.root), str(video))
    try:
        for i in range(5):
            assert child.stdout.readline().strip() == str(i)
        time.sleep(0.013)  # somewhere in a later put
    finally:
        _kill(child)
    done = store.entries()
    assert len(done) >= 5
    for e in done:
        i = next(i for i in range(10_000) if store.key(video, settings(extra_setting=i)) == e.key)
        assert same(store.get(e.key, settings(extra_setting=i)), make_cache(seed=i, frames=8))
    assert all("orphan" in p for _, p in store.verify())
    assert store.verify() == [] and len(files(store)) == 2 * len(done)


def _victim(tmp_path: Path, pfx: str = "ab") -> dict[Path, bytes]:
    """Files outside the store, named like the store's own (what a sweep would take for its garbage)."""
    victim = tmp_path / "victim"
    victim.mkdir()
    k = pfx + "0" * 62
    names = [f"{k}.{'1' * 16}.safetensors", f".{k}.123.deadbeef.tmp", f"{k}.json", f"{k}.lock", "model.safetensors",
             f"{'c' * 64}.json", ".x.1.deadbeef.tmp"]
    out = {}
    for n in names:
        (victim / n).write_bytes(n.encode())
        out[victim / n] = n.encode()
    return out


def test_planted_symlinks_never_lead_out_of_the_store(tmp_path, store, video):
    """issue 13.3: a link under entries/ (or locks/, hashes/) pointing elsewhere: verify, rm PREFIX and
    rm --all delete nothing there, and nothing is read or written through it."""
    key = put(store, video)
    # a prefix no key directory of this store uses yet: hashes/ is keyed by the digest of the video's absolute
    # path, which holds pytest's numbered tmp dir, so a fixed pair collided about once in 256 runs
    taken = {p.name for top in ("entries", "locks", "hashes") if (store.root / top).is_dir()
             for p in (store.root / top).iterdir()}
    pfx = next(p for p in ("ab", "cd", "ef", "12", "34") if p not in taken and p != key[:2])
    victims = _victim(tmp_path, pfx)
    victim = tmp_path / "victim"
    for top in ("entries", "locks", "hashes"):  # a whole key directory
        (store.root / top).mkdir(exist_ok=True)
        (store.root / top / pfx).symlink_to(victim)
    for name in (f"{key[:2] + '0' * 62}.{'2' * 16}.safetensors", f".{key[:2] + '0' * 62}.7.deadbeef.tmp"):
        (store.root / "entries" / key[:2] / name).symlink_to(victim / "model.safetensors")  # single files
    link_key = key[:2] + "f" * 62
    (store.root / "entries" / key[:2] / f"{link_key}.json").symlink_to(victim / f"{'c' * 64}.json")
    problems = store.verify()
    assert store.get(link_key) is None and store.metadata(link_key) is None
    assert store.remove(pfx) == 0
    store.remove(key)
    store.remove(all=True)
    assert {p: p.read_bytes() for p in victim.iterdir()} == victims  # all there, unchanged, nothing added
    assert any("symlink" in why for _, why in problems)  # and verify says what it left alone
    # a put into a linked key directory is refused rather than written outside
    d = store.root / "entries" / key[:2]
    for f in d.iterdir():
        f.unlink()
    d.rmdir()
    d.symlink_to(victim)
    with pytest.raises(CacheError, match="link"):
        put(store, video)
    assert {p: p.read_bytes() for p in victim.iterdir()} == victims


def test_entries_itself_a_link_is_not_followed(tmp_path, store, video):
    victims = _victim(tmp_path)
    store.root.mkdir(parents=True)
    (store.root / "entries").symlink_to(tmp_path / "victim")
    problems = store.verify()
    store.remove(all=True)
    assert {p: p.read_bytes() for p in (tmp_path / "victim").iterdir()} == victims
    assert store.entries() == [] and any("symlink" in why for _, why in problems)


@pytest.mark.parametrize("how", [{"dtype": "F16"}, {"shape": [3, 2, 4, 8]}])
def test_tampered_tensor_with_a_recomputed_checksum_is_refused(store, video, how):
    """issue 13.5: the record states every tensor's shape and dtype; get and verify check them."""
    from store_helpers import tamper

    key = put(store, video)
    tamper(store, key, "v", **how)
    problems = store.verify(repair=False)
    assert [k for k, _ in problems] == [key] and "record says" in problems[0][1]
    with pytest.warns(CacheWarning, match="record says"):
        assert store.get(key, settings()) is None
    assert store.metadata(key) is None  # removed: the caller recomputes
