"""Tiny random checkpoints on disk, in the real layouts, for tests and the offline demo (no network).

``make_voco_checkpoint`` writes what VoCo-LLaMA's training code produces (LLaVA-1.5 layout):
``config.json`` with ``model_type: llava_llama`` and the ``mm_*`` keys, one safetensors file with the
Llama weights plus ``model.mm_projector.{0,2}``, a slow SentencePiece ``tokenizer.model`` with
``<voco>`` added after the base vocabulary, and a CLIP vision tower in its own directory.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant of the image.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: what happens after the door opens? ASSISTANT: a red circle moves to the left.",
    "How many squares appear? Which way does the blue triangle move? What colour is it? 0123456789",
]


def train_sentencepiece(vocab_size: int = 400) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 10), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        add_dummy_prefix=True, normalization_rule_name="identity", minloglevel=2, num_threads=1,
    )
    return model.getvalue()


def write_vicuna_tokenizer(directory: Path, vocab_size: int = 400) -> int:
    """A LlamaTokenizer directory with <voco> at id ``vocab_size``; returns the full vocab size."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(train_sentencepiece(vocab_size))
    voco = {"content": "<voco>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "legacy": False, "model_max_length": 2048, "padding_side": "left",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": {str(vocab_size): voco}, "additional_special_tokens": ["<voco>"],
    }))
    (directory / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
        "additional_special_tokens": ["<voco>"]}))
    (directory / "added_tokens.json").write_text(json.dumps({"<voco>": vocab_size}))
    return vocab_size + 1


def make_clip(directory: Path, *, image_size: int = 56, patch_size: int = 14, hidden: int = 32, layers: int = 3,
              seed: int = 0) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=2, image_size=image_size, patch_size=patch_size, projection_dim=hidden)
    CLIPVisionModel(cfg).save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": image_size, "width": image_size}, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "size": {"shortest_edge": image_size}}))
    return directory


def make_voco_checkpoint(directory: Path, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                         max_positions: int = 512, voco_num: int | None = None, seed: int = 0,
                         aspect: str = "pad") -> Path:
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    vision = make_clip(directory.parent / (directory.name + "-clip"), seed=seed)
    vocab = write_vicuna_tokenizer(directory)
    torch.manual_seed(seed)
    llm_cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                          max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                          tie_word_embeddings=False)
    llm = LlamaForCausalLM(llm_cfg)
    for p in llm.parameters():  # wider than the default init, so that positions and masks visibly matter
        p.data.normal_(0, 0.3 if p.ndim > 1 else 0.05).add_(1.0 if p.ndim == 1 else 0.0)
    state = {k: v.contiguous() for k, v in llm.state_dict().items()}
    clip_hidden = 32
    state["model.mm_projector.0.weight"] = torch.randn(hidden, clip_hidden) * 0.3
    state["model.mm_projector.0.bias"] = torch.randn(hidden) * 0.1
    state["model.mm_projector.2.weight"] = torch.randn(hidden, hidden) * 0.3
    state["model.mm_projector.2.bias"] = torch.randn(hidden) * 0.1
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    cfg = llm_cfg.to_dict()
    for k in ("transformers_version", "dtype", "torch_dtype", "rope_parameters"):
        cfg.pop(k, None)
    cfg.update({
        "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"], "rope_theta": 10000.0,
        "rope_scaling": None, "torch_dtype": "float32", "transformers_version": "4.31.0",
        "mm_vision_tower": str(vision), "mm_hidden_size": clip_hidden, "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False, "image_aspect_ratio": aspect, "tokenizer_padding_side": "left",
        "tokenizer_model_max_length": 2048, "use_mm_proj": True, "freeze_mm_mlp_adapter": False,
    })
    if voco_num is not None:
        cfg["voco_num"] = voco_num
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    return directory
