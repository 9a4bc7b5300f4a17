"""`vidqa.cli.index`: indexing, reruns, interruption, concurrent processes and ranks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import media
import pytest
from cli_helpers import run

from vidqa.store import Store


def spawn(args, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "vidqa", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for_entries(root: Path, n: int, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if len(list((root / "entries").rglob("*.json"))) >= n if (root / "entries").exists() else False:
            return
        if proc.poll() is not None:
            return
        time.sleep(0.02)


class Stages:
    def __init__(self):
        self.seen, self.done = [], 0

    def stage(self, name, total=None):
        self.seen.append((name, total))

    def advance(self, n=1):
        self.done += n


def test_index_then_rerun_skips_and_failures_are_listed(tmp_path, capsys, voco_dir):
    vids = media.videos(tmp_path / "lib", 2)
    media.videos(tmp_path / "lib" / "nested", 1, frames=40)
    media.make_garbage(tmp_path / "lib" / "broken.mp4")
    code, out, err = run(capsys, "index", tmp_path / "lib", "--model", voco_dir, "--json")
    report = json.loads(out)
    assert code == 1  # one video failed
    assert len(report["indexed"]) == 3 and report["failed"][0]["video"].endswith("broken.mp4")
    code, out, _ = run(capsys, "index", tmp_path / "lib", "--model", voco_dir, "--json")
    again = json.loads(out)
    assert again["indexed"] == [] and len(again["skipped"]) == 3 and code == 1
    assert len(Store().entries()) == 3
    # and with the progress display
    code, _, err = run(capsys, "index", *vids, "--model", voco_dir)
    assert code == 0 and "already cached 2" in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_index_loses_nothing_and_resumes(tmp_path, voco_dir, sig):
    lib = tmp_path / "lib"
    media.videos(lib, 10, frames=150)
    root = Path(os.environ["VIDQA_CACHE_DIR"])
    p = spawn(["index", lib, "--model", voco_dir, "--fps", "10", "--json"])
    wait_for_entries(root, 2, p)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode != 0, "the run finished before it could be interrupted"
    if sig == signal.SIGINT:
        assert p.returncode == 130 and "Traceback" not in err
    store = Store(root)
    # at most the dead writer's leftovers, which are never visible as entries
    assert all("orphan" in why or "temp" in why for _, why in store.verify(repair=False))
    done = {Path(e.source).name for e in store.entries()}
    assert 2 <= len(done) < 10
    p = spawn(["index", lib, "--model", voco_dir, "--fps", "10", "--json"])
    out, err = p.communicate(timeout=300)
    report = json.loads(out)
    assert p.returncode == 0, err
    assert {Path(v).name for v in report["skipped"]} == done  # no finished work redone
    assert len(report["indexed"]) == 10 - len(done)
    assert store.verify() == [] and len(store.entries()) == 10


def test_two_index_processes_share_the_work(tmp_path, voco_dir):
    lib = tmp_path / "lib"
    media.videos(lib, 8, frames=80)
    procs = [spawn(["index", lib, "--model", voco_dir, "--fps", "10", "--json"]) for _ in range(2)]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        reports.append(json.loads(out))
    a, b = (set(r["indexed"]) for r in reports)
    assert not a & b  # no entry computed twice
    assert len(a | b) == 8
    store = Store(os.environ["VIDQA_CACHE_DIR"])
    assert store.verify() == [] and len(store.entries()) == 8


def test_ranks_split_the_videos(tmp_path, voco_dir):
    """What torchrun does: RANK / WORLD_SIZE give each process its share (shown here on the CPU)."""
    lib = tmp_path / "lib"
    media.videos(lib, 5)
    procs = [spawn(["index", lib, "--model", voco_dir, "--json", "--device", "cpu"],
                   {"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)}) for r in range(2)]
    reports = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert [len(r["indexed"]) for r in reports] == [3, 2]
    assert [r["rank"] for r in reports] == [0, 1]
