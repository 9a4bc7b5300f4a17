"""Training state on disk without pickle: tensors in safetensors, everything else in JSON.

``OUT/train_state/`` holds the model's and the optimiser's tensors as safetensors files written by
``torch.distributed.checkpoint`` with its Hugging Face storage writer (one file per rank: each rank writes
its own FSDP shards, and any world size reads them back, offsets in the files' JSON metadata), and
``meta.json`` (step, elapsed seconds, questions seen, the loss history, the run's config, the optimiser's
scalar state: learning-rate groups and step counters). A save goes to ``train_state.tmp/`` and is swapped
in whole, so a kill never leaves half a state.

Nothing here reads a pickle: a ``train_state.pt`` of an older vidqa (a ``torch.save`` pickle, which can
run code when read) is refused with a message, never opened.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict, set_state_dict)

from vidqa.errors import VidqaError

STATE_DIR = "train_state"
META = "meta.json"
LEGACY = "train_state.pt"
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive, or a bare pickle protocol 2+


class StateError(VidqaError):
    """A training state that vidqa will not or cannot read."""


def refuse_pickle(path: Path) -> None:
    """Raise ``StateError`` when ``path`` is a torch pickle (never loaded: unpickling can run code)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise StateError(f"cannot read {path}: {e.strerror or e}")
    if path.suffix in (".pt", ".pth", ".bin", ".pkl", ".ckpt") or head.startswith(_PICKLE_MAGIC):
        raise StateError(f"{path} is a pickled training state (an older vidqa's train_state.pt, or not vidqa's); "
                         "vidqa no longer reads pickles, which can run code: start a new --out or retrain")


def state_dir(out: Path) -> Path:
    """The training state of run directory ``out`` (a swap interrupted midway leaves ``.old``)."""
    for name in (STATE_DIR, STATE_DIR + ".old"):
        if (out / name / META).is_file():
            return out / name
    return out / STATE_DIR


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _storage(t: torch.Tensor) -> tuple:
    local = t.to_local() if hasattr(t, "to_local") else t
    return (local.untyped_storage().data_ptr(), local.storage_offset(), tuple(local.shape), local.dtype)


def _flat(model: nn.Module, opt: torch.optim.Optimizer | None) -> tuple[dict[str, torch.Tensor], dict]:
    """Model + optimiser state as one flat ``name -> tensor`` dict (DTensors under FSDP), and the
    optimiser's non-tensor state (param groups, step counters) for JSON. A module registered under two
    names (the input builder's view of the LLM) is saved once, under its first name: ``aliases`` maps
    the others to it."""
    opts = StateDictOptions(ignore_frozen_params=False)
    if opt is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        msd, osd = get_model_state_dict(model, options=opts), {"state": {}, "param_groups": []}
    else:
        msd, osd = get_state_dict(model, opt, options=opts)
    flat: dict[str, torch.Tensor] = {}
    first: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for k, v in msd.items():
        if not isinstance(v, torch.Tensor):
            continue
        key = _storage(v) if v.numel() else ("empty", k)
        if key in first:
            aliases[k] = first[key]
        else:
            first[key] = k
            flat[f"model.{k}"] = v
    scalars: dict[str, dict[str, float]] = {}
    for fqn, st in osd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.ndim > 0:
                flat[f"optim.{fqn}.{k}"] = v
            else:
                scalars.setdefault(fqn, {})[k] = float(v)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in osd["param_groups"]]
    return flat, {"scalars": scalars, "param_groups": groups, "aliases": aliases}


def save_state(out: Path, model: nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> Path:
    """Write ``out/train_state`` (collective under torch.distributed: every rank calls it)."""
    flat, optim_meta = _flat(model, opt)
    tmp, final, old = out / (STATE_DIR + ".tmp"), out / STATE_DIR, out / (STATE_DIR + ".old")
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    flat = {k: (v.contiguous() if not hasattr(v, "to_local") else v) for k, v in flat.items()}
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(flat, storage_writer=dcp.HuggingFaceStorageWriter(str(tmp), save_distributed=True))
    _barrier()
    if _rank() == 0:
        (tmp / META).write_text(json.dumps({**meta, "optimizer": optim_meta}, indent=1))
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def read_meta(out: Path) -> dict[str, Any] | None:
    """The JSON part of ``out``'s state, or None when there is none; refuses an old pickled state."""
    if (out / LEGACY).exists():
        refuse_pickle(out / LEGACY)
    file = state_dir(out) / META
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StateError(f"cannot read the training state {file}: {e}")


def load_state(out: Path, model: nn.Module, opt: torch.optim.Optimizer | None) -> dict[str, Any] | None:
    """Fill ``model`` (and ``opt``) from ``out``'s state in place; returns its metadata (None: no state)."""
    meta = read_meta(out)
    if meta is None:
        return None
    where = state_dir(out)
    flat, layout = _flat(model, opt)
    saved = _saved_keys(where)
    # the optimiser keeps no state for a parameter that never had a gradient (an unused layer)
    skip = {k.rsplit(".", 1)[0] for k in flat if k.startswith("optim.") and k not in saved}
    flat = {k: v for k, v in flat.items() if not (k.startswith("optim.") and k.rsplit(".", 1)[0] in skip)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(flat, storage_reader=dcp.HuggingFaceStorageReader(str(where)))
    except Exception as e:  # a missing key, a shape that does not match this model
        raise StateError(f"the training state in {where} does not fit this model: {str(e).splitlines()[0][:300]}")
    msd = {k[len("model."):]: v for k, v in flat.items() if k.startswith("model.")}
    msd.update({alias: msd[name] for alias, name in layout["aliases"].items()})
    if opt is None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict
        set_model_state_dict(model, msd)
        return meta
    state: dict[str, dict[str, Any]] = {}
    for k, v in flat.items():
        if k.startswith("optim."):
            fqn, name = k[len("optim."):].rsplit(".", 1)
            state.setdefault(fqn, {})[name] = v
    for fqn, sc in meta["optimizer"]["scalars"].items():
        if "optim." + fqn in skip:
            continue
        for name, value in sc.items():
            state.setdefault(fqn, {})[name] = torch.tensor(value, dtype=torch.float32)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["optimizer"]["param_groups"]]
    # not strict: a parameter that never had a gradient has no optimiser state (the model's keys were
    # all checked by dcp.load above)
    set_state_dict(model, opt, model_state_dict=msd, optim_state_dict={"state": state, "param_groups": groups},
                   options=StateDictOptions(strict=False))
    return meta


def _saved_keys(where: Path) -> set[str]:
    from safetensors import safe_open

    keys: set[str] = set()
    for file in where.glob("*.safetensors"):
        try:
            with safe_open(str(file), framework="pt") as f:
                keys.update(f.keys())
        except Exception as e:  # safetensors' own error type
            raise StateError(f"cannot read the training state {file}: {e}")
    return keys


def read_model_tensors(source: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """A saved run's model weights (full, on the CPU) whose names start with ``prefix`` (stripped).

    ``source``: a run directory, its ``train_state`` directory, or one of that directory's safetensors
    files. Pickles are refused. Shards of one tensor (FSDP runs) are put back together.
    """
    from safetensors import safe_open

    source = Path(source)
    aliases: dict[str, str] = {}
    if source.is_file():
        if source.suffix != ".safetensors":
            refuse_pickle(source)
        files = [source]
        if (source.parent / META).is_file():
            aliases = json.loads((source.parent / META).read_text()).get("optimizer", {}).get("aliases", {})
    else:
        if (source / LEGACY).exists() and not (source / STATE_DIR).exists():
            refuse_pickle(source / LEGACY)
        where = source if (source / META).is_file() else state_dir(source)
        files = sorted(where.glob("*.safetensors"))
        try:
            aliases = json.loads((where / META).read_text())["optimizer"]["aliases"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError):
            aliases = {}
        if not files:
            raise StateError(f"{source} holds no vidqa training state ({STATE_DIR}/ with safetensors)")
    pieces: dict[str, list[tuple[list[int], torch.Tensor]]] = {}
    want = "model."
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                info = json.loads((f.metadata() or {}).get("DCP_SHARDING_INFO", "{}"))
                for k in f.keys():
                    if k.startswith(want):
                        t = f.get_tensor(k)
                        offset = info.get(k, {}).get("saved_offsets", [0] * t.ndim)
                        pieces.setdefault(k[len(want):], []).append((offset, t))
        except (OSError, ValueError, json.JSONDecodeError) as e:
            raise StateError(f"cannot read {file}: {e}")
        except Exception as e:  # safetensors' own error type: not a safetensors file
            raise StateError(f"{file} is not a safetensors training state: {e}")
    out = {}
    for k, parts in pieces.items():
        if len(parts) == 1:
            out[k] = parts[0][1]
            continue
        shape = [max(o[d] + t.shape[d] for o, t in parts) for d in range(parts[0][1].ndim)]
        full = torch.empty(shape, dtype=parts[0][1].dtype)
        for o, t in parts:
            full[tuple(slice(a, a + n) for a, n in zip(o, t.shape))] = t
        out[k] = full
    out.update({alias: out[name] for alias, name in aliases.items() if name in out})
    return {k[len(prefix):]: v for k, v in out.items() if k.startswith(prefix)}
