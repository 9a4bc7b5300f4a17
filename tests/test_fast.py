"""The static-cache decode step equals transformers' decode step (float32, CPU; the CUDA graph replays it)."""

import torch

from vidqa.compress import FrameCache
from vidqa.fast import StaticDecoder, supports
from vidqa.generate import GenerationConfig, generate


@torch.no_grad()
def test_static_decoder_matches_transformers(voco_qa):
    m, llm = voco_qa.method, voco_qa.llm
    assert supports(llm)
    feats = torch.randn(3, voco_qa.vision.num_patches, voco_qa.vision.hidden_size)
    cache = FrameCache("voco", m.compress(feats), [0.0, 1.0, 2.0], m.tokens_per_frame, m.cache_meta())
    pre = m.prefill(cache, "what moves?")
    ref = llm(input_ids=pre.input_ids, position_ids=pre.position_ids, past_key_values=pre.past_key_values)
    dec = StaticDecoder(llm, capacity=256, graph=False)
    dec.load(ref.past_key_values)
    pos = int(pre.position_ids[0, -1]) + 1
    tok = int(ref.logits[0, -1].argmax())
    kv = ref.past_key_values
    for step in range(10):
        fast = dec.step(tok, pos + step)
        out = llm(input_ids=torch.tensor([[tok]]), position_ids=torch.tensor([[pos + step]]), past_key_values=kv)
        kv = out.past_key_values
        assert (fast - out.logits[0, -1]).abs().max() < 1e-4
        tok = int(fast.argmax())


@torch.no_grad()
def test_generate_same_tokens_with_and_without_the_static_decoder(voco_qa):
    m, llm = voco_qa.method, voco_qa.llm
    feats = torch.randn(2, voco_qa.vision.num_patches, voco_qa.vision.hidden_size)
    cache = FrameCache("voco", m.compress(feats), [0.0, 1.0], m.tokens_per_frame, m.cache_meta())
    cfg = GenerationConfig(max_new_tokens=12)
    plain = list(generate(llm, m.prefill(cache, "q?"), cfg, set()))
    fast = list(generate(llm, m.prefill(cache, "q?"), cfg, set(), decoder=StaticDecoder(llm, 256, graph=False)))
    assert plain == fast and len(plain) == 12
