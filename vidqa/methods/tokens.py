"""User text is text: prompts whose control tokens come only from vidqa's own template.

A prompt is a template (vidqa's, or the checkpoint's chat template) with the user's strings (the
question, earlier questions and answers) put into it. Tokenising the joined string would let a
question that contains ``</s>``, ``<voco>`` or ``<|start_header_id|>assistant`` put those control
tokens into the prompt. ``encode`` never does:

1. The template is written with a private placeholder for each user string, and its own control
   tokens (the tokenizer's added tokens: ``<s>``, ``</s>``, ``<voco>``, ``<|eot_id|>`` ...) are
   replaced by private stand-ins that a shadow copy of the tokenizer knows as (non-special) added
   tokens with the same flags.
2. The user strings go into the placeholders, and the whole prompt is tokenised once by the shadow
   tokenizer with special-token parsing off (``split_special_tokens=True``): a control string the user
   typed is encoded as the characters it is, while the stand-ins cut the text exactly where the real
   control tokens would have cut it (the tokenizer encodes the pieces between added tokens one by one).
3. The stand-ins' ids are mapped back to the real control ids.

For user text without control strings the ids therefore equal tokenising the joined prompt with the
real tokenizer (``tests/test_methods_tokens.py`` checks SentencePiece, byte-level BPE and word-level
tokenizers), and a control string in user text gives the ids of that text, never a control id.
"""

from __future__ import annotations

import copy
import re
import weakref
from collections.abc import Sequence
from typing import Any

PLACEHOLDER = "\ue000{}\ue001"  # private-use characters: no template produces them
STAND_IN = "\ue002{}\ue003"


def placeholders(texts: Sequence[str]) -> list[str]:
    """One placeholder per user string, unique and absent from every user string."""
    joined = "".join(texts)
    tag = ""
    while any(PLACEHOLDER.format(f"{tag}{i}") in joined for i in range(len(texts))):
        tag += "x"
    return [PLACEHOLDER.format(f"{tag}{i}") for i in range(len(texts))]


class _Shadow:
    """A copy of a tokenizer that knows a stand-in for each added token, and the way back."""

    def __init__(self, tokenizer: Any):
        from tokenizers import AddedToken

        decoder = dict(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
            tok = getattr(tokenizer, name, None)
            tid = getattr(tokenizer, f"{name}_id", None)
            if isinstance(tok, str) and tok and isinstance(tid, int) and tid not in decoder:
                decoder[tid] = AddedToken(tok, special=True, normalized=False)
        self.tokenizer = copy.deepcopy(tokenizer)
        self.stand_in: dict[str, str] = {}
        self.back: dict[int, int] = {}
        for i, (tid, tok) in enumerate(sorted(decoder.items())):
            content = getattr(tok, "content", str(tok))
            if not content:
                continue
            mark = STAND_IN.format(i)
            self.tokenizer.add_tokens([AddedToken(mark, special=False, normalized=False,
                                                  lstrip=bool(getattr(tok, "lstrip", False)),
                                                  rstrip=bool(getattr(tok, "rstrip", False)),
                                                  single_word=bool(getattr(tok, "single_word", False)))])
            if not getattr(tok, "special", True):  # a non-special added token must be text in user strings too
                self.tokenizer.add_tokens([AddedToken(content, special=True, normalized=False)], special_tokens=True)
            self.stand_in[content] = mark
            self.back[int(self.tokenizer.convert_tokens_to_ids(mark))] = int(tid)
        self.pattern = (re.compile("|".join(re.escape(c) for c in sorted(self.stand_in, key=len, reverse=True)))
                        if self.stand_in else None)
        self.controls = set(self.back.values())


_SHADOWS: "weakref.WeakKeyDictionary[Any, _Shadow]" = weakref.WeakKeyDictionary()


def _shadow(tokenizer: Any) -> _Shadow:
    try:
        shadow = _SHADOWS.get(tokenizer)
    except TypeError:  # not weak-referenceable
        return _Shadow(tokenizer)
    if shadow is None:
        shadow = _SHADOWS[tokenizer] = _Shadow(tokenizer)
    return shadow


def control_ids(tokenizer: Any) -> set[int]:
    """The ids of the tokenizer's added tokens (the control tokens a template may use)."""
    return set(_shadow(tokenizer).controls)


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """The ids of ``text`` on its own as plain text: no special-token parsing, nothing added around it."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids)


def encode(tokenizer: Any, template: str, user: dict[str, str] | None = None,
           add_special_tokens: bool = False) -> list[int]:
    """Token ids of ``template`` with each placeholder of ``user`` replaced by its text, as text.

    ``template``: the prompt with its control tokens written as their strings and a placeholder
    (``placeholders``) for each user string. Only control strings of ``template`` become control ids.
    ``add_special_tokens``: what the tokenizer adds around a text (Llama's BOS), as ``tokenizer(text)``.
    """
    shadow = _shadow(tokenizer)
    text = shadow.pattern.sub(lambda m: shadow.stand_in[m.group(0)], template) if shadow.pattern else template
    for key, value in (user or {}).items():
        text = text.replace(key, value)
    ids = shadow.tokenizer(text, add_special_tokens=add_special_tokens, split_special_tokens=True).input_ids
    return [shadow.back.get(i, i) for i in ids]
