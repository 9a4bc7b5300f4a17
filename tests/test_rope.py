"""`vidqa.methods.rope`: exact RoPE re-rotation of cached keys to any temporal slot."""

import torch

from vidqa.methods.rope import frame_slots, rerotate, voco_context

TOL = 1e-4


def features(qa, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, qa.vision.num_patches, qa.vision.hidden_size, generator=g)


@torch.no_grad()
def test_moved_cache_equals_computing_at_the_new_positions(voco_qa):
    """Frame t compressed at canonical positions then re-rotated == compressed at positions shifted by t*N."""
    m = voco_qa.method
    T, N = 4, m.tokens_per_frame
    feats = features(voco_qa, T, seed=7)
    moved = voco_context(**m.compress(feats), rotary_emb=m.rotary_emb)
    embeds = m.frame_embeds(feats)
    for layer in range(voco_qa.llm.config.num_hidden_layers):
        direct = []
        for t in range(T):
            from transformers import DynamicCache

            kv = DynamicCache()
            pos = (torch.arange(embeds.shape[1]) + t * N)[None]
            voco_qa.llm.model(inputs_embeds=embeds[t : t + 1], position_ids=pos, past_key_values=kv, use_cache=True)
            direct.append(kv.layers[layer].keys[:, :, m.p0 : m.p0 + N])
        direct = torch.cat(direct, dim=2)
        assert (moved.layers[layer].keys - direct).abs().max() < TOL


def test_rerotate_composes():
    """R(a) then R(b) == R(a + b), and R(0) is the identity, for the model's own RoPE."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rope = LlamaRotaryEmbedding(LlamaConfig(hidden_size=64, num_attention_heads=4))
    k = torch.randn(2, 5, 16, dtype=torch.float64).float()
    a, b = torch.tensor([3, 1, 4, 1, 5]), torch.tensor([9, 2, 6, 5, 3])
    assert torch.allclose(rerotate(rerotate(k, a, rope), b, rope), rerotate(k, a + b, rope), atol=1e-5)
    assert torch.allclose(rerotate(k, torch.zeros(5, dtype=torch.long), rope), k)
    assert frame_slots(3, 2).tolist() == [0, 0, 2, 2, 4, 4]


def test_llama3_rope_scaling_is_kept_and_rerotation_still_exact():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from vidqa.checkpoint import llm_config

    cfg = llm_config({"model_type": "llava_mini_llama", "hidden_size": 64, "num_attention_heads": 4,
                      "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                      "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})
    assert cfg.rope_parameters["rope_type"] == "llama3"
    rope = LlamaRotaryEmbedding(cfg)
    plain = LlamaRotaryEmbedding(LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=500000.0))
    assert not torch.allclose(rope.inv_freq, plain.inv_freq)
    k = torch.randn(3, 16)
    a = torch.tensor([7, 100, 5000])
    assert torch.allclose(rerotate(rerotate(k, a, rope), a, rope), rerotate(k, 2 * a, rope), atol=1e-4)
