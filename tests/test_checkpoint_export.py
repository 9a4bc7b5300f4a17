"""`vidqa.checkpoint.export`: the one checkpoint writer round-trips; configs keep the old rope keys."""

import json

import torch
from safetensors import safe_open
from transformers import CLIPVisionModel

from vidqa import checkpoint, testing
from vidqa.checkpoint import export, llm_config


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
