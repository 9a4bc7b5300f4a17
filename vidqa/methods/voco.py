"""VoCo-LLaMA: the LLM distils each frame into N VoCo tokens, and their per-layer K/V is the frame's cache.

The trained layout of one image (VoCo-LLaMA's public code, ``voco_conv_vicuna_v1``)::

    [BOS] [576 image tokens] "\\n" [<voco> x N] "\\n" "A chat between ... USER: {question} ASSISTANT:"

with an attention mask under which the text after the last VoCo token sees only the VoCo span and
the text. Compression is therefore two stages that together equal that one masked pass:

1. ``compress``: run ``[BOS, image, "\\n", VoCo x N]`` causally and keep the K/V at the VoCo
   positions only (``p0 .. p0 + N - 1``).
2. ``prefill``: run the text against those K/V, at the positions it has in the long sequence.

The public code's decode-time bugs do not apply here: no custom mask is built at decode time (the
cache holds only VoCo tokens and text, all of which the text may see), and positions are explicit,
so the VoCo span never drifts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from vidqa import checkpoint, fast
from vidqa.errors import ContextError, ModelError
from vidqa.methods.base import FrameCache, Method, Prefill, register
from vidqa.methods import tokens
from vidqa.methods.rope import check_rerotatable, voco_context_batch
from vidqa.options import ModelOptions
from vidqa.vision import VisionEncoder

VOCO_TOKEN = "<voco>"
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant of the image. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def strip_newlines(text: str) -> str:
    """VoCo-LLaMA's rule for the conversation text: every ``"\\n"`` deleted (not replaced by a space).

    The official evaluation (``llava/eval/model_vqa_loader.py``, ``model_vqa_science.py``,
    ``model_vqa_mmbench.py``: ``prompt.replace("\\n", '')``) and training (``llava/train/train_compress.py``:
    ``conversations[0].replace("<image>", '').replace("\\n", '')``) both delete them from the whole
    conversation prompt, then put ``"<image>\\n<voco>...\\n"`` in front.
    """
    return text.replace("\n", "")


def vicuna_template(question: str, history: Sequence[tuple[str, str]] = ()) -> tuple[str, dict[str, str]]:
    """The Vicuna v1 conversation with a placeholder per user string, and the user strings (newlines deleted).

    For ``tokens.encode``: the control tokens (``</s>`` after each answer) are the template's; the
    user strings are text.
    """
    texts = [question] + [x for turn in history for x in turn]
    marks = tokens.placeholders(texts)
    text = SYSTEM + " "
    for i in range(len(history)):
        text += f"USER: {marks[1 + 2 * i]} ASSISTANT: {marks[2 + 2 * i]}</s>"
    text += f"USER: {marks[0]} ASSISTANT:"
    return strip_newlines(text), {m: strip_newlines(t) for m, t in zip(marks, texts)}


def vicuna_prompt(question: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """The voco Vicuna v1 conversation as the training code flattens it (newlines deleted), as one string."""
    template, user = vicuna_template(question, history)
    for mark, text in user.items():
        template = template.replace(mark, text)
    return template


class _KeepSpan(DynamicLayer):
    """A cache layer that hands attention the full K/V but keeps only a span of positions.

    Stage 1 needs the K/V of N VoCo tokens out of ~580 positions: keeping all of them would hold
    ~300 MB per frame at 7B in bf16 for nothing, and a batch of 16 frames would spend 5 GB on it.
    """

    def __init__(self, span: slice):
        super().__init__()
        self.span = span

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = key_states[:, :, self.span].clone()
        self.values = value_states[:, :, self.span].clone()
        return key_states, value_states


@register
class VoCo(Method):
    """VoCo-LLaMA (LLaVA-1.5 layout, ``model_type: llava_llama``; ``voco_num`` VoCo tokens per frame)."""

    name = "voco"
    llm_compresses = True  # stage 1 is the LLM's own forward over every frame

    def __init__(self, llm: nn.Module, projector: nn.Module, tokenizer, num_patches: int, tokens_per_frame: int = 2,
                 max_context: int | None = None):
        super().__init__()
        self.llm, self.projector, self.tokenizer = llm, projector, tokenizer
        self.num_patches = num_patches
        self.tokens_per_frame = tokens_per_frame
        self.voco_id = tokenizer.convert_tokens_to_ids(VOCO_TOKEN)
        if self.voco_id is None or self.voco_id == tokenizer.unk_token_id:
            raise ModelError("the tokenizer has no <voco> token: this checkpoint was not trained for VoCo")
        if self.voco_id >= llm.get_input_embeddings().num_embeddings:
            raise ModelError("the <voco> token id is outside the LLM's embedding table")
        cfg = llm.config
        self.max_context = max_context or getattr(cfg, "max_position_embeddings", 4096)
        self.rotary_emb = llm.model.rotary_emb
        check_rerotatable(self.rotary_emb)
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 1
        # Question-independent token ids between the image and the first VoCo token ("\n"),
        # found by tokenizing a whole prompt exactly as training did and cutting at the VoCo span.
        ids = self._chunk_ids("")
        first = ids.index(self.voco_id)
        self.pre_voco_ids = ids[:first]
        self.p0 = 1 + num_patches + len(self.pre_voco_ids)  # position of the first VoCo token

    @classmethod
    def load(cls, path: Path, cfg: dict[str, Any], device: torch.device, dtype: torch.dtype,
             options: ModelOptions) -> tuple["VoCo", VisionEncoder, Any]:
        tokenizer = checkpoint.load_tokenizer(path)
        llm = checkpoint.load_llm(path, cfg, device, dtype)
        vision = checkpoint.load_vision(path, cfg, device, dtype, options.vision_tower)
        projector = checkpoint.load_projector(path, cfg, llm.config.hidden_size).to(device, dtype)
        n = options.tokens_per_frame or int(cfg.get("voco_num", 2))
        return cls(llm, projector, tokenizer, vision.num_patches, tokens_per_frame=n), vision, tokenizer

    # ---- prompts ---------------------------------------------------------------------------
    def _chunk_ids(self, question: str, history=()) -> list[int]:
        """``"\\n" <voco> x N "\\n" conversation`` as VoCo-LLaMA tokenises it; user text always as text."""
        template, user = vicuna_template(question, history)
        return tokens.encode(self.tokenizer, "\n" + VOCO_TOKEN * self.tokens_per_frame + "\n" + template, user)

    def prompt_ids(self, question: str, history=()) -> list[int]:
        ids = self._chunk_ids(question, history)
        last = len(ids) - 1 - ids[::-1].index(self.voco_id)
        if ids[: last + 1 - self.tokens_per_frame] != self.pre_voco_ids:
            raise ModelError("the tokenizer splits the prompt differently around <voco>; cannot separate the stages")
        return ids[last + 1 :]

    @property
    def stop_ids(self) -> set[int]:
        return {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()

    def cache_meta(self) -> dict[str, Any]:
        return {"method": self.name, "tokens_per_frame": self.tokens_per_frame, "p0": self.p0,
                "pre_voco_ids": list(self.pre_voco_ids)}

    def max_frames(self, question: str, max_new_tokens: int, history=()) -> int:
        text = len(self.prompt_ids(question, history))
        room = self.max_context - self.p0 - text - max_new_tokens
        if room < self.tokens_per_frame:
            need = self.p0 + self.tokens_per_frame + text + max_new_tokens
            raise ContextError(f"the question takes {text} tokens: with one frame and {max_new_tokens} new tokens it "
                               f"needs {need} positions, over the model's context of {self.max_context}")
        return room // self.tokens_per_frame

    # ---- stage 1: frames to VoCo K/V ---------------------------------------------------------
    def frame_embeds(self, features: torch.Tensor) -> torch.Tensor:
        """``[BOS, projected image, pre-VoCo text, VoCo x N]`` embeddings for a batch of frames."""
        B = features.shape[0]
        embed = self.llm.get_input_embeddings()
        image = self.projector(features.to(embed.weight.dtype))
        # the ids from pinned memory, asynchronously: a tensor made on the GPU from a list waits for the
        # GPU (here, for the whole vision tower), and the LLM's first kernels would wait for the host
        ids = torch.tensor([self.bos_id, *self.pre_voco_ids] + [self.voco_id] * self.tokens_per_frame)
        if image.is_cuda:
            ids = ids.pin_memory()
        text = embed(ids.to(image.device, non_blocking=True))
        return torch.cat([text[:1].expand(B, 1, -1), image, text[1:].expand(B, -1, -1)], dim=1)

    @torch.inference_mode()
    def compress(self, features: torch.Tensor, compact: bool = False) -> dict[str, torch.Tensor]:
        if compact:
            raise ModelError("the voco method has no compact cache")
        embeds = self.frame_embeds(features)
        span = slice(self.p0, self.p0 + self.tokens_per_frame)
        if fast.supports_layers(self.llm.model.layers):  # fused GEMMs, flash attention, last layer K/V only
            _, keys, values = fast.causal_prefix(self.llm.model.layers, self.rotary_emb, embeds, keep=span, output=False,
                                                 compile=self.compile_kernels)
            return {"keys": torch.stack(keys, dim=1), "values": torch.stack(values, dim=1)}
        return self.compress_reference(features)

    @torch.inference_mode()
    def compress_reference(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage 1 through the transformers model as it is (any architecture; the fast path's reference)."""
        embeds = self.frame_embeds(features)
        span = slice(self.p0, self.p0 + self.tokens_per_frame)
        n_layers = self.llm.config.num_hidden_layers
        cache = Cache(layers=[_KeepSpan(span) for _ in range(n_layers)])
        self.llm.model(inputs_embeds=embeds, use_cache=True, **fast.cache_kwargs(cache))
        keys = torch.stack([layer.keys for layer in cache.layers], dim=1)  # B, L, H, N, D
        values = torch.stack([layer.values for layer in cache.layers], dim=1)
        return {"keys": keys, "values": values}

    # ---- stage 2: the question against the temporal context -------------------------------------
    def prefill(self, cache: FrameCache, question: str, history=()) -> Prefill:
        if self._foreign(cache):
            raise ModelError("this frame cache was made with other VoCo settings; recompute it")
        return self._prefill([cache], self.prompt_ids(question, history))

    def prefill_batch(self, caches: Sequence[FrameCache], question: str) -> Prefill:
        """``prefill`` on caches of equal frame counts at once: their K/V stacked, laid out and re-rotated
        in one go, the prompt encoded once (the same tensors as per-video ``prefill``, stacked)."""
        if len({c.num_frames for c in caches}) != 1 or any(map(self._foreign, caches)):
            return super().prefill_batch(caches, question)  # per video: raises for a foreign cache
        return self._prefill(caches, self.prompt_ids(question))

    def _foreign(self, cache: FrameCache) -> bool:
        return cache.meta.get("p0") != self.p0 or cache.tokens_per_frame != self.tokens_per_frame

    def _prefill(self, caches: Sequence[FrameCache], ids: list[int]) -> Prefill:
        """The LLM's input for prompt ``ids`` on B caches of equal frame counts (batch B)."""
        device = self.llm.get_input_embeddings().weight.device

        def stacked(name):  # [B, T, L, H, N, D]; one cache: a view, no copy
            ts = [c.tensors[name].to(device) for c in caches]
            return ts[0][None] if len(ts) == 1 else torch.stack(ts)

        kv = voco_context_batch(stacked("keys"), stacked("values"), self.rotary_emb)
        B = len(caches)
        ids = torch.tensor([ids], device=device).expand(B, -1)
        start = self.p0 + caches[0].num_frames * self.tokens_per_frame
        pos = torch.arange(start, start + ids.shape[1], device=device).unsqueeze(0).expand(B, -1)
        return Prefill(past_key_values=kv, position_ids=pos, input_ids=ids)

    # ---- training: the same computation as compress + prefill, as one masked pass -----------------
    def masked_inputs(self, features: torch.Tensor, text_ids: list[int], length: int | None = None):
        """One sample's single-pass inputs: ``(embeds [L, D], mask [L, L] bool, positions [L])``.

        ``features``: one video's vision features ``[T, P, C]``; ``text_ids``: the prompt after the
        last VoCo token (and any answer). Frame t's block ``[BOS, image, "\\n", VoCo x N]`` sits at
        positions shifted by ``t * N`` and sees only itself, causally; the text sees every VoCo span
        and the text before it. ``tests/test_voco.py`` proves this equals ``compress`` + ``prefill``.
        ``length`` pads the text on the right (padding sees only itself and is seen by nobody).
        """
        T = features.shape[0]
        blocks = self.frame_embeds(features)  # T, B, D
        B = blocks.shape[1]
        n_text = len(text_ids)
        L = T * B + (length if length is not None else n_text)
        ids = torch.tensor(list(text_ids) + [0] * (L - T * B - n_text), device=blocks.device)
        embeds = torch.cat([blocks.reshape(T * B, -1), self.llm.get_input_embeddings()(ids)])
        mask, pos = self.single_pass_layout(T, L - T * B, blocks.device)
        pad = torch.arange(L, device=blocks.device) >= T * B + n_text
        mask = (mask & ~pad.view(1, -1)) | (torch.eye(L, dtype=torch.bool, device=blocks.device) & pad.view(-1, 1))
        return embeds, mask, pos

    def single_pass_layout(self, num_frames: int, n_text: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The VoCo mask ``[L, L]`` (True = may attend) and positions ``[L]`` of T frame blocks + n_text tokens."""
        T, N = num_frames, self.tokens_per_frame
        B = self.p0 + N  # one frame block: BOS, image, pre-VoCo text, VoCo
        L = T * B + n_text
        block_of = torch.cat([torch.arange(T, device=device).repeat_interleave(B),
                              torch.full((n_text,), -1, device=device)])
        voco = torch.zeros(L, dtype=torch.bool, device=device)
        for t in range(T):
            voco[t * B + self.p0: t * B + self.p0 + N] = True
        is_text = block_of == -1
        q, k = torch.arange(L, device=device).view(-1, 1), torch.arange(L, device=device).view(1, -1)
        same_block = (block_of.view(-1, 1) == block_of.view(1, -1)) & ~is_text.view(-1, 1)
        text_sees = is_text.view(-1, 1) & (voco | is_text).view(1, -1)
        mask = (k <= q) & (same_block | text_sees)
        base = torch.arange(B, device=device)
        pos = torch.cat([base + t * N for t in range(T)] + [self.p0 + T * N + torch.arange(n_text, device=device)])
        return mask, pos
