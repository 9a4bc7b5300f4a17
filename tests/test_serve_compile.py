"""Compile once per machine: the compile caches point under vidqa's cache folder (user settings win)."""

from vidqa.serve import compile as cc


def test_cache_dirs_under_the_vidqa_cache(tmp_path, monkeypatch):
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", "/mine")
    base = cc.use_cache_dir(tmp_path)
    import os

    assert base == tmp_path / "compile"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compile" / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == "/mine"  # the user's setting wins
    assert os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1"


def test_artifacts_round_trip_or_no_op(tmp_path):
    base = tmp_path / "compile"
    assert cc.load(base) is False  # nothing saved yet
    saved = cc.save(base)  # nothing compiled in this process may mean nothing to save
    assert saved is False or cc.artifact_path(base).is_file()
    if saved:
        assert cc.load(base) is True
    cc.artifact_path(base).parent.mkdir(parents=True, exist_ok=True)
    cc.artifact_path(base).write_bytes(b"garbage")
    assert cc.load(base) is False  # a stale or foreign file is ignored
