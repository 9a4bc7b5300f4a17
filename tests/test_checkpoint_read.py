"""vidqa.checkpoint: resolving, configs, the weight index, the LLM config, the one key list, the writer."""

import pytest

from vidqa import checkpoint
from vidqa.errors import ModelError


def test_resolve_and_read_config(tmp_path, voco_dir):
    assert checkpoint.resolve(str(voco_dir)) == voco_dir
    assert checkpoint.resolve("tiny-voco") == checkpoint.builtin_dir("tiny-voco")
    with pytest.raises(ModelError, match="no config.json"):
        checkpoint.resolve(tmp_path)
    with pytest.raises(ModelError, match="not found"):
        checkpoint.resolve("./missing/dir")
    cfg = checkpoint.read_config(voco_dir)
    assert checkpoint.detect_method(cfg) == "voco"
    assert checkpoint.detect_method({"model_type": "llava_mini_llama"}) == "mini"
    assert checkpoint.detect_method({"model_type": "llava_llama", "vidqa_method": "pool"}) == "pool"
    with pytest.raises(ModelError, match="unknown model kind"):
        checkpoint.detect_method({"model_type": "bert"})


def test_weight_index_single_and_sharded(voco_dir, mini_dir):
    single = checkpoint.weight_map(voco_dir)
    assert set(single.values()) == {voco_dir / "model.safetensors"} and "model.mm_projector.0.weight" in single
    sharded = checkpoint.weight_map(mini_dir)
    assert len(set(sharded.values())) == 4 and checkpoint.weight_files(mini_dir) == sorted(set(sharded.values()))
    assert set(checkpoint.load_tensors(mini_dir, "model.compressor.")) >= {"query", "pos_embed"}


def test_missing_shard_is_one_clear_error(tmp_path, mini_dir):
    import shutil

    bad = shutil.copytree(mini_dir, tmp_path / "bad")
    (bad / "model-00002-of-00004.safetensors").unlink()
    with pytest.raises(ModelError, match="missing weight shards"):
        checkpoint.weight_map(bad)


def test_fingerprint_follows_config_and_weights(tmp_path, voco_dir):
    cfg = checkpoint.read_config(voco_dir)
    a = checkpoint.fingerprint(voco_dir, cfg)
    assert a == checkpoint.fingerprint(voco_dir, dict(cfg)) and len(a) == 16
    assert a != checkpoint.fingerprint(voco_dir, {**cfg, "voco_num": 4})
