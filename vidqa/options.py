"""Settings that travel whole between the CLI and the library, and every ``VIDQA_*`` variable, read here.

Environment variables (each read by one function below, at the moment it is called, so a test or a
long-running process sees the current value):

- ``VIDQA_MODEL`` (``MODEL_ENV``): the default ``--model`` (the CLI's option declaration names it).
- ``VIDQA_CACHE_DIR``: the cache store's folder (``cache_root``).
- ``VIDQA_COMPILE=1``: torch.compile for compression and the CUDA-graph decode step (``0``: not even the
  decode step of a ``--quantize``d model, which is compiled otherwise); ``VIDQA_COMPILE_MODE``
  passes a torch.compile mode (``ComputeOptions.from_env``).
- ``VIDQA_DEBUG=1``: the CLI shows the traceback of an unexpected failure, third-party warnings and
  FFmpeg's log (``debug``).
- ``VIDQA_JUDGE_KEY`` (else ``OPENAI_API_KEY``): the GPT judge's API key (``judge_key``).
- torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``TORCHELASTIC_RUN_ID`` (``DistEnv.from_env``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from vidqa.errors import UsageError


MODEL_ENV = "VIDQA_MODEL"

# The bounds every front end checks (the CLI through these dataclasses and ``check_*`` functions).
MAX_TOKENS_PER_FRAME = 4096  # far above any method's few tokens; the context check comes after loading
DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,3})?")  # what pipeline.pick_device understands
DTYPES = ("auto", "bf16", "fp16", "fp32", "bfloat16", "float16", "float32")
TEMPERATURE_RANGE = (1e-3, 100.0)  # besides 0 (greedy): below, logits / t overflow to inf; above, it is noise
SEED_MAX = 2 ** 64 - 1  # torch.Generator.manual_seed's range (from 0)


@dataclass(frozen=True)
class ModelOptions:
    """Which checkpoint, and how to read it."""

    model: str | None  # a directory, hub id or built-in demo name; None: not given (an error when loading)
    method: str | None = None  # None: what the checkpoint's config says
    vision_tower: str | None = None  # overrides the config's mm_vision_tower
    tokens_per_frame: int | None = None  # VoCo: None takes the config's voco_num, else 2

    def __post_init__(self) -> None:
        n = self.tokens_per_frame
        if n is not None and not (isinstance(n, int) and 1 <= n <= MAX_TOKENS_PER_FRAME):
            raise UsageError(f"--tokens-per-frame must be a whole number from 1 to {MAX_TOKENS_PER_FRAME}, not {n}")


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
    # a quantised model's decode step is compiled even without ``compile`` (VIDQA_COMPILE=0 turns it off):
    # torchao's eager int8 path dequantises every weight at every step (7B on an H200: 23.5 ms/token in
    # the CUDA graph, 3.5 compiled; bf16 6.5)
    compile_quantized: bool = True

    def __post_init__(self) -> None:
        if not DEVICE.fullmatch(str(self.device)):
            raise UsageError(f"unknown device {self.device!r} (use auto, cpu, cuda or cuda:N)")
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown dtype {self.dtype!r} (use {', '.join(DTYPES)})")
        if self.batch_size is not None and not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise UsageError(f"--batch-size must be at least 1, not {self.batch_size}")

    @classmethod
    def from_env(cls, **overrides) -> "ComputeOptions":
        """Defaults from ``VIDQA_COMPILE`` and ``VIDQA_COMPILE_MODE``; keyword arguments win."""
        base = dict(compile=os.environ.get("VIDQA_COMPILE") == "1",
                    compile_quantized=os.environ.get("VIDQA_COMPILE") != "0",
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


def check_generation(max_new_tokens: int, temperature: float, top_p: float, seed: int | None) -> None:
    """Refuse decoding settings that would fail (or silently mean something else) deep in generation."""
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
        raise UsageError(f"--max-new-tokens must be at least 1, not {max_new_tokens}")
    lo, hi = TEMPERATURE_RANGE
    if not (math.isfinite(temperature) and (temperature == 0 or lo <= temperature <= hi)):
        raise UsageError(f"--temperature must be 0 (greedy) or from {lo:g} to {hi:g}, not {temperature}")
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise UsageError(f"--top-p must be above 0 and at most 1, not {top_p}")
    if seed is not None and not (0 <= seed <= SEED_MAX):
        raise UsageError(f"--seed must be a whole number from 0 to 2**64-1, not {seed}")


def check_question(text: str, what: str = "the question") -> str:
    """``text`` without surrounding whitespace; an empty one, or one with bytes that are not UTF-8
    (Python keeps those as lone surrogates in ``sys.argv`` and in stdin read with surrogateescape), is refused."""
    text = text.strip()
    if not text:
        raise UsageError(f"{what} is empty: ask something")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(f"{what} is not valid UTF-8 text (at character {e.start + 1}); "
                         "check the terminal's or the file's encoding") from None
    return text
