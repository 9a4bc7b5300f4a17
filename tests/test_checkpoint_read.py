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


def _perturb_safetensors(path, seed=1):
    """Other weights of the same layout (names, shapes, dtypes): what a swapped tower looks like."""
    import torch
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(seed)
    state = {k: (v + torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v)
             for k, v in load_file(str(path)).items()}
    save_file(state, str(path))


def _age(folder, seconds=3600):
    import os
    import time

    t = time.time() - seconds
    for f in folder.rglob("*"):
        os.utime(f, (t, t))


def test_fingerprint_is_the_content_including_the_vision_tower(tmp_path):
    """issue 13.1 and 13.4: a copy, touch or reinstall gives the same fingerprint; other tower weights
    (inside the checkpoint, or --vision-tower) another; hashes are memoised."""
    import os
    import shutil

    from vidqa.store import io

    src = checkpoint.builtin_dir("tiny-voco")
    a = shutil.copytree(src, tmp_path / "a", copy_function=shutil.copy)  # new mtimes and inodes
    b = shutil.copytree(src, tmp_path / "b")
    _age(a), _age(b, 7200)
    cfg = checkpoint.read_config(a)
    fa = checkpoint.fingerprint(a, cfg)
    assert fa == checkpoint.fingerprint(b, cfg) == checkpoint.fingerprint(src, cfg) and len(fa) == 16
    os.utime(a / "model.safetensors")  # touch
    assert checkpoint.fingerprint(a, cfg) == fa
    (a / "README.md").write_text("notes")  # not part of the model
    assert checkpoint.fingerprint(a, cfg) == fa
    # the tower inside the checkpoint is part of it
    _perturb_safetensors(b / "clip" / "model.safetensors")
    fb = checkpoint.fingerprint(b, cfg)
    assert fb != fa
    # --vision-tower: its files count, not its name
    assert checkpoint.fingerprint(a, cfg, str(b / "clip")) == fb
    assert checkpoint.fingerprint(b, cfg, str(a / "clip")) == fa
    # the tokenizer too
    tok = a / "tokenizer_config.json"
    tok.write_text(tok.read_text().replace("}", ', "model_max_length": 7}', 1))
    assert checkpoint.fingerprint(a, cfg) not in (fa, fb)
    # memoised: unchanged old files are not read again
    _age(a)
    checkpoint.fingerprint(a, cfg)
    calls = []
    real = io.sha256_file
    io.sha256_file = lambda f: calls.append(f) or real(f)
    try:
        checkpoint.fingerprint(a, cfg)
    finally:
        io.sha256_file = real
    assert calls == []
