"""Tests of the LLaVA-Mini building blocks (vidqa/mini.py) on tiny random models, CPU only."""

from __future__ import annotations

import math

import pytest
import torch
from mini_helpers import _no_grad, ckpt, model, prompt_tensor, tokenizer  # noqa: F401 (fixtures)

from vidqa.methods import mini


def _frames(model: mini.LlavaMiniModules, n: int, seed: int = 1) -> mini.FrameFeatures:
    g = torch.Generator().manual_seed(seed)
    clip = torch.randn(n, 576, model.options.mm_hidden_size, generator=g)
    return mini.encode_frames(clip, model.compressor, model.projector, 1)


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


def test_prefusion_positions():
    visible = torch.tensor([True, True, False, True, False, True])
    pos = mini.prefusion_positions(3, visible)
    # Prefix 0..2, then visible text continues without gaps; masked slots hold 1.
    assert pos.tolist() == [0, 1, 2, 3, 4, 1, 5, 1, 6]


def test_prefusion_shapes_and_masking(model, tokenizer):
    ids = prompt_tensor(tokenizer, "Why?! Tell me.")  # "!" is id 0 in a Llama-3 style vocabulary: masked too
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
    ids = prompt_tensor(tokenizer, "What happens?")
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
        ids = prompt_tensor(tokenizer, question)
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
    ids = prompt_tensor(tokenizer, "Small?")
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


