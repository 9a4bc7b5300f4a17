"""`vidqa.methods.mini.prompt`: the official Llama-3.1 prompt around <image> and the stop ids."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vidqa import testing
from vidqa.methods import mini


@pytest.fixture(autouse=True)
def _no_grad():
    """Inference only here; scoped so that other test modules (training) keep autograd."""
    with torch.no_grad():
        yield


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


def _llama3_inv_freq(theta: float, dim: int, factor: float, low: float, high: float, orig: int) -> torch.Tensor:
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    wavelen = 2 * math.pi / inv
    out = torch.where(wavelen > orig / low, inv / factor, inv)
    smooth = (orig / wavelen - low) / (high - low)
    medium = (wavelen >= orig / high) & (wavelen <= orig / low)
    return torch.where(medium, (1 - smooth) * inv / factor + smooth * inv, out)


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
