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
    written = write_checkpoint(out, config, {**llm, **projector}, tokenizer=learner.tokenizer, tower=tower,
                               tower_dir="clip", image_mean=learner.vision.spec.mean,
                               image_std=learner.vision.spec.std, dtype=dtype)
    write_slow_tokenizer(learner.tokenizer, Path(out))
    return written


_SPECIALS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_entry(content: str, special: bool = True) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": special}


def write_slow_tokenizer(tokenizer, out: Path) -> bool:
    """Next to ``tokenizer.json``, the files of the slow sentencepiece tokenizer that transformers 4.37 reads
    (VoCo-LLaMA's and LLaVA's loaders ask for ``use_fast=False``): ``tokenizer.model`` (the base's, copied),
    ``added_tokens.json`` (``<voco>`` and any other id past the sentencepiece vocabulary),
    ``special_tokens_map.json`` and ``tokenizer_config.json`` in the old format (``added_tokens_decoder``,
    ``add_bos_token``, ``legacy``...; keys only transformers 5 writes left out). Only when the base had a
    ``tokenizer.model``; returns whether the files were written."""
    import json
    import shutil

    try:
        import sentencepiece as spm
    except ImportError:  # the fast files alone (transformers >= 4.38 and vidqa read them)
        return False
    model = getattr(tokenizer, "vocab_file", None)
    if not model or not Path(model).is_file():
        return False
    sp = spm.SentencePieceProcessor(model_file=str(model))
    n_sp = sp.get_piece_size()
    vocab = tokenizer.get_vocab()
    added = {t: i for t, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i >= n_sp}
    if sorted(added.values()) != list(range(n_sp, len(tokenizer))):
        return False  # not sentencepiece + appended tokens: the fast files are the only faithful ones
    if Path(model).resolve() != (out / "tokenizer.model").resolve():
        shutil.copyfile(model, out / "tokenizer.model")
    (out / "added_tokens.json").write_text(json.dumps(added, indent=2) + "\n")
    specials = {k: getattr(tokenizer, k) for k in _SPECIALS if getattr(tokenizer, k, None)}
    (out / "special_tokens_map.json").write_text(json.dumps(
        {k: {kk: vv for kk, vv in _token_entry(v).items() if kk != "special"} for k, v in specials.items()},
        indent=2) + "\n")
    special_ids = {sp.piece_to_id(v): v for v in specials.values() if sp.piece_to_id(v) < n_sp}
    special_ids.update({i: sp.id_to_piece(i) for i in range(n_sp) if sp.is_control(i) or sp.is_unknown(i)})
    decoder = {str(i): _token_entry(t) for i, t in sorted(special_ids.items())}
    decoder.update({str(i): _token_entry(t, special=t in tokenizer.all_special_tokens or t.startswith("<"))
                    for t, i in added.items()})
    path = out / "tokenizer_config.json"
    now = json.loads(path.read_text()) if path.exists() else {}
    init = dict(getattr(tokenizer, "init_kwargs", {}) or {})
    old = {"add_bos_token": bool(init.get("add_bos_token", True)), "add_eos_token": bool(init.get("add_eos_token", False)),
           "added_tokens_decoder": decoder, "clean_up_tokenization_spaces": False,
           "legacy": bool(init.get("legacy", getattr(tokenizer, "legacy", False))),
           "model_max_length": now.get("model_max_length", getattr(tokenizer, "model_max_length", 2048)),
           "padding_side": now.get("padding_side", "right"), "sp_model_kwargs": {},
           "tokenizer_class": "LlamaTokenizer", "use_default_system_prompt": False, **specials}
    path.write_text(json.dumps(old, indent=2) + "\n")
    return True
