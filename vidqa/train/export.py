"""Saving a trained Learner as a checkpoint vidqa loads (the demo models), through the one writer."""

from __future__ import annotations

from pathlib import Path

import torch

from vidqa.checkpoint import PROJECTOR, llava_config, prefixed, write_checkpoint
from vidqa.train.model import Learner, TinyConfig


def export(learner: Learner, out: Path, cfg: TinyConfig, dtype: torch.dtype = torch.bfloat16, note: str = "") -> Path:
    """Write ``learner`` in its variant's layout (``InputBuilder.checkpoint_layout``): LLaVA-1.5 (VoCo,
    pool, full) or the official LLaVA-Mini layout. The CLIP tower goes into ``out/clip``
    (``mm_vision_tower: clip``, found inside the model directory)."""
    own, layout, shards = learner.inputs.checkpoint_layout()
    state = {**learner.llm.state_dict(), **prefixed(PROJECTOR, learner.projector), **own}
    config = llava_config(learner.llm.config, mm_hidden_size=cfg.vision_hidden, mm_projector_type="mlp2x_gelu",
                          mm_vision_select_layer=-1, mm_vision_select_feature="patch", mm_use_im_start_end=False,
                          torch_dtype=str(dtype).replace("torch.", ""), vidqa_demo=note, **layout)
    return write_checkpoint(out, config, state, tokenizer=learner.tokenizer, tower=learner.vision.tower,
                            tower_dir="clip", image_mean=learner.vision.spec.mean, image_std=learner.vision.spec.std,
                            shards=shards, dtype=dtype)
