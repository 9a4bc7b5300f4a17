"""Frames to vision features: fitting frames to the tower, CLIP patch features, the projector.

Preprocessing is two steps. ``fit`` brings one uint8 frame ``[H, W, 3]`` to the tower's square
input, still as uint8 ``[S, S, 3]``; it runs on the CPU right after decoding, so a high-resolution
frame is held only until it is fitted. ``normalise`` scales fitted frames to CLIP's normalised
``[T, 3, S, S]`` on the device. ``Preprocess`` says how to fit:

- ``aspect``: ``"pad"`` (LLaVA's ``expand2square`` with the integer mean colour, then resize),
  ``"crop"`` (CLIP's processor: shortest edge to S with ``int(S * long / short)`` for the other,
  then a centre crop) or ``"squash"`` (resize both sides to S).
- ``resample``: ``"pil"`` (PIL bicubic on uint8, as the CLIP image processor does: the official
  image path of both methods), ``"nearest"`` (``torch.nn.functional.interpolate``'s default mode on
  the uint8 values: LLaVA-Mini's official ``load_video``) or ``"torch"`` (antialiased bicubic in
  float, rounded to uint8: vidqa's ``--preprocess fast``, within a grey level or two of PIL).

``VisionEncoder`` turns uint8 frames into raw CLIP patch features ``[T, 576, 1024]`` (the hidden
states of the selected layer, CLS dropped) in batches. ``build_projector`` makes the LLaVA
``mm_projector`` (``mlp2x_gelu``: Linear, GELU, Linear, keys ``0`` and ``2``).
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

ASPECTS = ("pad", "crop", "squash")
RESAMPLES = ("pil", "nearest", "torch")
# --preprocess: "official" (each method's official path, chosen by the method and the config) or
# "fast" (the same geometry, resized with torch's antialiased bicubic)
PREPROCESS_MODES = ("official", "fast")


@dataclass(frozen=True)
class Preprocess:
    size: int = 336
    aspect: str = "pad"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resample: str = "torch"

    def __post_init__(self):
        if self.aspect not in ASPECTS:
            raise ModelError(f"unknown aspect {self.aspect!r} (use {', '.join(ASPECTS)})")
        if self.resample not in RESAMPLES:
            raise ModelError(f"unknown resampling {self.resample!r} (use {', '.join(RESAMPLES)})")

    @classmethod
    def from_config(cls, cfg: dict, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> "Preprocess":
        """LLaVA's ``process_images``: ``image_aspect_ratio: pad`` pads, anything else goes through the
        CLIP processor as it is (shortest edge, centre crop); PIL bicubic on uint8 either way."""
        aspect = {"pad": "pad", "squash": "squash", "resize": "squash"}.get(cfg.get("image_aspect_ratio"), "crop")
        return cls(size=size, aspect=aspect, mean=tuple(mean), std=tuple(std), resample="pil")

    @property
    def pad_colour(self) -> tuple[int, int, int]:
        """``expand2square``'s background: ``int(x * 255)`` of the mean, per channel."""
        return tuple(int(x * 255) for x in self.mean)

    def key(self) -> dict:
        """What a cache must agree on (the store's settings)."""
        return {"size": self.size, "aspect": self.aspect, "resample": self.resample}


def fit(frame: np.ndarray, spec: Preprocess) -> np.ndarray:
    """One uint8 frame ``[H, W, 3]`` to the tower's uint8 ``[S, S, 3]`` (see the module docstring)."""
    S = spec.size
    h, w = frame.shape[:2]
    if (h, w) == (S, S):
        return frame
    if spec.resample == "torch":
        return _fit_torch(frame, spec)
    if spec.resample == "nearest":
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]
        if spec.aspect == "pad":
            x = torch.from_numpy(np.asarray(_expand2square(frame, spec.pad_colour))).permute(2, 0, 1)[None]
        elif spec.aspect == "crop":
            nh, nw = _shortest_edge(h, w, S)
            x = F.interpolate(x, size=(nh, nw))
            top, left = (nh - S) // 2, (nw - S) // 2
            return x[0, :, top:top + S, left:left + S].permute(1, 2, 0).contiguous().numpy()
        return F.interpolate(x, size=(S, S))[0].permute(1, 2, 0).contiguous().numpy()
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame))
    if spec.aspect == "pad":
        image = _expand2square(frame, spec.pad_colour)
    if spec.aspect == "crop":
        nh, nw = _shortest_edge(h, w, S)
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        top, left = (nh - S) // 2, (nw - S) // 2
        image = image.crop((left, top, left + S, top + S))
    elif image.size != (S, S):
        image = image.resize((S, S), Image.Resampling.BICUBIC)
    return np.asarray(image)


def _shortest_edge(h: int, w: int, S: int) -> tuple[int, int]:
    """The CLIP processor's resize: the shorter side to S, the longer to ``int(S * long / short)``."""
    if w <= h:
        return int(S * h / w), S
    return S, int(S * w / h)


def _expand2square(frame: np.ndarray, colour: tuple[int, int, int]):
    """LLaVA's ``expand2square``: the frame centred on a square of ``colour`` (a PIL image)."""
    from PIL import Image

    h, w = frame.shape[:2]
    image = Image.fromarray(np.ascontiguousarray(frame))
    if h == w:
        return image
    side = max(h, w)
    canvas = Image.new("RGB", (side, side), colour)
    canvas.paste(image, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return canvas


def _fit_torch(frame: np.ndarray | torch.Tensor, spec: Preprocess) -> np.ndarray:
    x = torch.as_tensor(frame)[None]
    return _fit_torch_batch(x, spec).round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


def _fit_torch_batch(pixels: torch.Tensor, spec: Preprocess) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` to float ``[T, 3, S, S]`` in 0..255 with antialiased bicubic."""
    x = pixels.permute(0, 3, 1, 2).float()
    _, _, h, w = x.shape
    S = spec.size
    if spec.aspect == "pad" and h != w:
        side = max(h, w)
        colour = torch.tensor(spec.pad_colour, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        canvas = colour.expand(x.shape[0], 3, side, side).clone()
        top, left = (side - h) // 2, (side - w) // 2
        canvas[:, :, top:top + h, left:left + w] = x
        x = canvas
    elif spec.aspect == "crop" and h != w:
        nh, nw = _shortest_edge(h, w, S)
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - S) // 2, (nw - S) // 2
        x = x[:, :, top:top + S, left:left + S]
    if x.shape[-2:] != (S, S):
        x = F.interpolate(x, size=(S, S), mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(0, 255)


def normalise(pixels: torch.Tensor, spec: Preprocess, dtype: torch.dtype) -> torch.Tensor:
    """Fitted frames (uint8 ``[T, S, S, 3]`` or float ``[T, 3, S, S]`` in 0..255) to CLIP's input
    ``[T, 3, S, S]``: rescale by 1/255, then ``(x - mean) / std`` per channel, in float32."""
    x = pixels.permute(0, 3, 1, 2) if pixels.dtype == torch.uint8 else pixels
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    # the CLIP processor rescales in float64 and casts to float32 (the same numbers to the last bit);
    # 1/255 in float32 would be a unit in the last place off for some levels
    x = (x.double() * (1 / 255)).float() if x.device.type == "cpu" else x.float() * (1 / 255)
    return ((x - mean) / std).to(dtype)


def preprocess(pixels: torch.Tensor, spec: Preprocess, dtype: torch.dtype) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` (any device) to normalised ``[T, 3, size, size]``.

    Frames already at the tower's size are only normalised. Otherwise ``resample="torch"`` fits the
    whole batch on its device; the official resamplers fit frame by frame on the CPU (PIL).
    """
    S = spec.size
    if tuple(pixels.shape[1:3]) != (S, S):
        if spec.resample == "torch":
            return normalise(_fit_torch_batch(pixels, spec), spec, dtype)
        fitted = np.stack([fit(f, spec) for f in pixels.cpu().numpy()])
        pixels = torch.from_numpy(fitted).to(pixels.device)
    return normalise(pixels, spec, dtype)


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
    def encode(self, frames: np.ndarray | torch.Tensor, batch_size: int = 32,
               spec: Preprocess | None = None) -> torch.Tensor:
        """uint8 frames ``[T, H, W, 3]`` to features ``[T, num_patches, hidden]`` on the tower's device.

        ``spec``: how to fit frames not yet at the tower's size (default: the config's, ``self.spec``).
        """
        spec = spec or self.spec
        pixels = torch.as_tensor(frames)
        out = []
        for i in range(0, pixels.shape[0], batch_size):
            chunk = pixels[i:i + batch_size]
            if tuple(chunk.shape[1:3]) != (spec.size, spec.size) and spec.resample != "torch":
                chunk = torch.from_numpy(np.stack([fit(f, spec) for f in chunk.cpu().numpy()]))  # on the CPU (PIL)
            chunk = chunk.to(self.device, non_blocking=True)
            out.append(self(preprocess(chunk, spec, self.dtype)))
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
