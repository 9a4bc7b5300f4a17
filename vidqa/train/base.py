"""The starting point of a real VoCo-LLaMA run: an LLM, a CLIP tower and a LLaVA projector, from

- a LLaVA-1.5 checkpoint (``model_type: llava_llama``, ``mm_*`` keys, ``model.mm_projector.*``, CLIP named by
  ``mm_vision_tower``), read through ``vidqa.checkpoint`` as inference reads it (a VoCo checkpoint, which
  already has ``<voco>``, continues training: the video stage);
- a transformers ``llava-hf`` checkpoint (``LlavaForConditionalGeneration``, ``model_type: llava``),
  loaded through transformers' own class (it knows every key spelling its versions wrote); its
  ``<image>`` / ``<pad>`` tokens and the embedding rows from ``image_token_index`` on are dropped, so
  that ``<voco>`` takes the id it has in the official code (32000 for Vicuna);
- or ``--llm`` (a Llama-family causal LM) + ``--vision-tower`` (CLIP) + ``--projector FILE`` (LLaVA's
  pretrained ``mm_projector.bin``, read with ``torch.load(weights_only=True)``, or a ``.safetensors``).

``add_voco`` then adds ``<voco>`` as the last id and grows the embeddings by exactly one row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidqa import checkpoint
from vidqa.errors import ModelError
from vidqa.methods.voco import VOCO_TOKEN
from vidqa.vision import CLIP_MEAN, CLIP_STD, Preprocess, VisionEncoder, build_projector, load_vision_tower


@dataclass
class Base:
    llm: nn.Module  # a LlamaForCausalLM (or another causal LM with .model.rotary_emb)
    tokenizer: Any
    vision: VisionEncoder
    projector: nn.Module
    mm: dict = field(default_factory=dict)  # the LLaVA config keys the export writes (select layer, projector type)
    source: str = ""


def _projector_kind(state: dict[str, torch.Tensor]) -> str:
    if set(state) == {"weight", "bias"}:
        return "linear"
    n = len({k.split(".")[0] for k in state})
    return f"mlp{n}x_gelu"


def _load_projector_file(file: Path, vision_hidden: int, hidden: int) -> tuple[nn.Module, str]:
    if not file.is_file():
        raise ModelError(f"--projector {file}: no such file")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(file))
        else:  # LLaVA's mm_projector.bin is a torch pickle: tensors only, no code
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"cannot read the projector {file} (tensors only): {type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{file} is not a projector state dict")
    for prefix in (checkpoint.PROJECTOR, "mm_projector.", "model.multi_modal_projector."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    kind = _projector_kind(state)
    projector = build_projector(kind, vision_hidden, hidden)
    try:
        projector.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"{file} does not fit a {kind} projector {vision_hidden} -> {hidden}: "
                         f"{str(e).splitlines()[0]}")
    return projector, kind


def _drop_tokens_from(tokenizer, cut: int):
    """The tokenizer without its added tokens of id >= ``cut`` (llava-hf's ``<image>``, ``<pad>``)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    gone = {t["content"] for t in spec.get("added_tokens", []) if t["id"] >= cut}
    spec["added_tokens"] = [t for t in spec.get("added_tokens", []) if t["id"] < cut]
    vocab = spec.get("model", {}).get("vocab")
    if isinstance(vocab, dict):
        spec["model"]["vocab"] = {k: v for k, v in vocab.items() if v < cut}
    specials = {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token", "unk_token")}
    out = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), **specials,
                                  pad_token=tokenizer.unk_token, padding_side="left")
    out.add_bos_token = True
    if len(out) != cut:
        raise ModelError(f"the llava-hf tokenizer has ids above {cut} that are not added tokens ({sorted(gone)})")
    return out


def _llava_hf(path: Path, dtype) -> Base:
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    cfg = checkpoint.read_config(path)
    try:
        model = LlavaForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise ModelError(f"cannot load the llava-hf checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}")
    c = model.config
    if getattr(c, "projector_hidden_act", "gelu") != "gelu" or getattr(c, "multimodal_projector_bias", True) is False:
        raise ModelError(f"{path}: only LLaVA's mlp2x_gelu projector (with biases) is supported")
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_config(c.text_config, dtype=dtype)
    llm.model.load_state_dict(model.model.language_model.state_dict())
    llm.lm_head.load_state_dict(model.lm_head.state_dict())
    cut = int(c.image_token_id if getattr(c, "image_token_id", None) is not None else c.image_token_index)
    if len(tokenizer) > cut:
        tokenizer = _drop_tokens_from(tokenizer, cut)
    if llm.get_input_embeddings().num_embeddings > cut:
        llm.resize_token_embeddings(cut, mean_resizing=False)  # rows cut.. are <image>, <pad> and padding
    tower = model.model.vision_tower
    layer = c.vision_feature_layer if isinstance(c.vision_feature_layer, int) else c.vision_feature_layer[-1]
    feature = "patch" if c.vision_feature_select_strategy == "default" else "cls_patch"
    mean, std = CLIP_MEAN, CLIP_STD
    for name in ("preprocessor_config.json", "processor_config.json"):
        if (path / name).is_file():
            d = json.loads((path / name).read_text())
            d = d.get("image_processor", d)
            mean, std = d.get("image_mean", mean), d.get("image_std", std)
    spec = Preprocess(size=tower.config.image_size, aspect="pad", mean=tuple(mean), std=tuple(std))
    vision = VisionEncoder(tower, int(layer), feature, spec)
    mmp = model.model.multi_modal_projector
    projector = build_projector("mlp2x_gelu", mmp.linear_1.in_features, mmp.linear_2.out_features)
    projector.load_state_dict({"0.weight": mmp.linear_1.weight, "0.bias": mmp.linear_1.bias,
                               "2.weight": mmp.linear_2.weight, "2.bias": mmp.linear_2.bias})
    del cfg
    return Base(llm, tokenizer, vision, projector.to(dtype),
                {"mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": int(layer),
                 "mm_vision_select_feature": feature}, str(path))


def _llava15(path: Path, cfg: dict, dtype) -> Base:
    tokenizer = checkpoint.load_tokenizer(path)
    llm = checkpoint.load_llm(path, cfg, torch.device("cpu"), dtype)
    vision = checkpoint.load_vision(path, cfg, torch.device("cpu"), dtype)
    projector = checkpoint.load_projector(path, cfg, llm.config.hidden_size).to(dtype)
    mm = {"mm_projector_type": cfg.get("mm_projector_type", "linear"),
          "mm_vision_select_layer": int(cfg.get("mm_vision_select_layer", -2)),
          "mm_vision_select_feature": cfg.get("mm_vision_select_feature", "patch")}
    if "voco_num" in cfg:
        mm["voco_num"] = cfg["voco_num"]
    return Base(llm, tokenizer, vision, projector, mm, str(path))


def load_base(base: str | None = None, *, llm: str | None = None, vision_tower: str | None = None,
              projector: str | None = None, select_layer: int = -2, dtype: torch.dtype = torch.float32) -> Base:
    """The parts of a run's starting point, on the CPU (see the module docstring for the layouts)."""
    if base:
        if llm or projector:
            raise ModelError("--base and --llm/--projector are two ways to name the start: give one")
        path = checkpoint.resolve(base)
        cfg = checkpoint.read_config(path)
        if cfg.get("model_type") == "llava":
            out = _llava_hf(path, dtype)
        elif "mm_vision_tower" in cfg or cfg.get("model_type") in checkpoint.KNOWN_MODEL_TYPES:
            if vision_tower:
                cfg = {**cfg, "mm_vision_tower": vision_tower}
            out = _llava15(path, cfg, dtype)
        else:
            raise ModelError(f"{path} is neither a LLaVA-1.5 checkpoint (mm_vision_tower) nor a llava-hf one "
                             f"(model_type llava); for a plain LLM pass --llm, --vision-tower and --projector")
    else:
        if not (llm and vision_tower and projector):
            raise ModelError("name the start: --base, or all of --llm, --vision-tower and --projector")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            lm = AutoModelForCausalLM.from_pretrained(llm, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(llm)
        except Exception as e:
            raise ModelError(f"cannot load the LLM {llm}: {type(e).__name__}: {str(e).splitlines()[0]}")
        tower = load_vision_tower(vision_tower, dtype, "cpu")
        vision = VisionEncoder(tower, select_layer, "patch", Preprocess(size=tower.config.image_size, aspect="pad"))
        proj, kind = _load_projector_file(Path(projector), tower.config.hidden_size, lm.config.hidden_size)
        out = Base(lm, tokenizer, vision, proj.to(dtype), {"mm_projector_type": kind,
                                                          "mm_vision_select_layer": select_layer,
                                                          "mm_vision_select_feature": "patch"}, str(llm))
    if not hasattr(getattr(out.llm, "model", None), "rotary_emb"):
        raise ModelError("the LLM is not a Llama-family decoder (VoCo needs RoPE and .model.rotary_emb)")
    return out


def add_voco(llm: nn.Module, tokenizer) -> int:
    """Add ``<voco>`` as the last id and grow the embeddings by exactly one row; returns its id.

    As VoCo-LLaMA's training (transformers 4.37's ``resize_token_embeddings``): the new input and output
    rows are drawn from the model's init distribution, N(0, ``initializer_range``), not a mean of rows.
    A tokenizer that already has ``<voco>`` as its last id with a matching table is left as it is.
    """
    n = llm.get_input_embeddings().num_embeddings
    have = tokenizer.convert_tokens_to_ids(VOCO_TOKEN)
    if have is not None and have != tokenizer.unk_token_id:
        if have != n - 1 or len(tokenizer) != n:
            raise ModelError(f"the base has <voco> = {have} but {n} embedding rows: <voco> must be the last id")
        return have
    if len(tokenizer) != n:
        raise ModelError(f"the tokenizer has {len(tokenizer)} tokens but the LLM {n} embedding rows; "
                         "<voco> must become id {n}")
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(VOCO_TOKEN, special=True, normalized=False)], special_tokens=True)
    voco = tokenizer.convert_tokens_to_ids(VOCO_TOKEN)
    if voco != n:
        raise ModelError(f"<voco> became id {voco}, not {n}")
    llm.resize_token_embeddings(n + 1, mean_resizing=False)
    std = float(getattr(llm.config, "initializer_range", 0.02))
    with torch.no_grad():
        llm.get_input_embeddings().weight[n].normal_(0.0, std)
        out = llm.get_output_embeddings()
        if out is not None and out.weight is not llm.get_input_embeddings().weight:
            out.weight[n].normal_(0.0, std)
    return voco
