"""vidqa.checkpoint: resolving, configs, the weight index, the LLM config, the one key list, the writer."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import CLIPVisionModel

from vidqa import checkpoint, testing
from vidqa.checkpoint import MM_KEYS, export, llm_config
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


@pytest.mark.parametrize("type_key", ["rope_type", "type"])
def test_llm_config_keeps_llama3_rope_and_drops_multimodal_keys(type_key):
    cfg = {"model_type": "llava_mini_llama", "hidden_size": 64, "num_attention_heads": 4, "rope_theta": 500000.0,
           "rope_scaling": {type_key: "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192},
           "compressor_size": 1, "mm_vision_tower": "x", "voco_num": 2, "vidqa_method": "mini", "s2": False,
           "transformers_version": "4.43.1", "torch_dtype": "bfloat16"}
    config = llm_config(cfg)
    assert config.model_type == "llama" and config.rope_parameters["rope_type"] == "llama3"
    assert config.rope_parameters["rope_theta"] == 500000.0
    assert not any(hasattr(config, k) for k in ("compressor_size", "mm_vision_tower", "voco_num", "vidqa_method", "s2"))
    default = llm_config({"model_type": "llava_llama", "hidden_size": 64, "num_attention_heads": 4,
                          "rope_theta": 10000.0, "rope_scaling": None})
    assert default.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}


def test_one_key_list_covers_every_layout():
    # the keys LLaVA-Mini's and VoCo-LLaMA's configs carry (the two lists this one replaced disagreed)
    assert {"unfreeze_mm_vision_tower", "s2", "s2_scales", "mm_vision_tower_lr", "vidqa_method", "voco_num",
            "compressor_size", "prefusion_layer_num", "resolution_ratio"} <= MM_KEYS
    for name in ("tiny-voco", "tiny-mini"):
        cfg = checkpoint.read_config(checkpoint.builtin_dir(name))
        assert not {k for k in cfg if k.startswith("mm_")} - MM_KEYS


def test_export_round_trip(tmp_path):
    """write_checkpoint, single file and sharded: the tensors, config and CLIP tower come back as written."""
    tower = testing._clip(28, 14, 16, 1, seed=0)
    state = {"model.a": torch.randn(3, 2), "model.b": torch.arange(4), "model.c": torch.randn(5)}
    for shards in (None, 2):
        out = export.write_checkpoint(tmp_path / f"m{shards}", {"model_type": "llava_llama"}, state, tower=tower,
                                      shards=shards, dtype=torch.bfloat16)
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["mm_vision_tower"] == "clip" and cfg["torch_dtype"] == "bfloat16"
        files = checkpoint.weight_map(out)
        assert set(files) == set(state) and len(set(files.values())) == (1 if shards is None else 2)
        for key, file in files.items():
            with safe_open(str(file), framework="pt") as f:
                t = f.get_tensor(key)
            want = state[key].to(torch.bfloat16) if state[key].is_floating_point() else state[key]
            assert torch.equal(t, want)
        with safe_open(str(out / "clip" / "model.safetensors"), framework="pt") as f:
            assert all(k.startswith("vision_model.") for k in f.keys())
        back, info = CLIPVisionModel.from_pretrained(str(out / "clip"), output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
        pp = json.loads((out / "clip" / "preprocessor_config.json").read_text())
        assert pp["image_mean"] == list(checkpoint.llava.CLIP_MEAN) and pp["crop_size"]["height"] == 28


def test_llava_config_writes_rope_the_old_way():
    from transformers import LlamaConfig

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 500000.0}
    cfg = export.llava_config(LlamaConfig(hidden_size=64, num_attention_heads=4, rope_parameters=rope), voco_num=1)
    assert cfg["rope_theta"] == 500000.0 and cfg["rope_scaling"]["rope_type"] == "llama3" and cfg["voco_num"] == 1
    assert "rope_parameters" not in cfg
    back = llm_config({**cfg, "model_type": "llava_llama"})
    assert back.rope_parameters == rope
