"""The LLaVA checkpoint layouts: the multimodal config keys, the LLM's config, and the loaders of the
LLM, the projector and the CLIP tower a config names.

Key facts (one place; the method modules build their own extra modules from these prefixes):

- the LLM's own keys: ``model.embed_tokens``, ``model.layers.*``, ``model.norm``, ``lm_head``;
- ``model.mm_projector.*`` (``PROJECTOR``): the LLaVA projector (``linear`` or ``mlpNx_gelu``);
- ``model.compressor.*`` and ``model.prefusion_layers.*``: LLaVA-Mini's compressor and pre-fusion;
- ``model.vision_tower.*``: a CLIP tower saved inside the LLM's file (tolerated, never read: the tower
  is loaded from ``mm_vision_tower``, a hub id or a folder with ``vision_model.*`` keys).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from vidqa.checkpoint.read import KNOWN_MODEL_TYPES, load_tensors, weight_files
from vidqa.errors import ModelError
from vidqa.vision import CLIP_MEAN, CLIP_STD, Preprocess, VisionEncoder, build_projector, load_vision_tower

PROJECTOR = "model.mm_projector."
COMPRESSOR = "model.compressor."
PREFUSION = "model.prefusion_layers."
VISION_TOWER = "model.vision_tower."

# Keys that LLaVA-style configs (LLaVA-1.5, VoCo-LLaMA, LLaVA-Mini) and vidqa carry beside the LLM's own;
# they are left out of the LLM's config.
MM_KEYS = frozenset({
    "mm_vision_tower", "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer",
    "mm_vision_select_feature", "mm_use_im_start_end", "mm_use_im_patch_token", "mm_patch_merge_type",
    "mm_projector_lr", "mm_vision_tower_lr", "image_aspect_ratio", "image_grid_pinpoints",
    "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "unfreeze_mm_vision_tower", "use_mm_proj", "s2", "s2_scales",
    "compressor_size", "prefusion_layer_num", "resolution_ratio", "tokenizer_padding_side",
    "tokenizer_model_max_length", "vidqa_method", "vidqa_demo", "voco_num", "vidqa_prompt",
})
# Bookkeeping of the library that saved the config, never arguments of the LLM's config class.
SAVER_KEYS = frozenset({"model_type", "architectures", "auto_map", "_name_or_path", "transformers_version"})


# The checkpoint's own question template for ``vidqa bench`` (its training format): a string with
# ``{question}``, or an object from dataset name (``msrvtt``, ``msvd``, ``activitynet``, ``synthetic``)
# to such a string, with ``"default"`` for the rest.
PROMPT_KEY = "vidqa_prompt"


def prompt_template(cfg: dict[str, Any], dataset: str) -> str | None:
    """The template config.json's ``vidqa_prompt`` states for ``dataset`` (None: it states none)."""
    value = cfg.get(PROMPT_KEY)
    if isinstance(value, dict):
        value = value.get(dataset, value.get("default"))
    if value is None:
        return None
    if not isinstance(value, str) or "{question}" not in value:
        raise ModelError(f"config.json's {PROMPT_KEY} must be a string with {{question}} (or an object of them), "
                         f"not {value!r}")
    return value


def llm_config(cfg: dict[str, Any]):
    """The transformers config of the LLM inside a LLaVA-style config.json.

    Old (transformers 4.x) files carry ``rope_theta`` plus an old-style ``rope_scaling`` (``rope_type:
    llama3``, or the older ``type``) and no ``rope_parameters``; they are merged explicitly into
    transformers 5's ``rope_parameters``, and the result is checked to keep the scaling.
    """
    kind = cfg.get("model_type")
    llm_type = KNOWN_MODEL_TYPES.get(kind, (None, kind))[1]
    if cfg.get("vidqa_method") and kind not in KNOWN_MODEL_TYPES:
        llm_type = cfg.get("llm_model_type", "llama")
    clean = {k: v for k, v in cfg.items() if k not in MM_KEYS and k not in SAVER_KEYS}
    rope_theta = clean.pop("rope_theta", None)
    rope_scaling = clean.pop("rope_scaling", None)
    rope = dict(clean.pop("rope_parameters", None) or {})
    if not rope:
        rope = dict(rope_scaling) if rope_scaling else {"rope_type": "default"}
        if "rope_type" not in rope and "type" in rope:  # the pre-4.43 spelling
            rope["rope_type"] = rope.pop("type")
    if rope_theta is not None:
        rope.setdefault("rope_theta", float(rope_theta))
    dtype = clean.pop("torch_dtype", None) or clean.pop("dtype", None)
    try:
        config = AutoConfig.for_model(llm_type, rope_parameters=rope, **clean)
    except Exception as e:
        raise ModelError(f"cannot build the {llm_type} LLM config from config.json: {e}")
    if dtype is not None:
        config.dtype = dtype
    params = getattr(config, "rope_parameters", None)
    if not params:
        raise ModelError("the LLM has no rotary position embedding; vidqa needs a RoPE decoder")
    if params.get("rope_type") != rope.get("rope_type", "default"):
        raise ModelError(f"rope scaling was not kept: {rope} became {params}")
    return config


def load_llm(path: Path, cfg: dict, device: torch.device, dtype: torch.dtype):
    """The LLM of a checkpoint through transformers (its own keys; the multimodal ones are ignored)."""
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
    state = load_tensors(path, PROJECTOR)
    try:
        projector.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{path}: model.mm_projector does not match {cfg.get('mm_projector_type')}: "
                         f"{str(e).splitlines()[0]}")
    return projector.eval()


def load_vision(path: Path, cfg: dict, device, dtype, override: str | None = None) -> VisionEncoder:
    """The CLIP tower ``mm_vision_tower`` names (a hub id, an absolute folder, or a folder inside ``path``),
    truncated at ``mm_vision_select_layer``, with its preprocessor's mean and std."""
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
