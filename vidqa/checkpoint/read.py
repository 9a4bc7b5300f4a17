"""Finding and reading checkpoints: hub ids or local directories in the LLaVA layouts.

A checkpoint directory holds an LLM (``model.embed_tokens``, ``model.layers.*``, ``lm_head``), extra
multimodal modules under ``model.*`` (``mm_projector``, ``compressor``, ``prefusion_layers``), a
``config.json`` whose ``model_type`` transformers does not know (``llava_llama``,
``llava_mini_llama``), and a tokenizer. This module turns such a directory into plain parts:
the raw config dict, a transformers config for the LLM, the tokenizer, and tensors by key prefix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import snapshot_download
from huggingface_hub.utils import disable_progress_bars
from safetensors import safe_open
from transformers.utils import logging as hf_logging

from vidqa.errors import ModelError

# model_type in config.json -> (vidqa method, transformers model_type of the LLM inside)
KNOWN_MODEL_TYPES: dict[str, tuple[str, str]] = {
    "llava_llama": ("voco", "llama"),
    "voco_llama": ("voco", "llama"),
    "llava_mini_llama": ("mini", "llama"),
}

def quiet_transformers() -> None:
    """transformers warns loudly about model types it does not know; those warnings are ours to handle."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    disable_progress_bars()


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
    """The method a config names: ``vidqa_method`` (vidqa's own key) else what its ``model_type`` implies.

    The name is checked against the method registry by the caller (``vidqa.methods.get``)."""
    if isinstance(cfg.get("vidqa_method"), str) and cfg["vidqa_method"]:
        return cfg["vidqa_method"]
    kind = cfg.get("model_type")
    if kind not in KNOWN_MODEL_TYPES:
        known = ", ".join(sorted(KNOWN_MODEL_TYPES))
        raise ModelError(f"unknown model kind {kind!r} in config.json (vidqa reads: {known})")
    return KNOWN_MODEL_TYPES[kind][0]


def load_tokenizer(path: Path):
    """Load the tokenizer by the class its own tokenizer_config.json names.

    ``AutoTokenizer`` would first read config.json and stumble on the unknown LLaVA model type.
    """
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


def weight_map(path: Path) -> dict[str, Path]:
    """Every tensor key of a checkpoint and the weight file that holds it (sharded or not).

    Sharded checkpoints are read from their index; a single file is opened to list its keys.
    """
    out: dict[str, Path] = {}
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            weight_files(path)  # a clear error for missing shards
            return {k: path / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as f:
                out.update({k: file for k in f.keys()})
        else:
            out.update({k: file for k in torch.load(file, map_location="cpu", weights_only=True)})
    return out


def load_tensors(path: Path, prefix: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor whose key starts with ``prefix``, with the prefix removed."""
    out: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt", device=str(device)) as f:
                for key in f.keys():
                    if key.startswith(prefix):
                        out[key[len(prefix):]] = f.get_tensor(key)
        else:
            state = torch.load(file, map_location=device, weights_only=True)
            out.update({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return out


def fingerprint(path: Path, cfg: dict) -> str:
    """Identity of a checkpoint: its config and the names, sizes and times of its weight files."""
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    for f in weight_files(path):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]
