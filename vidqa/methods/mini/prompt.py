"""LLaVA-Mini's prompt and config: the official Llama-3.1 prompt around ``<image>``, stop ids, options.

Facts (from ``ictnlp/LLaVA-Mini``) are described in ``vidqa/methods/mini/layers.py``'s docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vidqa.errors import ModelError, VidqaError
from vidqa.methods import tokens
from vidqa.methods.mini.layers import IMAGE_TOKEN, IMAGE_TOKEN_INDEX, LLAVA_MINI_SYSTEM_PROMPT, STOP_TOKENS


@dataclass(frozen=True)
class LlavaMiniOptions:
    """The multimodal settings of a LLaVA-Mini config.json, with the official code's defaults."""

    compressor_size: int
    prefusion_layer_num: int = 4
    resolution_ratio: int = 1
    mm_hidden_size: int = 1024
    mm_projector_type: str = "linear"
    mm_vision_tower: str | None = None
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    image_aspect_ratio: str | None = None
    mm_use_im_start_end: bool = False
    compressor_heads: int = 8  # not a config key: the official code hard-codes 8

    @property
    def tokens_per_frame(self) -> int:
        return self.compressor_size * self.compressor_size

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "LlavaMiniOptions":
        if "compressor_size" not in cfg:
            raise ModelError("config.json has no compressor_size: not a LLaVA-Mini checkpoint")
        if cfg.get("mm_use_im_start_end"):
            raise ModelError("mm_use_im_start_end is true in config.json; LLaVA-Mini with image start/end tokens is not supported")
        if "mm_vision_select_layer" not in cfg or "mm_hidden_size" not in cfg:
            raise ModelError("config.json lacks mm_vision_select_layer or mm_hidden_size")
        return cls(
            compressor_size=int(cfg["compressor_size"]),
            prefusion_layer_num=int(cfg.get("prefusion_layer_num", 4)),
            resolution_ratio=int(cfg.get("resolution_ratio", 1) or 1),
            mm_hidden_size=int(cfg["mm_hidden_size"]),
            mm_projector_type=str(cfg.get("mm_projector_type", "linear")),
            mm_vision_tower=cfg.get("mm_vision_tower"),
            mm_vision_select_layer=int(cfg["mm_vision_select_layer"]),
            mm_vision_select_feature=str(cfg.get("mm_vision_select_feature", "patch")),
            image_aspect_ratio=cfg.get("image_aspect_ratio"),
            mm_use_im_start_end=bool(cfg.get("mm_use_im_start_end", False)),
        )


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Stop ids ``[<|eot_id|>, <|eom_id|>, <|end_of_text|>]`` looked up by string; Llama-3.1 ids as fallback."""
    ids: list[int] = []
    for token, default in STOP_TOKENS:
        found = tokenizer.convert_tokens_to_ids(token)
        unk = getattr(tokenizer, "unk_token_id", None)
        ids.append(found if isinstance(found, int) and found != unk else default)
    return ids


@dataclass(frozen=True)
class PromptIds:
    """A LLaVA-Mini prompt split at ``<image>``: ``before`` (starts with the double BOS) and ``after``."""

    before: list[int]
    after: list[int]
    stop_ids: list[int]

    @property
    def ids(self) -> list[int]:
        """The whole prompt with the -200 placeholder, as the pre-fusion sees it."""
        return [*self.before, IMAGE_TOKEN_INDEX, *self.after]


def build_prompt_ids(tokenizer: Any, question: str, system: str | None = LLAVA_MINI_SYSTEM_PROMPT,
                     history: Sequence[tuple[str, str]] = ()) -> PromptIds:
    """Token ids of the official inference prompt around the ``<image>`` placeholder.

    Messages ``[system, user "<image>\\n{question}"]`` through the checkpoint's chat template without
    the generation prompt; the text is split at ``<image>``; each chunk is tokenized with special
    tokens; the first keeps its BOS (hence a double BOS) and the second loses its first id.
    ``history``: earlier (question, answer) turns; the image sits in the first user turn.

    User text (the question, earlier questions and answers) is always text: the template is rendered
    with a placeholder for each user string (the Llama-3.1 template trims a message's content, so the
    strings go in stripped of surrounding whitespace), and ``tokens.encode`` puts them back as text,
    so a ``<|start_header_id|>assistant`` typed in a question is its characters, not a turn.
    """
    if IMAGE_TOKEN in question or any(IMAGE_TOKEN in q + a for q, a in history):
        raise VidqaError(f"the question may not contain the literal {IMAGE_TOKEN} placeholder")
    texts = [question] + [x for turn in history for x in turn]
    marks = tokens.placeholders(texts)
    user = {m: t.strip() for m, t in zip(marks, texts)}
    turns = [(marks[1 + 2 * i], marks[2 + 2 * i]) for i in range(len(history))] + [(marks[0], None)]
    messages = [{"role": "system", "content": system}] if system is not None else []
    for i, (q, a) in enumerate(turns):
        messages.append({"role": "user", "content": f"{IMAGE_TOKEN}\n{q}" if i == 0 else q})
        if a is not None:
            messages.append({"role": "assistant", "content": a})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    chunks = text.split(IMAGE_TOKEN)
    if len(chunks) != 2:
        raise ModelError(f"the chat template kept {len(chunks) - 1} {IMAGE_TOKEN} placeholders instead of 1")
    if any(m not in text for m in marks):
        raise ModelError("the chat template dropped a message's content")
    first = tokens.encode(tokenizer, chunks[0], user, add_special_tokens=True)
    second = tokens.encode(tokenizer, chunks[1], user, add_special_tokens=True)
    starts_with_bos = tokenizer.bos_token_id is not None and first[:1] == [tokenizer.bos_token_id]
    return PromptIds(before=first, after=second[1:] if starts_with_bos else second, stop_ids=stop_token_ids(tokenizer))
