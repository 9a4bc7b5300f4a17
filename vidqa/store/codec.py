"""safetensors files, written and read without a serialisation copy.

The files are plain safetensors (any safetensors reader opens them). They are encoded and decoded
here because ``safetensors.torch.save()``/``load()`` on bytes copy every byte through Python: measured
3-4 s per GB each way, against ~0 for handing the tensors' own memory to ``write()`` and building
tensors over the checksummed read buffer with ``torch.frombuffer``.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import torch

_NAMES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}
_DTYPES = {v: k for k, v in _NAMES.items()}


def encode(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> list[memoryview]:
    """The chunks of a safetensors file: length, JSON header (space-padded to 8 bytes), raw data.

    The tensors must be contiguous CPU tensors: their memory is handed out as it is (no copy).
    TypeError for a dtype safetensors cannot hold.
    """
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in _NAMES:
            raise TypeError(f"cannot store tensor {name!r} of dtype {t.dtype}")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    chunks = [memoryview(struct.pack("<Q", len(text))), memoryview(text)]
    for name in sorted(tensors):
        t = tensors[name]
        if t.numel():
            chunks.append(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return chunks


def decode(data) -> dict[str, torch.Tensor]:
    """Tensors viewing ``data`` (a bytes-like buffer; no copy). An error for anything that is not a
    valid file: ValueError for bad structure, KeyError for an unknown dtype."""
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > len(data) - 8:
        raise ValueError("header runs past the end of the file")
    header = json.loads(bytes(data[8:8 + n]))
    base, view, out = 8 + n, memoryview(data), {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        shape = [int(x) for x in info["shape"]]
        if not 0 <= start <= end <= len(data) - base or end - start != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"bad offsets for {name!r}")
        if end == start:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            out[name] = torch.frombuffer(view[base + start:base + end], dtype=dtype).view(shape)
    return out
