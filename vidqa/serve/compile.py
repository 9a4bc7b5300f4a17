"""Compile once per machine: torch.compile's artifacts persist under vidqa's cache folder.

``use_cache_dir(root)`` points inductor's on-disk caches (FX graph cache, autograd cache, and
Triton's kernel cache) at ``root/compile`` unless the user already set them, so a second
``vidqa serve`` (or ``ask`` with compile on) reuses the compiled kernels instead of recompiling.
``load`` / ``save`` add torch's portable "mega-cache" (``torch.compiler.save_cache_artifacts``), one
file per torch version and device, which also restores autotuning results: ``load`` before the
first compile, ``save`` after warm-up. Both are no-ops where torch lacks them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

ENV = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}


def use_cache_dir(root: str | os.PathLike) -> Path:
    """Set the compile caches' folders under ``root/compile`` (existing settings win); returns it."""
    base = Path(root).expanduser() / "compile"
    for var, sub in ENV.items():
        if not os.environ.get(var):
            os.environ[var] = str(base / sub)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return base


def artifact_path(base: Path, device: torch.device | str | None = None) -> Path:
    dev = torch.device(device) if device is not None else torch.device("cpu")
    name = torch.cuda.get_device_name(dev).replace(" ", "_") if dev.type == "cuda" else "cpu"
    return base / f"mega-{torch.__version__}-{name}.bin"


def load(base: Path, device=None) -> bool:
    """Load the saved artifacts, if any; True if they were loaded."""
    path = artifact_path(base, device)
    fn = getattr(torch.compiler, "load_cache_artifacts", None)
    if fn is None or not path.is_file():
        return False
    try:
        return fn(path.read_bytes()) is not None  # None: torch could not read it (logged)
    except Exception:  # a stale or foreign file: recompile and overwrite it later
        return False


def save(base: Path, device=None) -> bool:
    """Save what this process compiled (atomically); True if anything was saved."""
    fn = getattr(torch.compiler, "save_cache_artifacts", None)
    if fn is None:
        return False
    try:
        got = fn()
    except Exception:
        return False
    if not got:
        return False
    data = got[0]
    path = artifact_path(base, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True
