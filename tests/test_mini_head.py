"""`vidqa.methods.mini.head`: the prompt head kept per frame, and the tail-only prefill against it."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mini_helpers import _no_grad, ckpt, model, tokenizer  # noqa: F401 (fixtures)

from vidqa.framecache import FrameCache
from vidqa.methods import mini
from vidqa.methods.mini.head import common_head, prefusion_tail

HEAD_TENSORS = ("head_keys", "head_values", "head_text", "head_ids")
QUESTIONS = ["what moves?", " leading space, then words", "\nstarts with a newline", "!", "Wow! id 0 inside!?",
             "a much longer question about the colours, the shapes and where they go over time"]


def test_common_head():
    assert common_head([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == [1, 2]
    assert common_head([[1, 2], [1, 2, 3]]) == [1, 2]
    assert common_head([[7], [8]]) == []
    assert common_head([[4, 5]]) == [4, 5]


def reference_prefill(method, cache: FrameCache, question: str, history=()):
    """The prefill before the head existed: the whole prompt per frame through ``prefusion_text_from_kv``."""
    ids = torch.tensor(method.prompt_ids(question, history))
    embeds, visible = mini.prompt_embeddings(method.llm.get_input_embeddings(), ids)
    kv = method._chunk_kv(cache, slice(0, cache.num_frames), "cpu")
    text = mini.prefusion_text_from_kv(method.prefusion, method.llm.model.rotary_emb, kv, embeds, visible)
    fused = (text.float().sum(0) / cache.num_frames).to(embeds.dtype)
    inputs = mini.assemble_llm_inputs(fused, ids, kv.vision_tokens.reshape(-1, kv.vision_tokens.shape[-1]))
    return inputs[None], torch.arange(inputs.shape[0])[None]


def without_head(cache: FrameCache) -> FrameCache:
    """The cache as vidqa stored it before the head existed."""
    return dataclasses.replace(cache, tensors={k: v for k, v in cache.tensors.items() if k not in HEAD_TENSORS})


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) <= rel * float(b.abs().max())


@pytest.fixture(scope="module")
def frames():
    g = np.random.default_rng(0)
    return SimpleNamespace(pixels=g.integers(0, 255, (5, 40, 48, 3), dtype=np.uint8), timestamps=np.arange(5.0))


@pytest.fixture
def small_chunks(mini_qa):
    """Several chunks per question (5 frames in chunks of 2)."""
    m = mini_qa.method
    chunk, m.chunk_frames = m.chunk_frames, 2
    yield m
    m.chunk_frames = chunk


@pytest.fixture(scope="module")
def kv_cache(mini_qa, frames):
    with torch.no_grad():
        return mini_qa.compress(frames, batch_size=2)


def test_head_is_the_prompt_before_the_question(mini_qa, kv_cache):
    m = mini_qa.method
    head = m.head_ids
    ids = m.prompt_ids("what moves?")
    assert 0 < len(head) < len(ids) and ids[:len(head)] == head
    assert mini.IMAGE_TOKEN_INDEX in head  # the placeholder sits before the question: masked, in the head
    t = kv_cache.tensors
    n, layers, kv_heads, _, d = t["keys"].shape
    visible = sum(i > 0 for i in head)
    assert t["head_keys"].shape == t["head_values"].shape == (n, layers, kv_heads, visible, d)
    assert t["head_text"].shape == (n, len(head), t["vision_tokens"].shape[-1])
    assert t["head_ids"].tolist() == [head] * n
    assert m._stored_head(kv_cache, ids) == len(head)  # the tests below do take the head path


@pytest.mark.parametrize("question", QUESTIONS)
def test_head_path_equals_full_path(small_chunks, kv_cache, question):
    m = small_chunks
    ref_embeds, ref_pos = reference_prefill(m, kv_cache, question)
    head = m.prefill(kv_cache, question)
    full = m.prefill(without_head(kv_cache), question)
    assert m._stored_head(without_head(kv_cache), m.prompt_ids(question)) == 0
    for p in (head, full):
        assert close(p.inputs_embeds, ref_embeds) and torch.equal(p.position_ids, ref_pos)


def test_history_equals_full_path(small_chunks, kv_cache):
    """The image sits in the first user turn: a chat's prompt starts with the same head, and gives the
    same inputs as the full path."""
    m = small_chunks
    history = [("what is there?", "a red square"), ("and then?", "it moves left")]
    ref_embeds, ref_pos = reference_prefill(m, kv_cache, "where does it stop?", history)
    p = m.prefill(kv_cache, "where does it stop?", history)
    assert close(p.inputs_embeds, ref_embeds) and torch.equal(p.position_ids, ref_pos)


def test_selected_frames(small_chunks, kv_cache):
    m = small_chunks
    part = kv_cache.select([4, 0, 2])
    assert part.tensors["head_keys"].shape[0] == 3 and m._stored_head(part, m.prompt_ids("x")) > 0
    ref_embeds, _ = reference_prefill(m, part, "what moves?")
    assert close(m.prefill(part, "what moves?").inputs_embeds, ref_embeds)
    one = kv_cache.select([3])
    assert close(m.prefill(one, "what moves?").inputs_embeds, reference_prefill(m, one, "what moves?")[0])


def test_another_head_falls_back(small_chunks, kv_cache):
    """A cache whose head ids are not where the prompt starts (another template) takes the full path."""
    m = small_chunks
    forged = dict(kv_cache.tensors)
    forged["head_ids"] = forged["head_ids"].clone()
    forged["head_ids"][:, -1] += 1
    forged["head_text"] = torch.full_like(forged["head_text"], 1e6)  # would show if it were used
    cache = dataclasses.replace(kv_cache, tensors=forged)
    assert m._stored_head(cache, m.prompt_ids("what moves?")) == 0
    assert close(m.prefill(cache, "what moves?").inputs_embeds, reference_prefill(m, kv_cache, "what moves?")[0])
    # rows that disagree (caches of two heads concatenated) also fall back
    mixed = dict(kv_cache.tensors)
    mixed["head_ids"] = torch.cat([kv_cache.tensors["head_ids"][:1], forged["head_ids"][1:]])
    assert m._stored_head(dataclasses.replace(kv_cache, tensors=mixed), m.prompt_ids("what moves?")) == 0


def test_old_cache_answers_the_same(mini_qa, kv_cache):
    """An entry stored before the head (no head tensors) still answers, token for token."""
    from vidqa.generate import GenerationConfig

    gen = GenerationConfig(max_new_tokens=6)
    for q in ("what moves?", "\nis it red?"):
        assert list(mini_qa.answer(kv_cache, q, gen)) == list(mini_qa.answer(without_head(kv_cache), q, gen))


def test_compact_cache_has_no_head(mini_qa, frames):
    compact = mini_qa.compress(frames, batch_size=2, compact=True)
    assert set(compact.tensors) == {"clip"} and mini_qa.method._stored_head(compact, mini_qa.method.prompt_ids("x")) == 0


def test_prompt_without_question_has_no_head(mini_qa):
    """A prompt that ignores the question (benchmarks' fixed ids) gives no head: nothing to split off."""
    m = mini_qa.method
    saved = m._head_ids, m.prompt_ids
    try:
        m._head_ids = None
        m.prompt_ids = lambda question, history=(): [1, 2, mini.IMAGE_TOKEN_INDEX, 3]
        assert m.head_ids == []
        feats = torch.zeros(1, 4, 32)
        assert not set(HEAD_TENSORS) & set(m.compress(feats))
    finally:
        m._head_ids = None
        del m.prompt_ids
        assert m.prompt_ids("x") and saved[0] in (None, m.head_ids)


def test_tail_equals_transformers_layers(model, tokenizer):
    """``prefusion_tail`` (split K/V, grouped queries) against the transformers layers with a DynamicCache,
    for a whole prompt with masked tokens, and for a head then its tail."""
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(3, 576, 32, generator=g)
    frames = mini.encode_frames(feats, model.compressor, model.projector)
    kv = mini.prefusion_prefix_kv(model.prefusion_layers, model.rotary_emb, frames)
    ids = torch.tensor(mini.build_prompt_ids(tokenizer, "a!b!").ids)
    assert (ids <= 0).sum() >= 3  # the placeholder and two "!" (id 0): masked
    embeds, visible = mini.prompt_embeddings(model.embed_tokens, ids)
    ref = mini.prefusion_text_from_kv(model.prefusion_layers, model.rotary_emb, kv, embeds, visible)
    positions = mini.prefusion_positions(kv.num_prefix, visible)[kv.num_prefix:]
    keys, values = [[k] for k in kv.keys], [[v] for v in kv.values]
    whole, _, _ = prefusion_tail(model.prefusion_layers, model.rotary_emb, keys, values, embeds, visible, positions)
    assert close(whole, ref)
    n = int((ids == mini.IMAGE_TOKEN_INDEX).nonzero()) + 2
    head, hk, hv = prefusion_tail(model.prefusion_layers, model.rotary_emb, keys, values, embeds[:n], visible[:n],
                                  positions[:n], keep_kv=True)
    assert hk[0].shape[2] == int(visible[:n].sum())
    keys2 = [[k, h] for k, h in zip(kv.keys, hk)]
    values2 = [[v, h] for v, h in zip(kv.values, hv)]
    tail, _, _ = prefusion_tail(model.prefusion_layers, model.rotary_emb, keys2, values2, embeds[n:], visible[n:],
                                positions[n:])
    assert close(torch.cat([head, tail], dim=1), ref)


def test_tail_takes_attention_output_in_another_memory_layout(monkeypatch):
    """GPU attention kernels may return [F, heads, rows, D] laid out as [F, rows, heads, D] (not
    contiguous): with grouped heads (4 query heads on 2 K/V heads) the pre-fusion loop must reshape,
    not view (a view failed on an H200)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    from vidqa.methods.mini import head as head_mod

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=2)
    cfg._attn_implementation = "sdpa"
    layers = torch.nn.ModuleList([LlamaDecoderLayer(cfg, i) for i in range(2)]).eval()
    rope = LlamaRotaryEmbedding(cfg)
    keys = [[torch.randn(3, 2, 5, 8)] for _ in range(2)]
    values = [[torch.randn(3, 2, 5, 8)] for _ in range(2)]
    embeds, visible, pos = torch.randn(4, 32), torch.tensor([True, False, True, True]), torch.tensor([5, 1, 6, 7])
    with torch.no_grad():
        ref = prefusion_tail(layers, rope, keys, values, embeds, visible, pos)[0]
        real = head_mod.F.scaled_dot_product_attention

        def strided(*args, **kwargs):
            return real(*args, **kwargs).transpose(1, 2).contiguous().transpose(1, 2)  # same values, flash's layout

        monkeypatch.setattr(head_mod.F, "scaled_dot_product_attention", strided)
        got = prefusion_tail(layers, rope, keys, values, embeds, visible, pos)[0]
    assert torch.allclose(got, ref, atol=1e-6)
