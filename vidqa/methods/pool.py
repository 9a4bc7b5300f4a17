"""The average-pooling baseline: each frame's CLIP patch features averaged, then one Linear: 1 token a frame.

The retention table's reference row (``vidqa train --method pool``), served as a method. The LLM reads

    [BOS] [pool token of frame 0 .. T-1] "\\n A chat between ... USER: {question} ASSISTANT:"

causally at positions ``0 .. L-1``. The prompt is the one the training row uses: VoCo's prompt after
the VoCo span (``vidqa.methods.voco``), so the tokenizer must know ``<voco>`` as VoCo's does. The
frame cache is the pooled tokens ``[T, 1, hidden]``: question independent.

Checkpoint layout: LLaVA-1.5's (``model_type: llava_llama``, the ``mm_*`` keys naming the CLIP tower
and its select layer, the LLM's own keys) plus ``vidqa_method: pool`` in config.json and the Linear
under ``model.pool.weight [hidden, mm_hidden_size]`` and ``model.pool.bias [hidden]``. A
``model.mm_projector.*`` in the file (training builds one) is not read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from vidqa import checkpoint
from vidqa.errors import ContextError, ModelError
from vidqa.methods.base import FrameCache, Method, Prefill, register
from vidqa.methods import tokens
from vidqa.methods.voco import VOCO_TOKEN, vicuna_template
from vidqa.options import ModelOptions
from vidqa.vision import VisionEncoder

POOL = "model.pool."


@register
class Pool(Method):
    name = "pool"
    tokens_per_frame = 1

    def __init__(self, llm: nn.Module, pool: nn.Linear, tokenizer, max_context: int | None = None):
        super().__init__()
        self.llm, self.pool, self.tokenizer = llm, pool, tokenizer
        self.voco_id = tokenizer.convert_tokens_to_ids(VOCO_TOKEN)
        if self.voco_id is None or self.voco_id == tokenizer.unk_token_id:
            raise ModelError("the tokenizer has no <voco> token: the pool method uses VoCo's prompt")
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 1
        self.max_context = max_context or getattr(llm.config, "max_position_embeddings", 4096)

    @classmethod
    def load(cls, path: Path, cfg: dict[str, Any], device: torch.device, dtype: torch.dtype,
             options: ModelOptions) -> tuple["Pool", VisionEncoder, Any]:
        tokenizer = checkpoint.load_tokenizer(path)
        llm = checkpoint.load_llm(path, cfg, device, dtype)
        vision = checkpoint.load_vision(path, cfg, device, dtype, options.vision_tower)
        pool = nn.Linear(int(cfg["mm_hidden_size"]), llm.config.hidden_size)
        try:
            pool.load_state_dict(checkpoint.load_tensors(path, POOL), strict=True)
        except RuntimeError as e:
            raise ModelError(f"{path}: model.pool does not match a Linear({cfg['mm_hidden_size']}, "
                             f"{llm.config.hidden_size}): {str(e).splitlines()[0]}")
        return cls(llm, pool.to(device, dtype).eval(), tokenizer), vision, tokenizer

    def prompt_ids(self, question: str, history=()) -> list[int]:
        template, user = vicuna_template(question, history)  # user text always as text
        ids = tokens.encode(self.tokenizer, "\n" + VOCO_TOKEN + "\n" + template, user)
        return ids[ids.index(self.voco_id) + 1:]

    @property
    def stop_ids(self) -> set[int]:
        return {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()

    def cache_meta(self) -> dict[str, Any]:
        return {"method": self.name, "tokens_per_frame": self.tokens_per_frame}

    def max_frames(self, question: str, max_new_tokens: int, history=()) -> int:
        text = len(self.prompt_ids(question, history))
        room = self.max_context - 1 - text - max_new_tokens
        if room < 1:
            raise ContextError(f"the question takes {text} tokens: with one frame and {max_new_tokens} new tokens it "
                               f"needs {text + max_new_tokens + 2} positions, over the model's context of {self.max_context}")
        return room

    @torch.inference_mode()
    def compress(self, features: torch.Tensor, compact: bool = False) -> dict[str, torch.Tensor]:
        if compact:
            raise ModelError("the pool method has no compact cache")
        return {"tokens": self.pool(features.to(self.pool.weight.dtype).mean(dim=1)).unsqueeze(1)}

    @torch.inference_mode()
    def prefill(self, cache: FrameCache, question: str, history=()) -> Prefill:
        if cache.meta.get("method") != self.name:
            raise ModelError("this frame cache was made by another method; recompute it")
        embed = self.llm.get_input_embeddings()
        device = embed.weight.device
        tokens = cache.tensors["tokens"].to(device, embed.weight.dtype)
        ids = torch.tensor([self.bos_id] + self.prompt_ids(question, history), device=device)
        text = embed(ids)
        inputs = torch.cat([text[:1], tokens.reshape(-1, tokens.shape[-1]), text[1:]])[None]
        pos = torch.arange(inputs.shape[1], device=device)[None]
        return Prefill(past_key_values=DynamicCache(), position_ids=pos, inputs_embeds=inputs)
