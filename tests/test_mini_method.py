"""`vidqa.methods.mini.method`: the official checkpoint layout key for key, loading, compact caches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mini_helpers import _no_grad, ckpt, model, prompt_tensor, tokenizer  # noqa: F401 (fixtures)

from vidqa import checkpoint
from vidqa.methods import mini


def _llama3_inv_freq(theta: float, dim: int, factor: float, low: float, high: float, orig: int) -> torch.Tensor:
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    wavelen = 2 * math.pi / inv
    out = torch.where(wavelen > orig / low, inv / factor, inv)
    smooth = (orig / wavelen - low) / (high - low)
    medium = (wavelen >= orig / high) & (wavelen <= orig / low)
    return torch.where(medium, (1 - smooth) * inv / factor + smooth * inv, out)


@pytest.mark.parametrize("type_key", ["rope_type", "type"])
def test_llm_config_keeps_llama3_rope(type_key):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = {
        "model_type": "llava_mini_llama", "architectures": ["LlavaMiniLlamaForCausalLM"], "hidden_size": 4096,
        "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336, "num_hidden_layers": 1,
        "vocab_size": 128256, "max_position_embeddings": 131072, "rope_theta": 500000.0, "torch_dtype": "bfloat16",
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, type_key: "llama3"},
        "mm_hidden_size": 1024, "compressor_size": 1, "prefusion_layer_num": 4, "mm_vision_tower": "openai/clip-vit-large-patch14-336",
    }
    config = checkpoint.llm_config(cfg)
    assert config.model_type == "llama" and not hasattr(config, "compressor_size")
    assert config.rope_parameters["rope_type"] == "llama3" and config.rope_parameters["rope_theta"] == 500000.0
    rope = LlamaRotaryEmbedding(config)
    ref = _llama3_inv_freq(500000.0, 128, 8.0, 1.0, 4.0, 8192)
    torch.testing.assert_close(rope.inv_freq.double(), ref, rtol=1e-6, atol=0)
    plain = 1.0 / 500000.0 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    assert not torch.allclose(ref, plain)  # the scaling does change the low frequencies


def test_loaded_rotary_is_llama3(model):
    ref = _llama3_inv_freq(500000.0, 32, 8.0, 1.0, 4.0, 8192)
    torch.testing.assert_close(model.rotary_emb.inv_freq.double(), ref, rtol=1e-6, atol=0)


def test_checkpoint_files_are_official_layout(ckpt):
    from safetensors import safe_open

    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["model_type"] == "llava_mini_llama" and "rope_parameters" not in cfg
    assert cfg["rope_scaling"]["rope_type"] == "llama3" and cfg["rope_theta"] == 500000.0
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 4
    keys = set(index["weight_map"])
    assert {"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight", "model.mm_projector.0.weight",
            "model.mm_projector.2.bias", "model.compressor.pos_embed", "model.compressor.attn.in_proj_weight",
            "model.prefusion_layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"} <= keys
    assert not any("vision_tower" in k or "rotary" in k for k in keys)
    tok_cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and "chat_template" in tok_cfg
    clip_dir = Path(cfg["mm_vision_tower"])
    with safe_open(str(clip_dir / "model.safetensors"), framework="pt") as f:
        assert all(k.startswith("vision_model.") for k in f.keys())  # as the hub CLIP stores them
        q_key = "vision_model.encoder.layers.1.self_attn.q_proj.weight"
        q_proj = f.get_tensor(q_key)
    from transformers import CLIPVisionModel

    tower, info = CLIPVisionModel.from_pretrained(str(clip_dir), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(tower.state_dict()[q_key.removeprefix("vision_model.")], q_proj)


def test_checkpoint_round_trip(ckpt, model):
    from safetensors import safe_open

    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    parts = {"model.mm_projector.": model.projector, "model.compressor.": model.compressor,
             "model.prefusion_layers.": model.prefusion_layers}
    loaded = {prefix + k: v for prefix, m in parts.items() for k, v in m.state_dict().items()}
    loaded.update(model.llm.state_dict())
    assert set(loaded) == set(index["weight_map"])  # no missing, no unexpected
    assert model.ignored_keys == []
    for shard in set(index["weight_map"].values()):
        with safe_open(str(ckpt / shard), framework="pt") as f:
            for key in f.keys():
                assert torch.equal(f.get_tensor(key), loaded[key]), key
    torch.testing.assert_close(model.compressor.pos_embed, mini.sincos_pos_embed_2d(32, 1))


def test_checkpoint_key_errors(ckpt, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    index_file = bad / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = index["weight_map"].pop("model.compressor.query")
    index["weight_map"]["model.extra_head.weight"] = shard
    index_file.write_text(json.dumps(index))
    with pytest.raises(mini.CheckpointKeyError) as err:
        mini.load_llava_mini_state(bad)
    assert err.value.missing == ["model.compressor.query"] and err.value.unexpected == ["model.extra_head.weight"]
    # Vision-tower keys are tolerated and reported.
    index["weight_map"]["model.compressor.query"] = shard
    del index["weight_map"]["model.extra_head.weight"]
    index["weight_map"]["model.vision_tower.vision_tower.vision_model.post_layernorm.weight"] = shard
    index_file.write_text(json.dumps(index))
    loaded = mini.load_llava_mini_state(bad)
    assert loaded.ignored_keys == ["model.vision_tower.vision_tower.vision_model.post_layernorm.weight"]


def test_clip_tower_to_llm_inputs(ckpt, model, tokenizer):
    """End to end on the tiny checkpoint: CLIP layer -2 patches -> compressor -> pre-fusion -> LLM logits."""
    from transformers import CLIPVisionModel

    tower = CLIPVisionModel.from_pretrained(model.options.mm_vision_tower).eval()
    pixels = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[model.options.mm_vision_select_layer]
    clip = hidden[:, 1:]  # "patch": CLS dropped
    assert clip.shape == (2, 576, 32)
    frames = mini.encode_frames(clip, model.compressor, model.projector)
    ids = prompt_tensor(tokenizer, "Describe it.")
    vision, text = mini.fuse_video(mini.question_via_projected(model.prefusion_layers, model.rotary_emb, model.embed_tokens, frames, ids))
    embeds = mini.assemble_llm_inputs(text, ids, vision)
    logits = model.llm(inputs_embeds=embeds[None]).logits
    assert logits.shape == (1, len(ids) - 1 + 2, model.llm.config.vocab_size) and torch.isfinite(logits).all()


def test_compact_cache_answers_like_the_kv_cache(mini_qa):
    """The raw-features cache (long videos) gives the same LLM inputs and tokens as the pre-fusion K/V."""
    from types import SimpleNamespace

    from vidqa.generate import GenerationConfig

    g = np.random.default_rng(0)
    frames = SimpleNamespace(pixels=g.integers(0, 255, (5, 40, 48, 3), dtype=np.uint8), timestamps=np.arange(5.0))
    kv = mini_qa.compress(frames, batch_size=2)
    compact = mini_qa.compress(frames, batch_size=2, compact=True)
    assert set(compact.tensors) == {"clip"} and compact.meta["cache_kind"] == "features"
    assert kv.meta["cache_kind"] == "kv" and compact.bytes_per_frame < kv.bytes_per_frame
    chunk, mini_qa.method.chunk_frames = mini_qa.method.chunk_frames, 2  # several chunks
    mini_qa.method.compact_chunk_frames = 3
    try:
        a = mini_qa.method.prefill(kv, "what moves?").inputs_embeds
        b = mini_qa.method.prefill(compact, "what moves?").inputs_embeds
        assert (a - b).abs().max() < 1e-5
        gen = GenerationConfig(max_new_tokens=6)
        assert list(mini_qa.answer(kv, "what moves?", gen)) == list(mini_qa.answer(compact, "what moves?", gen))
    finally:
        mini_qa.method.chunk_frames, mini_qa.method.compact_chunk_frames = chunk, 16
