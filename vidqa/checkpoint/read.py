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

from vidqa.errors import ModelError, VidqaError

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


# What defines a model besides config.json and its weight files (fingerprint): the tokenizer's files,
# and in a vision tower's folder every file with these suffixes (config, weights, preprocessor).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt")
TOWER_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def vision_tower_folder(path: Path, cfg: dict, override: str | None = None) -> tuple[str | None, Path | None]:
    """The vision tower a run loads, as ``checkpoint.llava.load_vision`` finds it: ``(name, folder)``.

    ``override`` (``--vision-tower``) wins over the config's ``mm_vision_tower``; a relative name is a
    folder inside the checkpoint when there is one; a hub id is its snapshot in the HF cache (None when
    it is not there: then only the name is known).
    """
    name = override or cfg.get("mm_vision_tower")
    if not isinstance(name, str) or not name:
        return None, None
    if not override and not Path(name).is_absolute() and (path / name).is_dir():
        return name, path / name
    if Path(name).expanduser().is_dir():
        return name, Path(name).expanduser()
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a valid repo id, a broken cache: the name is all there is
        found = None
    return name, (Path(found).parent if isinstance(found, str) else None)


def model_files(path: Path, cfg: dict, vision_tower: str | None = None) -> list[tuple[str, Path]]:
    """Every file that defines the model a run loads, with the name it is hashed under: the weight
    files (and index) of ``path``, its tokenizer files, and the vision tower's folder (``tower/...``)."""
    files = [(f.name, f) for f in weight_files(path)]
    files += [(n, path / n) for n in (*WEIGHT_INDEXES, *TOKENIZER_FILES) if (path / n).is_file()]
    _, folder = vision_tower_folder(path, cfg, vision_tower)
    if folder is not None:
        files += [(f"tower/{f.name}", f) for f in sorted(folder.iterdir())
                  if f.suffix in TOWER_SUFFIXES and f.is_file()]
    return files


def fingerprint(path: Path, cfg: dict, vision_tower: str | None = None, memo: Path | None = None) -> str:
    """Identity of the model a run loads: a hash of its content, never of names, paths or times.

    It covers the config (minus where the vision tower lives), every weight file (LLM, projector,
    compressor, ...), the tokenizer's files, and the vision tower's files: the checkpoint's own folder
    (e.g. ``clip/``), a folder, or a hub id's snapshot, whichever ``vision_tower`` (``--vision-tower``)
    or the config names. A hub tower missing from the HF cache counts by its name. So a copy, a
    ``touch`` or a reinstall of the same model gives the same fingerprint, and any change of what it
    computes gives another. Each file's sha256 is memoised in ``memo`` (default: the cache folder's
    ``hashes/``) by (path, size, mtime_ns, inode, ctime_ns): only the first run reads the weights.
    """
    from vidqa.options import cache_root
    from vidqa.store.keys import HashMemo

    hashes = HashMemo(memo if memo is not None else cache_root() / "hashes")
    name, folder = vision_tower_folder(path, cfg, vision_tower)
    config = {k: v for k, v in cfg.items() if k != "mm_vision_tower"}
    parts: dict = {"config": config, "tower": None if folder is not None else name, "files": {}}
    for label, f in model_files(path, cfg, vision_tower):
        try:
            parts["files"][label] = hashes.identify(f)[0]
        except VidqaError as e:
            raise ModelError(f"cannot read the model file {f}: {e}") from None
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
