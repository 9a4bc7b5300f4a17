"""Context plus question to streamed tokens: greedy or nucleus sampling over a prefilled KV cache.

Positions are explicit at every step (``Prefill.position_ids`` then one more per token); the
attention mask comes from the cache length alone, since everything in the cache is visible to the
answer. That is what keeps a compressed video's tokens in sight for the whole answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from vidqa.methods.base import Prefill


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class DecodeStats:
    prefill_s: float = 0.0  # time to first token, from the start of prefill
    decode_s: float = 0.0  # time spent on tokens after the first
    tokens: int = 0
    decode_steps: int = 0
    stopped: str = ""  # "stop" (a stop token) or "length"
    times: list[float] = field(default_factory=list)

    @property
    def ms_per_token(self) -> float:
        return 1000 * self.decode_s / max(1, self.decode_steps)


def sample(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> int:
    """One token id from the last position's logits ``[V]``."""
    if cfg.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p  # the smallest set whose mass reaches top_p
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate(llm, prefill: Prefill, cfg: GenerationConfig, stop_ids: set[int],
             stats: DecodeStats | None = None, decoder=None) -> Iterator[int]:
    """Yield answer token ids one at a time (stop tokens are not yielded).

    ``decoder``: a ``vidqa.fast.StaticDecoder`` to run the decode steps (CUDA graph); the prefill
    always runs through transformers and its cache is copied in.
    """
    stats = stats if stats is not None else DecodeStats()
    pos = prefill.position_ids
    device = pos.device
    generator = None
    if cfg.temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
    cache = prefill.past_key_values
    t0 = time.perf_counter()
    out = llm(input_ids=prefill.input_ids, inputs_embeds=prefill.inputs_embeds, position_ids=pos,
              past_key_values=cache, use_cache=True, logits_to_keep=1)
    next_pos = int(pos[0, -1]) + 1
    if decoder is not None:
        decoder.load(out.past_key_values)
    stats.stopped = "length"
    for step in range(cfg.max_new_tokens):
        token = sample(out.logits[0, -1], cfg, generator)  # .item() inside: the step is synchronised
        now = time.perf_counter()
        if step == 0:
            stats.prefill_s = now - t0
        else:
            stats.decode_s += now - t_last
            stats.decode_steps += 1
        stats.times.append(now - t0)
        t_last = now
        if token in stop_ids:
            stats.stopped = "stop"
            return
        stats.tokens += 1
        yield token
        if step + 1 == cfg.max_new_tokens:
            break
        t_last = time.perf_counter()  # time spent by the consumer (rendering) is not decoding time
        if decoder is not None:
            out.logits = decoder.step(token, next_pos).view(1, 1, -1)
        else:
            out = llm(input_ids=torch.tensor([[token]], device=device),
                      position_ids=torch.tensor([[next_pos]], device=device),
                      past_key_values=out.past_key_values, use_cache=True)
        next_pos += 1


class Detokenizer:
    """Turns a growing list of token ids into text deltas that are safe to print.

    SentencePiece and byte-level tokenizers only produce correct text for whole sequences (leading
    spaces, multi-byte characters split across tokens), so the whole answer is decoded each time and
    only the new, complete suffix is emitted.
    """

    def __init__(self, tokenizer, drop_prefix: str | None = None):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self.drop_prefix = drop_prefix  # e.g. a role header the model writes before its answer
        self.skip = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the next token
            return ""
        if self.drop_prefix:
            if self.drop_prefix.startswith(text.lstrip()):
                return ""  # may still become the prefix: hold it back
            if text.lstrip().startswith(self.drop_prefix):
                rest = text.lstrip()[len(self.drop_prefix):]
                if not rest.strip():
                    return ""  # the header, and nothing after it yet
                self.skip = len(text) - len(rest.lstrip())
            self.drop_prefix = None
        text = text[self.skip:]
        delta, self.text = text[len(self.text):], text
        return delta
