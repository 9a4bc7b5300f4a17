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


def test_benchmark_tokenizers_make_each_corpus_word_one_token(tmp_path):
    """Trained on a corpus, the test tokenizers give prompts about a real tokenizer's length (one token
    per word) and still decode to the same text; without one they are as before."""
    from vidqa.checkpoint import load_tokenizer
    from vidqa.testing import write_tiny_tokenizer, write_vicuna_tokenizer

    text = "You are a helpful language and vision assistant. what happens in this video?"
    write_tiny_tokenizer(tmp_path / "plain")
    write_tiny_tokenizer(tmp_path / "trained", corpus=[text])
    plain, trained = load_tokenizer(tmp_path / "plain"), load_tokenizer(tmp_path / "trained")
    ids = trained.encode(text, add_special_tokens=False)
    assert len(plain.encode(text, add_special_tokens=False)) == len(text.encode())  # one per byte
    assert len(ids) == len(text.split()) + 2  # a word (with its space) each, and the two marks "." "?"
    assert trained.decode(ids) == text
    assert trained.convert_tokens_to_ids("<|eot_id|>") != trained.unk_token_id

    n = write_vicuna_tokenizer(tmp_path / "vicuna", 4000, corpus=[text])
    vicuna = load_tokenizer(tmp_path / "vicuna")
    assert vicuna.convert_tokens_to_ids("<voco>") == n - 1 and len(vicuna) == n
    assert len(vicuna.encode(text, add_special_tokens=False)) <= len(text.split()) + 3
    assert write_vicuna_tokenizer(tmp_path / "default") == 401  # unchanged without a corpus
