"""vidqa: answer questions about videos from per-frame caches compressed to a few tokens.

    from vidqa import VideoQA, Sampling, GenerationConfig, load_frames
    qa = VideoQA.from_pretrained("tiny-voco", device="cpu")
    frames = load_frames("examples/clips/shapes00.mp4", Sampling(fps=1))
    cache = qa.compress(frames)
    print("".join(qa.answer(cache, "what colour is the square?", GenerationConfig(max_new_tokens=8))))

The names below are loaded on first use (module ``__getattr__``), so ``import vidqa`` and
``vidqa --help`` do not import torch.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from vidqa.errors import VidqaError

__version__ = "0.1.0"

# torchao (which transformers imports whenever it is installed: pip install 'vidqa[quant]') logs at import
# time: C++ extensions that do not load on this machine, and torch's deprecation of its pytree enum
# registrations. Neither concerns vidqa, and they would break the one-line `error:` contract on stderr.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

_LAZY = {
    "VideoQA": "vidqa.pipeline",
    "Sampling": "vidqa.video",
    "load_frames": "vidqa.video",
    "GenerationConfig": "vidqa.generate",
    "FrameCache": "vidqa.methods.base",
}

if TYPE_CHECKING:
    from vidqa.generate import GenerationConfig
    from vidqa.methods.base import FrameCache
    from vidqa.pipeline import VideoQA
    from vidqa.video import Sampling, load_frames

__all__ = ["VideoQA", "Sampling", "GenerationConfig", "load_frames", "FrameCache", "VidqaError", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once loaded, a plain attribute
        return value
    raise AttributeError(f"module 'vidqa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
