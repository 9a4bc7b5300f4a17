"""`vidqa.cli.index`: indexing, reruns, interruption, concurrent processes and ranks."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import media
import pytest
from cli_helpers import run

from vidqa.store import Store


def spawn(args, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "vidqa", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


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
    """Interrupted after exactly 2 stored videos, while the third is being compressed: the child signals
    through a pipe when it is there (store_helpers.index_paused), so no timing is involved."""
    lib = tmp_path / "lib"
    media.videos(lib, 5, frames=30)
    root = Path(os.environ["VIDQA_CACHE_DIR"])
    r, w = os.pipe()
    args = ["index", str(lib), "--model", str(voco_dir), "--fps", "10", "--json"]
    code = (f"import sys; sys.path[:0] = [{str(Path(__file__).parent)!r}]\nimport store_helpers\n"
            f"sys.exit(store_helpers.index_paused({w}, 2, {args!r}))")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, pass_fds=(w,))
    os.close(w)
    with os.fdopen(r, "rb") as ready:
        assert ready.read(1) == b"x", p.communicate(timeout=60)[1]  # b"" if it ended without pausing
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode != 0, "the run finished before it could be interrupted"
    if sig == signal.SIGINT:
        assert p.returncode == 130 and "Traceback" not in err
    store = Store(root)
    # at most the dead writer's leftovers, which are never visible as entries
    assert all("orphan" in why or "temp" in why for _, why in store.verify(repair=False))
    done = {Path(e.source).name for e in store.entries()}
    assert len(done) == 2
    p = spawn(["index", lib, "--model", voco_dir, "--fps", "10", "--json"])
    out, err = p.communicate(timeout=300)
    report = json.loads(out)
    assert p.returncode == 0, err
    assert {Path(v).name for v in report["skipped"]} == done  # no finished work redone
    assert len(report["indexed"]) == 5 - len(done)
    assert store.verify() == [] and len(store.entries()) == 5


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
