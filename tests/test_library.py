"""`vidqa.library`: finding videos, the cache store in use by `ask`, loading models, frame budgets and chat turns."""

import json
import os
from pathlib import Path

import media
import pytest
import torch
from cli_helpers import run

from vidqa.library import find_videos
from vidqa.store import Store


def test_find_videos(tmp_path):
    media.videos(tmp_path / "a" / "b", 2)
    (tmp_path / "a" / "notes.txt").write_text("x")
    found = find_videos([tmp_path / "a"])
    assert [p.name for p in found] == ["clip0.mp4", "clip1.mp4"]
    with pytest.raises(Exception, match="no such file"):
        find_videos([tmp_path / "missing"])


def test_ask_uses_the_index_without_the_vision_tower(tmp_path, capsys, voco_dir, monkeypatch):
    (vid,) = media.videos(tmp_path / "lib", 1)
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

    (vid,) = media.videos(tmp_path / "lib", 1)
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
    (vid,) = media.videos(tmp_path / "lib", 1)
    assert run(capsys, "index", vid, "--model", voco_dir, "--json")[0] == 0
    (tensor_file,) = Path(os.environ["VIDQA_CACHE_DIR"]).rglob("*.safetensors")
    data = bytearray(tensor_file.read_bytes())
    data[-10] ^= 0xFF
    tensor_file.write_bytes(bytes(data))
    code, out, err = run(capsys, "ask", vid, "what?", "--model", voco_dir, "--json", "--max-new-tokens", "2")
    assert code == 0 and json.loads(out)["from_cache"] is False
    assert "unusable" in err  # the CLI shows vidqa's warnings as one line each
    assert json.loads(run(capsys, "ask", vid, "what?", "--model", voco_dir, "--json", "--max-new-tokens", "2")[1])[
        "from_cache"] is True


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

    (vid,) = media.videos(tmp_path / "lib", 1, frames=40)
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

    (vid,) = media.videos(tmp_path / "lib", 1, frames=40)
    cache, _, _ = library.load_or_compress(voco_qa, vid, Sampling(fps=4), store=None)
    history = [("a question " * 10, "an answer " * 10) for _ in range(40)]
    history[-1] = ("last", "kept")
    turn_cache, dropped = library.fit_turn(voco_qa, cache, "now?", 8, history)
    assert dropped > 0 and history[-1] == ("last", "kept") and len(history) == 40 - dropped
    assert voco_qa.max_frames("now?", 8, history) >= turn_cache.num_frames
    same, none_dropped = library.fit_turn(voco_qa, cache, "now?", 8, [])
    assert none_dropped == 0 and same.num_frames == min(cache.num_frames, voco_qa.max_frames("now?", 8))


def test_a_changed_vision_tower_is_never_served_from_the_store(tmp_path, capsys):
    """issue 13.1: other CLIP weights of the same layout (inside the checkpoint, or --vision-tower) miss;
    issue 13.4: a copy of the same model hits."""
    import shutil

    from test_checkpoint_read import _perturb_safetensors

    from vidqa.checkpoint import builtin_dir

    (vid,) = media.videos(tmp_path / "lib", 1)
    model = shutil.copytree(builtin_dir("tiny-voco"), tmp_path / "m")
    ask = ["ask", vid, "what?", "--json", "--max-new-tokens", "2", "--device", "cpu"]
    assert json.loads(run(capsys, *ask, "--model", model)[1])["from_cache"] is False
    copy = shutil.copytree(model, tmp_path / "copy", copy_function=shutil.copy)
    assert json.loads(run(capsys, *ask, "--model", copy)[1])["from_cache"] is True  # same content: same entry
    other = shutil.copytree(model / "clip", tmp_path / "other-clip")
    _perturb_safetensors(other / "model.safetensors")
    assert json.loads(run(capsys, *ask, "--model", model, "--vision-tower", other)[1])["from_cache"] is False
    _perturb_safetensors(model / "clip" / "model.safetensors", seed=2)  # a swap inside the checkpoint
    assert json.loads(run(capsys, *ask, "--model", model)[1])["from_cache"] is False
    assert json.loads(run(capsys, *ask, "--model", model)[1])["from_cache"] is True


def test_a_forged_entry_that_does_not_fit_the_model_is_recomputed(tmp_path, capsys, voco_dir):
    """issue 13.5: an entry consistent with its own record (shapes, dtypes, checksum all rewritten) but
    not with the model: `ask` recomputes it (never `internal error`), `index` does not skip it."""
    from store_helpers import tamper

    (vid,) = media.videos(tmp_path / "lib", 1)
    cpu = ["--model", voco_dir, "--json", "--device", "cpu"]  # float32 entries, whatever the machine has
    ask = ["ask", vid, "what?", *cpu, "--max-new-tokens", "2"]
    assert run(capsys, "index", vid, *cpu)[0] == 0
    store = Store()
    (entry,) = store.entries()
    t, layers, heads, *rest = store.metadata(entry.key)["tensors"]["shapes"]["keys"]
    tamper(store, entry.key, "keys", shape=[t, 1, layers * heads, *rest], record_too=True)
    assert store.verify(repair=False) == []  # consistent with itself: only the model can tell
    code, out, err = run(capsys, *ask)  # the CLI shows vidqa's warnings as one stderr line each
    assert code == 0 and json.loads(out)["from_cache"] is False and "does not fit this model" in err, err
    assert json.loads(run(capsys, *ask)[1])["from_cache"] is True  # the recomputed entry replaced it
    tamper(store, entry.key, "keys", dtype="int", record_too=True)  # float32 read as int32 (bf16 as int16)
    assert store.metadata(entry.key)["tensors"]["dtypes"]["keys"] == "int32"
    code, out, err = run(capsys, "index", vid, *cpu)
    assert code == 0 and json.loads(out)["indexed"] == [str(vid)] and "does not fit this model" in err, err
    assert json.loads(run(capsys, *ask)[1])["from_cache"] is True


def test_tamper_forges_in_the_stored_width_whatever_the_dtype(tmp_path):
    """The forgery of the test above, on an entry of any dtype: bfloat16 (as a GPU makes it) is declared
    int16, float32 int32, so the file's byte offsets still fit and only the model can tell; a dtype of
    another width (what the GPU run got: 'bad offsets') is refused rather than written."""
    import store_helpers as sh

    store = Store(tmp_path / "cache")
    key = sh.put(store, sh.make_video(tmp_path / "clip.mp4"))  # "k" float32, "v" bfloat16
    sh.tamper(store, key, "v", dtype="int", record_too=True)
    sh.tamper(store, key, "k", dtype="int", record_too=True)
    assert {k: store.metadata(key)["tensors"]["dtypes"][k] for k in "kv"} == {"k": "int32", "v": "int16"}
    assert store.verify(repair=False) == []  # consistent with itself
    cache = store.get(key, sh.settings())
    assert cache.tensors["v"].dtype is torch.int16 and cache.tensors["k"].dtype is torch.int32
    with pytest.raises(ValueError, match="another width"):
        sh.tamper(store, key, "v", dtype="I32")


@pytest.mark.parametrize("err", [30, 28])  # EROFS (read-only), ENOSPC (full)
def test_a_store_that_cannot_be_written_never_blocks_the_answer(tmp_path, capsys, voco_dir, voco_qa, monkeypatch, err):
    """issue 13.8: the answer comes, with one warning per store; exit 0."""
    import warnings

    from vidqa import library
    from vidqa.store import CacheWarning, io
    from vidqa.video import Sampling

    def refuse(self, *a, **k):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(io.LockedTemp, "__init__", refuse)
    vids = media.videos(tmp_path / "lib", 2)
    code, out, err_text = run(capsys, "ask", vids[0], "what?", "--model", voco_dir, "--json", "--max-new-tokens", "2")
    assert code == 0 and json.loads(out)["from_cache"] is False and "answer" in json.loads(out)
    assert err_text.count("answering without storing") == 1
    store = Store(tmp_path / "other-store")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for v in vids:
            cache, _, hit = library.load_or_compress(voco_qa, v, Sampling(fps=1), store=store)
            assert cache.num_frames > 0 and not hit
    assert [str(w.message).count("answering without storing") for w in seen if w.category is CacheWarning] == [1]


def test_a_mini_entry_without_the_prompt_head_still_fits(mini_qa):
    """LLaVA-Mini entries stored before the prompt head (no head_* tensors) are served (full path);
    a head of the wrong shape is not."""
    import dataclasses
    from types import SimpleNamespace

    import numpy as np

    from vidqa import library

    c = mini_qa.compress(SimpleNamespace(pixels=np.zeros((2, 40, 48, 3), np.uint8), timestamps=np.arange(2.0)))
    assert any(k.startswith("head_") for k in c.tensors)
    old = dataclasses.replace(c, tensors={k: v for k, v in c.tensors.items() if not k.startswith("head_")})
    assert library.misfit(mini_qa, c) is None and library.misfit(mini_qa, old) is None
    bad = dataclasses.replace(c, tensors={**old.tensors, "head_keys": c.tensors["head_keys"][:, :, :, :1]})
    assert library.misfit(mini_qa, bad) is not None
