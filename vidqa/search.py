"""Which indexed videos, and which moments in them, show a query: scored by the model itself.

A video's score is the model's probability of answering yes (rather than no) to a yes/no question
made from the query ("Does this video show QUERY?"), asked of the video's stored frame cache:
``P(yes) / (P(yes) + P(no))`` at the first answer token, where yes and no are every spelling of the
two words that the tokenizer has as one token (``yes``, ``Yes``, `` yes``...; a token that both words
map to, e.g. an unknown-word token, counts for neither; a tokenizer without one-token forms gives
the first token of each). No new model and no new cache: only the
prompt runs, on the stored caches.

Batching: videos with the same number of frames have prompts of the same length at the same
positions, so their prefills run as one batch (their caches stacked on the batch axis; no padding
and no mask are needed). Indexed libraries are usually sampled alike, so this is one batch per
``batch_size`` videos.

Evidence (``times``): for the ``top_k`` videos only, each frame is scored on its own (the same
question on a one-frame cache, batched across all of those frames), and the timestamps of the
frames with the highest scores are reported (at most ``evidence``, best first). A frame's own score
says whether that moment shows the query by itself; it costs one short prefill per frame, which is
why it runs for the shown videos and not for the whole library.

Built-in demo models only know their synthetic question templates: for them the question is
``does QUERY appear?`` (their existence questions), lowercased.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from transformers import DynamicCache

from vidqa.errors import VidqaError
from vidqa.framecache import FrameCache
from vidqa.methods.base import Prefill

TEMPLATE = "Does this video show {query}? Answer yes or no."
DEMO_TEMPLATE = "does {query} appear?"
DEMO_MODELS = ("tiny-voco", "tiny-mini")
YES = ("yes", "Yes", "YES", " yes", " Yes")
NO = ("no", "No", "NO", " no", " No")


@dataclass
class Hit:
    video: str
    score: float
    times: list[float] = field(default_factory=list)
    frames: int = 0

    def as_dict(self) -> dict:
        return {"video": self.video, "score": round(self.score, 6), "times": [round(t, 3) for t in self.times]}


def question_for(query: str, model_id: str = "", template: str | None = None) -> str:
    """The yes/no question asked about every video."""
    query = " ".join(str(query).split())
    if not query:
        raise VidqaError("the search query is empty")
    if template is None:
        template = DEMO_TEMPLATE if model_id in DEMO_MODELS else TEMPLATE
        if model_id in DEMO_MODELS:
            query = query.lower()
    if "{query}" not in template:
        raise VidqaError("the question template must contain {query}")
    return template.replace("{query}", query)


def answer_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids that start an answer of yes, and of no: every spelling's one-token form where the
    tokenizer has one, else the first token of each spelling (none in both lists, no unknown token)."""

    def ids(words, whole: bool):
        out = set()
        for w in words:
            enc = tokenizer.encode(w, add_special_tokens=False)
            if not whole:  # a leading word-boundary piece says nothing about the word
                enc = [t for i, t in enumerate(enc) if i or tokenizer.decode([t]).strip()]
            if enc and (len(enc) == 1 or not whole):
                out.add(enc[0])
        return out

    unk = getattr(tokenizer, "unk_token_id", None)
    for whole in (True, False):
        yes, no = ids(YES, whole), ids(NO, whole)
        both = yes & no
        yes, no = sorted(yes - both - {unk}), sorted(no - both - {unk})
        if yes and no:
            return yes, no
    raise VidqaError("this model's tokenizer cannot tell 'yes' from 'no' in one token: search cannot score with it")


def _layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if cache is None or cache.get_seq_length() == 0:
        return []
    return [(layer.keys, layer.values) for layer in cache.layers]


def stack(prefills: Sequence[Prefill]) -> Prefill:
    """Prefills of equal length and positions as one batch (caches concatenated on the batch axis)."""
    per = [_layers(p.past_key_values) for p in prefills]
    kv = DynamicCache()
    for i in range(len(per[0])):
        kv.update(torch.cat([p[i][0] for p in per]), torch.cat([p[i][1] for p in per]), i)
    first = prefills[0]
    ids = torch.cat([p.input_ids for p in prefills]) if first.input_ids is not None else None
    embeds = torch.cat([p.inputs_embeds for p in prefills]) if first.inputs_embeds is not None else None
    return Prefill(past_key_values=kv, position_ids=first.position_ids.expand(len(prefills), -1),
                   input_ids=ids, inputs_embeds=embeds)


@torch.inference_mode()
def score_caches(qa, caches: Sequence[FrameCache], question: str, batch_size: int = 64) -> list[float]:
    """P(yes) / (P(yes) + P(no)) for ``question`` on every cache, in batches of equal frame counts."""
    yes, no = answer_ids(qa.tokenizer)
    prefix = qa.method.answer_prefix
    prefix_ids = qa.tokenizer.encode(prefix, add_special_tokens=False) if prefix else []
    scores: list[float] = [0.0] * len(caches)
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(caches):
        groups.setdefault(c.num_frames, []).append(i)
    for members in groups.values():
        for s in range(0, len(members), batch_size):
            part = members[s:s + batch_size]
            batch = stack([qa.method.prefill(caches[i], question) for i in part])
            out = qa.llm(input_ids=batch.input_ids, inputs_embeds=batch.inputs_embeds, position_ids=batch.position_ids,
                         past_key_values=batch.past_key_values, use_cache=True, logits_to_keep=1)
            if prefix_ids:  # the header the model writes before its answer: teacher-forced
                n = len(part)
                start = int(batch.position_ids[0, -1]) + 1
                ids = torch.tensor([prefix_ids], device=batch.position_ids.device).expand(n, -1)
                pos = torch.arange(start, start + len(prefix_ids), device=ids.device).expand(n, -1)
                out = qa.llm(input_ids=ids, position_ids=pos, past_key_values=out.past_key_values, use_cache=True,
                             logits_to_keep=1)
            probs = torch.softmax(out.logits[:, -1].float(), dim=-1)
            p_yes, p_no = probs[:, yes].sum(-1), probs[:, no].sum(-1)
            for i, v in zip(part, (p_yes / (p_yes + p_no).clamp_min(1e-30)).tolist()):
                scores[i] = v
    return scores


def frame_evidence(qa, caches: Sequence[FrameCache], question: str, evidence: int = 3,
                   batch_size: int = 64) -> list[list[float]]:
    """For each cache, the timestamps of its ``evidence`` frames with the highest own score, best first."""
    singles, owner = [], []
    for v, c in enumerate(caches):
        for f in range(c.num_frames):
            singles.append(c.select([f]))
            owner.append((v, f))
    scores = score_caches(qa, singles, question, batch_size) if singles else []
    per: list[list[tuple[float, float]]] = [[] for _ in caches]
    for (v, f), s in zip(owner, scores):
        per[v].append((s, caches[v].timestamps[f]))
    return [[t for _, t in sorted(p, key=lambda x: -x[0])[:evidence]] for p in per]


def rank(qa, named: Sequence[tuple[str, FrameCache]], query: str, *, top_k: int = 5, template: str | None = None,
         evidence: int = 3, batch_size: int = 64) -> list[Hit]:
    """The ``top_k`` best of the named caches for ``query``, best first, with per-frame evidence."""
    if top_k < 1:
        raise VidqaError("--top-k must be at least 1")
    question = question_for(query, qa.model_id, template)
    scores = score_caches(qa, [c for _, c in named], question, batch_size)
    order = sorted(range(len(named)), key=lambda i: (-scores[i], named[i][0]))[:top_k]
    times = frame_evidence(qa, [named[i][1] for i in order], question, evidence, batch_size) if evidence else [[]] * len(order)
    return [Hit(named[i][0], scores[i], t, named[i][1].num_frames) for i, t in zip(order, times)]


def indexed(qa, store, videos, sampling) -> tuple[list[tuple[str, FrameCache]], list[str]]:
    """The stored caches of ``videos`` for this model and sampling, and the videos without one."""
    from vidqa.library import cache_settings, stored  # same layer (6)

    settings = cache_settings(qa, sampling)
    found, missing = [], []
    for v in videos:
        try:
            cache = stored(qa, store, store.key(v, settings), settings)
        except VidqaError:
            cache = None
        if cache is None:
            missing.append(str(v))
        else:
            found.append((str(v), cache))
    return found, missing
