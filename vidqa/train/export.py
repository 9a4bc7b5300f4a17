"""Saving a trained Learner as a checkpoint vidqa loads (the demo models)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vidqa.train.model import Learner, TinyConfig


def export(learner: Learner, out: Path, cfg: TinyConfig, dtype: torch.dtype = torch.bfloat16, note: str = "") -> Path:
    """Write ``learner`` as a checkpoint vidqa loads: LLaVA-1.5 layout (VoCo) or the official LLaVA-Mini layout.

    The CLIP tower goes into ``out/clip`` (``mm_vision_tower: clip``, found inside the model directory).
    """
    out.mkdir(parents=True, exist_ok=True)
    learner.tokenizer.save_pretrained(str(out))
    learner.vision.tower.to(dtype).save_pretrained(str(out / "clip"))
    learner.vision.tower.float()
    (out / "clip" / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": list(learner.vision.spec.mean), "image_std": list(learner.vision.spec.std),
        "size": {"shortest_edge": cfg.image_size}, "crop_size": {"height": cfg.image_size, "width": cfg.image_size}}))
    state = {k: v.detach().to(dtype).contiguous() for k, v in learner.llm.state_dict().items()}
    state.update({f"model.mm_projector.{k}": v.detach().to(dtype).contiguous() for k, v in learner.projector.state_dict().items()})
    llm_cfg = learner.llm.config.to_dict()
    for k in ("transformers_version", "dtype", "torch_dtype", "architectures", "_name_or_path"):
        llm_cfg.pop(k, None)
    rope = llm_cfg.pop("rope_parameters", None) or {}
    llm_cfg["rope_theta"] = rope.get("rope_theta", 10000.0)
    common = {"mm_vision_tower": "clip", "mm_hidden_size": cfg.vision_hidden, "mm_projector_type": "mlp2x_gelu",
              "mm_vision_select_layer": -1, "mm_vision_select_feature": "patch", "mm_use_im_start_end": False,
              "torch_dtype": str(dtype).replace("torch.", ""), "vidqa_demo": note}
    if learner.variant == "mini":
        state.update({f"model.compressor.{k}": v.detach().to(dtype).contiguous() for k, v in learner.compressor.state_dict().items()})
        state.update({f"model.prefusion_layers.{k}": v.detach().to(dtype).contiguous() for k, v in learner.prefusion.state_dict().items()})
        config = {**llm_cfg, **common, "model_type": "llava_mini_llama", "architectures": ["LlavaMiniLlamaForCausalLM"],
                  "compressor_size": 1, "prefusion_layer_num": len(learner.prefusion), "resolution_ratio": 1,
                  "image_aspect_ratio": "square"}
        index = {"metadata": {}, "weight_map": {k: "model-00001-of-00001.safetensors" for k in state}}
        save_file(state, str(out / "model-00001-of-00001.safetensors"), metadata={"format": "pt"})
        (out / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        config = {**llm_cfg, **common, "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
                  "image_aspect_ratio": "pad", "voco_num": learner.voco.tokens_per_frame}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out

