"""Tests of the LLaVA-Mini building blocks (vidqa/mini.py) on tiny random models, CPU only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vidqa import checkpoint, testing
from vidqa.methods import mini



@pytest.fixture(autouse=True)
def _no_grad():
    """Inference only here; scoped so that other test modules (training) keep autograd."""
    with torch.no_grad():
        yield


# ----------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return testing.write_tiny_official_checkpoint(tmp_path_factory.mktemp("llava-mini-tiny"))


@pytest.fixture(scope="module")
def model(ckpt) -> mini.LlavaMiniModules:
    return mini.load_llava_mini_state(ckpt, dtype=torch.float32)


@pytest.fixture(scope="module")
def tokenizer(ckpt):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(ckpt))


def _prompt(tokenizer, question: str) -> torch.Tensor:
    return torch.tensor(mini.build_prompt_ids(tokenizer, question).ids)


def _frames(model: mini.LlavaMiniModules, n: int, seed: int = 1) -> mini.FrameFeatures:
    g = torch.Generator().manual_seed(seed)
    clip = torch.randn(n, 576, model.options.mm_hidden_size, generator=g)
    return mini.encode_frames(clip, model.compressor, model.projector, 1)


# ----------------------------------------------------------------------------------------------------
# 1. Sin-cos table and bicubic resize
# ----------------------------------------------------------------------------------------------------


def test_sincos_known_values():
    table = mini.sincos_pos_embed_2d(8, 2)
    assert table.shape == (4, 8) and table.dtype == torch.float32
    s1, c1, s01, c01 = math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)  # omegas: 1, 1/100
    expected = torch.tensor([
        [0, 0, 1, 1, 0, 0, 1, 1],          # row 0, col 0
        [s1, s01, c1, c01, 0, 0, 1, 1],    # row 0, col 1: first half encodes the column
        [0, 0, 1, 1, s1, s01, c1, c01],    # row 1, col 0: second half encodes the row
        [s1, s01, c1, c01, s1, s01, c1, c01],
    ])
    torch.testing.assert_close(table, expected.float(), atol=1e-7, rtol=0)
    # C = 1: a constant vector of alternating quarters (zeros, ones, zeros, ones).
    one = mini.sincos_pos_embed_2d(1024, 1)
    assert torch.equal(one, torch.tensor([0.0] * 256 + [1.0] * 256 + [0.0] * 256 + [1.0] * 256)[None])


def test_sincos_matches_float64_closed_form():
    d, g = 1024, 3
    table = mini.sincos_pos_embed_2d(d, g).double()
    omega = 1.0 / 10000 ** (torch.arange(d // 4, dtype=torch.float64) / (d // 4))
    for idx in range(g * g):
        row, col = divmod(idx, g)
        ref = torch.cat([torch.sin(col * omega), torch.cos(col * omega), torch.sin(row * omega), torch.cos(row * omega)])
        torch.testing.assert_close(table[idx], ref, atol=2e-6, rtol=0)


def _cubic(x: float, a: float = -0.75) -> float:
    x = abs(x)
    if x <= 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0


def _bicubic_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Keys cubic (a=-0.75), half-pixel centres (align_corners=False), border replicated."""
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        src = (o + 0.5) * n_in / n_out - 0.5
        base = math.floor(src)
        for k in range(-1, 3):
            w[o, min(max(base + k, 0), n_in - 1)] += _cubic(src - (base + k))
    return w


@pytest.mark.parametrize("src,tgt", [(2, 5), (3, 4), (2, 24)])
def test_bicubic_resize_matches_hand_computation(src, tgt):
    d = 6
    table = torch.randn(src * src, d, generator=torch.Generator().manual_seed(src * 10 + tgt))
    out = mini.resize_pos_embed(table, tgt * tgt)
    assert out.shape == (tgt * tgt, d) and out.dtype == table.dtype
    m = _bicubic_matrix(src, tgt)
    grid = table.double().reshape(src, src, d)  # [row, col, D], row-major tokens
    ref = torch.einsum("ri,ijd,cj->rcd", m, grid, m).reshape(tgt * tgt, d)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)


def test_resize_identity_and_constant():
    table = torch.randn(4, 8)
    assert mini.resize_pos_embed(table, 4) is table
    one = mini.sincos_pos_embed_2d(8, 1)
    torch.testing.assert_close(mini.resize_pos_embed(one, 576), one.expand(576, -1))
    bf = mini.sincos_pos_embed_2d(16, 2).bfloat16()
    assert mini.resize_pos_embed(bf, 9).dtype == torch.bfloat16  # computed in float32, cast back


# ----------------------------------------------------------------------------------------------------
# 2. Compressor
# ----------------------------------------------------------------------------------------------------


def _compressor_by_hand(comp: mini.Compressor, x: torch.Tensor, heads: int) -> torch.Tensor:
    d = comp.embed_dim
    ln = lambda t, m: torch.nn.functional.layer_norm(t, (d,), m.weight, m.bias, m.eps)  # noqa: E731
    q_in = ln(comp.query, comp.ln_q) + comp.pos_embed
    kv = ln(x, comp.ln_kv)
    k_in = kv + mini.resize_pos_embed(comp.pos_embed, x.shape[1])
    wq, wk, wv = comp.attn.in_proj_weight.split(d)
    bq, bk, bv = comp.attn.in_proj_bias.split(d)
    q, k, v = q_in @ wq.T + bq, k_in @ wk.T + bk, kv @ wv.T + bv  # q: [Nq, d]; k, v: [B, L, d]
    hd = d // heads
    outs = []
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        scores = torch.einsum("qe,ble->bql", q[:, sl], k[..., sl]) / math.sqrt(hd)
        outs.append(torch.einsum("bql,ble->bqe", scores.softmax(-1), v[..., sl]))
    return torch.cat(outs, -1) @ comp.attn.out_proj.weight.T + comp.attn.out_proj.bias


@pytest.mark.parametrize("grid,length,heads", [(2, 36, 8), (1, 576, 8), (3, 16, 4)])
def test_compressor_matches_hand_computation(grid, length, heads):
    torch.manual_seed(grid + heads)
    comp = mini.Compressor(grid, 32, num_heads=heads).double()
    for p in comp.parameters():
        p.normal_(std=0.3)
    x = torch.randn(3, length, 32, dtype=torch.float64)
    out = comp(x)
    assert out.shape == (3, grid * grid, 32)
    torch.testing.assert_close(out, _compressor_by_hand(comp, x, heads), atol=1e-10, rtol=0)


def test_compressor_state_dict_names():
    comp = mini.Compressor(1, 1024)
    shapes = {k: tuple(v.shape) for k, v in comp.state_dict().items()}
    assert shapes == {
        "query": (1, 1024), "pos_embed": (1, 1024), "attn.in_proj_weight": (3072, 1024), "attn.in_proj_bias": (3072,),
        "attn.out_proj.weight": (1024, 1024), "attn.out_proj.bias": (1024,), "ln_q.weight": (1024,), "ln_q.bias": (1024,),
        "ln_kv.weight": (1024,), "ln_kv.bias": (1024,),
    }
    assert comp.attn.batch_first and comp.ln_q.eps == 1e-5 and comp.attn.num_heads == 8
    assert not any(n == "pos_embed" for n, _ in comp.named_parameters())  # frozen


# ----------------------------------------------------------------------------------------------------
# 3. Pre-fusion
# ----------------------------------------------------------------------------------------------------


def test_prefusion_positions():
    visible = torch.tensor([True, True, False, True, False, True])
    pos = mini.prefusion_positions(3, visible)
    # Prefix 0..2, then visible text continues without gaps; masked slots hold 1.
    assert pos.tolist() == [0, 1, 2, 3, 4, 1, 5, 1, 6]


def test_prefusion_shapes_and_masking(model, tokenizer):
    ids = _prompt(tokenizer, "Why?! Tell me.")  # "!" is id 0 in a Llama-3 style vocabulary: masked too
    assert (ids == 0).sum() == 1 and (ids == mini.IMAGE_TOKEN_INDEX).sum() == 1
    frames = _frames(model, 2)
    embeds, visible = mini.prompt_embeddings(model.embed_tokens, ids)
    assert visible.sum() == len(ids) - 2
    fused = mini.prefusion_full(model.prefusion_layers, model.rotary_emb, frames, embeds, visible)
    assert fused.vision_tokens.shape == (2, 1, 64) and fused.text.shape == (2, len(ids), 64)
    # Masked positions keep their raw embeddings (token 0's embedding for both).
    for f in range(2):
        torch.testing.assert_close(fused.text[f, ~visible], model.embed_tokens(torch.zeros(2, dtype=torch.long)), atol=0, rtol=0)
    # Visible positions are fused (changed).
    assert (fused.text[:, visible] - embeds[visible]).abs().amax() > 1e-3
    # "Masked" == deleted: the same pass with the masked tokens removed gives the same outputs.
    kept = ids[visible]
    e2, v2 = mini.prompt_embeddings(model.embed_tokens, kept)
    fused2 = mini.prefusion_full(model.prefusion_layers, model.rotary_emb, frames, e2, v2)
    torch.testing.assert_close(fused2.text, fused.text[:, visible], atol=1e-5, rtol=0)
    torch.testing.assert_close(fused2.vision_tokens, fused.vision_tokens, atol=1e-5, rtol=0)


def test_prefusion_frames_are_independent_and_video_mean(model, tokenizer):
    ids = _prompt(tokenizer, "What happens?")
    frames = _frames(model, 3)
    both = mini.question_via_projected(model.prefusion_layers, model.rotary_emb, model.embed_tokens, frames, ids)
    singles = [mini.question_via_projected(model.prefusion_layers, model.rotary_emb, model.embed_tokens, frames.select(slice(i, i + 1)), ids)
               for i in range(3)]
    for i, one in enumerate(singles):
        torch.testing.assert_close(both.text[i], one.text[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(both.vision_tokens[i], one.vision_tokens[0], atol=1e-5, rtol=0)
    vision, text = mini.fuse_video(both)
    assert vision.shape == (3, 64)  # one token per frame, in time order
    torch.testing.assert_close(vision, torch.cat([s.vision_tokens[0] for s in singles]), atol=1e-5, rtol=0)
    torch.testing.assert_close(text, sum(s.text[0] for s in singles) / 3, atol=1e-5, rtol=0)
    llm_in = mini.assemble_llm_inputs(text, ids, vision)
    i = int((ids == mini.IMAGE_TOKEN_INDEX).nonzero())
    assert llm_in.shape == (len(ids) - 1 + 3, 64)
    assert torch.equal(llm_in[:i], text[:i]) and torch.equal(llm_in[i : i + 3], vision) and torch.equal(llm_in[i + 3 :], text[i + 1 :])


def test_cache_a_equals_cache_b_equals_full_pass(model, tokenizer):
    frames = _frames(model, 3, seed=7)
    kv = mini.prefusion_prefix_kv(model.prefusion_layers, model.rotary_emb, frames)
    assert kv.num_prefix == 577 and len(kv.keys) == 2 and kv.keys[0].shape == (3, 1, 577, 32)
    stored = [k.clone() for k in kv.keys] + [v.clone() for v in kv.values]
    for question in ("What is the man doing?", "Is it raining!? Answer yes or no."):
        ids = _prompt(tokenizer, question)
        embeds, visible = mini.prompt_embeddings(model.embed_tokens, ids)
        full = mini.prefusion_full(model.prefusion_layers, model.rotary_emb, frames, embeds, visible)
        a = mini.question_via_projected(model.prefusion_layers, model.rotary_emb, model.embed_tokens, frames, ids)
        b = mini.question_via_kv(model.prefusion_layers, model.rotary_emb, model.embed_tokens, kv, ids)
        for got in (a, b):
            assert (got.text - full.text).abs().max() < 1e-5
            assert (got.vision_tokens - full.vision_tokens).abs().max() < 1e-5
    # The stored K/V were not touched by the two questions.
    for before, after in zip(stored, [*kv.keys, *kv.values]):
        assert torch.equal(before, after)
    assert kv.select([0, 2]).keys[1].shape[0] == 2


# ----------------------------------------------------------------------------------------------------
# 4. HD mode
# ----------------------------------------------------------------------------------------------------


def test_hd_crop_boxes():
    assert mini.hd_crop_boxes(336, 336, 1) == [(0, 0, 336, 336)]
    assert mini.hd_crop_boxes(100, 60, 2) == [(0, 0, 50, 30), (50, 0, 100, 30), (0, 30, 50, 60), (50, 30, 100, 60), (0, 0, 100, 60)]


def test_stitch_hd_crops_geometry():
    g, r = 3, 2
    # Encode (crop, local row, local col) in the features and check where each lands.
    crops = torch.tensor([[[c, i, j] for i in range(g) for j in range(g)] for c in range(r * r)], dtype=torch.float32)[None]
    stitched = mini.stitch_hd_crops(crops, r)[0]
    assert stitched.shape == ((r * g) ** 2, 3)
    for R in range(r * g):
        for C in range(r * g):
            assert stitched[R * r * g + C].tolist() == [(R // g) * r + C // g, R % g, C % g]


def test_hd_mode_shapes_and_positions(model, tokenizer):
    torch.manual_seed(3)
    clip = torch.randn(2, 5, 576, 32)  # 2 frames x (4 crops + whole image)
    frames = mini.encode_frames(clip, model.compressor, model.projector, resolution_ratio=2)
    assert frames.vision.shape == (2, 2304 + 576, 64) and frames.compressed.shape == (2, 1, 64)
    assert frames.num_prefix == 2304 + 576 + 1
    stitched = mini.stitch_hd_crops(clip[:, :4], 2)
    # Only the stitched 48x48 grid is compressed (pos_embed stretched to 48x48); the whole image is not.
    torch.testing.assert_close(frames.compressed, model.projector(model.compressor(stitched)), atol=1e-6, rtol=0)
    torch.testing.assert_close(frames.vision[:, :2304], model.projector(stitched), atol=1e-6, rtol=0)
    torch.testing.assert_close(frames.vision[:, 2304:], model.projector(clip[:, 4]), atol=1e-6, rtol=0)
    ids = _prompt(tokenizer, "Small?")
    embeds, visible = mini.prompt_embeddings(model.embed_tokens, ids)
    pos = mini.prefusion_positions(frames.num_prefix, visible)
    assert pos[: frames.num_prefix].tolist() == list(range(2881)) and int(pos[frames.num_prefix]) == 2881
    fused = mini.prefusion_full(model.prefusion_layers, model.rotary_emb, frames, embeds, visible)
    vision, text = mini.fuse_video(fused)
    assert vision.shape == (2, 64) and text.shape == (len(ids), 64)  # still C*C = 1 LLM token per frame
    kv = mini.prefusion_prefix_kv(model.prefusion_layers, model.rotary_emb, frames)
    b = mini.question_via_kv(model.prefusion_layers, model.rotary_emb, model.embed_tokens, kv, ids)
    assert (b.text - fused.text).abs().max() < 1e-5
    with pytest.raises(ValueError):
        mini.encode_frames(clip[:, :4], model.compressor, model.projector, resolution_ratio=2)


# ----------------------------------------------------------------------------------------------------
# 5. Config, prompt, checkpoint
# ----------------------------------------------------------------------------------------------------


def _llama3_inv_freq(theta: float, dim: int, factor: float, low: float, high: float, orig: int) -> torch.Tensor:
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    wavelen = 2 * math.pi / inv
    out = torch.where(wavelen > orig / low, inv / factor, inv)
    smooth = (orig / wavelen - low) / (high - low)
    medium = (wavelen >= orig / high) & (wavelen <= orig / low)
    return torch.where(medium, (1 - smooth) * inv / factor + smooth * inv, out)


@pytest.mark.parametrize("type_key", ["rope_type", "type"])
def test_llm_config_keeps_llama3_rope(type_key):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = {
        "model_type": "llava_mini_llama", "architectures": ["LlavaMiniLlamaForCausalLM"], "hidden_size": 4096,
        "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336, "num_hidden_layers": 1,
        "vocab_size": 128256, "max_position_embeddings": 131072, "rope_theta": 500000.0, "torch_dtype": "bfloat16",
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, type_key: "llama3"},
        "mm_hidden_size": 1024, "compressor_size": 1, "prefusion_layer_num": 4, "mm_vision_tower": "openai/clip-vit-large-patch14-336",
    }
    config = checkpoint.llm_config(cfg)
    assert config.model_type == "llama" and not hasattr(config, "compressor_size")
    assert config.rope_parameters["rope_type"] == "llama3" and config.rope_parameters["rope_theta"] == 500000.0
    rope = LlamaRotaryEmbedding(config)
    ref = _llama3_inv_freq(500000.0, 128, 8.0, 1.0, 4.0, 8192)
    torch.testing.assert_close(rope.inv_freq.double(), ref, rtol=1e-6, atol=0)
    plain = 1.0 / 500000.0 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    assert not torch.allclose(ref, plain)  # the scaling does change the low frequencies


def test_loaded_rotary_is_llama3(model):
    ref = _llama3_inv_freq(500000.0, 32, 8.0, 1.0, 4.0, 8192)
    torch.testing.assert_close(model.rotary_emb.inv_freq.double(), ref, rtol=1e-6, atol=0)


def test_prompt_ids(tokenizer):
    p = mini.build_prompt_ids(tokenizer, "What is the man doing?")
    bos, eot = tokenizer.convert_tokens_to_ids("<|begin_of_text|>"), tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert p.before[:2] == [bos, bos] and bos not in p.before[2:]  # double BOS, then no more
    assert p.after[-1] == eot and bos not in p.after
    text_after = tokenizer.decode(p.after)
    assert text_after == "\nWhat is the man doing?<|eot_id|>"  # ends at the user's eot: no assistant header
    text_before = tokenizer.decode(p.before)
    assert "system<|end_header_id|>" in text_before and mini.LLAVA_MINI_SYSTEM_PROMPT in text_before
    assert text_before.endswith("<|start_header_id|>user<|end_header_id|>\n\n")
    assert p.ids.count(mini.IMAGE_TOKEN_INDEX) == 1
    assert p.stop_ids == [tokenizer.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")]
    with pytest.raises(mini.VidqaError):
        mini.build_prompt_ids(tokenizer, "a <image> inside")


def test_stop_ids_fall_back_to_llama31():
    class NoSpecials:
        unk_token_id = None

        def convert_tokens_to_ids(self, token):
            return None

    assert mini.stop_token_ids(NoSpecials()) == [128009, 128008, 128001]


def test_checkpoint_files_are_official_layout(ckpt):
    from safetensors import safe_open

    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["model_type"] == "llava_mini_llama" and "rope_parameters" not in cfg
    assert cfg["rope_scaling"]["rope_type"] == "llama3" and cfg["rope_theta"] == 500000.0
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 4
    keys = set(index["weight_map"])
    assert {"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight", "model.mm_projector.0.weight",
            "model.mm_projector.2.bias", "model.compressor.pos_embed", "model.compressor.attn.in_proj_weight",
            "model.prefusion_layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"} <= keys
    assert not any("vision_tower" in k or "rotary" in k for k in keys)
    tok_cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and "chat_template" in tok_cfg
    clip_dir = Path(cfg["mm_vision_tower"])
    with safe_open(str(clip_dir / "model.safetensors"), framework="pt") as f:
        assert all(k.startswith("vision_model.") for k in f.keys())  # as the hub CLIP stores them
        q_key = "vision_model.encoder.layers.1.self_attn.q_proj.weight"
        q_proj = f.get_tensor(q_key)
    from transformers import CLIPVisionModel

    tower, info = CLIPVisionModel.from_pretrained(str(clip_dir), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(tower.state_dict()[q_key.removeprefix("vision_model.")], q_proj)


def test_checkpoint_round_trip(ckpt, model):
    from safetensors import safe_open

    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    parts = {"model.mm_projector.": model.projector, "model.compressor.": model.compressor,
             "model.prefusion_layers.": model.prefusion_layers}
    loaded = {prefix + k: v for prefix, m in parts.items() for k, v in m.state_dict().items()}
    loaded.update(model.llm.state_dict())
    assert set(loaded) == set(index["weight_map"])  # no missing, no unexpected
    assert model.ignored_keys == []
    for shard in set(index["weight_map"].values()):
        with safe_open(str(ckpt / shard), framework="pt") as f:
            for key in f.keys():
                assert torch.equal(f.get_tensor(key), loaded[key]), key
    torch.testing.assert_close(model.compressor.pos_embed, mini.sincos_pos_embed_2d(32, 1))


def test_checkpoint_key_errors(ckpt, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    index_file = bad / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = index["weight_map"].pop("model.compressor.query")
    index["weight_map"]["model.extra_head.weight"] = shard
    index_file.write_text(json.dumps(index))
    with pytest.raises(mini.CheckpointKeyError) as err:
        mini.load_llava_mini_state(bad)
    assert err.value.missing == ["model.compressor.query"] and err.value.unexpected == ["model.extra_head.weight"]
    # Vision-tower keys are tolerated and reported.
    index["weight_map"]["model.compressor.query"] = shard
    del index["weight_map"]["model.extra_head.weight"]
    index["weight_map"]["model.vision_tower.vision_tower.vision_model.post_layernorm.weight"] = shard
    index_file.write_text(json.dumps(index))
    loaded = mini.load_llava_mini_state(bad)
    assert loaded.ignored_keys == ["model.vision_tower.vision_tower.vision_model.post_layernorm.weight"]


def test_clip_tower_to_llm_inputs(ckpt, model, tokenizer):
    """End to end on the tiny checkpoint: CLIP layer -2 patches -> compressor -> pre-fusion -> LLM logits."""
    from transformers import CLIPVisionModel

    tower = CLIPVisionModel.from_pretrained(model.options.mm_vision_tower).eval()
    pixels = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[model.options.mm_vision_select_layer]
    clip = hidden[:, 1:]  # "patch": CLS dropped
    assert clip.shape == (2, 576, 32)
    frames = mini.encode_frames(clip, model.compressor, model.projector)
    ids = _prompt(tokenizer, "Describe it.")
    vision, text = mini.fuse_video(mini.question_via_projected(model.prefusion_layers, model.rotary_emb, model.embed_tokens, frames, ids))
    embeds = mini.assemble_llm_inputs(text, ids, vision)
    logits = model.llm(inputs_embeds=embeds[None]).logits
    assert logits.shape == (1, len(ids) - 1 + 2, model.llm.config.vocab_size) and torch.isfinite(logits).all()


def test_compact_cache_answers_like_the_kv_cache(mini_qa):
    """The raw-features cache (long videos) gives the same LLM inputs and tokens as the pre-fusion K/V."""
    from types import SimpleNamespace

    from vidqa.generate import GenerationConfig

    g = np.random.default_rng(0)
    frames = SimpleNamespace(pixels=g.integers(0, 255, (5, 40, 48, 3), dtype=np.uint8), timestamps=np.arange(5.0))
    kv = mini_qa.compress(frames, batch_size=2)
    compact = mini_qa.compress(frames, batch_size=2, compact=True)
    assert set(compact.tensors) == {"clip"} and compact.meta["cache_kind"] == "features"
    assert kv.meta["cache_kind"] == "kv" and compact.bytes_per_frame < kv.bytes_per_frame
    chunk, mini_qa.method.chunk_frames = mini_qa.method.chunk_frames, 2  # several chunks
    mini_qa.method.compact_chunk_frames = 3
    try:
        a = mini_qa.method.prefill(kv, "what moves?").inputs_embeds
        b = mini_qa.method.prefill(compact, "what moves?").inputs_embeds
        assert (a - b).abs().max() < 1e-5
        gen = GenerationConfig(max_new_tokens=6)
        assert list(mini_qa.answer(kv, "what moves?", gen)) == list(mini_qa.answer(compact, "what moves?", gen))
    finally:
        mini_qa.method.chunk_frames, mini_qa.method.compact_chunk_frames = chunk, 16
