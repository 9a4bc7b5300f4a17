"""The trainable model: vision tower + projector + LLM, plus the variant's input builder and the loss."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from vidqa.train.data import DataError, Sample
from vidqa.train.inputs import InputBuilder, builder_class, stack_rows
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

    def forward(self, pixels: torch.Tensor | None = None, samples: list[Sample] | None = None,
                owner: list[int] | None = None, records: list[dict] | None = None):
        """Cross-entropy over the answer tokens; also whether each first answer word is the argmax.

        ``owner`` packs a batch: ``pixels`` holds clips and ``owner[i]`` is the clip of sample i. The
        builder then puts all of a clip's questions in one sequence after its frames (each question sees
        the frames and itself only), so the frames go through the model once per clip instead of once
        per question; a builder that cannot pack these prompts gets each sample's clip in a plain batch.

        ``records`` (real instruction data, ``vidqa.train.stream``): ``record_loss`` instead (called through
        here so that FSDP's hooks on the root module run).
        """
        if records is not None:
            return self.record_loss(records)
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


    max_length: int = 2048  # rows longer than this are left out (record_loss)

    def record_loss(self, records: list[dict]):
        """Summed cross-entropy over every answer token of ``records`` (each a dict with ``frames`` uint8
        ``[T, S, S, 3]`` and ``turns``), the number of answer tokens, and the number of sequence tokens.

        Each gpt turn is one row: its question with the earlier turns as history (VoCo's Vicuna prompt),
        laid out by the builder's ``single`` pass (each frame's VoCo block, then the text), padded into
        one batch (``pack``: first-fit into sequences of at most ``max_length``, block-diagonal masks, each
        row its own positions: the same loss, less padding). The vision tower runs once over all frames of
        the micro-batch.
        """
        device = next(self.projector.parameters()).device
        frames = torch.cat([r["frames"] for r in records]).to(device, non_blocking=True)
        x = preprocess(frames, self.vision.spec, next(self.vision.parameters()).dtype)
        feats = self.vision(x).split([r["frames"].shape[0] for r in records])
        rows, answers = [], []
        for r, f in zip(records, feats):
            for k, (q, a) in enumerate(r["turns"]):
                prompt = self.inputs.voco.prompt_ids(q, list(r["turns"][:k]))
                answer = self.inputs.answer_ids(a)
                row = self.inputs.single(f, prompt, answer)
                if row[0].shape[0] <= self.max_length:
                    rows.append(row)
                    answers.append(answer)
        if not rows:  # every row too long: a zero loss that still touches the graph
            zero = sum(p.sum() for p in self.projector.parameters()) * 0.0
            return zero, 0, 0
        starts = [r[3] for r in rows]
        seq_sq = float(sum(e.shape[0] ** 2 for e, _, _, _ in rows))  # attention FLOPs (MFU), per record
        n_seq = int(sum(e.shape[0] for e, _, _, _ in rows))
        if getattr(self, "pack", False):  # several rows share a sequence, each seeing only itself
            rows, where = pack_rows(rows, self.max_length)
        else:
            where = [(b, 0) for b in range(len(rows))]
        E, M, P, _ = stack_rows(rows)
        r_idx = [where[i][0] for i, tgt in enumerate(answers) for _ in tgt]
        c_idx = [where[i][1] + st - 1 + k for i, (st, tgt) in enumerate(zip(starts, answers)) for k in range(len(tgt))]
        flat = torch.tensor([r_idx, c_idx, [t for tgt in answers for t in tgt]], device=device)
        labels = torch.full(E.shape[:2], -100, dtype=torch.long, device=device)
        labels[flat[0], flat[1]] = flat[2]
        if getattr(self, "attention", "sdpa") == "flex":  # scale.prepare switched the LLM to flex_attention_forward
            mask = block_mask(M)
        else:
            mask = torch.zeros(M.shape, dtype=E.dtype, device=device).masked_fill_(~M, torch.finfo(E.dtype).min)
        logits = self.llm(inputs_embeds=E, attention_mask=mask, position_ids=P).logits.float()
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        self.last_seq_sq = seq_sq
        return loss, int(flat.shape[1]), n_seq


def pack_rows(rows: list, max_length: int) -> tuple[list, list[tuple[int, int]]]:
    """Rows ``(embeds [L, D], mask [L, L], positions [L], start)`` packed first-fit into sequences of at most
    ``max_length``: each row keeps its own mask (block-diagonal: nothing across rows) and positions. Returns
    the packed rows and, per input row, ``(packed row, offset)``."""
    groups: list[list[int]] = []
    used: list[int] = []
    for i, r in enumerate(rows):
        n = r[0].shape[0]
        g = next((g for g, u in enumerate(used) if u + n <= max_length), None)
        if g is None:
            groups.append([i])
            used.append(n)
        else:
            groups[g].append(i)
            used[g] += n
    out, where = [], [(0, 0)] * len(rows)
    for b, g in enumerate(groups):
        L = used[b]
        mask = torch.zeros(L, L, dtype=torch.bool, device=rows[g[0]][1].device)
        off = 0
        for i in g:
            n = rows[i][0].shape[0]
            mask[off: off + n, off: off + n] = rows[i][1]
            where[i] = (b, off)
            off += n
        out.append((torch.cat([rows[i][0] for i in g]), mask, torch.cat([rows[i][2] for i in g]), 0))
    return out, where


def block_mask(M: torch.Tensor):
    """A FlexAttention ``BlockMask`` of a bool mask ``[B, 1, L, L]`` (True: may attend): exactly that mask,
    read inside the kernel only for the tiles that are partly masked; whole masked tiles are skipped."""
    from torch.nn.attention.flex_attention import create_block_mask

    dense = M[:, 0].contiguous()

    def mask_mod(b, h, q, kv):
        return dense[b, q, kv]

    B, L = dense.shape[0], dense.shape[-1]
    return create_block_mask(mask_mod, B, None, L, L, device=dense.device)


_compiled_flex = None


def flex_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention-function interface over FlexAttention (``attention_mask``: a ``BlockMask``).
    Compiled on GPUs (the fused kernel); eager elsewhere (the unfused reference: CPU tests)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    if not isinstance(attention_mask, BlockMask):  # a dense mask (inference on the trained model): plain SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    gqa = key.shape[1] != query.shape[1]
    if query.is_cuda:
        if _compiled_flex is None:  # one kernel per sequence length: real data's lengths vary
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        out = _compiled_flex(query, key, value, block_mask=attention_mask, scale=scaling, enable_gqa=gqa)
    elif torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        # FlexAttention has no backward on the CPU: the same mask, materialised, through SDPA
        from torch.nn.attention.flex_attention import create_mask

        B, L, S = query.shape[0], query.shape[2], key.shape[2]
        dense = create_mask(attention_mask.mask_mod, B, 1, L, S, device=query.device)
        return sdpa_fallback(module, query, key, value, dense, scaling, dropout, **kwargs)
    else:
        with warnings.catch_warnings():  # "called without torch.compile": the reference path, on purpose
            warnings.simplefilter("ignore", UserWarning)
            out = flex_attention(query, key, value, block_mask=attention_mask, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


def sdpa_fallback(module, query, key, value, allowed, scaling, dropout, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    mask = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
    mask = mask.masked_fill_(~allowed, torch.finfo(query.dtype).min)
    return sdpa_attention_forward(module, query, key, value, mask, scaling=scaling, dropout=dropout, **kwargs)


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


def build_from_base(base, tokens_per_frame: int = 2) -> Learner:
    """A VoCo Learner from a loaded base (``vidqa.train.base.load_base``): ``<voco>`` added (one new
    embedding row) and the VoCo input builder on its LLM, projector and tokenizer."""
    from vidqa.train.base import add_voco

    add_voco(base.llm, base.tokenizer)
    base.llm.config._attn_implementation = "sdpa"
    inputs = builder_class("voco").create(base.llm, base.projector, base.tokenizer,
                                          num_patches=base.vision.num_patches,
                                          vision_hidden=base.vision.hidden_size, tokens_per_frame=tokens_per_frame)
    learner = Learner(base.vision, base.projector, base.llm, base.tokenizer, inputs)
    learner.mm = dict(base.mm)
    return learner
