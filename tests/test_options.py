"""vidqa.options: the settings dataclasses and the environment variables they read."""

from pathlib import Path

from vidqa.options import CacheOptions, ComputeOptions, DistEnv, ModelOptions, cache_root, debug, judge_key


def test_compute_options_from_env(monkeypatch):
    monkeypatch.delenv("VIDQA_COMPILE", raising=False)
    monkeypatch.delenv("VIDQA_COMPILE_MODE", raising=False)
    assert ComputeOptions.from_env() == ComputeOptions()
    monkeypatch.setenv("VIDQA_COMPILE", "1")
    monkeypatch.setenv("VIDQA_COMPILE_MODE", "max-autotune-no-cudagraphs")
    c = ComputeOptions.from_env(device="cpu", batch_size=None)
    assert c.compile and c.compile_mode == "max-autotune-no-cudagraphs" and c.device == "cpu" and c.batch_size is None
    assert ComputeOptions.from_env(compile=False).compile is False  # a keyword wins over the variable
    assert c.compile_quantized
    monkeypatch.setenv("VIDQA_COMPILE", "0")  # not even a quantised model's decode step
    assert not ComputeOptions.from_env().compile_quantized and not ComputeOptions.from_env().compile


def test_for_rank_picks_the_ranks_gpu_only_for_auto():
    two = DistEnv(rank=1, world_size=2, local_rank=1)
    assert ComputeOptions().for_rank(two).device == "cuda:1"
    assert ComputeOptions(device="cpu").for_rank(two).device == "cpu"
    assert ComputeOptions().for_rank(DistEnv()).device == "auto"


def test_dist_env(monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(v, raising=False)
    assert DistEnv.from_env() == DistEnv() and not DistEnv.from_env().launched
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    d = DistEnv.from_env()
    assert (d.rank, d.world_size, d.local_rank) == (3, 4, 1) and d.launched


def test_cache_options_and_root(monkeypatch, tmp_path):
    monkeypatch.setenv("VIDQA_CACHE_DIR", str(tmp_path / "env"))
    assert CacheOptions().root == tmp_path / "env" == cache_root()
    assert CacheOptions(cache_dir=str(tmp_path / "given")).root == tmp_path / "given"
    monkeypatch.delenv("VIDQA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_root() == Path.home() / ".cache" / "vidqa"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "vidqa"
    assert CacheOptions(enabled=False).enabled is False


def test_model_options_and_switches(monkeypatch):
    assert ModelOptions("m").method is None and ModelOptions(None).model is None
    monkeypatch.delenv("VIDQA_DEBUG", raising=False)
    assert not debug()
    monkeypatch.setenv("VIDQA_DEBUG", "1")
    assert debug()
    monkeypatch.delenv("VIDQA_JUDGE_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "b")
    assert judge_key() == "b"
    monkeypatch.setenv("VIDQA_JUDGE_KEY", "a")
    assert judge_key() == "a"
