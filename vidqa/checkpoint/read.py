"""Finding and reading checkpoints: hub ids or local directories in the LLaVA layouts.

A checkpoint directory holds an LLM (``model.embed_tokens``, ``model.layers.*``, ``lm_head``), extra
multimodal modules under ``model.*`` (``mm_projector``, ``compressor``, ``prefusion_layers``), a
``config.json`` whose ``model_type`` transformers does not know (``llava_llama``,
``llava_mini_llama``), and a tokenizer. This module turns such a directory into plain parts:
the raw config dict, a transformers config for the LLM, the tokenizer, and tensors by key prefix.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from vidqa.errors import ModelError

# model_type in config.json -> (vidqa method, transformers model_type of the LLM inside)
KNOWN_MODEL_TYPES: dict[str, tuple[str, str]] = {
    "llava_llama": ("voco", "llama"),
    "voco_llama": ("voco", "llama"),
    "llava_mini_llama": ("mini", "llama"),
}

# Keys that LLaVA-style configs carry beside the LLM's own; they are dropped from the LLM config.
MM_KEYS = (
    "mm_vision_tower", "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer",
    "mm_vision_select_feature", "mm_use_im_start_end", "mm_use_im_patch_token",
    "mm_patch_merge_type", "mm_projector_lr", "mm_vision_tower_lr", "image_aspect_ratio",
    "image_grid_pinpoints", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "use_mm_proj",
    "compressor_size", "prefusion_layer_num", "resolution_ratio", "tokenizer_padding_side",
    "tokenizer_model_max_length", "vidqa_method", "voco_num",
)


def quiet_transformers() -> None:
    """transformers warns loudly about model types it does not know; those warnings are ours to handle."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover - older hub clients
        pass


BUILTIN = {
    "tiny-voco": "VoCo-LLaMA, 1 token per frame: a demo model trained from scratch on synthetic shape clips",
    "tiny-mini": "LLaVA-Mini, 1 token per frame: a demo model trained from scratch on synthetic shape clips",
}


def builtin_dir(name: str) -> Path:
    return Path(__file__).parent.parent / "models" / name


def resolve(model: str | os.PathLike) -> Path:
    """A local directory as it is, a built-in demo model by name (``BUILTIN``), or a hub id through the
    HF hub cache (honours HF_HUB_OFFLINE)."""
    path = Path(model).expanduser()
    if str(model) in BUILTIN and not path.is_dir():
        path = builtin_dir(str(model))
        if not (path / "config.json").is_file():
            raise ModelError(f"the built-in model {model!r} is missing from this install ({path})")
        return path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} has no config.json: not a model directory")
        return path
    if path.exists():
        raise ModelError(f"{path} is a file, not a model directory")
    text = str(model)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise ModelError(f"model {text!r} not found: no such directory, and it is not a hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            text, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.bin"], tqdm_class=None
        )
    except Exception as e:  # offline, unknown repo, gated, no network: one line, not a traceback
        raise ModelError(f"model {text!r} is neither a local directory nor reachable on the hub ({type(e).__name__})")
    return Path(local)


def read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {path / 'config.json'}: {e}")


def detect_method(cfg: dict[str, Any]) -> str:
    if cfg.get("vidqa_method") in ("voco", "mini"):
        return cfg["vidqa_method"]
    kind = cfg.get("model_type")
    if kind not in KNOWN_MODEL_TYPES:
        known = ", ".join(sorted(KNOWN_MODEL_TYPES))
        raise ModelError(f"unknown model kind {kind!r} in config.json (vidqa reads: {known})")
    return KNOWN_MODEL_TYPES[kind][0]


def llm_config(cfg: dict[str, Any]):
    """The transformers config of the LLM inside a LLaVA-style config.

    Old (transformers 4.x) files carry ``rope_theta`` and ``rope_scaling``; transformers 5 reads them
    into ``rope_parameters`` when they are passed to the config class, so the llama3 scaling is kept.
    """
    from transformers import AutoConfig

    kind = cfg.get("model_type")
    llm_type = KNOWN_MODEL_TYPES.get(kind, (None, kind))[1]
    if cfg.get("vidqa_method") and kind not in KNOWN_MODEL_TYPES:
        llm_type = cfg.get("llm_model_type", "llama")
    clean = {k: v for k, v in cfg.items() if k not in MM_KEYS and k not in ("model_type", "architectures", "auto_map")}
    try:
        config = AutoConfig.for_model(llm_type, **clean)
    except Exception as e:
        raise ModelError(f"cannot build the {llm_type} LLM config from config.json: {e}")
    if not hasattr(config, "rope_parameters") or config.rope_parameters is None:
        raise ModelError("the LLM has no rotary position embedding; vidqa needs a RoPE decoder")
    return config


def load_tokenizer(path: Path):
    """Load the tokenizer by the class its own tokenizer_config.json names.

    ``AutoTokenizer`` would first read config.json and stumble on the unknown LLaVA model type.
    """
    import transformers

    tok_cfg_file = path / "tokenizer_config.json"
    name = None
    if tok_cfg_file.is_file():
        try:
            name = json.loads(tok_cfg_file.read_text()).get("tokenizer_class")
        except json.JSONDecodeError as e:
            raise ModelError(f"cannot read {tok_cfg_file}: {e}")
    cls = getattr(transformers, name, None) if name else None
    if cls is None:
        cls = transformers.PreTrainedTokenizerFast if (path / "tokenizer.json").is_file() else transformers.LlamaTokenizer
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise ModelError(f"{path} has no tokenizer (tokenizer.json or tokenizer.model)")
    try:
        return cls.from_pretrained(str(path))
    except Exception as e:
        raise ModelError(f"cannot load the tokenizer in {path}: {type(e).__name__}: {e}")


def weight_files(path: Path) -> list[Path]:
    """All weight shards of a checkpoint, safetensors preferred, sharded or not."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = path / index_name
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            files = [path / n for n in names]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise ModelError(f"{path} is incomplete: missing weight shards {', '.join(missing)}")
            return files
        if (path / single).is_file():
            return [path / single]
    raise ModelError(f"{path} has no weights (model.safetensors or pytorch_model.bin, sharded or not)")


def load_tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor whose key starts with ``prefix``, with the prefix removed."""
    out: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    if key.startswith(prefix):
                        out[key[len(prefix):]] = f.get_tensor(key)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
            out.update({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return out


def checkpoint_keys(path: Path) -> list[str]:
    keys: list[str] = []
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                keys.extend(f.keys())
        else:
            keys.extend(torch.load(file, map_location="cpu", weights_only=True).keys())
    return keys
