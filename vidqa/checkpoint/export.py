"""The one checkpoint writer: trained models (``vidqa train``), demo models and the tiny test models.

``write_checkpoint`` writes a directory that ``vidqa.checkpoint`` reads back: ``config.json``, the
weights (one ``model.safetensors``, or shards with ``model.safetensors.index.json``), the tokenizer, and
a CLIP tower in its own folder with hub-style ``vision_model.*`` keys and a ``preprocessor_config.json``.
What goes into ``config`` and ``state`` (the layout) is the caller's: see ``vidqa.checkpoint.llava`` for
the key prefixes and ``vidqa.methods`` for each method's extra keys.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file
from torch import nn

from vidqa.vision import CLIP_MEAN, CLIP_STD


def llava_config(llm_config, **extra: Any) -> dict[str, Any]:
    """An LLM's transformers config as a LLaVA-style (transformers 4.x) ``config.json`` dict, plus ``extra``.

    ``rope_parameters`` is written the old way (``rope_theta``, and ``rope_scaling`` unless default),
    which ``vidqa.checkpoint.llm_config`` and the original LLaVA code both read.
    """
    cfg = llm_config.to_dict()
    for k in ("transformers_version", "dtype", "torch_dtype", "architectures", "_name_or_path"):
        cfg.pop(k, None)
    rope = dict(cfg.pop("rope_parameters", None) or {})
    cfg["rope_theta"] = float(rope.pop("rope_theta", 10000.0))
    cfg["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    cfg.update(extra)
    return cfg


def prefixed(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict under a checkpoint prefix (``PROJECTOR``, ``COMPRESSOR``, ...)."""
    return {prefix + k: v for k, v in module.state_dict().items()}


def write_tower(directory: str | Path, tower: nn.Module, *, image_mean: Sequence[float] = CLIP_MEAN,
                image_std: Sequence[float] = CLIP_STD, dtype: torch.dtype | None = None) -> Path:
    """A ``CLIPVisionModel`` as the hub stores one: config.json, model.safetensors with ``vision_model.*``
    keys (transformers 5 drops the prefix in memory; 4.x files have it and both read it), and
    preprocessor_config.json with the normalisation the tower was trained with."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tower.config.to_json_file(str(directory / "config.json"))
    state = {(k if k.startswith("vision_model.") else f"vision_model.{k}"): v for k, v in tower.state_dict().items()}
    _save(state, directory / "model.safetensors", dtype)
    size = tower.config.image_size
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": size, "width": size}, "do_center_crop": True, "do_convert_rgb": True,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": list(image_mean),
        "image_processor_type": "CLIPImageProcessor", "image_std": list(image_std), "resample": 3,
        "rescale_factor": 1 / 255, "size": {"shortest_edge": size},
    }, indent=2))
    return directory


def write_checkpoint(directory: str | Path, config: dict[str, Any], state: dict[str, torch.Tensor], *,
                     tokenizer=None, tower: nn.Module | None = None, tower_dir: str | Path = "clip",
                     image_mean: Sequence[float] = CLIP_MEAN, image_std: Sequence[float] = CLIP_STD,
                     shards: int | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write a checkpoint directory; returns it.

    ``config``: the whole config.json. ``state``: every weight under its checkpoint key (cast to
    ``dtype`` when given, floating tensors only). ``shards``: None writes one ``model.safetensors``; N
    writes N shards ``model-0000i-of-0000N.safetensors`` and their index (keys sorted, split evenly).
    ``tokenizer``: saved with ``save_pretrained`` (None: the caller wrote the tokenizer files).
    ``tower``: a ``CLIPVisionModel`` written by ``write_tower`` to ``tower_dir`` (relative: inside
    ``directory``); ``mm_vision_tower`` is set to ``str(tower_dir)`` unless ``config`` names one.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    if tower is not None:
        where = Path(tower_dir) if Path(tower_dir).is_absolute() else directory / tower_dir
        write_tower(where, tower, image_mean=image_mean, image_std=image_std, dtype=dtype)
        config.setdefault("mm_vision_tower", str(tower_dir))
    if dtype is not None:
        config["torch_dtype"] = str(dtype).removeprefix("torch.")
    if shards is None:
        _save(state, directory / "model.safetensors", dtype)
    else:
        keys = sorted(state)
        per_shard = math.ceil(len(keys) / shards)
        weight_map: dict[str, str] = {}
        for s in range(shards):
            name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            chunk = keys[s * per_shard: (s + 1) * per_shard]
            _save({k: state[k] for k in chunk}, directory / name, dtype)
            weight_map.update({k: name for k in chunk})
        total = sum(t.numel() * (t.element_size() if dtype is None or not t.is_floating_point()
                                 else torch.empty((), dtype=dtype).element_size()) for t in state.values())
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def _save(state: dict[str, torch.Tensor], file: Path, dtype: torch.dtype | None) -> None:
    def prep(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        return t.contiguous()

    save_file({k: prep(v) for k, v in state.items()}, str(file), metadata={"format": "pt"})
