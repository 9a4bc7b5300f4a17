"""Tiny random checkpoints on disk, in the real layouts, for tests and the offline demo (no network).

``make_voco_checkpoint`` writes what VoCo-LLaMA's training code produces (LLaVA-1.5 layout):
``config.json`` with ``model_type: llava_llama`` and the ``mm_*`` keys, one safetensors file with the
Llama weights plus ``model.mm_projector.{0,2}``, a slow SentencePiece ``tokenizer.model`` with
``<voco>`` added after the base vocabulary, and a CLIP vision tower in its own directory.
``make_pool_checkpoint`` is the same layout with ``vidqa_method: pool`` and ``model.pool.*``;
``write_tiny_official_checkpoint`` is LLaVA-Mini's official layout. All write through
``vidqa.checkpoint.export``.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import sentencepiece as spm
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from torch import Tensor, nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from vidqa.checkpoint.export import llava_config, write_checkpoint, write_tower
from vidqa.checkpoint.llava import COMPRESSOR, PREFUSION, PROJECTOR
from vidqa.methods.mini.layers import Compressor, build_prefusion_layers
from vidqa.methods.pool import POOL
from vidqa.vision import build_projector

CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant of the image.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: what happens after the door opens? ASSISTANT: a red circle moves to the left.",
    "How many squares appear? Which way does the blue triangle move? What colour is it? 0123456789",
]


def train_sentencepiece(vocab_size: int = 400, corpus: list[str] | None = None) -> bytes:
    """A BPE SentencePiece model trained on ``CORPUS`` (plus ``corpus``). With ``corpus``, ``vocab_size``
    is an upper bound (the model has as many pieces as the text gives, up to it)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter((CORPUS + list(corpus or [])) * 10), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        add_dummy_prefix=True, normalization_rule_name="identity", minloglevel=2, num_threads=1,
        hard_vocab_limit=corpus is None,
    )
    return model.getvalue()


def write_vicuna_tokenizer(directory: Path, vocab_size: int = 400, corpus: list[str] | None = None) -> int:
    """A LlamaTokenizer directory with <voco> after the base vocabulary; returns the full vocab size.

    ``corpus``: also train on these texts, with room for every word of them to become one piece (give
    ``vocab_size`` a few thousand): the benchmarks' prompts then take about as many tokens as under
    Vicuna's 32k-piece tokenizer, instead of ~2 characters per token."""
    directory.mkdir(parents=True, exist_ok=True)
    model = train_sentencepiece(vocab_size, corpus)
    vocab_size = spm.SentencePieceProcessor(model_proto=model).get_piece_size()
    (directory / "tokenizer.model").write_bytes(model)
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
    """A tiny random CLIP vision tower, written as the hub stores one."""
    return write_tower(directory, _clip(image_size, patch_size, hidden, layers, seed))


def _clip(image_size: int, patch_size: int, hidden: int, layers: int, seed: int, heads: int = 2) -> CLIPVisionModel:
    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image_size, patch_size=patch_size, projection_dim=hidden)
    return CLIPVisionModel(cfg)


def _vicuna_llm(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, max_positions: int, seed: int):
    """A random Llama with VoCo-LLaMA's (Vicuna's) special ids, wider than the default init so that
    positions and masks visibly matter."""
    torch.manual_seed(seed)
    llm_cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                          max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                          tie_word_embeddings=False)
    llm = LlamaForCausalLM(llm_cfg)
    for p in llm.parameters():
        p.data.normal_(0, 0.3 if p.ndim > 1 else 0.05).add_(1.0 if p.ndim == 1 else 0.0)
    return llm


def _llava15_config(llm, clip_hidden: int, aspect: str, **extra) -> dict:
    """LLaVA-1.5's config.json as VoCo-LLaMA's training code writes it (transformers 4.31)."""
    return llava_config(llm.config, **{
        "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"], "torch_dtype": "float32",
        "transformers_version": "4.31.0", "mm_hidden_size": clip_hidden, "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False, "image_aspect_ratio": aspect, "tokenizer_padding_side": "left",
        "tokenizer_model_max_length": 2048, "use_mm_proj": True, "freeze_mm_mlp_adapter": False, **extra})


def make_voco_checkpoint(directory: Path, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                         max_positions: int = 512, voco_num: int | None = None, seed: int = 0,
                         aspect: str = "pad") -> Path:
    directory = Path(directory)
    tower = _clip(56, 14, 32, 3, seed)
    vocab = write_vicuna_tokenizer(directory)
    llm = _vicuna_llm(vocab, hidden, layers, heads, kv_heads, max_positions, seed)
    state = {k: v.contiguous() for k, v in llm.state_dict().items()}
    clip_hidden = 32
    state[PROJECTOR + "0.weight"] = torch.randn(hidden, clip_hidden) * 0.3
    state[PROJECTOR + "0.bias"] = torch.randn(hidden) * 0.1
    state[PROJECTOR + "2.weight"] = torch.randn(hidden, hidden) * 0.3
    state[PROJECTOR + "2.bias"] = torch.randn(hidden) * 0.1
    vision = write_tower(directory.parent / (directory.name + "-clip"), tower)  # beside the model, as a hub id would be
    cfg = _llava15_config(llm, clip_hidden, aspect, mm_vision_tower=str(vision),
                          **({"voco_num": voco_num} if voco_num is not None else {}))
    return write_checkpoint(directory, cfg, state)


def make_pool_checkpoint(directory: Path, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                         max_positions: int = 512, seed: int = 0, aspect: str = "pad") -> Path:
    """The pool method's layout (``vidqa.methods.pool``): LLaVA-1.5's plus ``vidqa_method: pool`` and
    ``model.pool.{weight,bias}``; the CLIP tower in ``directory/clip`` (``mm_vision_tower: clip``)."""
    directory = Path(directory)
    tower = _clip(56, 14, 32, 3, seed)
    vocab = write_vicuna_tokenizer(directory)
    llm = _vicuna_llm(vocab, hidden, layers, heads, kv_heads, max_positions, seed)
    clip_hidden = 32
    state = {k: v.contiguous() for k, v in llm.state_dict().items()}
    state[POOL + "weight"] = torch.randn(hidden, clip_hidden) * 0.3
    state[POOL + "bias"] = torch.randn(hidden) * 0.1
    cfg = _llava15_config(llm, clip_hidden, aspect, vidqa_method="pool")
    return write_checkpoint(directory, cfg, state, tower=tower, tower_dir="clip")


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


def write_tiny_tokenizer(directory: str | Path, corpus: list[str] | None = None) -> dict[str, int]:
    """A byte-level ``PreTrainedTokenizerFast`` with Llama-3.1 special tokens and chat template.

    Written like the release: ``tokenizer.json`` plus a ``tokenizer_config.json`` that names
    ``PreTrainedTokenizerFast`` and holds the chat template. Returns the special tokens' ids.
    Without ``corpus`` it has no merges (one token per byte). With ``corpus``, BPE merges are trained
    on those texts until each of their words is one token, as under Llama-3's 128k vocabulary (the
    benchmarks' prompts then take about as many tokens as they would for real).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_level_alphabet()
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]) if not corpus else models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if corpus:
        from tokenizers import trainers

        trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + 8 * sum(len(t) for t in corpus), show_progress=False,
                                      initial_alphabet=alphabet)
        tok.train_from_iterator(corpus, trainer)
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
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    special = write_tiny_tokenizer(directory)
    vocab_size = 256 + len(_LLAMA31_SPECIALS)
    vocab_size += -vocab_size % 16  # embedding rows beyond the tokenizer, as real checkpoints often have
    clip_dir = directory / "clip-vision"
    tower = _clip(clip_image_size, clip_patch_size, clip_hidden_size, clip_layers, seed, heads=clip_heads)

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
    # Modules only provide the key names and shapes; every tensor is then replaced by seeded noise.
    llm_config = LlamaConfig(**{k: v for k, v in llm_keys.items() if k not in ("rope_theta", "rope_scaling")},
                             rope_parameters={**llm_keys["rope_scaling"], "rope_theta": llm_keys["rope_theta"]})
    parts: list[tuple[str, nn.Module]] = [
        ("", LlamaForCausalLM(llm_config)),
        (PROJECTOR, build_projector("mlp2x_gelu", clip_hidden_size, hidden_size)),
        (COMPRESSOR, Compressor(compressor_size, clip_hidden_size)),
        (PREFUSION, build_prefusion_layers(llm_config, prefusion_layer_num)),
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

    return write_checkpoint(directory, config, state, tower=tower, tower_dir=clip_dir.name, shards=num_shards)
