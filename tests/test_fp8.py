"""vidqa.fp8: the one-pass SiLU(gate) * up float8 quantisation and the matmul on torchao's float8 codes."""

import pytest
import torch
import torch.nn.functional as F

from vidqa import fast, fp8


needs_fp8_gpu = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                                   reason="float8 matmuls need a CUDA GPU of compute capability 8.9+")


def _gu(rows: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, 2 * n, generator=g) * 3).to(torch.bfloat16)


def _close(q, scale, rq, rscale, exact: bool) -> None:
    """On a GPU: the reference's scales bit for bit, and codes equal or (ties rounded the other way) one e4m3 step
    apart. Under Triton's interpreter, which emulates the bf16 and e4m3 roundings on the CPU: scales within a few
    bf16 steps (it truncates), dequantised values within two e4m3 steps, except where its e4m3 conversion drops a
    rounding's carry into the exponent (31.9 -> 16 where the GPU gives 32, Triton 3.9): there the kernel's code
    is a power of two, about half the reference's. The interpreter checks the kernel's indexing, masks and zero
    rows; the GPU run checks its arithmetic."""
    if exact:
        assert torch.equal(scale, rscale)
    assert ((scale - rscale).abs() <= (0 if exact else 2.0 ** -6) * rscale).all()
    a, b = q.float() * scale, rq.float() * rscale
    bad = (a - b).abs() > (2.0 ** -3 if exact else 0.4) * b.abs() + 2.0 ** -8 * rscale
    if exact:
        assert not bad.any()
    else:
        mantissa = q.view(torch.uint8)[bad] & 0x07
        assert (mantissa == 0).all()
        assert ((q.float()[bad] * 2 - rq.float()[bad]).abs() <= 0.25 * rq.float()[bad].abs()).all()
    assert (q.view(torch.uint8) == rq.view(torch.uint8)).float().mean() > (0.99 if exact else 0.8)


def test_reference_is_torchaos_row_wise_activation_quantisation():
    """The reference's scale and codes are those of torchao's dynamic row-wise float8 (``PerRow``)."""
    pytest.importorskip("torchao")
    from torchao.quantization.granularity import PerRow
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import Float8Tensor

    gu = _gu(9, 300)
    q, scale = fp8.silu_mul_quant_reference(gu)
    gate, up = gu.chunk(2, dim=-1)
    tao = Float8Tensor.from_hp(F.silu(gate) * up, granularity=PerRow())
    assert torch.equal(scale, tao.scale.float().reshape(9, 1))
    assert torch.equal(q.view(torch.uint8), tao.qdata.view(torch.uint8))


def test_a_row_of_zeros_gets_scale_one():
    gu = _gu(3, 64)
    gu[1, 64:] = 0  # up = 0: the row's product is all zeros
    q, scale = fp8.silu_mul_quant_reference(gu)
    assert scale[1].item() == 1.0 and (q[1].float() == 0).all() and torch.isfinite(q.float()).all()


@pytest.mark.skipif(not (fp8.triton is not None and (fp8.INTERPRET or torch.cuda.is_available())),
                    reason="needs Triton on CUDA or its interpreter (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("rows,n", [(5, 300), (3, 1024), (2, 11008)])
@pytest.mark.parametrize("launch", [{}, {"num_warps": 16}])
def test_kernel_equals_the_reference(monkeypatch, rows, n, launch):
    """The reference's result to the roundings (``_close``); a zero row, and a width that is not a power of 2;
    with the shipped launch and with other warps per row (``fp8.LAUNCH``)."""
    monkeypatch.setattr(fp8, "LAUNCH", {**fp8.LAUNCH, **launch})
    device = "cuda" if torch.cuda.is_available() and not fp8.INTERPRET else "cpu"
    gu = _gu(rows, n).to(device)
    gu[0, n:] = 0
    q, scale = fp8.silu_mul_quant(gu)
    rq, rscale = fp8.silu_mul_quant_reference(gu)
    assert q.dtype == fp8.FP8 and q.shape == (rows, n) and scale.shape == (rows, 1)
    assert scale[0].item() == 1.0
    _close(q, scale, rq, rscale, exact=device == "cuda")


def _float8_weight(n: int, k: int, device: str = "cpu", seed: int = 1):
    pytest.importorskip("torchao")
    from torchao.quantization.granularity import PerRow
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import Float8Tensor

    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) * 0.05).to(torch.bfloat16).to(device)
    return Float8Tensor.from_hp(w, granularity=PerRow())


def test_weight_parts_reads_row_wise_float8_weights_only():
    w = _float8_weight(16, 32)
    codes, scale, fast_accum = fp8.weight_parts(w)
    assert codes.dtype == fp8.FP8 and codes.shape == (16, 32) and scale.shape == (16, 1) and fast_accum
    assert fp8.weight_parts(torch.randn(16, 32)) is None


def _cpu_scaled_mm_ok() -> bool:
    """Whether this torch runs row-wise ``torch._scaled_mm`` on the CPU (2.13 does; vidqa calls it on CUDA only)."""
    a = torch.ones(2, 16).to(fp8.FP8)
    try:
        fp8.scaled_linear(a, torch.ones(2, 1), a, torch.ones(2, 1), True, None, torch.bfloat16)
    except (RuntimeError, NotImplementedError):
        return False
    return True


_DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(not _cpu_scaled_mm_ok(),
                                                         reason="this torch has no row-wise _scaled_mm on the CPU")),
            pytest.param("cuda", marks=needs_fp8_gpu)]


@pytest.mark.parametrize("device", _DEVICES)
def test_block_with_the_one_pass_mlp_is_the_dequantised_arithmetic(device):
    """``fast._block`` with ``fp8_down``: the layer's output is h + (q * scale) @ (codes * w_scale).T + bias,
    with q the float8 form of SiLU(gate) * up (float32 reference, bf16 rounding of the output). On CUDA the
    Triton kernel quantises; on the CPU the reference does."""
    torch.manual_seed(0)
    B, L, D, n_heads, hd, inter = 2, 7, 64, 4, 16, 96
    bf = torch.bfloat16
    h = torch.randn(B, L, D).to(bf).to(device)
    cos, sin = torch.ones(1, L, hd, dtype=bf, device=device), torch.zeros(1, L, hd, dtype=bf, device=device)
    ln1, ln2 = torch.ones(D, dtype=bf, device=device), torch.ones(D, dtype=bf, device=device)
    w_qkv, w_o = (torch.randn(3 * D, D) * 0.05).to(bf).to(device), (torch.randn(D, D) * 0.05).to(bf).to(device)
    w_gu = (torch.randn(2 * inter, D) * 0.05).to(bf).to(device)
    w_down = _float8_weight(D, inter, device)
    b_down = (torch.randn(D) * 0.1).to(bf).to(device)
    parts = fp8.weight_parts(w_down)
    args = (h, cos, sin, ln1, 1e-5, w_qkv, None, w_o, None, ln2, 1e-5, w_gu, None, w_down, b_down, n_heads, n_heads,
            hd, hd ** -0.5, F.silu)
    out, k, v = fast._block(*args, False, parts)
    # the same layer up to its MLP, then the float8 arithmetic in float32
    q_, k_, v_ = fast.qkv(h, cos, sin, ln1, 1e-5, w_qkv, None, n_heads, n_heads, hd)
    o = F.scaled_dot_product_attention(q_, k_, v_, is_causal=True, scale=hd ** -0.5)
    mid = h + F.linear(o.transpose(1, 2).reshape(B, L, -1), w_o)
    gu = F.linear(fast.rms_norm(mid, ln2, 1e-5), w_gu)
    a, a_scale = fp8.silu_mul_quant_reference(gu.reshape(-1, 2 * inter))
    codes, w_scale, _ = parts
    down = (a.float() * a_scale) @ (codes.float() * w_scale).t() + b_down.float()
    ref = mid.float() + down.view(B, L, D)
    assert torch.equal(k, k_) and torch.equal(v, v_)
    assert (out.float() - ref).abs().max() <= 0.02 * ref.abs().max()


def test_fp8_down_only_where_the_kernel_runs(monkeypatch):
    """``fast.fp8_down`` is None without the kernel (a CPU without the interpreter), for other activations, for
    weights that are not float8, and with ``FP8_ONE_PASS_MLP`` off."""
    from types import SimpleNamespace

    w = _float8_weight(16, 32)
    layer = SimpleNamespace(mlp=SimpleNamespace(act_fn=torch.nn.SiLU(), down_proj=SimpleNamespace(weight=w)))
    h = torch.zeros(1, 2, 16, dtype=torch.bfloat16)
    monkeypatch.setattr(fp8, "kernel_ok", lambda x: True)
    assert fast.fp8_down(layer, h) is not None
    layer.mlp.act_fn = torch.nn.GELU()
    assert fast.fp8_down(layer, h) is None
    layer.mlp.act_fn = torch.nn.SiLU()
    layer.mlp.down_proj.weight = torch.randn(16, 32)
    assert fast.fp8_down(layer, h) is None
    layer.mlp.down_proj.weight = w
    monkeypatch.setattr(fast, "FP8_ONE_PASS_MLP", False)
    assert fast.fp8_down(layer, h) is None
    monkeypatch.setattr(fast, "FP8_ONE_PASS_MLP", True)
    monkeypatch.setattr(fp8, "kernel_ok", lambda x: False)
    assert fast.fp8_down(layer, h) is None


@torch.no_grad()
@needs_fp8_gpu
@pytest.mark.parametrize("compile", [False, True])
def test_compression_with_the_one_pass_mlp_matches_torchaos(monkeypatch, compile):
    """``fast.causal_prefix`` on a float8 model (``quant.quantize_layers``): the one-pass MLP against torchao's own
    down_proj, eager and compiled; the two round differently (torchao's compiled kernel keeps SiLU * up in
    float32), so they agree to float8's error, not bit for bit."""
    pytest.importorskip("torchao")
    from transformers import LlamaConfig, LlamaForCausalLM

    from vidqa import quant

    cfg = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=352, num_hidden_layers=3,
                      num_attention_heads=4, max_position_embeddings=1024)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    llm = LlamaForCausalLM(cfg).cuda().to(torch.bfloat16).eval()
    quant.quantize_layers(llm.model.layers, "fp8")
    h = torch.randn(4, 579, 128, device="cuda", dtype=torch.bfloat16)
    runs = {}
    for on in (True, False):
        monkeypatch.setattr(fast, "FP8_ONE_PASS_MLP", on)
        assert (fast.fp8_down(llm.model.layers[0], h) is not None) == on
        out, keys, values = fast.causal_prefix(llm.model.layers, llm.model.rotary_emb, h.clone(), compile=compile)
        runs[on] = (out, *keys, *values)
    for a, b in zip(runs[True], runs[False]):
        assert torch.isfinite(a).all()
        assert (a.float() - b.float()).norm() <= 0.05 * b.float().norm()
