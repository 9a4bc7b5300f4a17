"""Caches to temporal context: per-frame K/V placed in time order into one KV cache.

Positions across frames (vidqa's definition; the VoCo-LLaMA paper does not publish one):

    Every frame is compressed alone, as the image model was trained: ``[BOS, image, "\\n", VoCo x N]``
    at positions ``0 .. p0 + N - 1``, so its VoCo tokens sit at ``p0 .. p0 + N - 1``.
    In a video of T frames, frame t's VoCo token j sits at position ``p0 + t * N + j``:
    the frames' VoCo spans follow each other as if the video were one long run of VoCo tokens.
    The prompt then starts at ``p0 + T * N`` and decoding continues from there, one position a token.
    A one-frame video is therefore exactly the image layout the model was trained on.

A cached key carries the RoPE rotation of the position it was computed at. Moving frame t from
``p0 + j`` to ``p0 + t * N + j`` is a rotation by ``t * N`` positions: RoPE rotates each pair of
channels by ``position * inv_freq``, and rotations compose, so ``R(p + d) k = R(d) R(p) k`` exactly.
Values carry no position. This is what lets one stored frame cache serve any temporal slot.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import rotate_half

from vidqa.errors import ModelError

# RoPE variants whose frequencies change with the sequence length cannot be re-rotated exactly.
_STATIC_ROPE = {"default", "linear", "llama3", "yarn", "ntk"}


def check_rerotatable(rotary_emb) -> None:
    kind = getattr(rotary_emb, "rope_type", "default")
    if kind not in _STATIC_ROPE:
        raise ModelError(f"RoPE type {kind!r} depends on the sequence length; vidqa cannot move cached keys under it")


def rerotate(keys: torch.Tensor, delta: torch.Tensor, rotary_emb) -> torch.Tensor:
    """Rotate keys ``[..., S, head_dim]`` by ``delta[S]`` positions (float32 maths, result in keys' dtype)."""
    k = keys.float()
    cos, sin = rotary_emb(k, position_ids=delta.to(k.device).view(1, -1))  # [1, S, head_dim], times scaling
    scale = float(getattr(rotary_emb, "attention_scaling", 1.0))
    cos, sin = cos[0] / scale, sin[0] / scale  # the scaling is already in the stored keys; apply it once
    return (k * cos + rotate_half(k) * sin).to(keys.dtype)


def frame_slots(num_frames: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """The position shift of every cached token: frame t's tokens move by ``t * N``."""
    t = torch.arange(num_frames, device=device).repeat_interleave(tokens_per_frame)
    return t * tokens_per_frame


def voco_context(keys: torch.Tensor, values: torch.Tensor, rotary_emb):
    """Per-frame VoCo K/V ``[T, L, H, N, D]`` to a one-sequence ``DynamicCache`` of ``T * N`` tokens.

    Frame t's keys are rotated by ``t * N`` positions; see the module docstring.
    """
    return voco_context_batch(keys[None], values[None], rotary_emb)


def voco_context_batch(keys: torch.Tensor, values: torch.Tensor, rotary_emb):
    """``voco_context`` of B caches of equal frame counts at once: ``[B, T, L, H, N, D]`` to a
    ``DynamicCache`` of batch B (one re-layout and one re-rotation for all of them)."""
    B, T, L, H, N, D = keys.shape
    k = keys.permute(2, 0, 3, 1, 4, 5).reshape(L, B, H, T * N, D)
    v = values.permute(2, 0, 3, 1, 4, 5).reshape(L, B, H, T * N, D)
    if T > 1:
        k = rerotate(k, frame_slots(T, N, device=k.device), rotary_emb)
    return DynamicCache(ddp_cache_data=[(k[i], v[i]) for i in range(L)])
