"""`vidqa.checkpoint.llava`: one multimodal key list and one LLM-config builder (llama3 RoPE kept)."""

import pytest

from vidqa import checkpoint
from vidqa.checkpoint import MM_KEYS, llm_config


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
