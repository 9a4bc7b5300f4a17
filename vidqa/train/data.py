"""Training data and the word tokenizer of the small demo models.

Data: the synthetic set (``vidqa.synthetic``, rendered on the fly) or LLaVA-style JSON
(``[{"video"|"image": path, "conversations": [{"from": "human", "value": "<image>\\nQ"},
{"from": "gpt", "value": "A"}, ...]}]``).
"""

from __future__ import annotations

import json
import multiprocessing
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from vidqa import synthetic
from vidqa.errors import VidqaError
from vidqa.methods import mini, voco
from vidqa.testing import TINY_LLAMA31_CHAT_TEMPLATE
from vidqa.video import Sampling, load_frames

IMAGE = "<image>"
VOCO = "<voco>"
LLAMA31_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                    "<|eom_id|>", "<|eot_id|>"]


class DataError(VidqaError):
    """Training data that cannot be used (with --on-bad refuse)."""


def template_words(method: str) -> list[str]:
    """Every word the prompts of a method use, so that a small word-level vocabulary covers them."""
    text = voco.vicuna_prompt("x") if method == "voco" else mini.LLAVA_MINI_SYSTEM_PROMPT + \
        " Cutting Knowledge Date: December 2023 Today Date: 26 Jul 2024 system user assistant"
    return re.findall(r"\w+|[^\w\s]", text)


def make_word_tokenizer(directory: Path, corpus: list[str], method: str) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` for small demo models, saved in ``directory``.

    VoCo: ``<unk> <s> </s>`` then ``<voco>``; Mini: the Llama-3.1 special tokens and a Llama-3.1-style
    chat template (the one vidqa's tiny official-layout checkpoints use).
    """
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
        kwargs["chat_template"] = TINY_LLAMA31_CHAT_TEMPLATE
    out = PreTrainedTokenizerFast(**kwargs)
    out.save_pretrained(str(directory))
    return out


@dataclass
class Sample:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    question: str
    answer: str
    category: int = -1


class SyntheticData:
    """Clips of ``vidqa.synthetic`` at the frames ``--fps 1`` samples (segment midpoints), with QA."""

    def __init__(self, n_clips: int, seed: int, size: int = 64, fps: float = 2, workers: int = 1):
        self.size = size
        jobs = [(seed, i, size, fps) for i in range(n_clips)]
        if workers > 1:
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


def load_batch(data, idx: list[int], device) -> tuple[torch.Tensor, list[Sample]]:
    """Pixels uint8 ``[B, T, H, W, 3]`` on ``device`` and the samples of items ``idx``."""
    samples = [data[i] for i in idx]
    if hasattr(data, "pixels"):  # synthetic clips live on the device: no per-step host copy
        return data.pixels(idx, device), samples
    frames = np.stack([s.frames for s in samples])
    return torch.from_numpy(frames).to(device, non_blocking=True), samples

