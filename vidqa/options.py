"""Settings that travel whole between the CLI and the library, and every ``VIDQA_*`` variable, read here.

Environment variables (each read by one function below, at the moment it is called, so a test or a
long-running process sees the current value):

- ``VIDQA_MODEL`` (``MODEL_ENV``): the default ``--model`` (the CLI's option declaration names it).
- ``VIDQA_CACHE_DIR``: the cache store's folder (``cache_root``).
- ``VIDQA_COMPILE=1``: torch.compile for compression and the CUDA-graph decode step; ``VIDQA_COMPILE_MODE``
  passes a torch.compile mode (``ComputeOptions.from_env``).
- ``VIDQA_DEBUG=1``: the CLI shows the traceback of an unexpected failure (``debug``).
- ``VIDQA_JUDGE_KEY`` (else ``OPENAI_API_KEY``): the GPT judge's API key (``judge_key``).
- torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``TORCHELASTIC_RUN_ID`` (``DistEnv.from_env``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path


MODEL_ENV = "VIDQA_MODEL"


@dataclass(frozen=True)
class ModelOptions:
    """Which checkpoint, and how to read it."""

    model: str | None  # a directory, hub id or built-in demo name; None: not given (an error when loading)
    method: str | None = None  # None: what the checkpoint's config says
    vision_tower: str | None = None  # overrides the config's mm_vision_tower
    tokens_per_frame: int | None = None  # VoCo: None takes the config's voco_num, else 2


@dataclass(frozen=True)
class ComputeOptions:
    """Where and how the model runs."""

    device: str = "auto"  # auto, cpu, cuda, cuda:N
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32
    batch_size: int | None = None  # frames compressed per batch; None: 16 on GPU, 4 on CPU
    compile: bool = False  # torch.compile for compression and the decode step
    compile_mode: str | None = None  # a torch.compile mode, e.g. max-autotune-no-cudagraphs
    quantize: str = "none"  # none, fp8, int8, int4: the LLM's linear layers through torchao (vidqa.quant)
    cache_dtype: str = "auto"  # auto (the model's dtype) or fp8: how frame caches are stored (vidqa.quant)

    @classmethod
    def from_env(cls, **overrides) -> "ComputeOptions":
        """Defaults from ``VIDQA_COMPILE`` and ``VIDQA_COMPILE_MODE``; keyword arguments win."""
        base = dict(compile=os.environ.get("VIDQA_COMPILE") == "1",
                    compile_mode=os.environ.get("VIDQA_COMPILE_MODE") or None)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def for_rank(self, dist: "DistEnv") -> "ComputeOptions":
        """In a multi-process torchrun launch, ``auto`` means this rank's own GPU (``cuda:LOCAL_RANK``)."""
        if dist.world_size > 1 and self.device == "auto":
            return replace(self, device=f"cuda:{dist.local_rank}")
        return self


@dataclass(frozen=True)
class CacheOptions:
    """The cache store: where it is, and whether to use it."""

    cache_dir: str | None = None  # None: cache_root()
    enabled: bool = True  # False: neither read nor write (--no-cache)

    @property
    def root(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else cache_root()


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun launch (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    run_id: str | None = None

    @property
    def launched(self) -> bool:
        """True inside a torchrun launch (even one of a single process)."""
        return self.run_id is not None or "LOCAL_RANK" in os.environ

    @classmethod
    def from_env(cls) -> "DistEnv":
        return cls(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                   local_rank=int(os.environ.get("LOCAL_RANK", 0)), run_id=os.environ.get("TORCHELASTIC_RUN_ID"))


def cache_root() -> Path:
    """The cache store: ``$VIDQA_CACHE_DIR``, else ``$XDG_CACHE_HOME/vidqa``, else ``~/.cache/vidqa``."""
    if os.environ.get("VIDQA_CACHE_DIR"):
        return Path(os.environ["VIDQA_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec says relative values are to be ignored
        return Path(xdg) / "vidqa"
    return Path.home() / ".cache" / "vidqa"


def debug() -> bool:
    return bool(os.environ.get("VIDQA_DEBUG"))


def judge_key() -> str | None:
    return os.environ.get("VIDQA_JUDGE_KEY") or os.environ.get("OPENAI_API_KEY")
