"""`vidqa.cli.cache`: `vidqa cache ls|rm|verify` on a real store."""

import json
import os
from pathlib import Path

import media
from cli_helpers import run

from vidqa.store import Store


def test_cache_ls_rm_verify(tmp_path, capsys, voco_dir):
    vids = media.videos(tmp_path / "lib", 2)
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


def test_rm_on_a_read_only_store_is_one_clean_error(tmp_path, capsys, voco_dir, monkeypatch):
    """issue 13.8: `cache rm --all` (and rm KEY) on a store that cannot be written: `error:`, not `internal error`."""
    (vid,) = media.videos(tmp_path / "lib", 1)
    assert run(capsys, "index", vid, "--model", voco_dir, "--json")[0] == 0
    (entry,) = Store().entries()

    def refuse(*a, **k):
        raise OSError(30, "Read-only file system")

    real = os.unlink
    monkeypatch.setattr(os, "unlink", refuse)
    for args in (["--all"], [entry.key[:8]]):
        code, _, err = run(capsys, "cache", "rm", *args)
        assert code != 0 and err.startswith("error:") and "Read-only" in err and "internal" not in err, err
    monkeypatch.setattr(os, "unlink", real)
    assert [e.key for e in Store().entries()] == [entry.key]  # nothing lost
