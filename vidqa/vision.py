"""Frames to vision features: CLIP preprocessing on the device, CLIP patch features, the projector.

``VisionEncoder`` turns uint8 frames ``[T, H, W, 3]`` into raw CLIP patch features ``[T, 576, 1024]``
(the hidden states of the selected layer, CLS dropped) in batches. ``build_projector`` makes the
LLaVA ``mm_projector`` (``mlp2x_gelu``: Linear, GELU, Linear, keys ``0`` and ``2``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel

from vidqa import fast
from vidqa.errors import ModelError

# OpenAI CLIP's normalisation (its preprocessor_config.json): the one definition in vidqa
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocess:
    size: int = 336
    aspect: str = "pad"  # "pad": LLaVA's expand2square with the mean colour; "squash": plain resize; "crop": CLIP's
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @classmethod
    def from_config(cls, cfg: dict, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> "Preprocess":
        aspect = {"pad": "pad", "squash": "squash", "resize": "squash"}.get(cfg.get("image_aspect_ratio"), "crop")
        return cls(size=size, aspect=aspect, mean=tuple(mean), std=tuple(std))


def preprocess(pixels: torch.Tensor, spec: Preprocess, dtype: torch.dtype) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` (any device) to normalised ``[T, 3, size, size]``.

    Done in torch on the target device rather than with PIL per frame: a 1,000-frame video is one
    batched resize instead of a thousand Python calls. Bicubic with antialias matches PIL's bicubic to
    within a grey level or two.
    """
    x = pixels.permute(0, 3, 1, 2).float()  # T, 3, H, W in 0..255
    _, _, h, w = x.shape
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    if spec.aspect == "pad" and h != w:
        side = max(h, w)
        # expand2square: the mean colour (as integers, like LLaVA) around the centred frame
        canvas = (mean * 255).floor().expand(x.shape[0], 3, side, side).clone()
        top, left = (side - h) // 2, (side - w) // 2
        canvas[:, :, top:top + h, left:left + w] = x
        x = canvas
    elif spec.aspect == "crop" and h != w:
        # CLIP's processor: shortest edge to size, then a centre crop
        scale = spec.size / min(h, w)
        nh, nw = max(spec.size, round(h * scale)), max(spec.size, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - spec.size) // 2, (nw - spec.size) // 2
        x = x[:, :, top:top + spec.size, left:left + spec.size]
    if x.shape[-2:] != (spec.size, spec.size):
        x = F.interpolate(x, size=(spec.size, spec.size), mode="bicubic", antialias=True, align_corners=False)
    x = x.clamp(0, 255) / 255.0
    return ((x - mean) / std).to(dtype)


class VisionEncoder(nn.Module):
    """CLIP vision tower truncated at the selected layer; returns patch features (CLS dropped).

    LLaVA takes ``hidden_states[-2]``; running the layers after the selected one would be wasted work,
    so they are skipped (one layer of 24 at CLIP-L: about 4% of the tower).
    """

    def __init__(self, tower: nn.Module, select_layer: int = -2, select_feature: str = "patch",
                 preprocess_spec: Preprocess | None = None):
        super().__init__()
        # transformers 5 flattened CLIPVisionModel (no .vision_model); older versions nest it
        self.core = getattr(tower, "vision_model", tower)
        layers = list(self.core.encoder.layers)
        keep = select_layer % (len(layers) + 1) if select_layer < 0 else select_layer  # hidden_states: n + 1
        self.layers = nn.ModuleList(layers[:keep])  # the tower itself stays whole
        self.tower = tower
        self.select_feature = select_feature
        cfg = tower.config
        self.spec = preprocess_spec or Preprocess(size=cfg.image_size)
        self.num_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.hidden_size = cfg.hidden_size
        self.compile_kernels: bool | None = None  # torch.compile the encoder; None: ComputeOptions.from_env()

    @property
    def device(self) -> torch.device:
        return next(self.tower.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.tower.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vm = self.core
        h = vm.pre_layrnorm(vm.embeddings(pixel_values))
        if not torch.is_grad_enabled() and fast.supports_encoder(self.layers):  # inference: compilable layers
            h = fast.encoder(self.layers, h, compile=self.compile_kernels)
        else:
            for layer in self.layers:
                h = layer(h, attention_mask=None)
                h = h[0] if isinstance(h, tuple) else h
        return h[:, 1:] if self.select_feature == "patch" else h

    @torch.inference_mode()
    def encode(self, frames: np.ndarray | torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """uint8 frames ``[T, H, W, 3]`` to features ``[T, num_patches, hidden]`` on the tower's device."""
        pixels = torch.as_tensor(frames)
        out = []
        for i in range(0, pixels.shape[0], batch_size):
            chunk = pixels[i:i + batch_size].to(self.device, non_blocking=True)
            out.append(self(preprocess(chunk, self.spec, self.dtype)))
        return torch.cat(out)


def load_vision_tower(name: str, dtype: torch.dtype, device: torch.device | str) -> nn.Module:
    """A ``CLIPVisionModel`` from a hub id or a local directory (hub CLIP stores ``vision_model.*`` keys)."""
    path = Path(name).expanduser()
    if not path.is_dir() and (str(name).startswith((".", "/", "~")) or str(name).count("/") != 1):
        raise ModelError(f"vision tower {name!r} not found: no such directory, and it is not a hub id")
    try:
        tower = CLIPVisionModel.from_pretrained(str(path) if path.is_dir() else name, dtype=dtype)
    except Exception as e:
        raise ModelError(f"cannot load the vision tower {name!r} ({type(e).__name__}); pass --vision-tower DIR")
    return tower.to(device).eval()


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """The LLaVA ``mm_projector``: ``linear`` (an ``nn.Linear``, keys ``weight``/``bias``) or
    ``mlp{N}x_gelu`` (Linear, then N-1 x [GELU, Linear]: keys ``0.*``, ``2.*``, ...)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    m = re.fullmatch(r"mlp(\d+)x_gelu", kind or "")
    if not m:
        raise ModelError(f"unknown mm_projector_type {kind!r} (vidqa reads linear and mlpNx_gelu)")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(int(m.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)
