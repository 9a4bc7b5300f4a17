"""vidqa.int4: the 4-bit format, its tensor (F.linear, row slices), the model it makes, and the GEMV.

On a CPU the matmul dequantises (the GPU's GEMV is checked against the same reference where a GPU, or
Triton's interpreter, is present)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from vidqa import int4, quant

pytest.importorskip("torchao")

interpreted = pytest.mark.skipif(int4.triton is None or os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="the kernel on the CPU needs Triton's interpreter (TRITON_INTERPRET=1)")
on_gpu = pytest.mark.skipif(not torch.cuda.is_available() or int4.triton is None, reason="needs a CUDA GPU and Triton")


def weights(n: int, k: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * 0.02).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [256, 96, 4096])
def test_dequantised_weights_are_within_half_a_step(k, dtype):
    w = weights(64, k, dtype=dtype)
    group = int4.group_for(k)
    packed, scale_zero = int4.pack(w, group)
    assert packed.dtype == torch.uint8 and packed.shape == (64, k // 2)
    assert scale_zero.shape == (64, k // group, 2) and scale_zero.dtype == dtype
    back = int4.dequantize(packed, scale_zero, torch.float32)
    scale = scale_zero[..., 0].float().repeat_interleave(group, dim=1)
    # half a step of the stored scale, plus the dtype's rounding of q * scale + zero (16 steps at most)
    slack = 0 if dtype == torch.float32 else 2.0 ** -8 * (16 * scale + w.float().abs())
    assert ((back - w.float()).abs() <= scale / 2 * (1 + 1e-5) + slack + 1e-7).all()
    # and the error is a real 4-bit one, not zero
    assert 0.05 < float((back - w.float()).norm() / w.float().norm()) < 0.2


def test_packing_interleaves_each_group_across_the_bytes_of_its_words():
    codes = torch.tensor([[0, 15, 3, 4, 9, 1, 7, 2] + [5] * 24])  # one row, one group of 32: 4 words
    w = codes.float()  # min 0, max 15: scale 1, zero 0, the codes themselves
    packed, scale_zero = int4.pack(w, 32)
    # byte p of word j holds columns 2 (4 p + j) (low nibble) and 2 (4 p + j) + 1: word 0 holds the pairs
    # starting at columns 0, 8, 16, 24; word 1 those at 2, 10, 18, 26
    assert packed[0, :8].tolist() == [0 | 15 << 4, 5 | 5 << 4, 5 | 5 << 4, 5 | 5 << 4,
                                      3 | 4 << 4, 5 | 5 << 4, 5 | 5 << 4, 5 | 5 << 4]
    assert packed[0, 8] == 9 | 1 << 4 and packed[0, 12] == 7 | 2 << 4
    assert torch.equal(int4.unpack_codes(packed, 32), codes.to(torch.uint8))
    assert scale_zero[0, 0].tolist() == [1.0, 0.0]


def test_a_constant_group_comes_back_exactly():
    w = torch.full((2, 64), 0.25)
    assert torch.equal(int4.dequantize(*int4.pack(w, 32)), w)


def test_widths_without_a_group_stay_as_they_are():
    w = weights(8, 48)  # 48 is no multiple of 32, 64 or 128
    assert int4.group_for(48) is None and int4.quantize_weight(w) is w
    with pytest.raises(ValueError, match="multiple of the group"):
        int4.pack(w, 32)


def test_linear_on_the_tensor_equals_linear_on_its_dequantised_weight():
    w = weights(96, 256)
    t = int4.quantize_weight(w)
    x = torch.randn(2, 5, 256)
    bias = torch.randn(96)
    assert torch.equal(F.linear(x, t), F.linear(x, t.dequantize()))
    assert torch.equal(F.linear(x, t, bias), F.linear(x, t.dequantize(), bias))
    assert t.shape == (96, 256) and t.dtype == torch.float32
    assert F.linear(torch.randn(0, 256), t).shape == (0, 96)  # no rows: an empty product, no kernel


def test_wide_matmuls_of_a_large_weight_run_in_row_blocks(monkeypatch):
    w = weights(96, 256)
    t = int4.quantize_weight(w)
    x = torch.randn(7, 256)
    whole = F.linear(x, t)
    monkeypatch.setattr(int4, "CHUNK", 256 * 20)  # 20 rows at a time: 5 blocks, the last one short
    torch.testing.assert_close(F.linear(x, t), whole, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(F.linear(x, t, torch.ones(96)), whole + 1, rtol=1e-6, atol=1e-6)


def test_row_slices_are_views_that_give_their_rows():
    w = weights(96, 256)
    t = int4.quantize_weight(w)
    part = quant.row_slice(t, 32, 80)
    assert part.shape == (48, 256)
    assert part.packed.data_ptr() == t.packed[32].data_ptr()  # no copy
    assert part.packed.is_contiguous() and part.scale_zero.is_contiguous()
    x = torch.randn(3, 256)
    assert torch.equal(F.linear(x, part), F.linear(x, t)[:, 32:80])
    with pytest.raises(NotImplementedError):
        t[:, :128]


def test_int4_model_equals_the_model_with_dequantised_weights(monkeypatch):
    """The whole path on a tiny VoCo model: vidqa's int4 layers (here on the CPU, as on a GPU) give the
    same first-token logits as the same model whose weights are the dequantised ones, to float32 rounding."""
    from vidqa.pipeline import VideoQA
    from vidqa.options import ComputeOptions

    monkeypatch.setattr(quant, "quantize_weight", lambda w, mode, wide=False: int4.quantize_weight(w))

    def load():
        return VideoQA.from_pretrained("tiny-voco", compute=ComputeOptions(device="cpu", dtype="fp32"))

    qa, ref = load(), load()
    quant.quantize(qa.method, "int4")
    n = 0
    with torch.inference_mode():
        for layer, ref_layer in zip(qa.llm.model.layers, ref.llm.model.layers):
            for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
                mod = getattr(layer.self_attn, name, None) or getattr(layer.mlp, name)
                ref_mod = getattr(ref_layer.self_attn, name, None) or getattr(ref_layer.mlp, name)
                if int4.group_for(mod.in_features) is not None:  # every weight with a group size
                    ref_mod.weight.copy_(mod.weight.dequantize())
                    n += 1
        ids = torch.tensor([[1, 5, 7, 9, 11, 2]])
        got = qa.llm(input_ids=ids).logits
        want = ref.llm(input_ids=ids).logits
        plain = load().llm(input_ids=ids).logits
    assert n >= 6 * len(qa.llm.model.layers)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3  # and it is not the unquantised model


def test_int4_picks_the_wide_format_for_layers_that_compress(monkeypatch):
    """On CUDA, VoCo's LLM (it compresses) and LLaVA-Mini's pre-fusion layers get vidqa.int4; LLaVA-Mini's
    LLM (prefill and decode only) gets torchao's; recorded here through the ``wide`` flag."""
    from vidqa.methods.mini.method import Mini
    from vidqa.methods.voco import VoCo

    assert VoCo.llm_compresses and not Mini.llm_compresses
    from vidqa.pipeline import VideoQA
    from vidqa.options import ComputeOptions

    seen = []
    monkeypatch.setattr(quant, "quantize_weight", lambda w, mode, wide=False: seen.append(wide) or w)
    for name, llm_wide in (("tiny-voco", True), ("tiny-mini", False)):
        seen.clear()
        qa = VideoQA.from_pretrained(name, compute=ComputeOptions(device="cpu", dtype="fp32"))
        quant.quantize(qa.method, "int4")
        n_llm = 4 * len(qa.llm.model.layers)  # fused Q/K/V, o_proj, fused gate/up, down_proj per layer
        assert seen[:n_llm] == [llm_wide] * n_llm
        assert all(seen[n_llm:]) and (len(seen) > n_llm) == (name == "tiny-mini")


def _gemv_reference(x, packed, scale_zero):
    return x.float() @ int4.dequantize(packed, scale_zero, torch.float32).T


@on_gpu
@pytest.mark.parametrize("kernel", ["auto", "mma", "fma"])
@pytest.mark.parametrize("n,k,rows", [(4096, 4096, 1), (12288, 4096, 1), (4096, 11008, 1), (1000, 384, 3),
                                      (40, 96, 2)])
def test_gemv_on_the_gpu_equals_the_dequantised_product(n, k, rows, kernel, monkeypatch):
    monkeypatch.setattr(int4, "KERNEL", kernel)
    dev = torch.device("cuda")
    w = weights(n, k).to(dev, torch.bfloat16)
    t = int4.quantize_weight(w)
    x = torch.randn(rows, k, device=dev, dtype=torch.bfloat16)
    assert int4.gemv_ok(x, t.packed)
    y = F.linear(x, t)
    ref = _gemv_reference(x, t.packed, t.scale_zero)
    # float32 accumulation in another order, rounded to bf16 once
    torch.testing.assert_close(y.float(), ref, rtol=2 ** -7, atol=1e-3 * float(ref.abs().max()))
    compiled = torch.compile(lambda x: F.linear(x, t), dynamic=False)
    torch.testing.assert_close(compiled(x).float(), ref, rtol=2 ** -7, atol=1e-3 * float(ref.abs().max()))


@interpreted
@pytest.mark.parametrize("n,k,block_n,block_k",
                         [(48, 256, 16, 256), (40, 384, 16, 256), (16, 640, 8, 512), (12, 96, 4, 64)])
def test_gemv_kernel_in_the_interpreter_equals_the_dequantised_product(n, k, block_n, block_k):
    w = weights(n, k)
    packed, scale_zero = int4.pack(w, int4.group_for(k))
    x = torch.randn(2, k).bfloat16()
    y = torch.empty(2, n)
    grid = (int4.triton.cdiv(n, block_n), 2)
    int4._int4_gemv_kernel[grid](*int4.gemv_args(x, packed, scale_zero, y), GROUP=int4.group_for(k),
                                 BLOCK_N=block_n, BLOCK_K=block_k)
    torch.testing.assert_close(y, _gemv_reference(x, packed, scale_zero), rtol=1e-5, atol=1e-5)


@interpreted
@pytest.mark.parametrize("n,k,block_n,gpt", [(48, 256, 16, 1), (40, 384, 16, 2), (32, 640, 32, 4), (16, 96, 16, 1),
                                             (20, 1024, 16, 8)])  # groups of 128 and 32; partial blocks and steps
def test_mma_kernel_in_the_interpreter_equals_the_dequantised_product(n, k, block_n, gpt):
    w = weights(n, k)
    group = int4.group_for(k)
    packed, scale_zero = int4.pack(w.bfloat16(), group)
    x = torch.randn(2, k).bfloat16()
    y = torch.empty(2, n)
    grid = (int4.triton.cdiv(n, block_n), 2)
    int4._int4_mma_kernel[grid](x, packed, scale_zero, y, n, k, x.stride(0), y.stride(0), x, 0.0, y, 0, GROUP=group,
                                BLOCK_N=block_n, KS=gpt, ASM=False)
    # float32 sums of 128 + q against x, less 128 sum x: a few float32 steps of the sum's size
    ref = _gemv_reference(x, packed, scale_zero)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-5 * float(ref.abs().max()))


@interpreted
@pytest.mark.parametrize("kernel", ["auto", "mma", "fma"])
@pytest.mark.parametrize("n,k", [(8200, 256), (40, 2304)])  # both launch configurations, a partial last block
def test_the_gemv_op_in_the_interpreter_equals_the_dequantised_product(n, k, kernel, monkeypatch):
    monkeypatch.setattr(int4, "KERNEL", kernel)
    w = weights(n, k)
    packed, scale_zero = int4.pack(w.bfloat16(), int4.group_for(k))
    x = torch.randn(1, k).bfloat16()
    y = int4.int4_gemv(x, packed, scale_zero)  # the torch op, with its launch configuration
    assert y.shape == (1, n) and y.dtype == torch.bfloat16
    ref = _gemv_reference(x, packed, scale_zero)
    torch.testing.assert_close(y.float(), ref, rtol=2 ** -7, atol=1e-3 * float(ref.abs().max()))


@interpreted
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k", [(40, 384), (33, 96), (17, 640)])  # groups of 128, 32 and 128; partial blocks
def test_the_dequantise_kernel_in_the_interpreter_equals_the_torch_ops_bit_for_bit(n, k, dtype):
    w = weights(n, k)
    w[0, :4] = torch.tensor([1e-30, -3.0, 5.0, 0.0])  # a tiny value and a wide group: rounding at its edges
    packed, scale_zero = int4.pack(w.to(dtype), int4.group_for(k))
    assert torch.equal(int4.int4_dequantize(packed, scale_zero, dtype),
                       int4.dequantize_reference(packed, scale_zero, dtype))


@on_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dequantise_on_the_gpu_equals_the_torch_ops_bit_for_bit(dtype):
    w = weights(1000, 4096).to("cuda", dtype)
    packed, scale_zero = int4.pack(w, 128)
    assert torch.equal(int4.dequantize(packed, scale_zero, dtype), int4.dequantize_reference(packed, scale_zero, dtype))


def test_the_store_keys_on_the_int4_format():
    """int4 caches from vidqa.int4 (CUDA) are not served to a run with the earlier tinygemm format, or back."""
    from vidqa import library
    from vidqa.options import ComputeOptions
    from vidqa.pipeline import VideoQA
    from vidqa.video import Sampling

    qa = VideoQA.from_pretrained("tiny-voco", compute=ComputeOptions(device="cpu", dtype="fp32", quantize="int4"))
    before = library.cache_settings(qa, Sampling(fps=1.0))
    assert before["quantize"] == "int4" and "quantize_format" not in before  # the CPU: torchao's format
    qa.method._vidqa_quant_format = "vidqa-int4"  # what quant.quantize records on CUDA
    after = library.cache_settings(qa, Sampling(fps=1.0))
    assert after["quantize_format"] == "vidqa-int4" and after != before


# ---- the decoder's neighbours fused into the GEMV (linear_fused) -------------------------------------

def _fused_reference(x, packed, scale_zero, n, nw, eps, res, glu):
    """float32 torch ops: RMSNorm, the product, silu(gate) * up, the residual add (each optional)."""
    x = x.float()
    if nw is not None:
        x = nw.float() * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    y = x @ int4.dequantize(packed, scale_zero, torch.float32).T
    if glu:
        y = F.silu(y[:, :n]) * y[:, n:]
    return y if res is None else res.float() + y


@interpreted
@pytest.mark.parametrize("norm,glu,resid", [(True, False, False), (False, False, True), (True, True, False),
                                            (False, True, True), (True, True, True)])
def test_mma_kernel_with_its_neighbours_in_the_interpreter(norm, glu, resid):
    """In float32 (no rounding between the parts) the norm, gated activation and residual add are exact."""
    n, k = 40, 384  # 3 groups of 128 in steps of 2 (a masked step), a partial row block
    g = torch.Generator().manual_seed(3)
    packed, scale_zero = int4.pack(weights(2 * n if glu else n, k).bfloat16(), 128)
    x = torch.randn(2, k, generator=g)
    nw = 1 + 0.1 * torch.randn(k, generator=g)
    res = torch.randn(2, n, generator=g)
    y = torch.empty(2, n)
    int4._int4_mma_kernel[(int4.triton.cdiv(n, 16), 2)](
        x, packed, scale_zero, y, n, k, x.stride(0), y.stride(0), nw, 1e-5, res, res.stride(0), GROUP=128,
        BLOCK_N=16, KS=2, ASM=False, NORM=norm, GLU=glu, RESID=resid)
    ref = _fused_reference(x, packed, scale_zero, n, nw if norm else None, 1e-5, res if resid else None, glu)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-5 * float(ref.abs().max()))


@interpreted
def test_fma_kernel_adds_the_residual_in_the_interpreter():
    n, k = 40, 384
    packed, scale_zero = int4.pack(weights(n, k).bfloat16(), 128)
    x = torch.randn(2, k).bfloat16()
    res = torch.randn(2, n)
    y = torch.empty(2, n)
    int4._int4_gemv_kernel[(int4.triton.cdiv(n, 16), 2)](*int4.gemv_args(x, packed, scale_zero, y, res), GROUP=128,
                                                          BLOCK_N=16, BLOCK_K=256, RESID=True)
    torch.testing.assert_close(y, res + _gemv_reference(x, packed, scale_zero), rtol=1e-5, atol=1e-5)


@on_gpu
@pytest.mark.parametrize("n,k", [(4096, 4096), (11008, 4096), (4096, 11008), (40, 96)])
@pytest.mark.parametrize("norm,glu,resid", [(True, False, False), (False, False, True), (True, True, False)])
def test_linear_fused_on_the_gpu_equals_the_torch_ops(n, k, norm, glu, resid):
    """bf16, as the decode step runs it: within bf16 rounding of torch's separate ops."""
    from vidqa import fast

    dev = torch.device("cuda")
    t = int4.quantize_weight(weights(2 * n if glu else n, k).to(dev, torch.bfloat16))
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, 1, k, device=dev, generator=g).bfloat16()
    nw = (1 + 0.1 * torch.randn(k, device=dev, generator=g)).bfloat16()
    res = torch.randn(1, 1, n, device=dev, generator=g).bfloat16()
    assert int4.fused_ok(x, t)
    y = int4.linear_fused(x, t, norm=(nw, 1e-5) if norm else None, residual=res if resid else None, glu=glu)
    want = F.linear(fast.rms_norm(x, nw, 1e-5) if norm else x, t.dequantize(torch.bfloat16))
    if glu:
        gate, up = want.chunk(2, dim=-1)
        want = F.silu(gate) * up
    want = (res + want) if resid else want
    assert y.shape == want.shape and y.dtype == torch.bfloat16
    # bf16 roundings of the parts (cuBLAS sums in another order): a step of the largest magnitude's bf16 at most
    torch.testing.assert_close(y.float(), want.float(), rtol=2 ** -6, atol=2 ** -7 * float(want.abs().max()))


@on_gpu
@pytest.mark.parametrize("compile", [False, True])
def test_the_fused_int4_decode_step_equals_the_unfused_one_on_the_gpu(compile):
    """StaticDecoder with vidqa.int4's fused layers (4 kernels a layer) against the same step unfused, on a tiny
    Llama whose widths all have a group (the demo models' 688-wide MLP has none, so it stays bf16)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from vidqa.generate import StaticDecoder

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128)
    llm = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
    quant.quantize_layers(llm.model.layers, "int4", wide=True)
    ids = torch.tensor([[1, 5, 7, 9, 11, 2]], device="cuda")
    h = torch.zeros(1, 1, 256, device="cuda", dtype=torch.bfloat16)
    logits = []
    with torch.inference_mode():
        for fuse in (True, False):
            out = llm(input_ids=ids, use_cache=True)
            dec = StaticDecoder(llm, 64, graph=True, compile=compile)
            dec.fuse_int4 = fuse
            assert dec._int4_fused(h, llm.model.layers[0]) == fuse
            dec.load(out.past_key_values)
            logits.append(torch.stack([dec.step(t, 6 + i).float().clone() for i, t in enumerate([3, 8, 4, 12])]))
    fused, plain = logits
    assert float((fused - plain).norm() / plain.norm()) < 0.02
