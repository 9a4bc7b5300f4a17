"""LLaVA-Mini behind vidqa's method interface, and its loader for the official checkpoint layout."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn
from transformers import DynamicCache, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from vidqa import checkpoint
from vidqa.checkpoint.llava import COMPRESSOR, PREFUSION, PROJECTOR, VISION_TOWER
from vidqa.errors import ContextError, ModelError
from vidqa.methods.base import FrameCache, Method, Prefill, register
from vidqa.methods.mini.layers import (Compressor, PrefusionKV, assemble_llm_inputs, build_prefusion_layers,
                                       encode_frames, hd_crop_boxes, prefusion_positions, prefusion_prefix_kv,
                                       prompt_embeddings)
from vidqa.methods.mini.head import PROBE_QUESTIONS, common_head, prefusion_tail
from vidqa.methods.mini.prompt import LlavaMiniOptions, build_prompt_ids, stop_token_ids
from vidqa.options import ModelOptions
from vidqa.vision import Preprocess, VisionEncoder, build_projector


class CheckpointKeyError(ModelError):
    """The checkpoint's keys do not match the LLaVA-Mini layout; ``missing`` and ``unexpected`` list them."""

    def __init__(self, path: Path, missing: list[str], unexpected: list[str]):
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... (+{len(keys) - 8} more)" if len(keys) > 8 else "") if keys else "none"

        super().__init__(f"{path}: {len(missing)} missing keys ({show(missing)}); "
                         f"{len(unexpected)} unexpected keys ({show(unexpected)})")
        self.missing = missing
        self.unexpected = unexpected


@dataclass
class LlavaMiniModules:
    """Everything of a LLaVA-Mini checkpoint except the CLIP tower (loaded from ``options.mm_vision_tower``)."""

    llm: nn.Module
    projector: nn.Module
    compressor: Compressor
    prefusion_layers: nn.ModuleList
    options: LlavaMiniOptions
    config: dict[str, Any]
    ignored_keys: list[str] = field(default_factory=list)  # model.vision_tower.* keys, if any

    @property
    def rotary_emb(self) -> nn.Module:
        return self.llm.model.rotary_emb

    @property
    def embed_tokens(self) -> nn.Module:
        return self.llm.get_input_embeddings()


def load_llava_mini_state(path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                          compressor_heads: int = 8) -> LlavaMiniModules:
    """Build the LLM, projector, compressor and pre-fusion layers and fill them key for key.

    Reads ``config.json``, the safetensors index and its shards. Modules are created on the meta device
    and the checkpoint tensors are assigned, so nothing is initialised twice. Raises
    :class:`CheckpointKeyError` listing missing and unexpected keys; ``model.vision_tower.*`` keys are
    tolerated and listed in ``ignored_keys``. ``dtype`` None keeps the stored dtypes.
    ``compressor_heads`` is not in the checkpoint; the official code hard-codes 8.
    """
    path = Path(path)
    cfg = checkpoint.read_config(path)
    options = dataclasses.replace(LlavaMiniOptions.from_config(cfg), compressor_heads=compressor_heads)
    llm_config = checkpoint.llm_config(cfg)

    with torch.device("meta"):
        llm = LlamaForCausalLM(llm_config)
        projector = build_projector(options.mm_projector_type, options.mm_hidden_size, llm_config.hidden_size)
        compressor = Compressor(options.compressor_size, options.mm_hidden_size, options.compressor_heads)
        prefusion = build_prefusion_layers(llm.config, options.prefusion_layer_num)
    parts: list[tuple[str, nn.Module]] = [(PROJECTOR, projector), (COMPRESSOR, compressor), (PREFUSION, prefusion), ("", llm)]
    expected = {prefix + k: v.shape for prefix, module in parts for k, v in module.state_dict().items()}
    if llm_config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)

    weight_map = checkpoint.weight_map(path)
    ignored = sorted(k for k in weight_map if k.startswith(VISION_TOWER))
    present = {k for k in weight_map if not k.startswith(VISION_TOWER)}
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected))
    if missing or unexpected:
        raise CheckpointKeyError(path, missing, unexpected)

    by_part: dict[str, dict[str, Tensor]] = {prefix: {} for prefix, _ in parts}
    for shard in sorted(set(weight_map[k] for k in present)):
        with safe_open(str(shard), framework="pt", device=str(device)) as f:
            for key in f.keys():
                if key not in present:
                    continue
                tensor = f.get_tensor(key)
                if tuple(tensor.shape) != tuple(expected[key]):
                    raise ModelError(f"{path}: {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key])}")
                if dtype is not None and tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                prefix = next(p for p, _ in parts if key.startswith(p))
                by_part[prefix][key[len(prefix):]] = tensor
    for prefix, module in parts:
        module.load_state_dict(by_part[prefix], strict=False, assign=True)
    if llm_config.tie_word_embeddings:
        llm.tie_weights()
    # RoPE tables are not in the checkpoint: rebuild them in float32 on the target device.
    llm.model.rotary_emb = LlamaRotaryEmbedding(config=llm.config).to(device)
    left = [n for m in (llm, projector, compressor, prefusion) for n, t in [*m.named_parameters(), *m.named_buffers()] if t.is_meta]
    if left:
        raise ModelError(f"{path}: tensors left uninitialised after loading: {', '.join(left[:8])}")
    for module in (llm, projector, compressor, prefusion):
        module.eval()
    return LlavaMiniModules(llm, projector, compressor, prefusion, options, cfg, ignored)


@register
class Mini(Method):
    """LLaVA-Mini behind vidqa's compression protocol.

    A frame's cache is *cache (b)*: the pre-fusion layers' K/V over its ``576 + C*C`` vision positions
    plus its fused compressed token(s). Both are question independent (causal attention), so a second
    question never runs CLIP, the compressor or the vision half of the pre-fusion again: it runs only
    its prompt tokens through the pre-fusion against each frame's K/V. It stores about twice the bytes
    of the projected features (cache a) and saves ~6x the per-question compute at 8B shapes.

    The prompt's head (template, system prompt, ``<image>``: everything before the question) is
    question independent too, so it is fused once per frame at compression and kept in the cache
    (``vidqa.methods.mini.head``): a question runs only its tail (~7 of 74 tokens under Llama-3.1)
    against ``[prefix K/V ; head K/V]``. A prompt that does not start with the stored head ids, and a
    cache without the head (stored before it, or compact), take the full path: same result.

    Frames go through the pre-fusion in chunks of ``chunk_frames`` while the fused text is summed in
    float32, so a long video's caches may stay on the CPU and stream to the GPU chunk by chunk.
    """

    name = "mini"

    def __init__(self, modules: LlavaMiniModules, tokenizer, chunk_frames: int = 64):
        super().__init__()
        self.llm = modules.llm
        self.projector, self.compressor, self.prefusion = modules.projector, modules.compressor, modules.prefusion_layers
        self.options = modules.options
        self.tokenizer = tokenizer
        self.tokens_per_frame = modules.options.tokens_per_frame
        # HD mode: each frame becomes r*r crops plus the whole frame (views), and the crops are compressed
        self.resolution_ratio = modules.options.resolution_ratio
        self.chunk_frames = chunk_frames
        self.compact_chunk_frames = 16
        self._head_ids: list[int] | None = None
        self.max_context = int(getattr(self.llm.config, "max_position_embeddings", 131072))
        self._stop = set(stop_token_ids(tokenizer))
        eos = tokenizer.eos_token_id
        if isinstance(eos, int):
            self._stop.add(eos)

    @classmethod
    def load(cls, path: Path, cfg: dict[str, Any], device: torch.device, dtype: torch.dtype,
             options: ModelOptions) -> tuple["Mini", VisionEncoder, Any]:
        """The official layout (``model_type: llava_mini_llama``); ``options.tokens_per_frame`` is ignored
        (the checkpoint's ``compressor_size`` fixes it)."""
        modules = load_llava_mini_state(path, dtype=dtype, device=device)
        tokenizer = checkpoint.load_tokenizer(path)
        # vision.spec is the official image path (process_images with the config); video frames: preprocess_spec
        vision = checkpoint.load_vision(path, cfg, device, dtype, options.vision_tower)
        return cls(modules, tokenizer), vision, tokenizer

    # The official evaluation (llavamini/eval/video/run_inference_video_qa.py) samples by get_seq_frames.
    sampling_rule = "seq"

    def preprocess_spec(self, spec: Preprocess, still: bool) -> Preprocess:
        """Still images: the config's ``process_images`` path. Video frames: the official ``load_video``
        squashes them to the tower's size with ``F.interpolate``'s default (nearest) and casts to uint8
        before the CLIP processor (which then leaves the size alone)."""
        if still:
            return spec
        return dataclasses.replace(spec, aspect="squash", resample="nearest")

    @property
    def stop_ids(self) -> set[int]:
        return self._stop

    def fit_before_views(self, still: bool) -> bool:
        return not (still and self.resolution_ratio != 1)  # HD crops are cut from the source image

    def views(self, pixels: Tensor) -> list[Tensor]:
        """HD mode (``resolution_ratio`` r > 1): r*r crops in row-major order, then the whole frame."""
        if self.resolution_ratio == 1:
            return [pixels]
        _, H, W, _ = pixels.shape
        return [pixels[:, top:bottom, left:right].contiguous()
                for left, top, right, bottom in hd_crop_boxes(W, H, self.resolution_ratio)]

    # The official prompt ends at the user's <|eot_id|> with no assistant header, so the model writes
    # the header itself; it is not part of the answer.
    answer_prefix = "assistant"

    def prompt_ids(self, question: str, history=()) -> list[int]:
        return build_prompt_ids(self.tokenizer, question, history=history).ids

    def cache_meta(self) -> dict[str, Any]:
        return {"method": self.name, "tokens_per_frame": self.tokens_per_frame,
                "resolution_ratio": self.resolution_ratio, "prefusion_layers": len(self.prefusion)}

    def max_frames(self, question: str, max_new_tokens: int, history=()) -> int:
        text = len(self.prompt_ids(question, history)) - 1  # the placeholder's slot is replaced by the frames
        room = self.max_context - text - max_new_tokens
        if room < self.tokens_per_frame:
            raise ContextError(f"the question takes {text} tokens: with one frame and {max_new_tokens} new tokens "
                               f"it does not fit the model's context of {self.max_context}")
        return room // self.tokens_per_frame

    # A compact cache: the raw CLIP features (1.2 MB a frame at CLIP-L, 8x less than the K/V). A question
    # then reruns projector, compressor and the whole pre-fusion per frame (about 6x the compute of the
    # K/V cache's prompt-only pass). vidqa.pipeline picks it when the K/V of a long video would not fit
    # in host memory (10,000 frames at 8B: 95 GB of K/V, 12 GB of features).
    supports_compact = True
    # The prompt head's tensors (see ``compress``): a K/V cache without them (stored before they
    # existed) is still whole; its questions take the full path.
    optional_cache_tensors = ("head_keys", "head_values", "head_text", "head_ids")

    def _dtype(self) -> torch.dtype:
        return self.projector[0].weight.dtype if isinstance(self.projector, nn.Sequential) else self.projector.weight.dtype

    @property
    def head_ids(self) -> list[int]:
        """The prompt ids every question shares (template, system prompt, ``<image>``, ...): the longest
        common prefix of dissimilar questions' prompts, found once."""
        if self._head_ids is None:
            prompts = [self.prompt_ids(q) for q in PROBE_QUESTIONS]
            head = common_head(prompts)
            # prompts that do not change with the question (a timing stand-in): no head, the full path
            self._head_ids = [] if any(len(head) == len(p) for p in prompts) else head
        return self._head_ids

    @torch.inference_mode()
    def compress(self, features: Tensor, compact: bool = False) -> dict[str, Tensor]:
        """A K/V cache: the pre-fusion K/V of each frame's prefix (``keys``/``values``), its fused vision
        tokens, and the prompt head's part (``head_keys``/``head_values`` of its visible tokens, rotated
        at their prompt positions; ``head_text``, its fused outputs; ``head_ids``, the ids it is for)."""
        dtype = self._dtype()
        if compact:
            return {"clip": features.to(dtype)}
        frames = encode_frames(features.to(dtype), self.compressor, self.projector, self.resolution_ratio)
        kv = prefusion_prefix_kv(self.prefusion, self.llm.model.rotary_emb, frames, compile=self.compile_kernels)
        out = {"keys": torch.stack(kv.keys, dim=1), "values": torch.stack(kv.values, dim=1),
               "vision_tokens": kv.vision_tokens}
        head = self.head_ids
        if head:
            ids = torch.tensor(head, device=kv.vision_tokens.device)
            embeds, visible = prompt_embeddings(self.llm.get_input_embeddings(), ids)
            positions = prefusion_positions(kv.num_prefix, visible)[kv.num_prefix:]
            text, hk, hv = prefusion_tail(self.prefusion, self.llm.model.rotary_emb, [[k] for k in kv.keys],
                                          [[v] for v in kv.values], embeds, visible, positions, keep_kv=True)
            n = kv.num_frames
            out.update(head_keys=torch.stack(hk, dim=1), head_values=torch.stack(hv, dim=1), head_text=text,
                       head_ids=ids.to(torch.int32)[None].expand(n, -1).contiguous())
        return out

    def _stored_head(self, cache: FrameCache, ids: list[int]) -> int:
        """How many leading prompt ids the cache's stored head covers: its length if the prompt starts
        with exactly its ids (and goes on past it), else 0 (the full path)."""
        stored = cache.tensors.get("head_ids")
        if cache.compact or stored is None or not set(self.optional_cache_tensors) <= set(cache.tensors) \
                or stored.shape[1] == 0:
            return 0
        n = stored.shape[1]
        if len(ids) <= n or cache.num_frames == 0:
            return 0
        rows = stored.cpu()
        if rows[0].tolist() != ids[:n] or not bool((rows == rows[0]).all()):
            return 0
        return n

    @torch.inference_mode()
    def prefill(self, cache: FrameCache, question: str, history=()) -> Prefill:
        if cache.meta.get("method") != self.name or cache.meta.get("resolution_ratio") != self.resolution_ratio:
            raise ModelError("this frame cache was made with other LLaVA-Mini settings; recompute it")
        device = self.llm.get_input_embeddings().weight.device
        id_list = self.prompt_ids(question, history)
        ids = torch.tensor(id_list, device=device)
        embeds, visible = prompt_embeddings(self.llm.get_input_embeddings(), ids)
        n_head = self._stored_head(cache, id_list)
        total, tokens = None, []
        # a compact cache reruns the whole pre-fusion per frame: smaller chunks bound its activations
        # (a 64-frame chunk at 8B peaks at ~5 GB; 16 frames at ~1.3 GB)
        step = self.compact_chunk_frames if cache.compact else self.chunk_frames
        positions = None
        for i in range(0, cache.num_frames, step):
            part = slice(i, i + step)
            kv = self._chunk_kv(cache, part, device)
            if positions is None:  # the full prompt's positions; the tail's are its last ones
                positions = prefusion_positions(kv.num_prefix, visible)[kv.num_prefix:]
            keys, values = [[k] for k in kv.keys], [[v] for v in kv.values]
            if n_head:
                t = cache.tensors
                hk, hv = t["head_keys"][part].to(device), t["head_values"][part].to(device)
                for layer in range(hk.shape[1]):
                    keys[layer].append(hk[:, layer])
                    values[layer].append(hv[:, layer])
            text, _, _ = prefusion_tail(self.prefusion, self.llm.model.rotary_emb, keys, values, embeds[n_head:],
                                        visible[n_head:], positions[n_head:])
            chunk_sum = text.float().sum(0)
            if n_head:
                chunk_sum = torch.cat([cache.tensors["head_text"][part].to(device).float().sum(0), chunk_sum])
            total = chunk_sum if total is None else total + chunk_sum
            tokens.append(kv.vision_tokens)
        fused_text = (total / cache.num_frames).to(embeds.dtype)  # mean over frames, in float32, as the official code
        vision = torch.cat(tokens)
        frames_tokens = vision.reshape(-1, vision.shape[-1])
        inputs = assemble_llm_inputs(fused_text, ids, frames_tokens)[None]
        pos = torch.arange(inputs.shape[1], device=device)[None]
        return Prefill(past_key_values=DynamicCache(), position_ids=pos, inputs_embeds=inputs)

    def _chunk_kv(self, cache: FrameCache, part: slice, device) -> PrefusionKV:
        """The pre-fusion K/V of some frames: read from a K/V cache, or recomputed from a compact one."""
        t = cache.tensors
        if cache.compact:
            frames = encode_frames(t["clip"][part].to(device), self.compressor, self.projector, self.resolution_ratio)
            return prefusion_prefix_kv(self.prefusion, self.llm.model.rotary_emb, frames, compile=self.compile_kernels)
        keys, values = t["keys"], t["values"]
        return PrefusionKV(tuple(keys[part, l].to(device) for l in range(keys.shape[1])),
                           tuple(values[part, l].to(device) for l in range(values.shape[1])),
                           t["vision_tokens"][part].to(device), keys.shape[3])
