"""The LLaVA checkpoint layouts: loading the LLM, the projector and the CLIP tower a config names."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vidqa.checkpoint.read import llm_config, load_tensors, weight_files
from vidqa.errors import ModelError
from vidqa.vision import CLIP_MEAN, CLIP_STD, Preprocess, VisionEncoder, build_projector, load_vision_tower


def load_llm(path: Path, cfg: dict, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    config = llm_config(cfg)
    weight_files(path)  # a clear error for a directory with no or partial weights
    try:
        llm, info = AutoModelForCausalLM.from_pretrained(str(path), config=config, dtype=dtype,
                                                         output_loading_info=True)
    except Exception as e:
        raise ModelError(f"cannot load the LLM from {path}: {type(e).__name__}: {str(e).splitlines()[0]}")
    missing = [k for k in info.get("missing_keys", []) if "rotary_emb" not in k]
    if missing:
        raise ModelError(f"{path} lacks LLM weights ({len(missing)} keys, e.g. {missing[0]})")
    return llm.to(device).eval()


def load_projector(path: Path, cfg: dict, hidden: int):
    projector = build_projector(cfg.get("mm_projector_type", "linear"), int(cfg["mm_hidden_size"]), hidden)
    state = load_tensors(path, "model.mm_projector.")
    try:
        projector.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{path}: model.mm_projector does not match {cfg.get('mm_projector_type')}: "
                         f"{str(e).splitlines()[0]}")
    return projector.eval()


def load_vision(path: Path, cfg: dict, device, dtype, override: str | None = None) -> VisionEncoder:
    name = override or cfg.get("mm_vision_tower")
    if not name:
        raise ModelError(f"{path}/config.json names no mm_vision_tower; pass --vision-tower")
    local = (path / name)
    if not override and not Path(name).is_absolute() and local.is_dir():
        name = str(local)  # a tower shipped inside the model directory
    tower = load_vision_tower(name, dtype, device)
    mean, std = CLIP_MEAN, CLIP_STD
    pp = Path(name) / "preprocessor_config.json"
    if pp.is_file():
        data = json.loads(pp.read_text())
        mean, std = data.get("image_mean", mean), data.get("image_std", std)
    spec = Preprocess.from_config(cfg, tower.config.image_size, mean, std)
    return VisionEncoder(tower, int(cfg.get("mm_vision_select_layer", -2)),
                         cfg.get("mm_vision_select_feature", "patch"), spec)
