"""`vidqa train`: learn VoCo-LLaMA or LLaVA-Mini compression, and make small demo models from scratch.

No VoCo-LLaMA weights exist, so a VoCo model has to be trained. Training runs the very functions that
inference runs:

- VoCo: ``VoCo.frame_embeds`` and ``VoCo.masked_inputs``, the single masked pass that
  ``tests/test_voco.py`` proves equal to compress-then-prefill; gradients reach the VoCo K/V through it.
- LLaVA-Mini: ``mini.encode_frames``, ``mini.prefusion_full``, ``mini.fuse_video``,
  ``mini.assemble_llm_inputs``, which ``tests/test_pipeline.py`` proves equal to the cached path.

Two more variants exist for the retention table only: ``full`` (every vision token visible to the
text: the upper bound) and ``pool`` (each frame's features averaged, then a linear layer: 1 token).

Data: the synthetic set (``vidqa.synthetic``, rendered on the fly) or LLaVA-style JSON
(``[{"video"|"image": path, "conversations": [{"from": "human", "value": "<image>\\nQ"},
{"from": "gpt", "value": "A"}, ...]}]``). Several GPUs: ``torchrun --nproc-per-node N -m vidqa train``
(DistributedDataParallel).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidqa.errors import VidqaError

IMAGE = "<image>"
VOCO = "<voco>"
LLAMA31_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                    "<|eom_id|>", "<|eot_id|>"]


class DataError(VidqaError):
    """Training data that cannot be used (with --on-bad refuse)."""


# ---- tokenizer ---------------------------------------------------------------------------------------

def template_words(method: str) -> list[str]:
    """Every word the prompts of a method use, so that a small word-level vocabulary covers them."""
    from vidqa.methods import mini, voco

    text = voco.vicuna_prompt("x") if method == "voco" else mini.LLAVA_MINI_SYSTEM_PROMPT + \
        " Cutting Knowledge Date: December 2023 Today Date: 26 Jul 2024 system user assistant"
    return re.findall(r"\w+|[^\w\s]", text)


def make_word_tokenizer(directory: Path, corpus: list[str], method: str) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` for small demo models, saved in ``directory``.

    VoCo: ``<unk> <s> </s>`` then ``<voco>``; Mini: the Llama-3.1 special tokens and a Llama-3.1-style
    chat template (the one vidqa's tiny official-layout checkpoints use).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in corpus for w in re.findall(r"\w+|[^\w\s]", text.lower())} |
                   {w.lower() for w in template_words(method)})
    specials = ["<unk>", "<s>", "</s>", "<pad>"] + ([VOCO] if method == "voco" else LLAMA31_SPECIALS)
    vocab = {tok: i for i, tok in enumerate(specials + [w for w in words if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()  # "What colour ..." reads as the training text does
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    bos = "<s>" if method == "voco" else "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    kwargs: dict[str, Any] = dict(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token=bos,
                                  eos_token="</s>" if method == "voco" else "<|eot_id|>",
                                  additional_special_tokens=[VOCO] if method == "voco" else LLAMA31_SPECIALS[1:])
    if method == "mini":
        from vidqa.testing import TINY_LLAMA31_CHAT_TEMPLATE

        kwargs["chat_template"] = TINY_LLAMA31_CHAT_TEMPLATE
    out = PreTrainedTokenizerFast(**kwargs)
    out.save_pretrained(str(directory))
    return out


# ---- data --------------------------------------------------------------------------------------------

@dataclass
class Sample:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    question: str
    answer: str
    category: int = -1


class SyntheticData:
    """Clips of ``vidqa.synthetic`` at the frames ``--fps 1`` samples (segment midpoints), with QA."""

    def __init__(self, n_clips: int, seed: int, size: int = 64, fps: float = 2, workers: int = 1):
        from vidqa import synthetic

        self.size = size
        jobs = [(seed, i, size, fps) for i in range(n_clips)]
        if workers > 1:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                rendered = pool.map(_render_clip, jobs, chunksize=64)
        else:
            rendered = [_render_clip(j) for j in jobs]
        self.frames = np.stack([r[0] for r in rendered])  # [N, T, H, W, 3]
        self.qa = [(i, q["question"], q["answer"], q["category_id"]) for i, r in enumerate(rendered) for q in r[1]]
        self.by_clip: list[list[int]] = [[] for _ in rendered]  # QA items of each clip (packed batches)
        for k, (clip, *_) in enumerate(self.qa):
            self.by_clip[clip].append(k)
        self.categories = synthetic.CATEGORIES

    def __len__(self) -> int:
        return len(self.qa)

    def __getitem__(self, i: int) -> Sample:
        clip, q, a, c = self.qa[i]
        return Sample(self.frames[clip], q, a, c)

    def pixels(self, idx: list[int], device: torch.device) -> torch.Tensor:
        """uint8 ``[B, T, H, W, 3]`` for QA items ``idx``; the clips stay on ``device`` after the first call."""
        if getattr(self, "_on", None) is None or self._on.device != device:
            self._on = torch.from_numpy(self.frames).to(device)
            self._clip_of = torch.tensor([c for c, *_ in self.qa], device=device)
        return self._on[self._clip_of[torch.tensor(idx, device=device)]]

    def clip_pixels(self, clips: list[int], device: torch.device) -> torch.Tensor:
        """uint8 ``[C, T, H, W, 3]`` of whole clips (packed batches)."""
        self.pixels([0], device)
        return self._on[torch.tensor(clips, device=device)]

    def texts(self) -> list[str]:
        return [t for _, q, a, _ in self.qa for t in (q, a)]


def _render_clip(job):
    from vidqa import synthetic

    seed, index, size, fps = job
    spec = synthetic.make_clip(seed, index)
    frames = synthetic.render_frames(spec, size=size, fps=fps)
    n = int(round(spec.seconds))  # 1 fps, segment midpoints, as `vidqa ask` samples by default
    pick = np.minimum(((np.arange(n) + 0.5) * fps).astype(int), len(frames) - 1)
    return frames[pick], synthetic.questions(spec, np.random.default_rng([seed, index, 1]))


class JsonData:
    """LLaVA-style conversations with image or video paths; bad records reported by index."""

    def __init__(self, path: str | Path, media_root: str | Path | None = None, on_bad: str = "skip",
                 num_frames: int = 8, report: Callable[[str], None] = print):
        from vidqa.video import Sampling, load_frames

        path = Path(path)
        try:
            records = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read training data {path}: {e}")
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a JSON list of conversations")
        root = Path(media_root) if media_root else path.parent
        self.samples: list[Sample] = []
        self.bad: list[tuple[int, str]] = []
        for i, rec in enumerate(records):
            try:
                media = rec.get("video") or rec.get("image") if isinstance(rec, dict) else None
                turns = rec.get("conversations") if isinstance(rec, dict) else None
                if not media or not isinstance(turns, list) or len(turns) < 2:
                    raise DataError("needs an image or video path and at least one human/gpt pair")
                frames = load_frames(root / media, Sampling(num_frames=num_frames))
                for h, g in zip(turns[::2], turns[1::2]):
                    q = str(h.get("value", "")).replace(IMAGE, "").strip()
                    a = str(g.get("value", "")).strip()
                    if h.get("from") != "human" or g.get("from") != "gpt" or not q or not a:
                        raise DataError("a turn is malformed or its question or answer is empty")
                    self.samples.append(Sample(frames.pixels, q, a))
            except VidqaError as e:
                self.bad.append((i, str(e)))
                if on_bad == "refuse":
                    raise DataError(f"{path}: record {i}: {e} (--on-bad skip to leave such records out)")
                report(f"skipping record {i}: {e}")
        if not self.samples:
            raise DataError(f"{path}: no usable training records")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    def texts(self) -> list[str]:
        return [t for s in self.samples for t in (s.question, s.answer)]


# ---- the trainable model -------------------------------------------------------------------------

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
    """Vision tower + projector + LLM (+ compressor and pre-fusion for Mini) with a training loss.

    ``variant``: ``voco`` | ``mini`` | ``full`` (every vision token visible) | ``pool`` (mean + linear).
    """

    def __init__(self, variant: str, vision, projector, llm, tokenizer, *, tokens_per_frame: int = 1,
                 mini_modules=None, pool: nn.Module | None = None):
        super().__init__()
        from vidqa.methods.voco import VoCo

        self.variant, self.vision, self.projector, self.llm, self.tokenizer = variant, vision, projector, llm, tokenizer
        self.pool = pool
        if variant == "mini":
            from vidqa.methods.mini import Mini

            self.mini = Mini(mini_modules, tokenizer)
            self.compressor, self.prefusion = mini_modules.compressor, mini_modules.prefusion_layers
        else:
            self.voco = VoCo(llm, projector, tokenizer, vision.num_patches, tokens_per_frame=tokens_per_frame)
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        self._ids: dict[tuple[str, str], list[int]] = {}  # tokenising every step costs more than a tiny model's step

    def prompt_ids(self, question: str) -> list[int]:
        key = ("q", question)
        if key not in self._ids:
            self._ids[key] = self.mini.prompt_ids(question) if self.variant == "mini" else self.voco.prompt_ids(question)
        return self._ids[key]

    def answer_ids(self, answer: str) -> list[int]:
        key = ("a", answer)
        if key not in self._ids:
            self._ids[key] = self._answer_ids(answer)
        return self._ids[key]

    def _answer_ids(self, answer: str) -> list[int]:
        """What the model must write: VoCo's Vicuna turn ends with </s>; Mini writes its header first."""
        words = self.tokenizer(" " + answer, add_special_tokens=False).input_ids
        if self.variant == "mini":
            t = self.tokenizer
            head = [t.convert_tokens_to_ids("<|start_header_id|>")] + \
                t("assistant", add_special_tokens=False).input_ids + [t.convert_tokens_to_ids("<|end_header_id|>")]
            return head + words + [self.eos]
        return words + [self.eos]

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, T, H, W, 3]`` to CLIP features ``[B, T, P, C]`` (differentiable)."""
        from vidqa.vision import preprocess

        B, T = pixels.shape[:2]
        x = preprocess(pixels.flatten(0, 1), self.vision.spec, next(self.vision.parameters()).dtype)
        return self.vision(x).view(B, T, self.vision.num_patches, -1)

    def forward(self, pixels: torch.Tensor, samples: list[Sample], owner: list[int] | None = None):
        """Cross-entropy over the answer tokens; also whether each first answer word is the argmax.

        ``owner`` packs a batch: ``pixels`` holds clips and ``owner[i]`` is the clip of sample i. VoCo,
        full and pool then put all of a clip's questions in one sequence after its frames (each question
        sees the frames and itself only), so the frames' positions go through the LLM once per clip
        instead of once per question. LLaVA-Mini packs both stages: the pre-fusion runs each frame once
        with all of the clip's questions after it, and the LLM runs the clip's tokens once.
        """
        feats = self.features(pixels)
        device = feats.device
        prompts = [self.prompt_ids(s.question) for s in samples]
        answers = [self.answer_ids(s.answer) for s in samples]
        rows = list(range(len(samples)))
        packed = None if owner is None or self.variant != "mini" else self._mini_packed(feats, prompts, answers, owner)
        if packed is not None:
            E, M, P, starts = packed
            rows = list(owner)
        elif self.variant == "mini":  # each prompt goes through the pre-fusion with its own frames
            f = feats if owner is None else feats[torch.tensor(owner, device=device)]
            E, M, P, starts = self._mini_batched(f, prompts, answers)
        elif owner is None:
            E, M, P, starts = self._batched(feats, prompts, answers)
        else:
            E, M, P, starts = self._packed(feats, prompts, answers, owner)
            rows = list(owner)
        # labels in one host-to-device copy (logits at i predict i + 1)
        r_idx = [r for r, tgt in zip(rows, answers) for _ in tgt]
        c_idx = [st - 1 + k for st, tgt in zip(starts, answers) for k in range(len(tgt))]
        flat = torch.tensor([r_idx, c_idx, [t for tgt in answers for t in tgt]], device=device)
        labels = torch.full(E.shape[:2], -100, dtype=torch.long, device=device)
        labels[flat[0], flat[1]] = flat[2]
        mask = torch.zeros(M.shape, dtype=E.dtype, device=device).masked_fill_(~M, torch.finfo(E.dtype).min)
        logits = self.llm(inputs_embeds=E, attention_mask=mask, position_ids=P).logits.float()
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        skip = 3 if self.variant == "mini" else 0  # Mini writes its role header before the answer word
        word_at = [st - 1 + skip for st in starts]
        where = torch.tensor([rows, word_at, [a[skip] for a in answers]], device=device)
        pred = logits[where[0], where[1]].argmax(-1)
        return loss, pred == where[2], word_at

    def _packed(self, feats: torch.Tensor, prompts: list[list[int]], answers: list[list[int]], owner: list[int]):
        """voco / full / pool: one sequence per clip, ``[frames, q1 a1, q2 a2, ...]``; question k sees the
        frames as it would alone (same mask rule, same positions) and itself, causally, and nothing of
        the other questions. ``tests/test_train.py`` checks every question against its own pass."""
        C, T = feats.shape[:2]
        device = feats.device
        embed = self.llm.get_input_embeddings()
        if self.variant == "voco":
            blocks = self.voco.frame_embeds(feats.flatten(0, 1))
            prefix = blocks.reshape(C, -1, blocks.shape[-1])
            layout, layout_pos = self.voco.single_pass_layout(T, 1, device)
        else:
            vis = self.projector(feats).flatten(1, 2) if self.variant == "full" else self.pool(feats.mean(dim=2))
            prefix = torch.cat([embed(torch.full((C, 1), self.bos, device=device)), vis], dim=1)
            n = prefix.shape[1] + 1
            layout, layout_pos = torch.ones(n, n, dtype=torch.bool, device=device).tril(), torch.arange(n, device=device)
        P = prefix.shape[1]
        streams: list[list[int]] = [[] for _ in range(C)]
        qid: list[list[int]] = [[] for _ in range(C)]
        local: list[list[int]] = [[] for _ in range(C)]
        starts = []
        for i, (p, a, c) in enumerate(zip(prompts, answers, owner)):
            starts.append(P + len(streams[c]) + len(p))
            streams[c] += p + a
            qid[c] += [i] * (len(p) + len(a))
            local[c] += list(range(len(p) + len(a)))
        n = max(len(x) for x in streams)
        packed = torch.tensor([[x + [0] * (n - len(x)) for x in streams], [q + [-1] * (n - len(q)) for q in qid],
                               [o + [0] * (n - len(o)) for o in local]], device=device)
        ids, q, off = packed[0], packed[1], packed[2]
        E = torch.cat([prefix, embed(ids).to(prefix.dtype)], dim=1)
        L = P + n
        valid = q >= 0
        M = torch.zeros(C, L, L, dtype=torch.bool, device=device)
        M[:, :P, :P] = layout[:P, :P]
        M[:, P:, :P] = valid[:, :, None] & layout[P, :P][None, None, :]  # what a text token sees of the frames
        text = torch.ones(n, n, dtype=torch.bool, device=device).tril()[None] & (q[:, :, None] == q[:, None, :])
        eye = torch.eye(n, dtype=torch.bool, device=device)[None]
        M[:, P:, P:] = (text & valid[:, :, None]) | (eye & ~valid[:, :, None])  # padding sees only itself
        pos = torch.cat([layout_pos[:P].expand(C, -1), layout_pos[P] + off], dim=1)
        return E, M.unsqueeze(1), pos, starts

    def _mini_packed(self, feats: torch.Tensor, prompts: list[list[int]], answers: list[list[int]], owner: list[int]):
        """LLaVA-Mini with a clip's questions packed, or None when the prompts differ before ``<image>``.

        Pre-fusion, per frame: ``[vision prefix, text before <image>, q1 after <image>, q2 ..., pad]``;
        the shared text sees the prefix, each question the prefix, the shared text and itself, causally,
        at the positions it has alone (the placeholder is no key and takes no position, as in the
        official pass). LLM, per clip: ``[fused text before <image>, T vision tokens, q1 + a1, q2 + a2,
        ...]`` with ``_packed``'s rule. ``tests/test_train.py`` checks every question against its own pass.
        """
        from vidqa.methods import mini

        where = {p.index(mini.IMAGE_TOKEN_INDEX) for p in prompts}
        if len(where) != 1:
            return None
        i = where.pop()
        pre = prompts[0][:i]
        if any(p[:i] != pre for p in prompts):
            return None
        C, T = feats.shape[:2]
        device = feats.device
        embed = self.llm.get_input_embeddings()
        frames = mini.encode_frames(feats.flatten(0, 1), self.compressor, self.projector, 1)
        n_prefix, n_comp = frames.num_prefix, frames.compressed.shape[1]
        # ---- the pre-fusion rows: host lists, then one copy to the device
        text: list[list[int]] = [list(pre) for _ in range(C)]
        qid: list[list[int]] = [[-1] * i for _ in range(C)]
        pos: list[list[int]] = [[] for _ in range(C)]
        vis_pre = [t > 0 for t in pre]
        shared = sum(vis_pre)
        for c in range(C):
            k = 0
            for v in vis_pre:
                pos[c].append(n_prefix + k if v else 1)
                k += v
        where_post: list[int] = []  # where each question's post-<image> text starts in its clip's row
        for q, (p, c) in enumerate(zip(prompts, owner)):
            post = p[i + 1:]
            where_post.append(len(text[c]))
            text[c] += post
            qid[c] += [q] * len(post)
            k = shared
            for t in post:
                pos[c].append(n_prefix + k if t > 0 else 1)
                k += t > 0
        n = max(len(t) for t in text)
        rows = torch.tensor([[t + [0] * (n - len(t)) for t in text], [q + [-2] * (n - len(q)) for q in qid],
                             [x + [1] * (n - len(x)) for x in pos]], device=device)
        ids, q_of, t_pos = rows[0], rows[1], rows[2]
        t_emb, visible = mini.prompt_embeddings(embed, ids)  # [C, n, H], [C, n]
        L = n_prefix + n
        kind = torch.cat([torch.full((C, n_prefix), -1, device=device), q_of], dim=1)  # -1 prefix/shared
        keys = torch.cat([torch.ones(C, n_prefix, dtype=torch.bool, device=device), visible], dim=1)
        causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        same = (kind[:, None, :] == -1) | (kind[:, None, :] == kind[:, :, None])
        allowed = causal[None] & keys[:, None, :] & same  # [C, L, L]
        mask = torch.zeros(C, 1, L, L, dtype=frames.vision.dtype, device=device)
        mask = mask.masked_fill(~allowed[:, None], torch.finfo(mask.dtype).min).repeat_interleave(T, 0)
        x = torch.cat([frames.prefix(), t_emb.to(frames.vision.dtype).repeat_interleave(T, 0)], dim=1)
        p_ids = torch.cat([torch.arange(n_prefix, device=device).expand(C, -1), t_pos], dim=1).repeat_interleave(T, 0)
        out = mini.run_layers(self.prefusion, self.llm.model.rotary_emb, x, p_ids, mask)
        vis = visible.repeat_interleave(T, 0)
        fused = torch.where(vis[:, :, None], out[:, n_prefix:], x[:, n_prefix:])
        fused = fused.view(C, T, n, -1).float().mean(dim=1).to(fused.dtype)  # mean over frames, in float32
        vision = out[:, n_prefix - n_comp: n_prefix].reshape(C, T * n_comp, -1).to(fused.dtype)
        # ---- the LLM rows: [fused shared text, vision, then per question its fused text and its answer]
        P = i + T * n_comp
        src: list[list[int]] = [[] for _ in range(C)]  # index into the clip's fused text, or -1: plain answer
        plain: list[list[int]] = [[] for _ in range(C)]
        sq: list[list[int]] = [[] for _ in range(C)]
        local: list[list[int]] = [[] for _ in range(C)]
        starts = []
        for q, (p, a, c) in enumerate(zip(prompts, answers, owner)):
            m = len(p) - i - 1
            starts.append(P + len(src[c]) + m)
            src[c] += list(range(where_post[q], where_post[q] + m)) + [-1] * len(a)
            plain[c] += [0] * m + list(a)
            sq[c] += [q] * (m + len(a))
            local[c] += list(range(m + len(a)))
        w = max(len(x) for x in src)
        llm_rows = torch.tensor([[x + [-1] * (w - len(x)) for x in src], [x + [0] * (w - len(x)) for x in plain],
                                 [x + [-1] * (w - len(x)) for x in sq], [x + [0] * (w - len(x)) for x in local]],
                                device=device)
        s_idx, s_plain, s_q, s_off = llm_rows
        gathered = torch.gather(fused, 1, s_idx.clamp(min=0)[:, :, None].expand(-1, -1, fused.shape[-1]))
        stream = torch.where((s_idx >= 0)[:, :, None], gathered, embed(s_plain).to(fused.dtype))
        E = torch.cat([fused[:, :i], vision, stream], dim=1)
        valid = s_q >= 0
        M = torch.zeros(C, P + w, P + w, dtype=torch.bool, device=device)
        M[:, :P, :P] = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        M[:, P:, :P] = valid[:, :, None]
        tri = torch.ones(w, w, dtype=torch.bool, device=device).tril()[None] & (s_q[:, :, None] == s_q[:, None, :])
        eye = torch.eye(w, dtype=torch.bool, device=device)[None]
        M[:, P:, P:] = (tri & valid[:, :, None]) | (eye & ~valid[:, :, None])  # padding sees only itself
        positions = torch.cat([torch.arange(P, device=device).expand(C, -1), P + s_off], dim=1)
        return E, M.unsqueeze(1), positions, starts

    def _batched(self, feats: torch.Tensor, prompts: list[list[int]], answers: list[list[int]]):
        """Vectorised inputs for voco / full / pool: one layout for the batch, text padded on the right."""
        B, T = feats.shape[:2]
        device = feats.device
        texts = [p + a for p, a in zip(prompts, answers)]
        n_text = max(len(t) for t in texts)
        ids = torch.tensor([t + [0] * (n_text - len(t)) for t in texts], device=device)
        embed = self.llm.get_input_embeddings()
        if self.variant == "voco":
            blocks = self.voco.frame_embeds(feats.flatten(0, 1))  # [B*T, blk, D]
            vis = blocks.reshape(B, -1, blocks.shape[-1])
            mask, pos = self.voco.single_pass_layout(T, n_text, device)
            E = torch.cat([vis, embed(ids)], dim=1)
        else:
            vis = self.projector(feats).flatten(1, 2) if self.variant == "full" else self.pool(feats.mean(dim=2))
            bos = embed(torch.full((B, 1), self.bos, device=device))
            E = torch.cat([bos, vis, embed(ids)], dim=1)
            L = E.shape[1]
            mask = torch.ones(L, L, dtype=torch.bool, device=device).tril()
            pos = torch.arange(L, device=device)
        L, prefix = E.shape[1], E.shape[1] - n_text
        lengths = torch.tensor([prefix + len(t) for t in texts], device=device)
        pad = torch.arange(L, device=device).view(1, -1) >= lengths.view(-1, 1)  # [B, L]
        eye = torch.eye(L, dtype=torch.bool, device=device)
        M = (mask.unsqueeze(0) & ~pad.unsqueeze(1)) | (eye.unsqueeze(0) & pad.unsqueeze(2))
        starts = [prefix + len(p) for p in prompts]
        return E, M.unsqueeze(1), pos.expand(B, -1), starts

    def _mini_batched(self, feats: torch.Tensor, prompts: list[list[int]], answers: list[list[int]]):
        """Vectorised LLaVA-Mini inputs: every frame of every sample through the pre-fusion at once.

        Prompts are right-padded with id 0, which the official pre-fusion treats as invisible (no key,
        no position, output replaced), so padding changes nothing; then the same layout as ``_inputs``:
        ``[fused text before <image>, T*C vision tokens, fused text after, answer]``, padded on the right.
        ``tests/test_train.py`` checks each sample against its own ``_inputs`` pass.
        """
        from vidqa.methods import mini

        where = {p.index(mini.IMAGE_TOKEN_INDEX) for p in prompts}
        if len(where) != 1:  # the placeholder moved (a different template per sample): one at a time
            return self._stack([self._inputs(feats[b], p, a) for b, (p, a) in enumerate(zip(prompts, answers))])
        i = where.pop()
        B, T = feats.shape[:2]
        device = feats.device
        embed = self.llm.get_input_embeddings()
        frames = mini.encode_frames(feats.flatten(0, 1), self.compressor, self.projector, 1)
        n = max(len(p) for p in prompts)
        ids = torch.tensor([p + [0] * (n - len(p)) for p in prompts], device=device)
        t_emb, visible = mini.prompt_embeddings(embed, ids)  # [B, n, H], [B, n]
        n_prefix, n_comp = frames.num_prefix, frames.compressed.shape[1]
        x = torch.cat([frames.prefix(), t_emb.to(frames.vision.dtype).repeat_interleave(T, 0)], dim=1)
        vis = visible.repeat_interleave(T, 0)  # [B*T, n]
        keys = torch.cat([torch.ones(B * T, n_prefix, dtype=torch.bool, device=device), vis], dim=1)
        causal = torch.ones(n_prefix + n, n_prefix + n, dtype=torch.bool, device=device).tril()
        mask = torch.zeros(keys.shape[0], 1, *causal.shape, dtype=x.dtype, device=device)
        mask = mask.masked_fill(~(causal[None, None] & keys[:, None, None, :]), torch.finfo(x.dtype).min)
        pos = (keys.long().cumsum(1) - 1).masked_fill(~keys, 1)
        out = mini.run_layers(self.prefusion, self.llm.model.rotary_emb, x, pos, mask)
        fused = torch.where(vis[:, :, None], out[:, n_prefix:], x[:, n_prefix:])  # [B*T, n, H]
        text = fused.view(B, T, n, -1).float().mean(dim=1).to(fused.dtype)  # mean over frames, in float32
        vision = out[:, n_prefix - n_comp: n_prefix].reshape(B, T * n_comp, -1)
        # after the placeholder: the rest of the prompt (fused) then the answer (plain embeddings)
        tails = [p[i + 1:] + a for p, a in zip(prompts, answers)]
        m = max(len(t) for t in tails)
        tail_ids = torch.tensor([t + [0] * (m - len(t)) for t in tails], device=device)
        tail = embed(tail_ids).to(text.dtype)
        n_fused = torch.tensor([len(p) - i - 1 for p in prompts], device=device)
        width = min(m, n - i - 1)
        use = torch.arange(width, device=device)[None, :] < n_fused[:, None]
        tail[:, :width] = torch.where(use[:, :, None], text[:, i + 1: i + 1 + width], tail[:, :width])
        E = torch.cat([text[:, :i], vision.to(text.dtype), tail], dim=1)
        L, prefix = E.shape[1], i + T * n_comp
        lengths = torch.tensor([prefix + len(t) for t in tails], device=device)
        pad = torch.arange(L, device=device).view(1, -1) >= lengths.view(-1, 1)
        causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        eye = torch.eye(L, dtype=torch.bool, device=device)
        M = (causal.unsqueeze(0) & ~pad.unsqueeze(1)) | (eye.unsqueeze(0) & pad.unsqueeze(2))
        starts = [prefix + len(p) - i - 1 for p in prompts]
        return E, M.unsqueeze(1), torch.arange(L, device=device).expand(B, -1), starts

    @staticmethod
    def _stack(rows):
        """Pad per-sample (embeds, mask, positions, start) to one batch; padding sees only itself."""
        L = max(e.shape[0] for e, _, _, _ in rows)
        e0 = rows[0][0]
        E = torch.zeros(len(rows), L, e0.shape[-1], device=e0.device, dtype=e0.dtype)
        M = torch.zeros(len(rows), 1, L, L, dtype=torch.bool, device=e0.device)
        P = torch.zeros(len(rows), L, dtype=torch.long, device=e0.device)
        for b, (e, m, p, _) in enumerate(rows):
            n = e.shape[0]
            E[b, :n], M[b, 0, :n, :n], P[b, :n] = e, m, p
            M[b, 0, n:, n:] = torch.eye(L - n, dtype=torch.bool, device=e0.device)
        return E, M, P, [r[3] for r in rows]

    def _inputs(self, feats: torch.Tensor, prompt: list[int], answer: list[int]):
        """One sample: (embeds [L, D], bool mask [L, L], positions [L], index of the first answer token)."""
        embed = self.llm.get_input_embeddings()
        device = feats.device
        if self.variant == "voco":
            e, m, p = self.voco.masked_inputs(feats, prompt + answer)
            return e, m, p, e.shape[0] - len(answer)
        if self.variant == "mini":
            from vidqa.methods import mini

            ids = torch.tensor(prompt, device=device)
            frames = mini.encode_frames(feats, self.compressor, self.projector, 1)
            t_emb, visible = mini.prompt_embeddings(embed, ids)
            fused = mini.prefusion_full(self.prefusion, self.llm.model.rotary_emb, frames, t_emb, visible)
            vision, text = mini.fuse_video(fused)
            inputs = mini.assemble_llm_inputs(text, ids, vision)
            e = torch.cat([inputs, embed(torch.tensor(answer, device=device))])
        else:
            if self.variant == "full":
                vis = self.projector(feats).flatten(0, 1)  # every token of every frame
            else:  # pool
                vis = self.pool(feats.mean(dim=1))  # one token per frame
            text = embed(torch.tensor([self.bos], device=device)), vis, \
                embed(torch.tensor(prompt + answer, device=device))
            e = torch.cat(text)
        L = e.shape[0]
        causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        return e, causal, torch.arange(L, device=device), L - len(answer)


def build_tiny(variant: str, tokenizer, cfg: TinyConfig, tokens_per_frame: int = 1) -> Learner:
    """A from-scratch Learner with the demo architecture."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from vidqa.methods import mini
    from vidqa.vision import Preprocess, VisionEncoder, build_projector

    clip_cfg = CLIPVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden,
                                num_hidden_layers=cfg.vision_layers, num_attention_heads=4,
                                image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=cfg.vision_hidden)
    tower = CLIPVisionModel(clip_cfg)
    vision = VisionEncoder(tower, -1, "patch", Preprocess(size=cfg.image_size, aspect="squash" if variant == "mini" else "pad"))
    vocab = len(tokenizer)
    llm_cfg = LlamaConfig(vocab_size=vocab, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                          num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                          max_position_embeddings=cfg.max_positions, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                          tie_word_embeddings=False)
    llm_cfg._attn_implementation = "sdpa"
    llm = LlamaForCausalLM(llm_cfg)
    projector = build_projector("mlp2x_gelu", cfg.vision_hidden, cfg.hidden)
    mini_modules = None
    pool = None
    if variant == "mini":
        options = mini.LlavaMiniOptions(compressor_size=1, prefusion_layer_num=cfg.prefusion_layers,
                                        mm_hidden_size=cfg.vision_hidden, mm_projector_type="mlp2x_gelu")
        mini_modules = mini.LlavaMiniModules(llm, projector, mini.Compressor(1, cfg.vision_hidden),
                                             mini.build_prefusion_layers(llm.config, cfg.prefusion_layers), options, {})
    if variant == "pool":
        pool = nn.Linear(cfg.vision_hidden, cfg.hidden)
    return Learner(variant, vision, projector, llm, tokenizer, tokens_per_frame=tokens_per_frame,
                   mini_modules=mini_modules, pool=pool)


# ---- saving as a vidqa checkpoint ------------------------------------------------------------------

def export(learner: Learner, out: Path, cfg: TinyConfig, dtype: torch.dtype = torch.bfloat16, note: str = "") -> Path:
    """Write ``learner`` as a checkpoint vidqa loads: LLaVA-1.5 layout (VoCo) or the official LLaVA-Mini layout.

    The CLIP tower goes into ``out/clip`` (``mm_vision_tower: clip``, found inside the model directory).
    """
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    learner.tokenizer.save_pretrained(str(out))
    learner.vision.tower.to(dtype).save_pretrained(str(out / "clip"))
    learner.vision.tower.float()
    (out / "clip" / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": list(learner.vision.spec.mean), "image_std": list(learner.vision.spec.std),
        "size": {"shortest_edge": cfg.image_size}, "crop_size": {"height": cfg.image_size, "width": cfg.image_size}}))
    state = {k: v.detach().to(dtype).contiguous() for k, v in learner.llm.state_dict().items()}
    state.update({f"model.mm_projector.{k}": v.detach().to(dtype).contiguous() for k, v in learner.projector.state_dict().items()})
    llm_cfg = learner.llm.config.to_dict()
    for k in ("transformers_version", "dtype", "torch_dtype", "architectures", "_name_or_path"):
        llm_cfg.pop(k, None)
    rope = llm_cfg.pop("rope_parameters", None) or {}
    llm_cfg["rope_theta"] = rope.get("rope_theta", 10000.0)
    common = {"mm_vision_tower": "clip", "mm_hidden_size": cfg.vision_hidden, "mm_projector_type": "mlp2x_gelu",
              "mm_vision_select_layer": -1, "mm_vision_select_feature": "patch", "mm_use_im_start_end": False,
              "torch_dtype": str(dtype).replace("torch.", ""), "vidqa_demo": note}
    if learner.variant == "mini":
        state.update({f"model.compressor.{k}": v.detach().to(dtype).contiguous() for k, v in learner.compressor.state_dict().items()})
        state.update({f"model.prefusion_layers.{k}": v.detach().to(dtype).contiguous() for k, v in learner.prefusion.state_dict().items()})
        config = {**llm_cfg, **common, "model_type": "llava_mini_llama", "architectures": ["LlavaMiniLlamaForCausalLM"],
                  "compressor_size": 1, "prefusion_layer_num": len(learner.prefusion), "resolution_ratio": 1,
                  "image_aspect_ratio": "square"}
        index = {"metadata": {}, "weight_map": {k: "model-00001-of-00001.safetensors" for k in state}}
        save_file(state, str(out / "model-00001-of-00001.safetensors"), metadata={"format": "pt"})
        (out / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        config = {**llm_cfg, **common, "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
                  "image_aspect_ratio": "pad", "voco_num": learner.voco.tokens_per_frame}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


# ---- the loop ------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    variant: str = "voco"
    tokens_per_frame: int = 1
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    freeze_vision: bool = False
    grad_checkpointing: bool = False
    save_every: int = 500
    log_every: int = 50
    seed: int = 0
    minutes: float | None = None  # a time budget: the schedule ends at `steps` or after this long, the first to come
    samples: int | None = None  # a budget in questions seen (equal data for every row of a comparison)
    max_minutes: float | None = None  # a hard wall-clock cap; the steps done are reported
    eval_every: float = 0.0  # seconds between held-out checks during training (0: only at the end)
    pack: bool = False  # synthetic data: a batch is `batch_size` clips with all their questions
    tiny: TinyConfig = field(default_factory=TinyConfig)


def _batch(data, idx: list[int], device) -> tuple[torch.Tensor, list[Sample]]:
    samples = [data[i] for i in idx]
    if hasattr(data, "pixels"):  # synthetic clips live on the device: no per-step host copy
        return data.pixels(idx, device), samples
    frames = np.stack([s.frames for s in samples])
    return torch.from_numpy(frames).to(device, non_blocking=True), samples


@torch.no_grad()
def evaluate(learner: Learner, data, device, batch_size: int = 64, limit: int | None = None) -> dict:
    """First-answer-word accuracy (the answers are single words), overall and per category."""
    learner.eval()
    n = len(data) if limit is None else min(limit, len(data))
    hits: dict[int, list[int]] = {}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _Null()
    for i in range(0, n, batch_size):
        idx = list(range(i, min(n, i + batch_size)))
        pixels, samples = _batch(data, idx, device)
        with autocast:
            _, right, _ = learner(pixels, samples)
        for s, r in zip(samples, right.tolist()):
            hits.setdefault(s.category, []).append(int(r))
    learner.train()
    every = [h for v in hits.values() for h in v]
    return {"accuracy": sum(every) / max(1, len(every)), "n": len(every),
            "per_category": {c: sum(v) / len(v) for c, v in sorted(hits.items())}}


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _save(learner, opt, step, elapsed, seen, history, cfg, state_file: Path) -> None:
    tmp = state_file.with_suffix(".tmp")
    torch.save({"model": learner.state_dict(), "optimizer": opt.state_dict(), "step": step, "elapsed": elapsed,
                "seen": seen, "history": history, "config": asdict(cfg)}, tmp)
    os.replace(tmp, state_file)  # atomic: a kill never leaves a half-written state


def progress(cfg: TrainConfig, step: int, elapsed: float, seen: int = 0) -> float:
    """How far through the schedule: by steps, by questions seen, or by the time budget, the first to end."""
    done = step / max(1, cfg.steps)
    if cfg.minutes:
        done = max(done, elapsed / (60 * cfg.minutes))
    if cfg.samples:
        done = max(done, seen / cfg.samples)
    return min(1.0, done)


def learning_rate(cfg: TrainConfig, step: int, elapsed: float, seen: int = 0) -> float:
    """Linear warmup over ``cfg.warmup`` steps, then cosine decay to zero at the end of the schedule."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * progress(cfg, step, elapsed, seen)))


def train(learner: Learner, data, cfg: TrainConfig, out: Path, device, log: Callable[[str], None] = print,
          eval_data=None) -> dict:
    """AdamW with warmup + cosine decay; bf16 autocast on GPU; resumable from ``out/train_state.pt``."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    out.mkdir(parents=True, exist_ok=True)
    learner.to(device).train()
    if cfg.freeze_vision:
        learner.vision.requires_grad_(False)
    if cfg.grad_checkpointing:
        learner.llm.gradient_checkpointing_enable()
    model: nn.Module = learner
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        model = nn.parallel.DistributedDataParallel(learner, device_ids=[device.index] if device.type == "cuda" else None,
                                                    find_unused_parameters=True)
    params = [p for p in learner.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    state_file = out / "train_state.pt"
    step, before, seen_before = 0, 0.0, 0
    history: list[dict] = []
    if state_file.exists():
        state = torch.load(state_file, map_location=device, weights_only=False)
        learner.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, before, seen_before = state["step"], state.get("elapsed", 0.0), state.get("seen", 0)
        history = state.get("history", [])
        log(f"resumed from {state_file} at step {step}")
    rng = random.Random(cfg.seed * 1000 + rank + step)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _Null()
    t0, seen = time.perf_counter(), 0
    last_eval = t0
    loss_sum = torch.zeros((), device=device)
    right_sum = torch.zeros((), device=device)
    n_recent = 0

    def elapsed() -> float:
        return before + time.perf_counter() - t0

    while step < cfg.steps and progress(cfg, step, elapsed(), seen_before + seen) < 1.0:
        if cfg.max_minutes and time.perf_counter() - t0 > 60 * cfg.max_minutes:
            log(f"stopping at step {step}: the {cfg.max_minutes} minute cap")
            break
        for g in opt.param_groups:
            g["lr"] = learning_rate(cfg, step, elapsed(), seen_before + seen)
        if cfg.pack and hasattr(data, "by_clip"):
            clips = [rng.randrange(len(data.by_clip)) for _ in range(cfg.batch_size)]
            items = [(c, k) for c_i, c in enumerate(clips) for k in data.by_clip[c]]
            pixels = data.clip_pixels(clips, device)
            samples = [data[k] for _, k in items]
            owner = [c_i for c_i, c in enumerate(clips) for _ in data.by_clip[c]]
        else:
            idx = [rng.randrange(len(data)) for _ in range(cfg.batch_size)]
            pixels, samples = _batch(data, idx, device)
            owner = None
        with autocast:
            loss, right, _ = model(pixels, samples, owner)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        seen += len(samples)
        loss_sum += loss.detach()  # summed on the device: no host sync per step
        right_sum += right.float().mean()
        n_recent += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            entry = {"step": step, "seconds": round(elapsed(), 1), "loss": loss_sum.item() / n_recent,
                     "train_acc": right_sum.item() / n_recent}
            loss_sum.zero_(), right_sum.zero_()
            n_recent = 0
            if eval_data is not None and cfg.eval_every and time.perf_counter() - last_eval > cfg.eval_every and rank == 0:
                check = evaluate(learner, eval_data, device, limit=512)
                entry.update(eval_acc=check["accuracy"], eval_per_category=check["per_category"])
                last_eval = time.perf_counter()
            history.append(entry)
            if rank == 0:
                extra = f" held-out {entry['eval_acc']:.3f}" if "eval_acc" in entry else ""
                log(f"step {step}/{cfg.steps} loss {entry['loss']:.4f} acc {entry['train_acc']:.3f}{extra} "
                    f"lr {opt.param_groups[0]['lr']:.2e} {seen / (time.perf_counter() - t0):.0f} samples/s")
        if rank == 0 and step % cfg.save_every == 0:
            _save(learner, opt, step, elapsed(), seen_before + seen, history, cfg, state_file)
    if rank == 0:
        _save(learner, opt, step, elapsed(), seen_before + seen, history, cfg, state_file)
    result = {"steps": step, "history": history, "seconds": elapsed(), "samples": seen_before + seen}
    if eval_data is not None and rank == 0:
        result["eval"] = evaluate(learner, eval_data, device)
    return result


def load_vision_from(learner: Learner, state_file: Path) -> None:
    """Copy the vision tower of another run (its ``train_state.pt``) into ``learner``."""
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=False)["model"]
    except (OSError, KeyError, RuntimeError) as e:
        raise DataError(f"cannot read a training state from {state_file}: {e}")
    tower = {k[len("vision."):]: v for k, v in state.items() if k.startswith("vision.")}
    if not tower:
        raise DataError(f"{state_file} holds no vision tower")
    learner.vision.load_state_dict(tower)


def main(argv: list[str] | None = None) -> int:
    """``python -m vidqa.train``: the same as ``vidqa train`` (see its --help)."""
    import argparse

    ap = argparse.ArgumentParser(prog="vidqa train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", choices=["voco", "mini", "full", "pool"], default="voco",
                    help="what to train (full and pool are the retention table's reference rows)")
    ap.add_argument("--data", default="synthetic", help="'synthetic' or a LLaVA-style JSON file")
    ap.add_argument("--media-root", default=None)
    ap.add_argument("--on-bad", choices=["skip", "refuse"], default="skip")
    ap.add_argument("--out", required=True, help="run directory: train_state.pt (resumable) and model/")
    ap.add_argument("--tokens-per-frame", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--clips", type=int, default=4000, help="synthetic training clips")
    ap.add_argument("--eval-clips", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--freeze-vision", action="store_true")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--minutes", type=float, default=None,
                    help="time budget: the learning-rate schedule ends after this long, or at --steps if sooner")
    ap.add_argument("--samples", type=int, default=None,
                    help="budget in questions seen: the schedule ends there (equal data across compared runs)")
    ap.add_argument("--vision-from", default=None,
                    help="start the vision tower from another run's train_state.pt (with --freeze-vision: a fixed, "
                         "pretrained tower, as VoCo-LLaMA's comparisons use a frozen CLIP)")
    ap.add_argument("--max-minutes", type=float, default=None, help="hard stop after this long (steps done are reported)")
    ap.add_argument("--warmup", type=int, default=100, help="warmup steps")
    ap.add_argument("--pack", action="store_true",
                    help="synthetic data: --batch-size counts clips, and all of a clip's questions share one "
                         "sequence after its frames (each sees the frames and itself only)")
    ap.add_argument("--eval-every", type=float, default=0.0, help="seconds between held-out checks in the log (0: only at the end)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() and args.device in ("auto", "cuda") else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    cfg = TrainConfig(variant=args.method, tokens_per_frame=args.tokens_per_frame, steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, freeze_vision=args.freeze_vision,
                      grad_checkpointing=args.grad_checkpointing, seed=args.seed, minutes=args.minutes,
                      max_minutes=args.max_minutes, warmup=args.warmup, eval_every=args.eval_every,
                      pack=args.pack, samples=args.samples)
    if args.data == "synthetic":
        data = SyntheticData(args.clips, seed=args.seed + 1, size=cfg.tiny.image_size, workers=args.workers)
        eval_data = SyntheticData(args.eval_clips, seed=10_000 + args.seed, size=cfg.tiny.image_size,
                                  workers=args.workers)
    else:
        data = JsonData(args.data, args.media_root, on_bad=args.on_bad,
                        report=lambda m: print(m, file=sys.stderr))
        eval_data = None
    family = "mini" if args.method == "mini" else "voco"
    tok_dir = out / "tokenizer"
    from vidqa import synthetic

    corpus = data.texts() + list(synthetic.ANSWERS)
    tokenizer = make_word_tokenizer(tok_dir, corpus, family)
    learner = build_tiny(args.method, tokenizer, cfg.tiny, args.tokens_per_frame)
    if args.vision_from:
        load_vision_from(learner, Path(args.vision_from))
    result = train(learner, data, cfg, out, device, eval_data=eval_data)
    if int(os.environ.get("RANK", 0)) == 0:
        if args.method in ("voco", "mini"):
            export(learner.float(), out / "model", cfg.tiny, note=f"vidqa demo model ({args.method}), trained on "
                   "synthetic clips only; random-init, not a general video model")
        (out / "result.json").write_text(json.dumps(result, indent=1))
        print(json.dumps({k: v for k, v in result.items() if k != "history"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
