"""The static-cache decode step equals transformers' decode step (float32, CPU; the CUDA graph replays it)."""

import pytest
import torch

from vidqa.methods.base import FrameCache
from vidqa import fast
from vidqa.fast import supports
from vidqa.generate import GenerationConfig, StaticDecoder, generate


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


def _tiny_llama(**kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=kw.pop("layers", 3),
                      num_attention_heads=4, num_key_value_heads=kw.pop("kv", 4), max_position_embeddings=512, **kw)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@torch.no_grad()
def test_causal_prefix_equals_the_transformers_layers():
    """Hidden states and every layer's K/V, with GQA, biases and llama3 RoPE scaling; the last layer's
    K/V-only shortcut gives the same K/V."""
    from transformers import DynamicCache

    from vidqa.fast import causal_prefix

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 500000.0}
    for kw in ({}, {"kv": 2, "attention_bias": True, "mlp_bias": True, "rope_parameters": rope}):
        llm = _tiny_llama(**kw)
        for p in llm.parameters():  # biases start at zero: make them matter
            p.add_(0.02 * torch.randn_like(p))
        h = torch.randn(3, 40, 64)
        cache = DynamicCache()
        ref = llm.model(inputs_embeds=h, past_key_values=cache, use_cache=True, output_hidden_states=True)
        out, keys, values = causal_prefix(llm.model.layers, llm.model.rotary_emb, h.clone())
        # transformers applies the final norm to the last hidden state; hidden_states[-1] is after it
        assert (llm.model.norm(out) - ref.last_hidden_state).abs().max() < 1e-5
        for i in range(3):
            assert (keys[i] - cache.layers[i].keys).abs().max() < 1e-5
            assert (values[i] - cache.layers[i].values).abs().max() < 1e-5
        for span in (slice(30, 33), slice(37, 40), slice(39, 40)):  # inside, and at the end as VoCo's is
            none, k2, v2 = causal_prefix(llm.model.layers, llm.model.rotary_emb, h.clone(), keep=span, output=False)
            assert none is None
            for i in range(3):
                assert (k2[i] - cache.layers[i].keys[:, :, span]).abs().max() < 1e-5
                assert (v2[i] - cache.layers[i].values[:, :, span]).abs().max() < 1e-5


@torch.no_grad()
def test_causal_prefix_kept_kv_with_one_and_two_layers():
    """The K/V-only last layer and the rows-only layer before it, when they are the only layers."""
    from transformers import DynamicCache

    from vidqa.fast import causal_prefix

    for n in (1, 2):
        llm = _tiny_llama(kv=2, layers=n)
        h = torch.randn(2, 25, 64)
        cache = DynamicCache()
        llm.model(inputs_embeds=h, past_key_values=cache, use_cache=True)
        span = slice(20, 22)
        _, keys, values = causal_prefix(llm.model.layers, llm.model.rotary_emb, h.clone(), keep=span, output=False)
        assert len(keys) == n
        for i in range(n):
            assert (keys[i] - cache.layers[i].keys[:, :, span]).abs().max() < 1e-5
            assert (values[i] - cache.layers[i].values[:, :, span]).abs().max() < 1e-5


@torch.no_grad()
def test_encoder_equals_the_clip_layers():
    """vidqa.fast.encoder is CLIP's encoder layers, for CLIP-L's QuickGELU and for exact GELU."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from vidqa.fast import encoder, supports_encoder

    for act in ("quick_gelu", "gelu"):
        cfg = CLIPVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                               image_size=28, patch_size=7, hidden_act=act)
        cfg._attn_implementation = "sdpa"
        torch.manual_seed(0)
        tower = CLIPVisionModel(cfg).eval()
        for p in tower.parameters():
            p.add_(0.02 * torch.randn_like(p))
        layers = getattr(tower, "vision_model", tower).encoder.layers
        assert supports_encoder(layers)
        h = torch.randn(3, 17, 48)
        ref = h
        for layer in layers:
            ref = layer(ref, attention_mask=None)
            ref = ref[0] if isinstance(ref, tuple) else ref
        assert (encoder(layers, h) - ref).abs().max() < 1e-5



def test_cudnn_attention_only_where_it_was_measured(monkeypatch):
    """cuDNN's kernel is asked for only on CUDA in bf16/fp16 without grouped K/V heads; never on the CPU."""
    x = torch.zeros(1, 2, 3, 64, dtype=torch.bfloat16)
    assert not fast.cudnn_attention_ok(x, 2, 2, 64)
    monkeypatch.setattr(fast, "FIXED_SHAPE_CUDNN", False)
    if torch.cuda.is_available():
        assert not fast.cudnn_attention_ok(x.cuda(), 2, 2, 64)


@torch.no_grad()
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="cuDNN attention is used on Hopper or later")
def test_cudnn_attention_matches_flash_in_compression_and_clip(monkeypatch):
    """Compression's layers and CLIP's encoder with cuDNN's attention give flash's result (bf16 rounding)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    llm = _tiny_llama(layers=3).cuda().to(torch.bfloat16)
    h = torch.randn(4, 579, 64, device="cuda", dtype=torch.bfloat16)
    assert fast.cudnn_attention_ok(h, 4, 4, 16)
    cfg = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=28, patch_size=7, hidden_act="quick_gelu")
    cfg._attn_implementation = "sdpa"
    tower = CLIPVisionModel(cfg).cuda().to(torch.bfloat16).eval()
    layers = getattr(tower, "vision_model", tower).encoder.layers
    x = torch.randn(4, 577, 64, device="cuda", dtype=torch.bfloat16)
    runs = {}
    for on in (True, False):
        monkeypatch.setattr(fast, "FIXED_SHAPE_CUDNN", on)
        out, keys, values = fast.causal_prefix(llm.model.layers, llm.model.rotary_emb, h.clone(), compile=False)
        _, kept, _ = fast.causal_prefix(llm.model.layers, llm.model.rotary_emb, h.clone(), keep=slice(577, 579),
                                        output=False, compile=False)
        runs[on] = (out, *keys, *values, *kept, fast.encoder(layers, x.clone(), compile=False))
    monkeypatch.setattr(fast, "FIXED_SHAPE_CUDNN", True)  # compiled: the graph calls cuDNN's kernel too
    out, keys, values = fast.causal_prefix(llm.model.layers, llm.model.rotary_emb, h.clone(), compile=True)
    runs["compiled"] = (out, *keys, *values, *runs[True][7:10], fast.encoder(layers, x.clone(), compile=True))
    for a, b in [*zip(runs[True], runs[False]), *zip(runs["compiled"], runs[False])]:
        assert torch.isfinite(a).all()
        assert (a.float() - b.float()).abs().max() <= 0.02 * b.float().abs().max() + 1e-3


@torch.no_grad()
def test_fused_projections_are_views_and_change_nothing():
    from vidqa.fast import fuse_projections

    llm = _tiny_llama(kv=2)
    x = torch.randn(2, 5, 64)
    layer = llm.model.layers[0]
    before = (layer.self_attn.k_proj(x), layer.mlp(x))
    fuse_projections(llm.model.layers)
    fuse_projections(llm.model.layers)  # idempotent
    (w_qkv, _), (w_gu, _) = layer._vidqa_fused
    assert layer.self_attn.q_proj.weight.data_ptr() == w_qkv.data_ptr()  # views: no memory added
    assert layer.mlp.gate_proj.weight.data_ptr() == w_gu.data_ptr()
    assert torch.equal(layer.self_attn.k_proj(x), before[0]) and torch.equal(layer.mlp(x), before[1])


def test_plan_free_attention_turns_cudnn_attention_off_on_cuda_only(monkeypatch):
    """cuDNN attention plans per shape (a new question's first forward took 3x longer on an H200):
    a model on CUDA turns it off; on the CPU nothing global changes."""
    calls = []
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", lambda on: calls.append(on))
    fast.plan_free_attention(torch.device("cpu"))
    fast.plan_free_attention("cpu")
    assert calls == []
    fast.plan_free_attention(torch.device("cuda", 1))
    fast.plan_free_attention("cuda")
    assert calls == [False, False]
