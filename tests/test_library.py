"""`vidqa index`, the cache store in use by `ask` and `chat`, and `vidqa cache`; interrupts with real processes."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import media
from vidqa.cli import main
from vidqa.library import find_videos
from vidqa.store import Store


def videos(folder: Path, n: int, frames: int = 30) -> list[Path]:
    """n distinct videos (distinct content: the store is content addressed)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [media.make_video(folder / f"clip{i}.mp4", num_frames=frames + i, fps=10) for i in range(n)]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_find_videos(tmp_path):
    videos(tmp_path / "a" / "b", 2)
    (tmp_path / "a" / "notes.txt").write_text("x")
    found = find_videos([tmp_path / "a"])
    assert [p.name for p in found] == ["clip0.mp4", "clip1.mp4"]
    with pytest.raises(Exception, match="no such file"):
        find_videos([tmp_path / "missing"])


def test_index_then_rerun_skips_and_failures_are_listed(tmp_path, capsys, voco_dir):
    vids = videos(tmp_path / "lib", 2)
    videos(tmp_path / "lib" / "nested", 1, frames=40)
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


def test_ask_uses_the_index_without_the_vision_tower(tmp_path, capsys, voco_dir, monkeypatch):
    (vid,) = videos(tmp_path / "lib", 1)
    assert run(capsys, "index", vid, "--model", voco_dir, "--json")[0] == 0
    from vidqa.vision import VisionEncoder

    def boom(*a, **k):
        raise AssertionError("the vision tower ran")

    monkeypatch.setattr(VisionEncoder, "encode", boom)
    code, out, err = run(capsys, "ask", vid, "what?", "--model", voco_dir, "--json", "--max-new-tokens", "3")
    assert code == 0, err
    report = json.loads(out)
    assert report["from_cache"] is True and len(report["frames"]) == 3
    assert report["frames"][0]["index"] == 5  # frame indices survive the store


def test_a_cache_that_does_not_match_is_recomputed(tmp_path, capsys, voco_dir):
    from vidqa.testing import make_voco_checkpoint

    (vid,) = videos(tmp_path / "lib", 1)
    ask = ["ask", vid, "what?", "--json", "--max-new-tokens", "2"]
    assert json.loads(run(capsys, *ask, "--model", voco_dir)[1])["from_cache"] is False
    assert json.loads(run(capsys, *ask, "--model", voco_dir)[1])["from_cache"] is True
    # other sampling settings
    assert json.loads(run(capsys, *ask, "--model", voco_dir, "--fps", "2")[1])["from_cache"] is False
    # another model
    other = make_voco_checkpoint(tmp_path / "other", seed=1)
    assert json.loads(run(capsys, *ask, "--model", other)[1])["from_cache"] is False
    # the file changed
    media.make_video(vid, num_frames=33, fps=10, pattern="textured")
    assert json.loads(run(capsys, *ask, "--model", voco_dir)[1])["from_cache"] is False
    # no cache at all
    assert json.loads(run(capsys, *ask, "--model", voco_dir, "--no-cache")[1])["from_cache"] is False


def test_a_corrupt_cache_file_is_detected_and_recomputed(tmp_path, capsys, voco_dir):
    (vid,) = videos(tmp_path / "lib", 1)
    assert run(capsys, "index", vid, "--model", voco_dir, "--json")[0] == 0
    (tensor_file,) = Path(os.environ["VIDQA_CACHE_DIR"]).rglob("*.safetensors")
    data = bytearray(tensor_file.read_bytes())
    data[-10] ^= 0xFF
    tensor_file.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="unusable"):
        code, out, err = run(capsys, "ask", vid, "what?", "--model", voco_dir, "--json", "--max-new-tokens", "2")
    assert code == 0 and json.loads(out)["from_cache"] is False
    assert json.loads(run(capsys, "ask", vid, "what?", "--model", voco_dir, "--json", "--max-new-tokens", "2")[1])[
        "from_cache"] is True


def test_cache_ls_rm_verify(tmp_path, capsys, voco_dir):
    vids = videos(tmp_path / "lib", 2)
    run(capsys, "index", tmp_path / "lib", "--model", voco_dir, "--json")
    code, out, _ = run(capsys, "cache", "ls", "--json")
    entries = json.loads(out)
    assert code == 0 and sorted(Path(e["source"]).name for e in entries) == ["clip0.mp4", "clip1.mp4"]
    assert run(capsys, "cache", "ls")[0] == 0
    assert run(capsys, "cache", "verify")[0] == 0
    for f in Path(os.environ["VIDQA_CACHE_DIR"]).rglob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:100])  # truncate
        break
    code, _, err = run(capsys, "cache", "verify")
    assert code == 1 and "1 problem" in err
    assert run(capsys, "cache", "verify")[0] == 0  # repaired
    code, _, err = run(capsys, "cache", "rm", "--source", vids[0])
    assert code == 0
    code, _, err = run(capsys, "cache", "rm", "--all")
    assert code == 0 and Store().entries() == []
    code, _, err = run(capsys, "cache", "rm")
    assert code == 2 and err.startswith("error:")


def test_chat_keeps_history(tmp_path, capsys, voco_dir, monkeypatch):
    from vidqa.pipeline import VideoQA

    (vid,) = videos(tmp_path / "lib", 1)
    seen = []
    real = VideoQA.answer

    def spy(self, cache, question, gen, stats=None, history=()):
        seen.append((question, list(history)))
        return real(self, cache, question, gen, stats, history)

    monkeypatch.setattr(VideoQA, "answer", spy)
    monkeypatch.setattr(sys, "stdin", io.StringIO("what moves?\nand then?\n\n"))
    code, out, err = run(capsys, "chat", vid, "--model", voco_dir, "--max-new-tokens", "3")
    assert code == 0, err
    assert [q for q, _ in seen] == ["what moves?", "and then?"]
    assert seen[1][1][0][0] == "what moves?"  # the first turn is in the second prompt


# ---- real processes -----------------------------------------------------------------------------------

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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_index_loses_nothing_and_resumes(tmp_path, voco_dir, sig):
    lib = tmp_path / "lib"
    videos(lib, 10, frames=150)
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
    videos(lib, 8, frames=80)
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
    videos(lib, 5)
    procs = [spawn(["index", lib, "--model", voco_dir, "--json", "--device", "cpu"],
                   {"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)}) for r in range(2)]
    reports = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert [len(r["indexed"]) for r in reports] == [3, 2]
    assert [r["rank"] for r in reports] == [0, 1]


# ---- the library's own functions -----------------------------------------------------------------

def test_load_model_needs_a_model_and_open_store_can_be_off(tmp_path):
    from vidqa import library
    from vidqa.errors import VidqaError
    from vidqa.options import CacheOptions, ComputeOptions, ModelOptions

    with pytest.raises(VidqaError, match="--model"):
        library.load_model(ModelOptions(None), ComputeOptions())
    assert library.open_store(CacheOptions(enabled=False)) is None
    assert library.open_store(CacheOptions(cache_dir=str(tmp_path / "s"))).root == tmp_path / "s"


class Stages:
    def __init__(self):
        self.seen, self.done = [], 0

    def stage(self, name, total=None):
        self.seen.append((name, total))

    def advance(self, n=1):
        self.done += n


def test_video_cache_thins_to_the_budget_and_reports_progress(tmp_path, voco_qa):
    from vidqa import library
    from vidqa.video import Sampling, probe

    (vid,) = videos(tmp_path / "lib", 1, frames=40)
    notes, stages = [], Stages()
    cache, hit = library.video_cache(voco_qa, vid, Sampling(fps=10), probe(vid), 5, store=None,
                                     progress=stages, on_note=notes.append)
    assert cache.num_frames == 5 and hit is False
    assert notes and "do not fit the context" in notes[0]
    assert stages.seen == [("decoding frames", None), ("compressing frames", 5)] and stages.done == 5
    # an indexed cache of the full sampling serves, thinned, without decoding anything
    store = Store(tmp_path / "store")
    library.load_or_compress(voco_qa, vid, Sampling(fps=10), store=store)
    stages = Stages()
    cache, hit = library.video_cache(voco_qa, vid, Sampling(fps=10), probe(vid), 5, store=store, progress=stages)
    assert hit is True and cache.num_frames == 5 and stages.seen == []


def test_fit_turn_drops_the_oldest_turns_first(tmp_path, voco_qa):
    from vidqa import library
    from vidqa.video import Sampling

    (vid,) = videos(tmp_path / "lib", 1, frames=40)
    cache, _, _ = library.load_or_compress(voco_qa, vid, Sampling(fps=4), store=None)
    history = [("a question " * 10, "an answer " * 10) for _ in range(40)]
    history[-1] = ("last", "kept")
    turn_cache, dropped = library.fit_turn(voco_qa, cache, "now?", 8, history)
    assert dropped > 0 and history[-1] == ("last", "kept") and len(history) == 40 - dropped
    assert voco_qa.max_frames("now?", 8, history) >= turn_cache.num_frames
    same, none_dropped = library.fit_turn(voco_qa, cache, "now?", 8, [])
    assert none_dropped == 0 and same.num_frames == min(cache.num_frames, voco_qa.max_frames("now?", 8))
