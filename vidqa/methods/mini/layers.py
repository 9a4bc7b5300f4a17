"""LLaVA-Mini building blocks: compressor, modality pre-fusion, per-frame caches, HD mode.

The prompt is in ``prompt.py``; the method and its checkpoint loader in ``method.py``.

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
      config (the release pins transformers 4.43.1 in its own ``pyproject.toml``); in 4.43 each layer's
      attention owns a ``LlamaRotaryEmbedding(config)`` that honours the llama3 rope scaling, i.e. the
      LLM's RoPE. vidqa's layers get the LLM's own rotary embedding passed in, which is the same.
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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from vidqa import fast

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


def run_layers(layers: nn.ModuleList, rotary_emb: nn.Module, hidden: Tensor, positions: Tensor, mask: Tensor, cache: Any = None) -> Tensor:
    """Run the decoder layers with the LLM's RoPE; positions ``[L]`` are shared by every frame of the
    batch, or ``[F, L]`` give each frame its own (batched training)."""
    position_ids = positions if positions.dim() == 2 else positions.unsqueeze(0)
    cos_sin = rotary_emb(hidden, position_ids)
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, use_cache=cache is not None,
                       position_embeddings=cos_sin, **fast.cache_kwargs(cache))
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
    out = run_layers(layers, rotary_emb, x, prefusion_positions(n_prefix, text_visible.to(x.device)), mask)
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


def prefusion_prefix_kv(layers: nn.ModuleList, rotary_emb: nn.Module, frames: FrameFeatures,
                        compile: bool | None = None) -> PrefusionKV:
    """Run only the frames' prefix through the pre-fusion and keep its per-layer K/V (cache b).

    Valid because attention is causal and the prefix is never masked: no prompt token can change the
    prefix's hidden states, and the prompt's positions start right after it. ``compile``: torch.compile
    the fused kernels (None: ``ComputeOptions.from_env()``).
    """
    x = frames.prefix()
    n_prefix = frames.num_prefix
    n_comp = frames.compressed.shape[1]
    if fast.supports_layers(layers):  # is_causal flash attention and fused GEMMs; same result
        out, keys, values = fast.causal_prefix(layers, rotary_emb, x, compile=compile)
        # a copy: a view would keep the whole [F, prefix, H] output alive as long as the cache lives
        return PrefusionKV(keys, values, out[:, n_prefix - n_comp:].clone(), n_prefix)
    causal = torch.ones(n_prefix, n_prefix, dtype=torch.bool, device=x.device).tril()
    cache = DynamicCache()
    positions = torch.arange(n_prefix, device=x.device)
    out = run_layers(layers, rotary_emb, x, positions, _additive_mask(causal, x.dtype), cache)
    keys = tuple(cache.layers[i].keys for i in range(len(layers)))
    values = tuple(cache.layers[i].values for i in range(len(layers)))
    return PrefusionKV(keys, values, out[:, n_prefix - n_comp :].clone(), n_prefix)


def prefusion_text_from_kv(layers: nn.ModuleList, rotary_emb: nn.Module, kv: PrefusionKV, text_embeds: Tensor, text_visible: Tensor) -> Tensor:
    """Fused text ``[F, T, H]`` of one prompt against cached prefix K/V: only T tokens go through the layers.

    The stored K/V are not modified: a fresh ``DynamicCache`` is seeded with them per call.
    """
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
    out = run_layers(layers, rotary_emb, hidden, positions, _additive_mask(allowed, hidden.dtype), cache)
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
