"""`vidqa.testing`: the tiny random checkpoints are in the real layouts, deterministic by seed."""

import json

from safetensors import safe_open

from vidqa import testing
from vidqa.checkpoint import load_tokenizer, weight_map


def test_voco_checkpoint_layout_and_tokenizer(tmp_path):
    d = testing.make_voco_checkpoint(tmp_path / "v")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "llava_llama" and cfg["mm_vision_select_layer"] == -2
    keys = set(weight_map(d))
    assert {"model.mm_projector.0.weight", "model.mm_projector.2.bias", "lm_head.weight"} <= keys
    tok = load_tokenizer(d)
    assert tok.convert_tokens_to_ids("<voco>") == len(tok) - 1  # added after the base vocabulary


def test_official_mini_checkpoint_is_sharded_with_an_index(tmp_path):
    d = testing.write_tiny_official_checkpoint(tmp_path / "m", clip_image_size=56, num_shards=3)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    assert any(k.startswith("model.compressor.") for k in index["weight_map"])
    with safe_open(str(d / "clip-vision" / "model.safetensors"), framework="pt") as f:
        assert all(k.startswith("vision_model.") for k in f.keys())


def test_same_seed_same_weights(tmp_path):
    a = testing.make_voco_checkpoint(tmp_path / "a")
    b = testing.make_voco_checkpoint(tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
