"""LLaVA-Mini building blocks: compressor, modality pre-fusion, per-frame caches, HD mode, checkpoint.

LLaVA-Mini (arXiv 2501.03895; public code ``ictnlp/LLaVA-Mini``; one public checkpoint,
``ICTNLP/llava-mini-llama-3.1-8b``) feeds the LLM ``C*C`` vision tokens per image (C = 1 in the
release) plus *fused* text. Everything here follows the public code, because the checkpoint follows
the code; this module is an independent implementation, not a copy. Facts taken from that code
(paths are inside ``ictnlp/LLaVA-Mini``):

Compressor (``llavamini/model/llavamini_arch.py``: ``Resampler``, ``get_abs_pos``, ``get_2d_sincos_pos_embed``)
    * Width 1024 and 8 heads are hard-coded there (``embed_dim=1024, num_heads=8``); here the width
      follows ``mm_hidden_size`` and the head count is a parameter defaulting to 8, so tiny test
      models can use other sizes. ``kv_proj`` is ``nn.Identity`` (kv_dim is None): no weights.
    * ``nn.MultiheadAttention(..., batch_first=True)``; the LayerNorms use PyTorch's default eps 1e-5.
    * ``pos_embed`` is a frozen ``nn.Parameter`` (so it *is* in the checkpoint) holding the MAE
      sin-cos table computed in numpy **float32**. Its first half encodes the **column** index (MAE's
      "emb_h" is fed the w coordinate of ``np.meshgrid(w, h)``) and its second half the row index;
      each half is ``[sin(p*w_0..), cos(p*w_0..)]`` with ``w_i = 10000**(-i/(D/4))``.
    * Q = ln_q(query) + pos_embed; K = ln_kv(x) + PE_k; V = ln_kv(x). PE_k is pos_embed resized
      only when ``C*C != L``: cast to float32, laid out as ``[1, D, C, C]`` (channels first, row-major
      tokens), ``F.interpolate(mode="bicubic", align_corners=False)`` to ``sqrt(L) x sqrt(L)``, back to
      ``[L, D]`` row-major, cast back to pos_embed's dtype and then to x's dtype. With C = 1 PE_k is
      one constant vector: zeros and ones in alternating quarters.

Pre-fusion (``encode_images_mini`` in ``llavamini_arch.py``)
    * ``prefusion_layer_num`` (default 4) transformers ``LlamaDecoderLayer``\\s built with the LLM's own
      config (transformers 4.43.1, pinned in ``pyproject.toml``); in 4.43 each layer's attention owns a
      ``LlamaRotaryEmbedding(config)`` that honours the llama3 rope scaling, i.e. the LLM's RoPE.
    * Input per image: ``[576 projected CLIP tokens, C*C projected compressed tokens, embeddings of the
      *whole* prompt]`` — the prompt text before ``<image>`` (system turn, headers) also goes after
      the vision tokens here.
    * Prompt ids ``<= 0`` (the ``<image>`` placeholder, -200, and also id 0, which in the Llama-3
      vocabulary is ``"!"``) embed as token 0 (``ids.clamp(min=0)``) and are *masked*. "Masked" means
      all of: (1) they are removed as **keys** (4-D causal mask built from a key padding mask, or the
      2-D mask for flash-attention); (2) they do **not count** for positions: positions are
      ``cumsum(visible) - 1`` with masked slots filled with 1, so the text after the placeholder
      continues without a gap (REFERENCE.md's "0, 1, 2, ..." holds only for visible tokens); (3) their
      outputs are replaced by their raw embeddings. Net effect: exactly as if the masked tokens were
      deleted from the pre-fusion input and re-inserted, unfused, afterwards.
    * Kept outputs: the C*C compressed positions (the LLM's vision tokens) and the text positions
      (the fused text). Causal attention makes the compressed tokens question independent.
    * LLM input (``prepare_inputs_labels_for_multimodal``): ``fused[:i] + vision tokens + fused[i+1:]``
      where i is the placeholder index, positions 0..L-1 (no position ids passed).

Video (same file, ``images.ndim == 6`` / list-of-5-D paths)
    * Each frame runs alone through CLIP, compressor and pre-fusion with the full prompt; the vision
      tokens are concatenated in time order; the fused text is the mean over frames, accumulated in
      float32 and cast back.

HD mode, ``resolution_ratio: 2`` (``split_image`` in ``llavamini/eval/run_llava_mini.py`` and
``llavamini/eval/video/*.py``; the ``parts > 1`` branch of ``encode_images_mini``)
    * Each image becomes r*r crops of ``(W//r) x (H//r)`` in row-major order followed by the whole
      image (r*r + 1 parts); each part is CLIP-preprocessed (so each crop is upscaled to 336) and
      encoded separately: ``[r*r + 1, 576, 1024]``.
    * The r*r crops' 24x24 grids are stitched into one ``24r x 24r`` grid (2304 tokens for r = 2).
      **Only this stitched HD grid is compressed** (pos_embed resized to 48x48); the whole-image
      view is not compressed.
    * Pre-fusion input: ``[stitched HD tokens (projected, 2304), whole-image tokens (projected, 576),
      C*C compressed, prompt]``, causal, positions as above.
    * The LLM still gets **C*C tokens per image** (the same count as standard mode); HD only changes
      what is compressed and what the pre-fusion sees. No HD checkpoint was released.

Prompt (``llavamini/conversation.py`` ``conv_llava_llama_3_1``; ``llavamini/mm_utils.py``
``tokenizer_image_token``; ``llavamini/eval/video/run_inference_video_qa.py``)
    * A **system message is always sent**: ``LLAVA_MINI_SYSTEM_PROMPT`` below (REFERENCE.md omits
      it). The user turn is ``"<image>\\n" + question``. ``apply_chat_template(...,
      add_generation_prompt=False)``: the prompt ends at the user's ``<|eot_id|>``.
    * The rendered text is split at ``<image>`` and each chunk is tokenized with special tokens on; the
      first chunk keeps both BOS (the tokenizer's and the template's); later chunks drop their first
      id (the tokenizer's BOS). One placeholder id -200 sits between the chunks.
    * ``conv_llava_llama_3_1.stop_token_ids = [128009, 128008, 128001]`` (the scripts actually stop on
      the generation config's EOS ids plus a "###" keyword).

Checkpoint (``LlavaMiniConfig(LlamaConfig)`` in ``language_model/llavamini_llama.py``; ``train.py``)
    * Multimodal config keys read: ``mm_vision_tower``, ``mm_projector_type`` (default ``linear``;
      ``mlp2x_gelu`` in ``scripts/llavamini/train.sh``), ``mm_hidden_size``,
      ``mm_vision_select_layer``, ``mm_vision_select_feature`` (default ``patch``),
      ``compressor_size`` (its presence is what builds the compressor), ``prefusion_layer_num``
      (default 4), ``resolution_ratio`` (default 1), ``image_aspect_ratio``, ``mm_use_im_start_end``,
      ``mm_patch_merge_type`` (``image_newline`` only when it contains ``unpad``),
      ``tokenizer_padding_side``, ``tokenizer_model_max_length``.
    * State-dict keys: ``lm_head.weight``, ``model.embed_tokens.weight``, ``model.layers.*``,
      ``model.norm.weight``, ``model.mm_projector.{0,2}.{weight,bias}``, ``model.compressor.{query,
      pos_embed, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight, attn.out_proj.bias,
      ln_q.weight, ln_q.bias, ln_kv.weight, ln_kv.bias}``, ``model.prefusion_layers.{i}.*`` with
      transformers' Llama layer names. RoPE ``inv_freq`` buffers are not persistent. The training
      code saves the full state dict, so ``model.vision_tower.vision_tower.vision_model.*`` keys could
      appear in a checkpoint; REFERENCE.md says the release has none. The loader here tolerates and
      reports that prefix instead of failing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidqa.errors import ContextError, ModelError, VidqaError
from vidqa.vision import build_projector  # noqa: F401 (part of this module's API)

# ----------------------------------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------------------------------

IMAGE_TOKEN_INDEX = -200  # the placeholder id the official tokenization inserts for "<image>"
IMAGE_TOKEN = "<image>"
LLAVA_MINI_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)
# Stop tokens of the Llama-3.1 release, by string and by their ids in the Llama-3.1 vocabulary.
STOP_TOKENS: tuple[tuple[str, int], ...] = (("<|eot_id|>", 128009), ("<|eom_id|>", 128008), ("<|end_of_text|>", 128001))

# Config keys that belong to the multimodal wrapper, not to the Llama LLM.
MM_CONFIG_KEYS = frozenset({
    "mm_vision_tower", "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer",
    "mm_vision_select_feature", "mm_patch_merge_type", "mm_use_im_start_end", "mm_use_im_patch_token",
    "mm_projector_lr", "use_mm_proj", "compressor_size", "prefusion_layer_num", "resolution_ratio",
    "image_aspect_ratio", "image_grid_pinpoints", "tokenizer_padding_side", "tokenizer_model_max_length",
    "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "unfreeze_mm_vision_tower", "s2", "s2_scales",
})
# Keys that are bookkeeping of the saving library, never LlamaConfig arguments.
_NON_LLM_KEYS = frozenset({"model_type", "architectures", "auto_map", "_name_or_path", "transformers_version"})


def _isqrt_exact(n: int, what: str) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{what} must be a square number of tokens, got {n}")
    return side


# ----------------------------------------------------------------------------------------------------
# 1. Positional table and its resize
# ----------------------------------------------------------------------------------------------------


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> Tensor:
    """MAE-style frozen 2-D sin-cos table ``[grid_size**2, embed_dim]`` (float32), official ordering.

    Tokens are row-major (index = row * grid_size + col). The first half of the channels encodes the
    *column* index and the second half the *row* index; each half is ``[sin(p * w), cos(p * w)]``
    with ``w_i = 1 / 10000**(i / (embed_dim / 4))``. Computed in numpy float32 like the official code,
    so a recomputed table matches the stored one bit for bit before its cast to bf16.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"embed_dim must be divisible by 4, got {embed_dim}")
    quarter = embed_dim // 4
    omega = np.float32(1.0) / np.power(np.float32(10000.0), np.arange(quarter, dtype=np.float32) / np.float32(quarter))
    coords = np.arange(grid_size, dtype=np.float32)
    cols = np.tile(coords, grid_size)  # varies fastest: column index of each row-major token
    rows = np.repeat(coords, grid_size)

    def half(pos: np.ndarray) -> np.ndarray:
        angles = pos[:, None] * omega[None, :]  # float32 outer product
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    table = np.concatenate([half(cols), half(rows)], axis=1).astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(table))


def resize_pos_embed(pos_embed: Tensor, num_tokens: int) -> Tensor:
    """Resize a square ``[C*C, D]`` table to ``[num_tokens, D]`` (a square grid), as the official code does.

    Bicubic, ``align_corners=False``, computed in float32 on the channels-first ``[1, D, C, C]`` layout,
    then cast back to ``pos_embed.dtype``. The table is returned unchanged when the sizes already match.
    """
    src = _isqrt_exact(pos_embed.shape[0], "pos_embed")
    tgt = _isqrt_exact(num_tokens, "the feature grid")
    if src == tgt:
        return pos_embed
    dim = pos_embed.shape[1]
    grid = pos_embed.float().reshape(1, src, src, dim).permute(0, 3, 1, 2)
    out = F.interpolate(grid, size=(tgt, tgt), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(tgt * tgt, dim).to(pos_embed.dtype)


# ----------------------------------------------------------------------------------------------------
# 2. Compressor
# ----------------------------------------------------------------------------------------------------


class Compressor(nn.Module):
    """One cross-attention from ``C*C`` learned queries to the raw CLIP patch features.

    State-dict names equal the checkpoint's under ``model.compressor.``: ``query``, ``pos_embed``,
    ``attn.{in_proj_weight,in_proj_bias,out_proj.weight,out_proj.bias}``, ``ln_q.*``, ``ln_kv.*``.
    The official module fixes ``embed_dim=1024`` (CLIP-L) and ``num_heads=8``; here ``embed_dim`` is
    the vision width (``mm_hidden_size``) and ``num_heads`` defaults to 8.
    """

    def __init__(self, grid_size: int, embed_dim: int, num_heads: int = 8, eps: float = 1e-5):
        super().__init__()
        self.grid_size = grid_size
        self.num_queries = grid_size * grid_size
        self.embed_dim = embed_dim
        self.query = nn.Parameter(torch.empty(self.num_queries, embed_dim).normal_(std=0.02))
        # Frozen and saved with the weights: a persistent buffer gives the same state-dict key as the
        # official frozen Parameter and follows .to(dtype) the same way.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, grid_size), persistent=True)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(embed_dim, eps=eps)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: raw CLIP patch features ``[B, L, D]`` (L a square). Returns ``[B, C*C, D]``."""
        batch, length, _ = x.shape
        # The key positions: the C x C table stretched over the sqrt(L) x sqrt(L) feature grid.
        pos_k = resize_pos_embed(self.pos_embed, length).to(x.dtype)
        kv = self.ln_kv(x)
        q = (self.ln_q(self.query) + self.pos_embed.to(x.dtype)).unsqueeze(0).expand(batch, -1, -1)
        # need_weights=True keeps PyTorch on the same (non-SDPA) kernel path as the official call, which
        # makes bf16 outputs bit-identical to it; with C*C queries the extra weights cost nothing.
        out, _ = self.attn(q, kv + pos_k.unsqueeze(0), kv, need_weights=True)
        return out


def build_prefusion_layers(config: Any, num_layers: int) -> nn.ModuleList:
    """``num_layers`` transformers ``LlamaDecoderLayer``\\s built with the LLM's own config.

    Pass the LLM's config object itself (``llm.config``) so the layers share its attention backend.
    Their ``layer_idx`` runs 0..n-1: they index their own cache, separate from the LLM's.
    """
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return nn.ModuleList([LlamaDecoderLayer(config, layer_idx=i) for i in range(num_layers)])


# ----------------------------------------------------------------------------------------------------
# 3. Per-frame features (cache a), HD stitching
# ----------------------------------------------------------------------------------------------------


def hd_crop_boxes(width: int, height: int, ratio: int) -> list[tuple[int, int, int, int]]:
    """PIL-style ``(left, upper, right, lower)`` boxes of the HD parts: ratio*ratio crops, then the whole.

    Crops are ``(width // ratio) x (height // ratio)``, row-major (top-left first), as the official
    ``split_image``; the last box is the whole image. With ``ratio == 1`` only the whole image.
    """
    if ratio == 1:
        return [(0, 0, width, height)]
    bw, bh = width // ratio, height // ratio
    boxes = [(j * bw, i * bh, (j + 1) * bw, (i + 1) * bh) for i in range(ratio) for j in range(ratio)]
    return boxes + [(0, 0, width, height)]


def stitch_hd_crops(crops: Tensor, ratio: int) -> Tensor:
    """Stitch per-crop token grids ``[B, r*r, g*g, D]`` (crops row-major) into one ``[B, (r*g)**2, D]`` grid.

    Token ``(R, C)`` of the stitched grid (row-major) comes from crop ``(R // g) * r + C // g`` at its
    local ``(R % g, C % g)``: the crops tile the image as they were cut.
    """
    batch, parts, length, dim = crops.shape
    if parts != ratio * ratio:
        raise ValueError(f"expected {ratio * ratio} crops, got {parts}")
    g = _isqrt_exact(length, "a crop")
    grid = crops.reshape(batch, ratio, ratio, g, g, dim)  # [B, crop_row, crop_col, row, col, D]
    grid = grid.permute(0, 1, 3, 2, 4, 5)  # [B, crop_row, row, crop_col, col, D]
    return grid.reshape(batch, ratio * g * ratio * g, dim)


@dataclass
class FrameFeatures:
    """Question-independent pre-fusion prefix of each frame; also *cache (a)*.

    ``vision``: projected CLIP tokens ``[F, Nv, H]`` (Nv = 576; HD: stitched crops then whole image).
    ``compressed``: projected compressor output ``[F, C*C, H]`` (before pre-fusion).
    """

    vision: Tensor
    compressed: Tensor

    @property
    def num_frames(self) -> int:
        return self.vision.shape[0]

    @property
    def num_prefix(self) -> int:
        """Positions the frame takes before the prompt in the pre-fusion."""
        return self.vision.shape[1] + self.compressed.shape[1]

    def prefix(self) -> Tensor:
        return torch.cat([self.vision, self.compressed], dim=1)

    def select(self, index: slice | Tensor | Sequence[int]) -> "FrameFeatures":
        return FrameFeatures(self.vision[index], self.compressed[index])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.vision, self.compressed))


def encode_frames(clip_features: Tensor, compressor: Compressor, projector: nn.Module, resolution_ratio: int = 1) -> FrameFeatures:
    """Raw CLIP patch features to the per-frame pre-fusion prefix (cache a).

    ``clip_features``: ``[F, L, Dv]`` or ``[F, 1, L, Dv]`` in standard mode; ``[F, r*r + 1, L, Dv]`` in
    HD mode (crops row-major, whole image last). Standard mode compresses the 576 tokens; HD mode
    compresses only the stitched crop grid and keeps the whole image as extra pre-fusion context.
    """
    if clip_features.dim() == 3:
        clip_features = clip_features.unsqueeze(1)
    frames, parts, _, _ = clip_features.shape
    ratio = resolution_ratio
    if ratio == 1:
        if parts != 1:
            raise ValueError(f"resolution_ratio 1 expects one part per frame, got {parts}")
        raw = clip_features[:, 0]
        return FrameFeatures(vision=projector(raw), compressed=projector(compressor(raw)))
    if parts != ratio * ratio + 1:
        raise ValueError(f"resolution_ratio {ratio} expects {ratio * ratio + 1} parts per frame, got {parts}")
    hd_raw = stitch_hd_crops(clip_features[:, : ratio * ratio], ratio)
    whole = clip_features[:, -1]
    vision = torch.cat([projector(hd_raw), projector(whole)], dim=1)
    return FrameFeatures(vision=vision, compressed=projector(compressor(hd_raw)))


# ----------------------------------------------------------------------------------------------------
# 4. Pre-fusion
# ----------------------------------------------------------------------------------------------------


def prompt_embeddings(embed_tokens: nn.Module, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Embed the prompt ids as the official pre-fusion does. Returns ``(embeds [T, H], visible [T])``.

    Ids ``<= 0`` (the -200 placeholder, and id 0) embed as token 0 and are not visible.
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    return embed_tokens(ids.clamp(min=0)), ids > 0


def prefusion_positions(num_prefix: int, text_visible: Tensor) -> Tensor:
    """Position ids ``[num_prefix + T]``: visible tokens count 0, 1, 2, ...; masked slots get 1.

    The masked slots' value never matters (they are no key for anyone and their outputs are
    replaced), but 1 is what the official code puts there.
    """
    visible = torch.cat([torch.ones(num_prefix, dtype=torch.bool, device=text_visible.device), text_visible])
    positions = visible.long().cumsum(0) - 1
    return positions.masked_fill(~visible, 1)


def _additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean ``[Q, K]`` (True = may attend) to the ``[1, 1, Q, K]`` additive float mask that both eager
    and SDPA attention in transformers accept."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def _run_layers(layers: nn.ModuleList, rotary_emb: nn.Module, hidden: Tensor, positions: Tensor, mask: Tensor, cache: Any = None) -> Tensor:
    """Run the decoder layers with the LLM's RoPE; positions ``[L]`` are shared by every frame of the
    batch, or ``[F, L]`` give each frame its own (batched training)."""
    position_ids = positions if positions.dim() == 2 else positions.unsqueeze(0)
    cos_sin = rotary_emb(hidden, position_ids)
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                       use_cache=cache is not None, position_embeddings=cos_sin)
    return hidden


@dataclass
class FusedFrames:
    """Pre-fusion outputs per frame: ``vision_tokens [F, C*C, H]`` and ``text [F, T, H]``."""

    vision_tokens: Tensor
    text: Tensor


def prefusion_full(layers: nn.ModuleList, rotary_emb: nn.Module, frames: FrameFeatures, text_embeds: Tensor, text_visible: Tensor) -> FusedFrames:
    """The official single pass: ``[prefix, prompt]`` per frame through the pre-fusion layers, frames batched.

    ``text_embeds [T, H]`` and ``text_visible [T]`` come from :func:`prompt_embeddings` on the whole
    prompt (placeholder included). Masked prompt tokens are no keys, take no position, and keep their
    raw embeddings in the output.
    """
    n_frames, n_prefix, n_text = frames.num_frames, frames.num_prefix, text_embeds.shape[0]
    n_comp = frames.compressed.shape[1]
    x = torch.cat([frames.prefix(), text_embeds.to(frames.vision.dtype).expand(n_frames, -1, -1)], dim=1)
    total = n_prefix + n_text
    key_visible = torch.cat([torch.ones(n_prefix, dtype=torch.bool, device=x.device), text_visible.to(x.device)])
    causal = torch.ones(total, total, dtype=torch.bool, device=x.device).tril()
    mask = _additive_mask(causal & key_visible[None, :], x.dtype)
    out = _run_layers(layers, rotary_emb, x, prefusion_positions(n_prefix, text_visible.to(x.device)), mask)
    fused = torch.where(text_visible.to(x.device)[None, :, None], out[:, n_prefix:], x[:, n_prefix:])
    return FusedFrames(vision_tokens=out[:, n_prefix - n_comp : n_prefix], text=fused)


@dataclass
class PrefusionKV:
    """*Cache (b)*: the pre-fusion layers' keys/values over each frame's prefix, plus its vision tokens.

    ``keys[i]`` / ``values[i]``: ``[F, kv_heads, num_prefix, head_dim]`` for layer i, keys already
    rotated by RoPE at positions 0..num_prefix-1. ``vision_tokens``: the fused compressed tokens
    ``[F, C*C, H]`` the LLM reads (question independent).
    """

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    vision_tokens: Tensor
    num_prefix: int

    @property
    def num_frames(self) -> int:
        return self.vision_tokens.shape[0]

    def select(self, index: slice | Tensor | Sequence[int]) -> "PrefusionKV":
        return PrefusionKV(tuple(k[index] for k in self.keys), tuple(v[index] for v in self.values),
                           self.vision_tokens[index], self.num_prefix)

    def nbytes(self) -> int:
        tensors = (*self.keys, *self.values, self.vision_tokens)
        return sum(t.numel() * t.element_size() for t in tensors)


def prefusion_prefix_kv(layers: nn.ModuleList, rotary_emb: nn.Module, frames: FrameFeatures) -> PrefusionKV:
    """Run only the frames' prefix through the pre-fusion and keep its per-layer K/V (cache b).

    Valid because attention is causal and the prefix is never masked: no prompt token can change the
    prefix's hidden states, and the prompt's positions start right after it.
    """
    from transformers import DynamicCache

    from vidqa import fast

    x = frames.prefix()
    n_prefix = frames.num_prefix
    n_comp = frames.compressed.shape[1]
    if fast.supports_layers(layers):  # is_causal flash attention and fused GEMMs; same result
        out, keys, values = fast.causal_prefix(layers, rotary_emb, x)
        # a copy: a view would keep the whole [F, prefix, H] output alive as long as the cache lives
        return PrefusionKV(keys, values, out[:, n_prefix - n_comp:].clone(), n_prefix)
    causal = torch.ones(n_prefix, n_prefix, dtype=torch.bool, device=x.device).tril()
    cache = DynamicCache()
    positions = torch.arange(n_prefix, device=x.device)
    out = _run_layers(layers, rotary_emb, x, positions, _additive_mask(causal, x.dtype), cache)
    keys = tuple(cache.layers[i].keys for i in range(len(layers)))
    values = tuple(cache.layers[i].values for i in range(len(layers)))
    return PrefusionKV(keys, values, out[:, n_prefix - n_comp :].clone(), n_prefix)


def prefusion_text_from_kv(layers: nn.ModuleList, rotary_emb: nn.Module, kv: PrefusionKV, text_embeds: Tensor, text_visible: Tensor) -> Tensor:
    """Fused text ``[F, T, H]`` of one prompt against cached prefix K/V: only T tokens go through the layers.

    The stored K/V are not modified: a fresh ``DynamicCache`` is seeded with them per call.
    """
    from transformers import DynamicCache

    device = kv.vision_tokens.device
    text_visible = text_visible.to(device)
    n_prefix, n_text = kv.num_prefix, text_embeds.shape[0]
    cache = DynamicCache()
    for i, (k, v) in enumerate(zip(kv.keys, kv.values)):
        cache.update(k, v, i)
    hidden = text_embeds.to(kv.vision_tokens.dtype).expand(kv.num_frames, -1, -1)
    # Queries are the prompt tokens; keys are [whole prefix (always visible), prompt (causal, visible only)].
    causal = torch.ones(n_text, n_text, dtype=torch.bool, device=device).tril() & text_visible[None, :]
    allowed = torch.cat([torch.ones(n_text, n_prefix, dtype=torch.bool, device=device), causal], dim=1)
    positions = prefusion_positions(n_prefix, text_visible)[n_prefix:]
    out = _run_layers(layers, rotary_emb, hidden, positions, _additive_mask(allowed, hidden.dtype), cache)
    return torch.where(text_visible[None, :, None], out, hidden)


def question_via_projected(layers: nn.ModuleList, rotary_emb: nn.Module, embed_tokens: nn.Module, cache: FrameFeatures, ids: Tensor) -> FusedFrames:
    """Cache (a): per question, re-run the full pre-fusion over ``[prefix, prompt]`` of every frame."""
    embeds, visible = prompt_embeddings(embed_tokens, torch.as_tensor(ids, device=cache.vision.device))
    return prefusion_full(layers, rotary_emb, cache, embeds, visible)


def question_via_kv(layers: nn.ModuleList, rotary_emb: nn.Module, embed_tokens: nn.Module, cache: PrefusionKV, ids: Tensor) -> FusedFrames:
    """Cache (b): per question, run only the prompt tokens against the stored prefix K/V."""
    embeds, visible = prompt_embeddings(embed_tokens, torch.as_tensor(ids, device=cache.vision_tokens.device))
    return FusedFrames(cache.vision_tokens, prefusion_text_from_kv(layers, rotary_emb, cache, embeds, visible))


def fuse_video(fused: FusedFrames) -> tuple[Tensor, Tensor]:
    """Video-level fusion: ``(vision [F*C*C, H] in time order, text [T, H] = mean over frames)``.

    The mean is taken in float32 and cast back, as the official code does.
    """
    vision = fused.vision_tokens.reshape(-1, fused.vision_tokens.shape[-1])
    text = fused.text.float().mean(dim=0).to(fused.text.dtype)
    return vision, text


def assemble_llm_inputs(text: Tensor, ids: Tensor, vision: Tensor) -> Tensor:
    """LLM input embeddings ``[fused text before <image>, vision tokens, fused text after]``.

    ``text [T, H]`` is the fused text over the whole prompt ``ids`` (placeholder included, exactly one);
    the placeholder's own slot is dropped. The LLM then uses positions 0..L-1.
    """
    ids = torch.as_tensor(ids)
    where = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
    if len(where) != 1:
        raise ValueError(f"the prompt must hold exactly one {IMAGE_TOKEN} placeholder, found {len(where)}")
    i = where[0]
    return torch.cat([text[:i], vision.to(text.dtype), text[i + 1 :]], dim=0)


# ----------------------------------------------------------------------------------------------------
# 5. Config, prompt, checkpoint
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlavaMiniOptions:
    """The multimodal settings of a LLaVA-Mini config.json, with the official code's defaults."""

    compressor_size: int
    prefusion_layer_num: int = 4
    resolution_ratio: int = 1
    mm_hidden_size: int = 1024
    mm_projector_type: str = "linear"
    mm_vision_tower: str | None = None
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    image_aspect_ratio: str | None = None
    mm_use_im_start_end: bool = False
    compressor_heads: int = 8  # not a config key: the official code hard-codes 8

    @property
    def tokens_per_frame(self) -> int:
        return self.compressor_size * self.compressor_size

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "LlavaMiniOptions":
        if "compressor_size" not in cfg:
            raise ModelError("config.json has no compressor_size: not a LLaVA-Mini checkpoint")
        if cfg.get("mm_use_im_start_end"):
            raise ModelError("mm_use_im_start_end is true in config.json; LLaVA-Mini with image start/end tokens is not supported")
        if "mm_vision_select_layer" not in cfg or "mm_hidden_size" not in cfg:
            raise ModelError("config.json lacks mm_vision_select_layer or mm_hidden_size")
        return cls(
            compressor_size=int(cfg["compressor_size"]),
            prefusion_layer_num=int(cfg.get("prefusion_layer_num", 4)),
            resolution_ratio=int(cfg.get("resolution_ratio", 1) or 1),
            mm_hidden_size=int(cfg["mm_hidden_size"]),
            mm_projector_type=str(cfg.get("mm_projector_type", "linear")),
            mm_vision_tower=cfg.get("mm_vision_tower"),
            mm_vision_select_layer=int(cfg["mm_vision_select_layer"]),
            mm_vision_select_feature=str(cfg.get("mm_vision_select_feature", "patch")),
            image_aspect_ratio=cfg.get("image_aspect_ratio"),
            mm_use_im_start_end=bool(cfg.get("mm_use_im_start_end", False)),
        )


def llm_config_from_llava_mini(config_dict: dict[str, Any]):
    """A transformers ``LlamaConfig`` for the LLM of a LLaVA-Mini config.json, llama3 RoPE kept.

    The release's config was written by transformers 4.43: ``rope_theta`` plus an old-style
    ``rope_scaling`` (``rope_type: llama3`` or the older ``type``) and no ``rope_parameters``.
    They are merged explicitly into transformers 5's ``rope_parameters``; multimodal keys and the
    unknown ``model_type`` are left out so the result is a plain Llama config.
    """
    from transformers import LlamaConfig

    clean = {k: v for k, v in config_dict.items() if k not in MM_CONFIG_KEYS and k not in _NON_LLM_KEYS}
    rope_theta = clean.pop("rope_theta", None)
    rope_scaling = clean.pop("rope_scaling", None)
    rope = dict(clean.pop("rope_parameters", None) or {})
    if not rope:
        if rope_scaling:
            rope = dict(rope_scaling)
            if "rope_type" not in rope and "type" in rope:  # pre-4.43 spelling
                rope["rope_type"] = rope.pop("type")
        else:
            rope = {"rope_type": "default"}
    if rope_theta is not None:
        rope.setdefault("rope_theta", float(rope_theta))
    rope.setdefault("rope_theta", 10000.0)
    dtype = clean.pop("torch_dtype", None) or clean.pop("dtype", None)
    config = LlamaConfig(rope_parameters=rope, **clean)
    if dtype is not None:
        config.dtype = dtype
    if config.rope_parameters.get("rope_type") != rope.get("rope_type"):
        raise ModelError(f"rope scaling was not kept: {rope} became {config.rope_parameters}")
    return config


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Stop ids ``[<|eot_id|>, <|eom_id|>, <|end_of_text|>]`` looked up by string; Llama-3.1 ids as fallback."""
    ids: list[int] = []
    for token, default in STOP_TOKENS:
        found = tokenizer.convert_tokens_to_ids(token)
        unk = getattr(tokenizer, "unk_token_id", None)
        ids.append(found if isinstance(found, int) and found != unk else default)
    return ids


@dataclass(frozen=True)
class PromptIds:
    """A LLaVA-Mini prompt split at ``<image>``: ``before`` (starts with the double BOS) and ``after``."""

    before: list[int]
    after: list[int]
    stop_ids: list[int]

    @property
    def ids(self) -> list[int]:
        """The whole prompt with the -200 placeholder, as the pre-fusion sees it."""
        return [*self.before, IMAGE_TOKEN_INDEX, *self.after]


def build_prompt_ids(tokenizer: Any, question: str, system: str | None = LLAVA_MINI_SYSTEM_PROMPT,
                     history: Sequence[tuple[str, str]] = ()) -> PromptIds:
    """Token ids of the official inference prompt around the ``<image>`` placeholder.

    Messages ``[system, user "<image>\\n{question}"]`` through the checkpoint's chat template without
    the generation prompt; the text is split at ``<image>``; each chunk is tokenized with special
    tokens; the first keeps its BOS (hence a double BOS) and the second loses its first id.
    ``history``: earlier (question, answer) turns; the image sits in the first user turn.
    """
    if IMAGE_TOKEN in question or any(IMAGE_TOKEN in q + a for q, a in history):
        raise VidqaError(f"the question may not contain the literal {IMAGE_TOKEN} placeholder")
    turns = [*history, (question, None)]
    messages = [{"role": "system", "content": system}] if system is not None else []
    for i, (q, a) in enumerate(turns):
        messages.append({"role": "user", "content": f"{IMAGE_TOKEN}\n{q}" if i == 0 else q})
        if a is not None:
            messages.append({"role": "assistant", "content": a})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    chunks = text.split(IMAGE_TOKEN)
    if len(chunks) != 2:
        raise ModelError(f"the chat template kept {len(chunks) - 1} {IMAGE_TOKEN} placeholders instead of 1")
    first = list(tokenizer(chunks[0]).input_ids)
    second = list(tokenizer(chunks[1]).input_ids)
    starts_with_bos = tokenizer.bos_token_id is not None and first[:1] == [tokenizer.bos_token_id]
    return PromptIds(before=first, after=second[1:] if starts_with_bos else second, stop_ids=stop_token_ids(tokenizer))


class CheckpointKeyError(ModelError):
    """The checkpoint's keys do not match the LLaVA-Mini layout; ``missing`` and ``unexpected`` list them."""

    def __init__(self, path: Path, missing: list[str], unexpected: list[str]):
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... (+{len(keys) - 8} more)" if len(keys) > 8 else "") if keys else "none"

        super().__init__(f"{path}: {len(missing)} missing keys ({show(missing)}); "
                         f"{len(unexpected)} unexpected keys ({show(unexpected)})")
        self.missing = missing
        self.unexpected = unexpected


@dataclass
class LlavaMiniModules:
    """Everything of a LLaVA-Mini checkpoint except the CLIP tower (loaded from ``options.mm_vision_tower``)."""

    llm: nn.Module
    projector: nn.Module
    compressor: Compressor
    prefusion_layers: nn.ModuleList
    options: LlavaMiniOptions
    config: dict[str, Any]
    ignored_keys: list[str] = field(default_factory=list)  # model.vision_tower.* keys, if any

    @property
    def rotary_emb(self) -> nn.Module:
        return self.llm.model.rotary_emb

    @property
    def embed_tokens(self) -> nn.Module:
        return self.llm.get_input_embeddings()


# Checkpoint prefixes of the parts; the LLM's keys are its own (model.embed_tokens, model.layers, ...).
_PROJECTOR = "model.mm_projector."
_COMPRESSOR = "model.compressor."
_PREFUSION = "model.prefusion_layers."
_VISION_TOWER = "model.vision_tower."


def _weight_map(path: Path) -> dict[str, str]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return dict(json.loads(index.read_text())["weight_map"])
    single = path / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return {k: single.name for k in f.keys()}
    raise ModelError(f"{path} has neither model.safetensors.index.json nor model.safetensors")


def load_llava_mini_state(path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                          compressor_heads: int = 8) -> LlavaMiniModules:
    """Build the LLM, projector, compressor and pre-fusion layers and fill them key for key.

    Reads ``config.json``, the safetensors index and its shards. Modules are created on the meta device
    and the checkpoint tensors are assigned, so nothing is initialised twice. Raises
    :class:`CheckpointKeyError` listing missing and unexpected keys; ``model.vision_tower.*`` keys are
    tolerated and listed in ``ignored_keys``. ``dtype`` None keeps the stored dtypes.
    ``compressor_heads`` is not in the checkpoint; the official code hard-codes 8.
    """
    from safetensors import safe_open
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    options = dataclasses.replace(LlavaMiniOptions.from_config(cfg), compressor_heads=compressor_heads)
    llm_config = llm_config_from_llava_mini(cfg)

    with torch.device("meta"):
        llm = LlamaForCausalLM(llm_config)
        projector = build_projector(options.mm_projector_type, options.mm_hidden_size, llm_config.hidden_size)
        compressor = Compressor(options.compressor_size, options.mm_hidden_size, options.compressor_heads)
        prefusion = build_prefusion_layers(llm.config, options.prefusion_layer_num)
    parts: list[tuple[str, nn.Module]] = [(_PROJECTOR, projector), (_COMPRESSOR, compressor), (_PREFUSION, prefusion), ("", llm)]
    expected = {prefix + k: v.shape for prefix, module in parts for k, v in module.state_dict().items()}
    if llm_config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)

    weight_map = _weight_map(path)
    ignored = sorted(k for k in weight_map if k.startswith(_VISION_TOWER))
    present = {k for k in weight_map if not k.startswith(_VISION_TOWER)}
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected))
    if missing or unexpected:
        raise CheckpointKeyError(path, missing, unexpected)

    by_part: dict[str, dict[str, Tensor]] = {prefix: {} for prefix, _ in parts}
    for shard in sorted(set(weight_map[k] for k in present)):
        with safe_open(str(path / shard), framework="pt", device=str(device)) as f:
            for key in f.keys():
                if key not in present:
                    continue
                tensor = f.get_tensor(key)
                if tuple(tensor.shape) != tuple(expected[key]):
                    raise ModelError(f"{path}: {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key])}")
                if dtype is not None and tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                prefix = next(p for p, _ in parts if key.startswith(p))
                by_part[prefix][key[len(prefix):]] = tensor
    for prefix, module in parts:
        module.load_state_dict(by_part[prefix], strict=False, assign=True)
    if llm_config.tie_word_embeddings:
        llm.tie_weights()
    # RoPE tables are not in the checkpoint: rebuild them in float32 on the target device.
    llm.model.rotary_emb = LlamaRotaryEmbedding(config=llm.config).to(device)
    left = [n for m in (llm, projector, compressor, prefusion) for n, t in [*m.named_parameters(), *m.named_buffers()] if t.is_meta]
    if left:
        raise ModelError(f"{path}: tensors left uninitialised after loading: {', '.join(left[:8])}")
    for module in (llm, projector, compressor, prefusion):
        module.eval()
    return LlavaMiniModules(llm, projector, compressor, prefusion, options, cfg, ignored)


# ----------------------------------------------------------------------------------------------------
# Tiny checkpoint in the official layout (for tests and offline experiments)
# ----------------------------------------------------------------------------------------------------

_LLAMA31_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                     "<|eom_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>", "<|python_tag|>")

# A Llama-3.1-style chat template (system block with the knowledge/today dates, trimmed contents,
# ``<|eot_id|>`` after each turn, optional assistant header). Written for the tiny tokenizer; real
# checkpoints bring their own template in tokenizer_config.json.
TINY_LLAMA31_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def _byte_level_alphabet() -> list[str]:
    """GPT-2 byte-to-unicode characters in byte order, so id 0 is ``"!"`` as in the Llama-3 vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    order = printable + [b for b in range(256) if b not in printable]
    return [chars[b] for b in order]


def write_tiny_tokenizer(directory: str | Path) -> dict[str, int]:
    """A byte-level ``PreTrainedTokenizerFast`` with Llama-3.1 special tokens and chat template.

    Written like the release: ``tokenizer.json`` plus a ``tokenizer_config.json`` that names
    ``PreTrainedTokenizerFast`` and holds the chat template. Returns the special tokens' ids.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {ch: i for i, ch in enumerate(_byte_level_alphabet())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in _LLAMA31_SPECIALS])
    ids = {s: tok.token_to_id(s) for s in _LLAMA31_SPECIALS}
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, ids[bos])])
    tok.save(str(directory / "tokenizer.json"))
    added = {str(i): {"content": s, "special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
             for s, i in ids.items()}
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": added, "bos_token": bos, "eos_token": "<|eot_id|>", "chat_template": TINY_LLAMA31_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True, "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072, "tokenizer_class": "PreTrainedTokenizerFast",
    }, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps({"bos_token": bos, "eos_token": "<|eot_id|>"}, indent=2))
    return ids


def write_tiny_official_checkpoint(
    directory: str | Path,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    num_key_value_heads: int = 1,
    clip_hidden_size: int = 32,
    clip_layers: int = 2,
    clip_heads: int = 2,
    clip_image_size: int = 336,
    clip_patch_size: int = 14,
    compressor_size: int = 1,
    prefusion_layer_num: int = 2,
    resolution_ratio: int = 1,
    num_shards: int = 4,
    seed: int = 0,
) -> Path:
    """Write a tiny random LLaVA-Mini checkpoint with the official key names, relative shapes and files.

    ``directory`` gets config.json (the release's keys, old-style llama3 ``rope_scaling``, no
    ``rope_parameters``), ``num_shards`` safetensors shards plus ``model.safetensors.index.json``, and the
    tokenizer files; the CLIP vision tower goes to ``directory/clip-vision`` (keys ``vision_model.*``),
    whose path is ``mm_vision_tower``. Every tensor is random (norm weights near 1) except
    ``pos_embed``, the sin-cos table. The compressor's head count is not stored anywhere (it does
    not change any shape); the loader uses the official 8, so ``clip_hidden_size`` must divide by 8.
    """
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    special = write_tiny_tokenizer(directory)
    vocab_size = 256 + len(_LLAMA31_SPECIALS)
    vocab_size += -vocab_size % 16  # embedding rows beyond the tokenizer, as real checkpoints often have

    torch.manual_seed(seed)
    clip_dir = directory / "clip-vision"
    clip_config = CLIPVisionConfig(hidden_size=clip_hidden_size, intermediate_size=2 * clip_hidden_size,
                                   num_hidden_layers=clip_layers, num_attention_heads=clip_heads,
                                   image_size=clip_image_size, patch_size=clip_patch_size, projection_dim=clip_hidden_size)
    # transformers 5 names the tower's tensors without the "vision_model." prefix that the hub file
    # (written by transformers 4) carries; write them with the prefix, as the hub has them.
    clip_dir.mkdir(parents=True, exist_ok=True)
    clip_config.to_json_file(str(clip_dir / "config.json"))
    tower_state = {f"vision_model.{k}": v.contiguous() for k, v in CLIPVisionModel(clip_config).state_dict().items()}
    save_file(tower_state, str(clip_dir / "model.safetensors"), metadata={"format": "pt"})
    (clip_dir / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": clip_image_size, "width": clip_image_size}, "do_center_crop": True, "do_convert_rgb": True,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "CLIPImageProcessor", "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": clip_image_size},
    }, indent=2))

    llm_keys = dict(
        attention_bias=False, attention_dropout=0.0, bos_token_id=special["<|begin_of_text|>"],
        eos_token_id=[special["<|end_of_text|>"], special["<|eom_id|>"], special["<|eot_id|>"]], hidden_act="silu",
        hidden_size=hidden_size, initializer_range=0.02, intermediate_size=intermediate_size,
        max_position_embeddings=131072, mlp_bias=False, num_attention_heads=num_attention_heads,
        num_hidden_layers=num_hidden_layers, num_key_value_heads=num_key_value_heads, pretraining_tp=1,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False, use_cache=True, vocab_size=vocab_size,
        rope_scaling={"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    )
    config = {
        "_name_or_path": str(directory), "architectures": ["LlavaMiniLlamaForCausalLM"], "model_type": "llava_mini_llama",
        **llm_keys,
        "compressor_size": compressor_size, "freeze_mm_mlp_adapter": False, "image_aspect_ratio": "square",
        "mm_hidden_size": clip_hidden_size, "mm_patch_merge_type": "flat", "mm_projector_lr": None,
        "mm_projector_type": "mlp2x_gelu", "mm_use_im_patch_token": False, "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2, "mm_vision_tower": str(clip_dir),
        "prefusion_layer_num": prefusion_layer_num, "resolution_ratio": resolution_ratio,
        "tokenizer_model_max_length": 4096, "tokenizer_padding_side": "right", "torch_dtype": "float32",
        "transformers_version": "4.43.1", "tune_mm_mlp_adapter": False, "use_mm_proj": True,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))

    # Modules only provide the key names and shapes; every tensor is then replaced by seeded noise.
    llm_config = LlamaConfig(**{k: v for k, v in llm_keys.items() if k not in ("rope_theta", "rope_scaling")},
                             rope_parameters={**llm_keys["rope_scaling"], "rope_theta": llm_keys["rope_theta"]})
    parts: list[tuple[str, nn.Module]] = [
        ("", LlamaForCausalLM(llm_config)),
        (_PROJECTOR, build_projector("mlp2x_gelu", clip_hidden_size, hidden_size)),
        (_COMPRESSOR, Compressor(compressor_size, clip_hidden_size)),
        (_PREFUSION, build_prefusion_layers(llm_config, prefusion_layer_num)),
    ]
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for prefix, module in parts:
        for key, value in module.state_dict().items():
            if key == "pos_embed":
                tensor = value.clone()
            elif key.endswith("norm.weight") or re.search(r"ln_(q|kv)\.weight$", key):
                tensor = 1.0 + 0.1 * torch.randn(value.shape, generator=generator)
            else:
                tensor = 0.05 * torch.randn(value.shape, generator=generator)
            state[prefix + key] = tensor.contiguous()

    keys = sorted(state)
    per_shard = math.ceil(len(keys) / num_shards)
    weight_map: dict[str, str] = {}
    for s in range(num_shards):
        name = f"model-{s + 1:05d}-of-{num_shards:05d}.safetensors"
        chunk = keys[s * per_shard : (s + 1) * per_shard]
        save_file({k: state[k] for k in chunk}, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in chunk})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return directory


# ----------------------------------------------------------------------------------------------------
# 6. The method behind vidqa's protocol (vidqa.compress.Method)
# ----------------------------------------------------------------------------------------------------


class Mini(nn.Module):
    """LLaVA-Mini behind vidqa's compression protocol.

    A frame's cache is *cache (b)*: the pre-fusion layers' K/V over its ``576 + C*C`` vision positions
    plus its fused compressed token(s). Both are question independent (causal attention), so a second
    question never runs CLIP, the compressor or the vision half of the pre-fusion again: it runs only
    its prompt tokens through the pre-fusion against each frame's K/V. It stores about twice the bytes
    of the projected features (cache a) and saves ~6x the per-question compute at 8B shapes.

    Frames go through the pre-fusion in chunks of ``chunk_frames`` while the fused text is summed in
    float32, so a long video's caches may stay on the CPU and stream to the GPU chunk by chunk.
    """

    name = "mini"

    def __init__(self, modules: LlavaMiniModules, tokenizer, chunk_frames: int = 64):
        super().__init__()
        self.llm = modules.llm
        self.projector, self.compressor, self.prefusion = modules.projector, modules.compressor, modules.prefusion_layers
        self.options = modules.options
        self.tokenizer = tokenizer
        self.tokens_per_frame = modules.options.tokens_per_frame
        self.resolution_ratio = modules.options.resolution_ratio
        self.chunk_frames = chunk_frames
        self.compact_chunk_frames = 16
        self.max_context = int(getattr(self.llm.config, "max_position_embeddings", 131072))
        self._stop = set(stop_token_ids(tokenizer))
        eos = tokenizer.eos_token_id
        if isinstance(eos, int):
            self._stop.add(eos)

    @property
    def stop_ids(self) -> set[int]:
        return self._stop

    # The official prompt ends at the user's <|eot_id|> with no assistant header, so the model writes
    # the header itself; it is not part of the answer.
    answer_prefix = "assistant"

    def prompt_ids(self, question: str, history=()) -> list[int]:
        return build_prompt_ids(self.tokenizer, question, history=history).ids

    def cache_meta(self) -> dict[str, Any]:
        return {"method": self.name, "tokens_per_frame": self.tokens_per_frame,
                "resolution_ratio": self.resolution_ratio, "prefusion_layers": len(self.prefusion)}

    def max_frames(self, question: str, max_new_tokens: int, history=()) -> int:
        text = len(self.prompt_ids(question, history)) - 1  # the placeholder's slot is replaced by the frames
        room = self.max_context - text - max_new_tokens
        if room < self.tokens_per_frame:
            raise ContextError(f"the question takes {text} tokens: with one frame and {max_new_tokens} new tokens "
                               f"it does not fit the model's context of {self.max_context}")
        return room // self.tokens_per_frame

    # A compact cache: the raw CLIP features (1.2 MB a frame at CLIP-L, 8x less than the K/V). A question
    # then reruns projector, compressor and the whole pre-fusion per frame (about 6x the compute of the
    # K/V cache's prompt-only pass). vidqa.pipeline picks it when the K/V of a long video would not fit
    # in host memory (10,000 frames at 8B: 95 GB of K/V, 12 GB of features).
    supports_compact = True

    def _dtype(self) -> torch.dtype:
        return self.projector[0].weight.dtype if isinstance(self.projector, nn.Sequential) else self.projector.weight.dtype

    @torch.inference_mode()
    def compress(self, features: Tensor, compact: bool = False) -> dict[str, Tensor]:
        dtype = self._dtype()
        if compact:
            return {"clip": features.to(dtype)}
        frames = encode_frames(features.to(dtype), self.compressor, self.projector, self.resolution_ratio)
        kv = prefusion_prefix_kv(self.prefusion, self.llm.model.rotary_emb, frames)
        return {"keys": torch.stack(kv.keys, dim=1), "values": torch.stack(kv.values, dim=1),
                "vision_tokens": kv.vision_tokens}

    @torch.inference_mode()
    def prefill(self, cache, question: str, history=()):
        from transformers import DynamicCache

        from vidqa.compress import Prefill

        if cache.meta.get("method") != self.name or cache.meta.get("resolution_ratio") != self.resolution_ratio:
            raise ModelError("this frame cache was made with other LLaVA-Mini settings; recompute it")
        device = self.llm.get_input_embeddings().weight.device
        ids = torch.tensor(self.prompt_ids(question, history), device=device)
        embeds, visible = prompt_embeddings(self.llm.get_input_embeddings(), ids)
        total, tokens = None, []
        # a compact cache reruns the whole pre-fusion per frame: smaller chunks bound its activations
        # (a 64-frame chunk at 8B peaks at ~5 GB; 16 frames at ~1.3 GB)
        step = self.compact_chunk_frames if "clip" in cache.tensors else self.chunk_frames
        for i in range(0, cache.num_frames, step):
            kv = self._chunk_kv(cache, slice(i, i + step), device)
            text = prefusion_text_from_kv(self.prefusion, self.llm.model.rotary_emb, kv, embeds, visible)
            chunk_sum = text.float().sum(0)
            total = chunk_sum if total is None else total + chunk_sum
            tokens.append(kv.vision_tokens)
        fused_text = (total / cache.num_frames).to(embeds.dtype)  # mean over frames, in float32, as the official code
        vision = torch.cat(tokens)
        frames_tokens = vision.reshape(-1, vision.shape[-1])
        inputs = assemble_llm_inputs(fused_text, ids, frames_tokens)[None]
        pos = torch.arange(inputs.shape[1], device=device)[None]
        return Prefill(past_key_values=DynamicCache(), position_ids=pos, inputs_embeds=inputs)


    def _chunk_kv(self, cache, part: slice, device) -> PrefusionKV:
        """The pre-fusion K/V of some frames: read from a K/V cache, or recomputed from a compact one."""
        t = cache.tensors
        if "clip" in t:
            frames = encode_frames(t["clip"][part].to(device), self.compressor, self.projector, self.resolution_ratio)
            return prefusion_prefix_kv(self.prefusion, self.llm.model.rotary_emb, frames)
        keys, values = t["keys"], t["values"]
        return PrefusionKV(tuple(keys[part, l].to(device) for l in range(keys.shape[1])),
                           tuple(values[part, l].to(device) for l in range(values.shape[1])),
                           t["vision_tokens"][part].to(device), keys.shape[3])


def load_mini(path: Path, cfg: dict[str, Any], device: torch.device, dtype: torch.dtype, vision_tower: str | None = None):
    """The LLaVA-Mini method and its vision encoder from a checkpoint in the official layout."""
    from vidqa import checkpoint
    from vidqa.pipeline import load_vision

    modules = load_llava_mini_state(path, dtype=dtype, device=device)
    tokenizer = checkpoint.load_tokenizer(path)
    # The official video path squashes every frame to the tower's square size (its image path crops).
    vision = load_vision(path, {**cfg, "image_aspect_ratio": "squash"}, device, dtype, vision_tower)
    return Mini(modules, tokenizer), vision
