"""The trainable model: vision tower + projector + LLM, plus the variant's input builder and the loss."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from vidqa.train.data import DataError, Sample
from vidqa.train.inputs import InputBuilder, builder_class
from vidqa.train.state import read_model_tensors
from vidqa.vision import Preprocess, VisionEncoder, build_projector, preprocess


@dataclass
class TinyConfig:
    """The small from-scratch demo architecture (a few MB in bf16)."""

    image_size: int = 64
    patch_size: int = 8  # 16 px patches at 64 px did not learn (shapes are ~14 px): benchmarks/NOTES.md
    vision_hidden: int = 128
    vision_layers: int = 2
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    intermediate: int = 688
    prefusion_layers: int = 2
    max_positions: int = 2048


class Learner(nn.Module):
    """Vision tower + projector + LLM (+ the parts the variant's ``InputBuilder`` adds) with a training loss.

    The variant (``learner.variant``): ``voco`` | ``mini`` | ``full`` (every vision token visible) |
    ``pool`` (mean + linear); ``vidqa.train.inputs`` has one builder for each.
    """

    def __init__(self, vision: VisionEncoder, projector: nn.Module, llm: nn.Module, tokenizer, inputs: InputBuilder):
        super().__init__()
        self.vision, self.projector, self.llm, self.tokenizer = vision, projector, llm, tokenizer
        self.inputs = inputs  # a plain object: its parts are registered here, under the names they always had
        for name, module in inputs.modules().items():
            self.add_module(name, module)
        self._ids: dict[tuple[str, str], list[int]] = {}  # tokenising every step costs more than a tiny model's step

    @property
    def variant(self) -> str:
        return self.inputs.name

    def prompt_ids(self, question: str) -> list[int]:
        key = ("q", question)
        if key not in self._ids:
            self._ids[key] = self.inputs.prompt_ids(question)
        return self._ids[key]

    def answer_ids(self, answer: str) -> list[int]:
        key = ("a", answer)
        if key not in self._ids:
            self._ids[key] = self.inputs.answer_ids(answer)
        return self._ids[key]

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, T, H, W, 3]`` to CLIP features ``[B, T, P, C]`` (differentiable)."""
        B, T = pixels.shape[:2]
        x = preprocess(pixels.flatten(0, 1), self.vision.spec, next(self.vision.parameters()).dtype)
        return self.vision(x).view(B, T, self.vision.num_patches, -1)

    def forward(self, pixels: torch.Tensor, samples: list[Sample], owner: list[int] | None = None):
        """Cross-entropy over the answer tokens; also whether each first answer word is the argmax.

        ``owner`` packs a batch: ``pixels`` holds clips and ``owner[i]`` is the clip of sample i. The
        builder then puts all of a clip's questions in one sequence after its frames (each question sees
        the frames and itself only), so the frames go through the model once per clip instead of once
        per question; a builder that cannot pack these prompts gets each sample's clip in a plain batch.
        """
        feats = self.features(pixels)
        device = feats.device
        prompts = [self.prompt_ids(s.question) for s in samples]
        answers = [self.answer_ids(s.answer) for s in samples]
        rows = list(range(len(samples)))
        built = None if owner is None else self.inputs.packed(feats, prompts, answers, owner)
        if built is not None:
            rows = list(owner)
        else:
            if owner is not None:
                feats = feats[torch.tensor(owner, device=device)]
            built = self.inputs.batched(feats, prompts, answers)
        E, M, P, starts = built
        # labels in one host-to-device copy (logits at i predict i + 1)
        r_idx = [r for r, tgt in zip(rows, answers) for _ in tgt]
        c_idx = [st - 1 + k for st, tgt in zip(starts, answers) for k in range(len(tgt))]
        flat = torch.tensor([r_idx, c_idx, [t for tgt in answers for t in tgt]], device=device)
        labels = torch.full(E.shape[:2], -100, dtype=torch.long, device=device)
        labels[flat[0], flat[1]] = flat[2]
        mask = torch.zeros(M.shape, dtype=E.dtype, device=device).masked_fill_(~M, torch.finfo(E.dtype).min)
        logits = self.llm(inputs_embeds=E, attention_mask=mask, position_ids=P).logits.float()
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        skip = self.inputs.answer_offset  # Mini writes its role header before the answer word
        word_at = [st - 1 + skip for st in starts]
        where = torch.tensor([rows, word_at, [a[skip] for a in answers]], device=device)
        pred = logits[where[0], where[1]].argmax(-1)
        return loss, pred == where[2], word_at


def build_tiny(variant: str, tokenizer, cfg: TinyConfig, tokens_per_frame: int = 1) -> Learner:
    """A from-scratch Learner with the demo architecture."""
    builder = builder_class(variant)
    clip_cfg = CLIPVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden,
                                num_hidden_layers=cfg.vision_layers, num_attention_heads=4,
                                image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=cfg.vision_hidden)
    tower = CLIPVisionModel(clip_cfg)
    vision = VisionEncoder(tower, -1, "patch", Preprocess(size=cfg.image_size, aspect=builder.aspect))
    llm_cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                          num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                          max_position_embeddings=cfg.max_positions, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                          tie_word_embeddings=False)
    llm_cfg._attn_implementation = "sdpa"
    llm = LlamaForCausalLM(llm_cfg)
    projector = build_projector("mlp2x_gelu", cfg.vision_hidden, cfg.hidden)
    inputs = builder.create(llm, projector, tokenizer, num_patches=vision.num_patches, vision_hidden=cfg.vision_hidden,
                            tokens_per_frame=tokens_per_frame, prefusion_layers=cfg.prefusion_layers)
    return Learner(vision, projector, llm, tokenizer, inputs)


def load_vision_from(learner: Learner, source: Path) -> None:
    """Copy the vision tower of another run (its directory or its ``train_state``) into ``learner``.

    Safetensors only (``vidqa.train.state``): a pickled ``train_state.pt`` is refused, never unpickled."""
    if not Path(source).exists():
        raise DataError(f"--vision-from {source}: no such file or directory")
    tower = read_model_tensors(Path(source), "vision.")
    if not tower:
        raise DataError(f"{source} holds no vision tower")
    try:
        learner.vision.load_state_dict(tower)
    except RuntimeError as e:
        raise DataError(f"the vision tower in {source} does not fit this model: {str(e).splitlines()[0]}")
