"""Fused kernels for Llama-family decoder layers and CLIP encoder layers: batched causal prefixes
(compression), CLIP's encoder, and the per-layer pieces the static-cache decode step
(``vidqa.generate.StaticDecoder``) is built from.

The weights stay the model's own. ``fuse_projections`` concatenates each layer's Q/K/V weights and its
gate/up weights into one tensor (the original modules become views into it, so no memory is added):
one GEMM instead of three and one instead of two, which matters most for one-token decoding.

``causal_prefix`` runs decoder layers over a batch of prefixes with causal attention (cuDNN's kernel on
Hopper where the heads allow, ``attend``; flash otherwise) and returns the per-layer K/V of chosen
positions. It is written out here, rather than calling the transformers layers, because (1) with only
K/V wanted, the last layer's attention output and MLP are skipped, (2) the fused GEMMs apply, and (3)
the per-layer function takes tensors only, so ``torch.compile`` compiles it once for all layers.
``tests/test_fast.py`` checks it against the transformers layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, rotate_half

from vidqa import fp8
from vidqa.options import ComputeOptions


def _cache_keyword() -> str:
    """The keyword the installed transformers' models and decoder layers take for their KV cache.

    transformers 5.2x renamed ``past_key_values`` to ``cache`` (the old name warns with a
    FutureWarning and goes in 5.40); 5.17 knows only ``past_key_values``. Read once from the Llama
    model's signature, which the decoder layers and every other architecture follow.
    """
    import inspect

    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaModel

    model = inspect.signature(LlamaModel.forward).parameters
    layer = inspect.signature(LlamaDecoderLayer.forward).parameters
    return "cache" if "cache" in model and "cache" in layer else "past_key_values"


CACHE_KW = _cache_keyword()


def cache_kwargs(cache) -> dict:
    """``{CACHE_KW: cache}``: pass a KV cache to a transformers model or decoder layer under the right name."""
    return {CACHE_KW: cache}


def output_cache(out):
    """The KV cache a transformers model's output carries (``out.cache``, or ``out.past_key_values`` before 5.2x)."""
    return getattr(out, CACHE_KW)


def plan_free_attention(device) -> None:
    """On CUDA, take cuDNN out of the kernels ``scaled_dot_product_attention`` may pick (process-wide).

    Written for vidqa's variable shapes: cuDNN attention, torch's first choice on H100/H200, builds an
    execution plan for every new pair of query and key lengths, and nearly every question brings a new
    pair (its own prompt length, its own number of frames). Measured on an H200 at 7B shapes
    (benchmarks/serve_profile.py, torch 2.11): the LLM's forward at a prompt length it had not run took
    61-66 ms against 21-24 ms the second time, and one new shape 703 ms. Flash and memory-efficient
    attention need no plan; they take the same inputs and give the same result. Compression and CLIP,
    whose shapes repeat, still call cuDNN's kernel directly (``attend``).
    """
    if torch.device(device).type == "cuda" and hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(False)


def supports(llm) -> bool:
    """True for decoder layers shaped like Llama's (Llama, Mistral, Qwen2, ...)."""
    try:
        parts = (llm.model.norm, llm.lm_head, llm.model.rotary_emb, llm.model.embed_tokens)
    except AttributeError:
        return False
    return all(p is not None for p in parts) and supports_layers(llm.model.layers)


def _fuse(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = torch.cat([m.weight.detach() for m in linears])
    has_bias = [m.bias is not None for m in linears]
    bias = torch.cat([m.bias.detach() for m in linears]) if all(has_bias) else None
    if any(has_bias) and bias is None:
        raise ValueError("cannot fuse projections of which only some have a bias")
    start = 0
    for m in linears:  # the modules keep working (prefill, training code) as views into the fused tensor
        n = m.out_features
        m.weight = nn.Parameter(weight[start:start + n], requires_grad=False)
        if bias is not None:
            m.bias = nn.Parameter(bias[start:start + n], requires_grad=False)
        start += n
    return weight, bias


def fuse_projections(layers) -> None:
    """Give every decoder layer one Q/K/V weight and one gate/up weight (idempotent, no extra memory)."""
    for layer in layers:
        if getattr(layer, "_vidqa_fused", None) is None:
            a, m = layer.self_attn, layer.mlp
            layer._vidqa_fused = (_fuse([a.q_proj, a.k_proj, a.v_proj]), _fuse([m.gate_proj, m.up_proj]))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm, in float32 and cast back before the weight, as transformers computes it."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def qkv(h, cos, sin, ln, eps, w_qkv, b_qkv, n_heads: int, n_kv: int, head_dim: int):
    """A Llama layer's normed, fused Q/K/V projection with RoPE applied: ``q, k, v [B, heads, L, head_dim]``."""
    return heads(F.linear(rms_norm(h, ln, eps), w_qkv, b_qkv), cos, sin, n_heads, n_kv, head_dim)


def heads(x, cos, sin, n_heads: int, n_kv: int, head_dim: int):
    """The fused Q/K/V projection's output ``x [B, L, (heads + 2 kv_heads) * head_dim]`` as ``q, k, v [B, heads, L,
    head_dim]`` with RoPE applied to q and k (not when ``cos`` is None: views of x, for a kernel that turns them
    itself, ``vidqa.attention.decode_step``)."""
    B, L, _ = x.shape
    q, k, v = x.split([n_heads * head_dim, n_kv * head_dim, n_kv * head_dim], dim=-1)
    q = q.view(B, L, n_heads, head_dim).transpose(1, 2)
    k = k.view(B, L, n_kv, head_dim).transpose(1, 2)
    v = v.view(B, L, n_kv, head_dim).transpose(1, 2)
    if cos is not None:
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q, k, v


# cuDNN attention for the fixed-shape paths below (compression, LLaVA-Mini's pre-fusion, CLIP): their
# shapes repeat batch after batch, so cuDNN's per-shape plan is built once, unlike a question's
# (``plan_free_attention`` keeps it out of everything else). H200, torch 2.11, batch 32: alone
# (benchmarks/fp8_compress.py --parts attention, session 9), Vicuna-7B's causal 579 rows 0.313 ms/frame
# against flash's 0.658, CLIP-L's 577 rows 0.140 against 0.170; in VoCo-7B's compiled fp8 compression
# (--parts stacked, session 12), attention 0.59 against 1.14 ms/frame. False: flash everywhere.
FIXED_SHAPE_CUDNN = True


def cudnn_attention_ok(q: torch.Tensor, n_heads: int, n_kv: int, head_dim: int) -> bool:
    """Whether ``attend(..., cudnn=True)`` may run for these heads: CUDA bf16/fp16 on Hopper or later (where
    it was measured), no grouped K/V heads, head size a multiple of 8 up to 128, and ``FIXED_SHAPE_CUDNN``."""
    return bool(FIXED_SHAPE_CUDNN and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)
                and n_kv == n_heads and head_dim % 8 == 0 and head_dim <= 128
                and torch.backends.cudnn.is_available() and torch.cuda.get_device_capability(q.device) >= (9, 0))


def attend(q, k, v, scale: float, causal: bool, cudnn: bool, gqa: bool = False) -> torch.Tensor:
    """``scaled_dot_product_attention`` over ``[B, heads, L, head_dim]``; with ``cudnn``, cuDNN's kernel called
    directly. Direct, because SDPA picks its kernel from process-wide flags, and ``plan_free_attention``
    turns cuDNN off for the variable shapes of questions; a compiled graph also keeps whichever kernel
    SDPA picked when it was traced (session 9 saw a recompiled model keep flash)."""
    if cudnn:
        return torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, False, 0.0, causal, False,
                                                                  scale=scale)[0]
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)


def _block(h, cos, sin, ln1, eps1, w_qkv, b_qkv, w_o, b_o, ln2, eps2, w_gu, b_gu, w_down, b_down,
           n_heads: int, n_kv: int, head_dim: int, scaling: float, act, cudnn: bool = False, fp8_down=None):
    """One Llama decoder layer over full causal sequences; returns (output, k, v). ``fp8_down``: the float8
    down_proj's ``fp8.weight_parts`` (SiLU only), for SiLU(gate) * up quantised in one pass."""
    B, L, _ = h.shape
    q, k, v = qkv(h, cos, sin, ln1, eps1, w_qkv, b_qkv, n_heads, n_kv, head_dim)
    o = attend(q, k, v, scaling, True, cudnn, n_kv != n_heads)
    h = h + F.linear(o.transpose(1, 2).reshape(B, L, -1), w_o, b_o)
    gu = F.linear(rms_norm(h, ln2, eps2), w_gu, b_gu)
    if fp8_down is not None:
        a, a_scale = fp8.silu_mul_quant(gu)
        down = fp8.scaled_linear(a, a_scale, *fp8_down, b_down, h.dtype)
        return h + down.view(B, L, -1), k, v
    gate, up = gu.chunk(2, dim=-1)
    return h + F.linear(act(gate) * up, w_down, b_down), k, v


# compression's SiLU(gate) * up and its float8 quantisation in one pass (vidqa.fp8) where down_proj is torchao's
# row-wise float8 weight (``--quantize fp8``). VoCo-7B, batch 32, H200, one process each (session 13,
# benchmarks/fp8_compress.py --parts stacked): compiled 7.79 -> 7.63 ms/frame, eager 15.6 -> 13.0
FP8_ONE_PASS_MLP = True


def fp8_down(layer, h: torch.Tensor):
    """``_block``'s ``fp8_down`` for a layer: its down_proj's float8 parts where the one-pass kernel applies."""
    if not (FP8_ONE_PASS_MLP and fp8.kernel_ok(h) and _act(layer.mlp.act_fn) is F.silu):
        return None
    return fp8.weight_parts(layer.mlp.down_proj.weight)


def _rows(h, rows: slice, cos, sin, ln1, eps1, w_qkv, b_qkv, w_o, b_o, ln2, eps2, w_gu, b_gu, w_down, b_down,
          n_heads: int, n_kv: int, head_dim: int, scaling: float, act):
    """``_block`` when only the output at ``rows`` is wanted (the layer before a K/V-only last layer):
    K/V for every position, but the queries, attention output and MLP for ``rows`` only."""
    B, L, _ = h.shape
    nq = n_heads * head_dim
    # one projection for every position, queries then taken at ``rows``: the few unread queries cost
    # ~0.2% of a 7B's FLOPs, and the fused weight is never sliced (a quantised weight's row slice is a
    # new tensor per call, and torchao's int4 layout cannot be sliced open-ended on torch 2.11)
    x = F.linear(rms_norm(h, ln1, eps1), w_qkv, b_qkv)
    q, k, v = x.split([nq, n_kv * head_dim, n_kv * head_dim], dim=-1)
    q = q[:, rows]
    n = q.shape[1]
    q = q.view(B, n, n_heads, head_dim).transpose(1, 2)
    k = k.view(B, L, n_kv, head_dim).transpose(1, 2)
    v = v.view(B, L, n_kv, head_dim).transpose(1, 2)
    q = q * cos[:, rows].unsqueeze(1) + rotate_half(q) * sin[:, rows].unsqueeze(1)  # apply_rotary_pos_emb, per side
    k = k * cos.unsqueeze(1) + rotate_half(k) * sin.unsqueeze(1)
    where = torch.arange(L, device=h.device)
    visible = where.view(1, -1) <= where[rows].view(-1, 1)  # causal, for queries that are not the first rows
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scaling, enable_gqa=n_kv != n_heads)
    h = h[:, rows] + F.linear(o.transpose(1, 2).reshape(B, n, -1), w_o, b_o)
    gate, up = F.linear(rms_norm(h, ln2, eps2), w_gu, b_gu).chunk(2, dim=-1)
    return h + F.linear(act(gate) * up, w_down, b_down), k, v


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's activation (transformers' QuickGELUActivation)."""
    return x * torch.sigmoid(1.702 * x)


_ACTS = {"SiLU": F.silu, "SiLUActivation": F.silu, "GELUActivation": F.gelu, "QuickGELUActivation": _quick_gelu}


def _act(module):
    """A plain function for the usual activations: each layer holds its own activation module, and a
    compiled function would recompile for every new module object it is handed."""
    return _ACTS.get(type(module).__name__, module)


def _encoder_block(h, ln1_w, ln1_b, eps1: float, wq, bq, wk, bk, wv, bv, wo, bo, ln2_w, ln2_b, eps2: float,
                   w1, b1, w2, b2, n_heads: int, scale: float, act, cudnn: bool = False):
    """One pre-norm ViT encoder layer (CLIP's): full, non-causal attention."""
    B, L, D = h.shape
    x = F.layer_norm(h, (D,), ln1_w, ln1_b, eps1)
    q, k, v = (F.linear(x, w, b).view(B, L, n_heads, -1).transpose(1, 2) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
    o = attend(q, k, v, scale, False, cudnn)
    h = h + F.linear(o.transpose(1, 2).reshape(B, L, D), wo, bo)
    x = F.layer_norm(h, (D,), ln2_w, ln2_b, eps2)
    return h + F.linear(act(F.linear(x, w1, b1)), w2, b2)


def supports_encoder(layers) -> bool:
    """CLIP-shaped encoder layers (layer_norm1, self_attn q/k/v/out_proj, layer_norm2, mlp fc1/fc2) with
    an activation ``encoder`` knows; anything else keeps the transformers layers."""
    try:
        layer = layers[0]
        a, m = layer.self_attn, layer.mlp
        parts = (a.q_proj, a.k_proj, a.v_proj, a.out_proj, a.scale, a.num_heads, m.fc1, m.fc2,
                 layer.layer_norm1.eps, layer.layer_norm2.eps)
    except (AttributeError, IndexError, TypeError):
        return False
    return all(p is not None for p in parts) and type(m.activation_fn).__name__ in _ACTS


def encoder(layers, h: torch.Tensor, compile: bool | None = None) -> torch.Tensor:
    """Run CLIP-style ``layers`` over ``h [B, L, D]`` (no mask), as the transformers layers do.

    Written out so that, compiled (``VIDQA_COMPILE=1``), one graph serves all 23 layers of CLIP-L with
    the layer norms, biases, QuickGELU and residual adds fused around the GEMMs; uncompiled it is the
    same arithmetic as the transformers layers (``tests/test_fast.py``).
    """
    compile = compile_enabled() if compile is None else compile
    fn = _encoder_block
    if compile and h.device.type == "cuda":
        _kernels(True)
        fn = _compiled["encoder"]
    a = layers[0].self_attn
    cudnn = cudnn_attention_ok(h, a.num_heads, a.num_heads, a.head_dim)
    for layer in layers:
        a, m, n1, n2 = layer.self_attn, layer.mlp, layer.layer_norm1, layer.layer_norm2
        h = fn(h, n1.weight, n1.bias, n1.eps, a.q_proj.weight, a.q_proj.bias, a.k_proj.weight, a.k_proj.bias,
               a.v_proj.weight, a.v_proj.bias, a.out_proj.weight, a.out_proj.bias, n2.weight, n2.bias, n2.eps,
               m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias, a.num_heads, a.scale, _act(m.activation_fn), cudnn)
    return h


_compiled: dict[str, object] = {}


def _kernels(compile: bool):
    if not compile:
        return _block, _rows, qkv
    if not _compiled:  # one graph serves every layer: the weights are arguments, not module attributes
        mode = ComputeOptions.from_env().compile_mode  # e.g. max-autotune-no-cudagraphs
        for name, fn in (("block", _block), ("rows", _rows), ("qkv", qkv), ("encoder", _encoder_block)):
            _compiled[name] = torch.compile(fn, dynamic=False, mode=mode)
    return _compiled["block"], _compiled["rows"], _compiled["qkv"]


def compile_enabled() -> bool:
    """``VIDQA_COMPILE=1`` turns on torch.compile for the fast paths (it costs a compile per shape);
    ``VIDQA_COMPILE_MODE`` passes a torch.compile mode (``max-autotune-no-cudagraphs``: slower to compile)."""
    return ComputeOptions.from_env().compile


def causal_prefix(layers, rotary_emb, h: torch.Tensor, keep: slice | None = None, output: bool = True,
                  compile: bool | None = None):
    """Run ``h [B, L, D]`` causally at positions ``0..L-1`` through Llama-style ``layers``.

    Returns ``(hidden [B, L, D] or None, keys, values)``: per-layer K/V ``[B, kv_heads, n, head_dim]`` at
    the positions ``keep`` (all when None), keys RoPE-rotated. With ``output=False`` the last layer
    only projects the kept positions' K/V (nothing after it can read the rest), and the layer before
    it computes its queries, attention and MLP at the kept positions only (about 1/40 of a 7B's FLOPs).
    """
    fuse_projections(layers)
    compile = compile_enabled() if compile is None else compile
    block, rows, qkv = _kernels(compile and h.device.type == "cuda")
    keep = keep or slice(None)
    L = h.shape[1]
    positions = torch.arange(L, device=h.device).unsqueeze(0)
    cos, sin = rotary_emb(h, positions)
    keys, values = [], []
    last = len(layers) - 1
    a = layers[0].self_attn  # the layers share one config (as ``supports_layers`` reads it)
    cudnn = cudnn_attention_ok(h, a.config.num_attention_heads, a.config.num_key_value_heads, a.head_dim)
    for i, layer in enumerate(layers):
        a = layer.self_attn
        (w_qkv, b_qkv), (w_gu, b_gu) = layer._vidqa_fused
        cfg = a.config
        n_heads, n_kv, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, a.head_dim
        ln1, ln2 = layer.input_layernorm, layer.post_attention_layernorm
        if i == last and not output:  # nothing reads this layer's output: the kept positions' K/V only
            kept = h if last > 0 else h[:, keep]  # after the `rows` layer, h holds the kept positions only
            _, k, v = qkv(kept, cos[:, keep], sin[:, keep], ln1.weight, ln1.variance_epsilon, w_qkv, b_qkv, n_heads, n_kv, head_dim)
            keys.append(k.clone())
            values.append(v.clone())
            return None, tuple(keys), tuple(values)
        # the layer before that: only the kept positions' outputs are read (by the last layer's K/V)
        fn, extra, more = ((rows, (keep,), ()) if i == last - 1 and not output
                           else (block, (), (cudnn, fp8_down(layer, h))))
        h, k, v = fn(h, *extra, cos, sin, ln1.weight, ln1.variance_epsilon, w_qkv, b_qkv, a.o_proj.weight,
                     a.o_proj.bias, ln2.weight, ln2.variance_epsilon, w_gu, b_gu, layer.mlp.down_proj.weight,
                     layer.mlp.down_proj.bias, n_heads, n_kv, head_dim, a.scaling, _act(layer.mlp.act_fn), *more)
        # copies: k and v are views into the layer's whole Q/K/V output, which must not stay alive
        keys.append(k[:, :, keep].clone())
        values.append(v[:, :, keep].clone())
    return h, tuple(keys), tuple(values)


def supports_layers(layers) -> bool:
    """Layers shaped like Llama's, with plain RMSNorm and a gated MLP (what ``causal_prefix`` computes)."""
    try:
        layer = layers[0]
        a, m = layer.self_attn, layer.mlp
        parts = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj, m.act_fn,
                 layer.input_layernorm.variance_epsilon, layer.post_attention_layernorm.variance_epsilon, a.scaling)
    except AttributeError:
        return False
    cfg = a.config
    sliding = getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True)
    return all(p is not None for p in parts) and not sliding and getattr(a, "q_norm", None) is None
