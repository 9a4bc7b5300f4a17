"""Which indexed videos, and which moments in them, show a query: scored by the model itself.

A video's score is the probability the model gives, on the video's stored frame cache, to the answer
that means "it shows the query" against the answers that mean it does not: for a general model the
yes/no question "Does this video show QUERY?", ``P(yes) / (P(yes) + P(no))`` at the first answer
token (a ``Probe``). An answer's probability sums every spelling of the word that the tokenizer has
as one token (``yes``, ``Yes``, `` yes``...; a token that two answers share, e.g. an unknown-word
token, counts for none; a tokenizer without one-token forms gives the first token of each). Several
probes average. No new model and no new cache: only the prompt runs, on the stored caches.

Demo models (``tiny-voco``, ``tiny-mini``) only know their synthetic question templates, and answer
their existence question ("does a red circle appear?") at chance (benchmarks/NOTES.md), so they are
asked what they were trained to answer instead: for a query that names one shape and its colours,
"what colour is the SHAPE?" (and "... at first?", "what colour does the SHAPE turn?"), the score
being the probability of the query's colour among the synthetic colours. Other queries fall back to
the existence question. Nothing depends on the query beyond its words.

Batching: videos with the same number of frames have prompts of the same length at the same
positions, so their prefills run as one batch through ``Method.prefill_batch`` (their cache tensors
copied to the device and stacked there on the batch axis; no padding and no mask are needed). On a
GPU the batch size comes from the free memory and the bytes one video needs, so a library of
equal-length videos is usually one or a few batches. ``indexed`` reads the store entries on a
thread pool (reading, checksumming and decoding release the GIL).

Evidence (``times``): for the ``top_k`` videos only, each frame is scored on its own (the same
probes on a one-frame cache, batched across all of those frames), and the timestamps of the
frames with the highest scores are reported (at most ``evidence``, best first). A frame's own score
says whether that moment shows the query by itself; it costs one short prefill per frame, which is
why it runs for the shown videos and not for the whole library.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import torch

from vidqa import fast
from vidqa.errors import VidqaError
from vidqa.framecache import FrameCache
from vidqa.synthetic import COLOURS, SHAPES

TEMPLATE = "Does this video show {query}? Answer yes or no."
DEMO_TEMPLATE = "does {query} appear?"
DEMO_MODELS = ("tiny-voco", "tiny-mini")
# The demo models' trained questions whose answer is a colour of the named shape (vidqa.synthetic):
DEMO_COLOUR_QUESTIONS = ("what colour is the {shape}?", "what colour is the {shape} at first?",
                         "what colour does the {shape} turn?")
YES = ("yes", "Yes", "YES", " yes", " Yes")
NO = ("no", "No", "NO", " no", " No")
CPU_BATCH = 64
MAX_BATCH = 4096


@dataclass(frozen=True)
class Probe:
    """One question asked of every cache: the score is the probability of ``answer`` against ``others``."""

    question: str
    answer: str = "yes"
    others: tuple[str, ...] = ("no",)


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


def probes_for(query: str, model_id: str = "", template: str | None = None) -> list[Probe]:
    """The probes that score ``query``: the yes/no question (``template`` if given), or for a demo
    model and a query naming one shape and its colours, its colour questions about that shape."""
    question = question_for(query, model_id, template)  # checks the query and the template
    if template is None and model_id in DEMO_MODELS:
        words = [w.strip(",.;:!?") for w in query.lower().split()]
        shapes = [w for w in words if w in SHAPES]
        colours = list(dict.fromkeys(w for w in words if w in COLOURS))
        rest = [w for w in words if w not in SHAPES and w not in COLOURS and w not in ("a", "an", "the", "and")]
        if len(shapes) == 1 and colours and not rest:
            return [Probe(q.format(shape=shapes[0]), c, tuple(o for o in COLOURS if o != c))
                    for c in colours for q in DEMO_COLOUR_QUESTIONS]
    return [Probe(question)]


def _spellings(word: str) -> tuple[str, ...]:
    if word == "yes":
        return YES
    if word == "no":
        return NO
    return tuple(dict.fromkeys((word, word.capitalize(), word.upper(), " " + word, " " + word.capitalize())))


def choice_ids(tokenizer, answer: str, others: Sequence[str]) -> tuple[list[int], list[int]]:
    """Token ids that start ``answer``, and ids that start any of ``others``: every spelling's one-token
    form where the tokenizer has one, else the first token of each spelling (an id that both sides
    map to, or the unknown token, counts for neither)."""

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
        mine = ids(_spellings(answer), whole)
        rest = set().union(*(ids(_spellings(o), whole) for o in others)) if others else set()
        both = mine & rest
        mine, rest = sorted(mine - both - {unk}), sorted(rest - both - {unk})
        if mine and rest:
            return mine, rest
    raise VidqaError(f"this model's tokenizer cannot tell {answer!r} from {others[0]!r} in one token: "
                     "search cannot score with it")


def answer_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids that start an answer of yes, and of no (``choice_ids``)."""
    return choice_ids(tokenizer, "yes", ("no",))


def batch_size_for(qa, cache: FrameCache, prompt_len: int, count: int) -> int:
    """How many videos like ``cache`` one batch holds: ``CPU_BATCH`` off the GPU; on a GPU, from its
    free memory (a third of it) and one video's bytes: its cache copied in, stacked, re-laid out and
    re-rotated in float32 (6x at the peak), plus the prompt's K/V and activations, and its logits."""
    device = getattr(qa, "device", torch.device("cpu"))
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return CPU_BATCH
    cfg = qa.llm.config
    elem = torch.finfo(qa.llm.dtype).bits // 8 if qa.llm.dtype.is_floating_point else 2
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_token = cfg.num_hidden_layers * 2 * heads * head_dim * elem + 16 * cfg.hidden_size * elem
    need = 6 * cache.nbytes + 3 * prompt_len * per_token + 4 * cfg.vocab_size
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return max(1, min(MAX_BATCH, count, int(free / 3 // max(1, need))))


def _to_device(caches: Sequence[FrameCache], device) -> list[FrameCache]:
    """Caches on ``device``, each copied on its own (``FrameCache.to``: tensors already there stay; from
    page-locked memory, a server's host tier, without waiting for the host).

    One by one rather than stacked on the host first: a stack needs a pinned host buffer as large as
    the batch, and pinning 1.4 GB took 2.7 s on the H200 machine (benchmarks/serve_profile.py), far more
    than the copies themselves."""
    return [c.to(device, non_blocking=True) for c in caches]


def _shape(c: FrameCache):
    return c.num_frames, tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(c.tensors.items()))


@torch.inference_mode()
def score_caches(qa, caches: Sequence[FrameCache], question: str | Probe, batch_size: int | None = None) -> list[float]:
    """P(answer) / (P(answer) + P(others)) for a probe (a plain question: yes against no) on every
    cache, in batches of equal shapes (``batch_size``: None chooses, see ``batch_size_for``)."""
    probe = question if isinstance(question, Probe) else Probe(question)
    yes, no = choice_ids(qa.tokenizer, probe.answer, probe.others)
    prefix = qa.method.answer_prefix
    prefix_ids = qa.tokenizer.encode(prefix, add_special_tokens=False) if prefix else []
    device = getattr(qa, "device", None) or qa.llm.get_input_embeddings().weight.device
    scores: list[float] = [0.0] * len(caches)
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(caches):
        groups.setdefault(_shape(c), []).append(i)
    for members in groups.values():
        size = batch_size or batch_size_for(qa, caches[members[0]], len(qa.method.prompt_ids(probe.question)),
                                            len(members))
        for s in range(0, len(members), size):
            part = members[s:s + size]
            batch = qa.method.prefill_batch(_to_device([caches[i] for i in part], device), probe.question)
            out = qa.llm(input_ids=batch.input_ids, inputs_embeds=batch.inputs_embeds, position_ids=batch.position_ids,
                         use_cache=True, logits_to_keep=1, **fast.cache_kwargs(batch.past_key_values))
            if prefix_ids:  # the header the model writes before its answer: teacher-forced
                n = len(part)
                start = int(batch.position_ids[0, -1]) + 1
                ids = torch.tensor([prefix_ids], device=batch.position_ids.device).expand(n, -1)
                pos = torch.arange(start, start + len(prefix_ids), device=ids.device).expand(n, -1)
                out = qa.llm(input_ids=ids, position_ids=pos, **fast.cache_kwargs(fast.output_cache(out)), use_cache=True,
                             logits_to_keep=1)
            probs = torch.softmax(out.logits[:, -1].float(), dim=-1)
            p_yes, p_no = probs[:, yes].sum(-1), probs[:, no].sum(-1)
            for i, v in zip(part, (p_yes / (p_yes + p_no).clamp_min(1e-30)).tolist()):
                scores[i] = v
    return scores


def score_probes(qa, caches: Sequence[FrameCache], probes: Sequence[Probe], batch_size: int | None = None) -> list[float]:
    """The mean of every probe's score, per cache."""
    per = [score_caches(qa, caches, p, batch_size) for p in probes]
    return [sum(s) / len(per) for s in zip(*per)]


def frame_evidence(qa, caches: Sequence[FrameCache], question: str | Probe | Sequence[Probe], evidence: int = 3,
                   batch_size: int | None = None) -> list[list[float]]:
    """For each cache, the timestamps of its ``evidence`` frames with the highest own score, best first."""
    probes = [question] if isinstance(question, (str, Probe)) else list(question)
    singles, owner = [], []
    for v, c in enumerate(caches):
        for f in range(c.num_frames):
            singles.append(c.select([f]))
            owner.append((v, f))
    scores = score_probes(qa, singles, probes, batch_size) if singles else []
    per: list[list[tuple[float, float]]] = [[] for _ in caches]
    for (v, f), s in zip(owner, scores):
        per[v].append((s, caches[v].timestamps[f]))
    return [[t for _, t in sorted(p, key=lambda x: -x[0])[:evidence]] for p in per]


def rank(qa, named: Sequence[tuple[str, FrameCache]], query: str, *, top_k: int = 5, template: str | None = None,
         evidence: int = 3, batch_size: int | None = None) -> list[Hit]:
    """The ``top_k`` best of the named caches for ``query``, best first, with per-frame evidence."""
    if top_k < 1:
        raise VidqaError("--top-k must be at least 1")
    probes = probes_for(query, qa.model_id, template)
    scores = score_probes(qa, [c for _, c in named], probes, batch_size)
    order = sorted(range(len(named)), key=lambda i: (-scores[i], named[i][0]))[:top_k]
    times = frame_evidence(qa, [named[i][1] for i in order], probes, evidence, batch_size) if evidence else [[]] * len(order)
    return [Hit(named[i][0], scores[i], t, named[i][1].num_frames) for i, t in zip(order, times)]


def read_workers() -> int:
    """Threads that read store entries at once."""
    return max(1, min(32, os.cpu_count() or 1))


def indexed(qa, store, videos, sampling, workers: int | None = None,
            hot=None, keep=None) -> tuple[list[tuple[str, FrameCache]], list[str]]:
    """The stored caches of ``videos`` for this model and sampling, and the videos without one (read
    on ``workers`` threads, in the order given). ``hot(store_key)``: a cache already in memory for
    that entry (a server's), used instead of reading the store; ``keep(store_key, cache)``: hears
    each cache read from the store and returns the one to use (a server keeps it in memory, so the
    next search over the same library reads nothing)."""
    from vidqa.library import cache_settings, cache_spec, stored  # same layer (6)

    settings = cache_settings(qa, sampling)
    cache_spec(qa)  # found once, before the threads check entries against it

    def one(v):
        try:
            key = store.key(v, settings)
            cache = hot(key) if hot is not None else None
            if cache is None:
                cache = stored(qa, store, key, settings)
                if cache is not None and keep is not None:
                    cache = keep(key, cache)
            return cache
        except VidqaError:
            return None

    videos = list(videos)
    caches: list[FrameCache | None] = [None] * len(videos)
    todo = list(range(len(videos)))
    if hot is not None:
        # what memory holds, found on this thread: a memoised hash and a dict lookup per video. A thread
        # pool only adds GIL contention to that (benchmarks/search_hot.py, 1,000 held videos on 2 cores:
        # 0.075 s here, 0.23-0.35 s through the pool)
        todo = []
        for i, v in enumerate(videos):
            try:
                key = store.key(v, settings, compute=False)
            except VidqaError:
                key = None
            caches[i] = hot(key) if key is not None else None
            if caches[i] is None:
                todo.append(i)
    workers = workers or read_workers()
    if workers > 1 and len(todo) > 1:
        with ThreadPoolExecutor(max_workers=min(workers, len(todo)), thread_name_prefix="vidqa-search-read") as pool:
            for i, c in zip(todo, pool.map(one, [videos[i] for i in todo])):
                caches[i] = c
    else:
        for i in todo:
            caches[i] = one(videos[i])
    found = [(str(v), c) for v, c in zip(videos, caches) if c is not None]
    missing = [str(v) for v, c in zip(videos, caches) if c is None]
    return found, missing
