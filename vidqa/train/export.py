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


def export_voco(learner: Learner, out: Path, dtype: torch.dtype = torch.bfloat16, note: str = "") -> Path | None:
    """A VoCo run (``vidqa.train.scale``) as a LLaVA-1.5/VoCo checkpoint: the LLM's keys (``<voco>`` its
    last id, the table one row longer than the base's), ``model.mm_projector.*``, the CLIP tower in
    ``out/clip`` (``vision_model.*`` keys), ``voco_num`` in config.json. LoRA runs are merged first.
    Under torch.distributed every rank calls this (the full weights are gathered); rank 0 writes."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import CLIPVisionModel

    peft = learner.__dict__.pop("peft", None)
    if peft is not None:
        peft.merge_and_unload()  # LoRA folded into learner.llm's own Linear layers, in place
    full = get_model_state_dict(learner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return None
    llm = {k[len("llm."):]: v for k, v in full.items() if k.startswith("llm.")}
    projector = {PROJECTOR + k[len("projector."):]: v for k, v in full.items() if k.startswith("projector.")}
    tower = CLIPVisionModel(learner.vision.tower.config)
    tower.load_state_dict({k[len("vision.tower."):]: v for k, v in full.items() if k.startswith("vision.tower.")})
    mm = getattr(learner, "mm", {})
    config = llava_config(learner.llm.config, model_type="llava_llama", architectures=["LlavaLlamaForCausalLM"],
                          mm_hidden_size=learner.vision.hidden_size,
                          mm_projector_type=mm.get("mm_projector_type", "mlp2x_gelu"),
                          mm_vision_select_layer=mm.get("mm_vision_select_layer", -2),
                          mm_vision_select_feature=mm.get("mm_vision_select_feature", "patch"),
                          mm_use_im_start_end=False, mm_use_im_patch_token=False, image_aspect_ratio="pad",
                          tokenizer_padding_side="left", use_mm_proj=True,
                          voco_num=learner.inputs.voco.tokens_per_frame, vocab_size=len(learner.tokenizer),
                          **({"vidqa_demo": note} if note else {}))
    config.pop("use_cache", None)
    return write_checkpoint(out, config, {**llm, **projector}, tokenizer=learner.tokenizer, tower=tower,
                            tower_dir="clip", image_mean=learner.vision.spec.mean, image_std=learner.vision.spec.std,
                            dtype=dtype)
