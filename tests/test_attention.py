"""vidqa.attention: the decode step's one-query attention. The plain path (SDPA with the mask) everywhere;
the split-K kernels under Triton's interpreter (TRITON_INTERPRET=1, on CPU tensors) or on a CUDA GPU."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from vidqa import attention

interpreted = pytest.mark.skipif(attention.triton is None or os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="the kernels on the CPU need Triton's interpreter (TRITON_INTERPRET=1)")


def inputs(heads: int, kv_heads: int, capacity: int, head_dim: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, 1, head_dim, generator=g).to(dtype)
    k = torch.randn(1, kv_heads, capacity, head_dim, generator=g).to(dtype)
    v = torch.randn(1, kv_heads, capacity, head_dim, generator=g).to(dtype)
    return q, k, v


def masked_sdpa(q, k, v, length: int, scale: float) -> torch.Tensor:
    mask = (torch.arange(k.shape[2], device=k.device) < length).view(1, 1, 1, -1)
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2)])
@pytest.mark.parametrize("length", [1, 37, 64])
def test_the_plain_path_equals_sdpa_with_the_mask(heads, kv_heads, length):
    q, k, v = inputs(heads, kv_heads, 64, 32)
    scale = 1 / math.sqrt(32)
    out = attention.decode_attention(q, k, v, torch.tensor([length]), scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, masked_sdpa(q, k, v, length, scale), rtol=1e-6, atol=1e-6)
    # and it is attention over the valid positions alone
    alone = F.scaled_dot_product_attention(q, k[:, :, :length], v[:, :, :length], scale=scale,
                                           enable_gqa=heads != kv_heads)
    torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-5)
    assert not attention.kernel_ok(q, k, v)  # CPU tensors: never the kernels


def test_the_default_scale_is_one_over_root_head_dim():
    q, k, v = inputs(2, 2, 16, 64)
    torch.testing.assert_close(attention.decode_attention(q, k, v, torch.tensor([9])),
                               masked_sdpa(q, k, v, 9, 1 / 8), rtol=1e-6, atol=1e-6)


def test_splits_depend_on_the_capacity_and_kv_heads_only():
    for capacity in (1, 16, 64, 65, 256, 1000, 4096, 1 << 16):
        for n_kv in (1, 2, 8, 32, 64, 128):
            s = attention.splits_for(capacity, n_kv)
            assert 1 <= s <= -(-capacity // attention.BLOCK_N)  # every chunk has at least one block
            assert s & (s - 1) == 0
            # enough programs for the SMs, where the cache has the blocks for them
            assert n_kv * s >= attention.SMS or s == -(-capacity // attention.BLOCK_N)
    # Vicuna-7B (32 KV heads) and Llama-3-8B (8)
    assert [attention.splits_for(c, 32) for c in (256, 1024, 4096)] == [4, 8, 8]
    assert [attention.splits_for(c, 8) for c in (256, 1024, 4096)] == [4, 16, 32]
    assert attention.splits_for(attention.BLOCK_N, 32) == 1


# ---- the kernels, in the interpreter ----------------------------------------------------------------

B = attention.BLOCK_N


@interpreted
@pytest.mark.parametrize("heads,kv_heads,capacity,head_dim,splits,length", [
    (2, 2, 4 * B, 64, 1, 1),  # MHA, one chunk: phase 1 writes the output
    (2, 2, 4 * B, 64, 1, 4 * B),
    (2, 2, 4 * B, 64, 4, 1),  # several chunks, three of them past the length
    (2, 2, 4 * B, 64, 4, B + 21),  # a partial block
    (2, 2, 4 * B, 64, 4, 2 * B),  # exactly a chunk boundary
    (2, 2, 4 * B, 64, 4, 4 * B),  # full
    (8, 2, 4 * B, 128, 2, 3 * B - 1),  # GQA, 4 query heads per KV head, head_dim 128
    (8, 2, 4 * B, 128, 4, 4 * B),
    (8, 2, 2 * B, 64, 1, B + 1),
    (4, 1, 3 * B, 128, 3, 2 * B),  # 3 chunks (a padded combine), a boundary
    (4, 1, 2 * B + 5, 64, 2, 2 * B + 5),  # a capacity that is not a whole number of blocks
])
def test_the_kernels_equal_sdpa_with_the_mask(heads, kv_heads, capacity, head_dim, splits, length):
    q, k, v = inputs(heads, kv_heads, capacity, head_dim, seed=length)
    scale = 1 / math.sqrt(head_dim)
    out = attention.launch(q, k, v, torch.tensor([length]), scale, splits)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, masked_sdpa(q, k, v, length, scale), rtol=1e-5, atol=1e-5)


@interpreted
@pytest.mark.parametrize("length", [1, B - 1, B + 1])
def test_chunks_past_the_length_contribute_nothing_and_nothing_past_it_is_read(length):
    q, k, v = inputs(8, 2, 8 * B, 64, seed=3)
    k[:, :, length:] = float("nan")  # a stale cache could hold anything there
    v[:, :, length:] = float("inf")
    out = attention.launch(q, k, v, torch.tensor([length]), 0.125, 8)
    assert not out.isnan().any() and not out.isinf().any()
    alone = F.scaled_dot_product_attention(q, k[:, :, :length], v[:, :, :length], scale=0.125, enable_gqa=True)
    torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-5)
    if length == 1:  # softmax over one key: its value, exactly
        assert torch.equal(out, v[:, :, :1].repeat_interleave(4, dim=1))


@interpreted
def test_the_op_in_the_interpreter_in_fp16():
    """fp16, not bf16: the interpreter (Triton 3.9) multiplies bf16 tiles in tl.dot as their raw 16-bit
    integers. The GPU test below covers bf16."""
    q, k, v = inputs(8, 2, 4 * B, 128, seed=5, dtype=torch.float16)
    length = torch.tensor([3 * B + 7])
    assert attention.splits_for(4 * B, 2) == 4
    out = attention.flash_decode(q, k, v, length, 1 / math.sqrt(128))  # the torch op, with its splits
    assert out.shape == q.shape and out.dtype == torch.float16
    ref = masked_sdpa(q, k, v, 3 * B + 7, 1 / math.sqrt(128))
    # float32 arithmetic, p rounded to fp16 for the product with V, the output rounded to fp16
    torch.testing.assert_close(out.float(), ref, rtol=2 ** -10, atol=1e-3)


@interpreted
@pytest.mark.parametrize("heads,kv_heads,capacity,splits,length", [
    (2, 2, 4 * B, 4, 1),  # the new position is the only one
    (2, 2, 4 * B, 4, 2 * B),  # the last of a chunk
    (2, 2, 4 * B, 4, 2 * B + 1),  # the first of a chunk
    (8, 2, 4 * B, 2, 4 * B),  # GQA, the last position of the cache
    (4, 1, 3 * B, 3, 2 * B - 7),  # 3 splits (a padded combine)
    (2, 2, 2 * B, 1, B + 3),  # one split: phase 1 writes the output, no counters
])
def test_the_step_kernel_writes_the_new_kv_then_attends_in_one_launch(heads, kv_heads, capacity, splits, length):
    """decode_step's one kernel: the new K/V land at length - 1 (what was there is never read), the output is
    SDPA over the updated cache, and the last program's combine leaves the counters at zero."""
    q, k, v = inputs(heads, kv_heads, capacity, 64, seed=length)
    g = torch.Generator().manual_seed(1)
    k_new, v_new = torch.randn(2, 1, kv_heads, 1, 64, generator=g)
    k[:, :, length - 1] = float("nan")
    v[:, :, length - 1] = float("nan")
    counters = torch.zeros(kv_heads, dtype=torch.int32)
    out = attention.launch(q, k, v, torch.tensor([length]), 0.125, splits, new=(k_new, v_new), counters=counters)
    assert torch.equal(k[:, :, length - 1:length], k_new) and torch.equal(v[:, :, length - 1:length], v_new)
    torch.testing.assert_close(out, masked_sdpa(q, k, v, length, 0.125), rtol=1e-5, atol=1e-5)
    assert torch.equal(counters, torch.zeros(kv_heads, dtype=torch.int32))


def _rope(head_dim: int, position: int, dtype=torch.float32):
    """transformers' RoPE tables for one position: ``cos``, ``sin`` ``[1, 1, head_dim]``."""
    inv = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    emb = torch.cat([position * inv, position * inv])
    return emb.cos().view(1, 1, -1).to(dtype), emb.sin().view(1, 1, -1).to(dtype)


@interpreted
@pytest.mark.parametrize("heads,kv_heads,splits,length", [(2, 2, 4, 2 * B + 1), (8, 2, 2, 4 * B), (4, 4, 1, 9)])
def test_the_step_kernel_turns_q_and_the_new_k_by_rope_first(heads, kv_heads, splits, length):
    """With ``rope`` the kernel takes q and the new k unrotated: the same as transformers' apply_rotary_pos_emb
    first (the written k too)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k, v = inputs(heads, kv_heads, 4 * B, 64, seed=length)
    k_new, v_new = torch.randn(2, 1, kv_heads, 1, 64, generator=torch.Generator().manual_seed(5))
    cos, sin = _rope(64, 1000 + length)
    rq, rk = apply_rotary_pos_emb(q, k_new, cos, sin)
    want_k, want_v = k.clone(), v.clone()
    want = attention.launch(rq, want_k, want_v, torch.tensor([length]), 0.125, splits, new=(rk, v_new),
                            counters=torch.zeros(kv_heads, dtype=torch.int32))
    out = attention.launch(q, k, v, torch.tensor([length]), 0.125, splits, new=(k_new, v_new),
                           counters=torch.zeros(kv_heads, dtype=torch.int32), rope=(cos, sin))
    torch.testing.assert_close(k, want_k, rtol=1e-6, atol=1e-6)
    assert torch.equal(v, want_v)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_the_step_s_plain_path_applies_rope_as_transformers():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k, v = inputs(8, 2, 64, 32, seed=6)
    k_new, v_new = torch.randn(2, 1, 2, 1, 32, generator=torch.Generator().manual_seed(3))
    cos, sin = _rope(32, 17)
    rq, rk = apply_rotary_pos_emb(q, k_new, cos, sin)
    want_k, want_v = k.clone(), v.clone()
    want = attention.decode_step(rq, rk, v_new, want_k, want_v, torch.tensor([21]), torch.zeros(2, dtype=torch.int32))
    out = attention.decode_step(q, k_new, v_new, k, v, torch.tensor([21]), torch.zeros(2, dtype=torch.int32),
                                rope=(cos, sin))
    assert torch.equal(k, want_k) and torch.equal(v, want_v) and torch.equal(out, want)


def test_the_step_s_plain_path_writes_then_equals_sdpa_with_the_mask():
    q, k, v = inputs(8, 2, 64, 32, seed=4)
    k_new, v_new = torch.randn(2, 1, 2, 1, 32, generator=torch.Generator().manual_seed(2))
    want_k, want_v = k.clone(), v.clone()
    want_k[:, :, 20:21], want_v[:, :, 20:21] = k_new, v_new
    out = attention.decode_step(q, k_new, v_new, k, v, torch.tensor([21]), torch.zeros(2, dtype=torch.int32), 0.2)
    assert torch.equal(k, want_k) and torch.equal(v, want_v)
    torch.testing.assert_close(out, masked_sdpa(q, want_k, want_v, 21, 0.2), rtol=1e-6, atol=1e-6)


# ---- on a GPU ---------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available() or attention.triton is None, reason="needs a CUDA GPU and Triton")
@pytest.mark.parametrize("heads,kv_heads,capacity", [(32, 32, 256), (32, 8, 1024)])
def test_on_the_gpu_in_a_cuda_graph_as_the_length_grows(heads, kv_heads, capacity):
    dev = torch.device("cuda")
    q, k, v = (t.to(dev, torch.bfloat16) for t in inputs(heads, kv_heads, capacity, 128, seed=7))
    length = torch.tensor([1], device=dev)
    assert attention.kernel_ok(q, k, v)
    scale = 1 / math.sqrt(128)
    compiled = torch.compile(lambda q, k, v, n: attention.decode_attention(q, k, v, n, scale), dynamic=False)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            compiled(q, k, v, length)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = compiled(q, k, v, length)
    for n in (1, 100, capacity // 2, capacity):
        length.fill_(n)
        graph.replay()
        ref = masked_sdpa(q, k, v, n, scale)
        torch.testing.assert_close(out.float(), ref, rtol=2 ** -7, atol=2e-3)
        eager = attention.decode_attention(q, k, v, length, scale)
        torch.testing.assert_close(eager.float(), ref, rtol=2 ** -7, atol=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available() or attention.triton is None, reason="needs a CUDA GPU and Triton")
@pytest.mark.parametrize("heads,kv_heads,capacity", [(32, 32, 256), (32, 8, 1024)])
@pytest.mark.parametrize("rope", [False, True])
def test_the_step_on_the_gpu_compiled_in_a_cuda_graph_writes_and_attends(heads, kv_heads, capacity, rope):
    """decode_step as StaticDecoder runs it: compiled, captured once, replayed as the cache grows; with RoPE in
    the kernel, against transformers' RoPE applied first (in float32, rounded once to bf16)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    dev = torch.device("cuda")
    q, k, v = (t.to(dev, torch.bfloat16) for t in inputs(heads, kv_heads, capacity, 128, seed=9))
    k_new, v_new = (torch.randn(1, kv_heads, 1, 128, device=dev, dtype=torch.bfloat16) for _ in range(2))
    length = torch.tensor([1], device=dev)
    counters = torch.zeros(kv_heads, dtype=torch.int32, device=dev)
    scale = 1 / math.sqrt(128)
    cos, sin = (t.to(dev, torch.bfloat16) for t in _rope(128, 517))
    turn = (cos, sin) if rope else None
    compiled = torch.compile(lambda *a: attention.decode_step(*a, scale, turn), dynamic=False)
    args = (q, k_new, v_new, k, v, length, counters)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            compiled(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = compiled(*args)
    for n in (1, 100, capacity // 2 + 1, capacity):
        k_new.normal_()
        v_new.normal_()
        length.fill_(n)
        graph.replay()
        rq, rk = q, k_new
        if rope:
            rq, rk = (t.to(torch.bfloat16) for t in apply_rotary_pos_emb(q.float(), k_new.float(), cos.float(),
                                                                         sin.float()))
        torch.testing.assert_close(k[:, :, n - 1:n], rk, rtol=2 ** -7, atol=1e-5)  # one bf16 step at most
        assert torch.equal(v[:, :, n - 1:n], v_new)
        torch.testing.assert_close(out.float(), masked_sdpa(rq, k, v, n, scale), rtol=2 ** -7, atol=2e-3)
        assert not counters.any()
