"""Fewer bits: the LLM's linear layers through torchao (``--quantize``), and 8-bit stored frame caches
(``--cache-dtype fp8``).

Modes (``MODES``), each applied to the decoder layers of the LLM and, for LLaVA-Mini, of its
pre-fusion layers (the vision tower, projector, compressor, embeddings and ``lm_head`` stay as loaded):

- ``fp8``: dynamic-activation, per-row-weight float8 (e4m3) matmuls, for compression and prefill
  (compute-bound). Needs a CUDA GPU of compute capability 8.9 or more (L4, H100, H200); elsewhere a
  ``VidqaError`` says so.
- ``int8``: int8 weights with one scale per output row, activations as loaded (decode is
  bandwidth-bound: half the bytes of bf16). CPU and GPU.
- ``int4``: 4-bit weights, one scale (and zero point) per group of input columns. On CUDA, by what the
  layers mostly run (measured on an H200 at 7B shapes, benchmarks/NOTES.md, sessions 8 and 9):
  - layers that compress frames (VoCo's LLM, LLaVA-Mini's pre-fusion layers: thousands of rows per
    matmul): ``vidqa.int4`` (dequantise + the dtype's matmul; a Triton GEMV at one row). VoCo-7B
    compression 21-25 ms/frame against 249 with torchao's tinygemm, LLaVA-Mini-8B 5-6 against 41.
  - layers that only prefill a question and decode (LLaVA-Mini's LLM): torchao's tinygemm
    (``tile_packed_to_4d``, group 128, bf16 only), chosen in session 9, when the whole compiled 7B decode step
    was faster with it (2.99 against 3.12 ms/token); tinygemm also prefills without dequantising. vidqa's
    GEMVs have since become faster on a 7B step's matmuls (1.99 against 2.31 ms, session 11); the whole step
    with tinygemm has not been measured again.
  On the CPU, the torchao version this was built on (0.18) has no 4-bit CPU kernel for a stock torch build
  (its ``plain`` layout needs the ``mslk`` package, ``plain_int32`` is XPU/NPU only), so the CPU uses
  torchao's portable ``IntxWeightOnlyConfig(int4, PerGroup(32))``: the same int4 arithmetic, stored one
  value per byte (int8 memory, no speed-up). It exists so that int4 answers can be checked on a CPU.

Fused projections (``vidqa.fast.fuse_projections``, which the CUDA-graph decoder and ``causal_prefix``
read): torchao's tensors cannot be concatenated (``aten.cat`` is not implemented for them), but they
can be sliced along the output rows. So the layers are fused first (plain tensors), then each fused
Q/K/V and gate/up weight is quantised as one tensor, and the ``q_proj``/``k_proj``/``v_proj`` and
``gate_proj``/``up_proj`` modules get row slices of it (views: no memory is added, and the modules
keep working for the transformers prefill path). ``o_proj`` and ``down_proj`` are quantised in place.

Stored caches in 8 bits: ``encode_cache``/``decode_cache`` turn every floating tensor of a
``FrameCache`` into float8 e4m3 bits (stored as uint8, since safetensors readers differ on F8 support)
plus a float32 scale per row of its last axis (one per head vector of a token for K/V: 1/32 of the
data's bytes for a head size of 128), kept in the same file as ``<name>.fp8_scale``. See
``encode_fp8`` for the error bound.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import torch
from torch import nn

from vidqa import fast
from vidqa.errors import VidqaError
from vidqa.framecache import FrameCache

MODES = ("none", "fp8", "int8", "int4")
CACHE_DTYPES = ("auto", "fp8")  # auto: the model's dtype

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8 e4m3fn
SCALE_SUFFIX = ".fp8_scale"
# |decoded - x| <= FP8_REL_ERROR * |x| + FP8_ABS_ERROR * max|row| for every element (see encode_fp8)
FP8_REL_ERROR = 2.0 ** -4
FP8_ABS_ERROR = 2.0 ** -10 / FP8_MAX


class QuantizeError(VidqaError):
    """A quantisation mode this machine or model cannot run."""


# ---- checks ------------------------------------------------------------------------------------

def check_mode(mode: str | None) -> str:
    """The canonical mode name (None: ``none``); QuantizeError for an unknown one."""
    mode = (mode or "none").lower()
    if mode not in MODES:
        raise QuantizeError(f"unknown --quantize {mode!r} (use {', '.join(MODES)})")
    return mode


def check_cache_dtype(cache_dtype: str | None) -> str:
    cache_dtype = (cache_dtype or "auto").lower()
    if cache_dtype not in CACHE_DTYPES:
        raise QuantizeError(f"unknown --cache-dtype {cache_dtype!r} (use {', '.join(CACHE_DTYPES)})")
    return cache_dtype


def check(mode: str | None, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """Raise QuantizeError (one line) when ``mode`` cannot run on ``device`` in ``dtype``; the canonical mode."""
    mode = check_mode(mode)
    if mode == "none":
        return mode
    _torchao()
    device = torch.device(device)
    if mode == "fp8":
        if device.type != "cuda":
            raise QuantizeError("--quantize fp8 needs a CUDA GPU with FP8 matmuls (compute capability 8.9+: "
                                "L4, H100, H200); on this device use int8 or int4")
        cc = torch.cuda.get_device_capability(device)
        if cc < (8, 9):
            raise QuantizeError(f"--quantize fp8 needs compute capability 8.9 or more (L4, H100, H200); "
                                f"{torch.cuda.get_device_name(device)} has {cc[0]}.{cc[1]}: use int8 or int4")
        if dtype is not None and dtype not in (torch.bfloat16, torch.float16):
            raise QuantizeError("--quantize fp8 runs with --dtype bf16 or fp16")
    if mode == "int4" and device.type == "cuda" and dtype is not None and dtype != torch.bfloat16:
        raise QuantizeError("--quantize int4 on a GPU runs with --dtype bf16 (torchao's int4 kernel)")
    return mode


def _torchao():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao.quantization as q
    except ImportError:
        raise QuantizeError("--quantize needs torchao: pip install 'vidqa[quant]' (or pip install torchao)") from None
    return q


# ---- weights -----------------------------------------------------------------------------------

def _group(in_features: int, sizes: tuple[int, ...]) -> int | None:
    return next((g for g in sizes if in_features % g == 0), None)


def config(mode: str, device: torch.device, in_features: int):
    """The torchao config for one weight of ``in_features`` columns, or None to leave it as it is."""
    q = _torchao()
    if mode == "int8":
        return q.Int8WeightOnlyConfig()
    if mode == "fp8":
        from torchao.quantization import PerRow

        return q.Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    if mode == "int4":
        if torch.device(device).type == "cuda":
            g = _group(in_features, (128, 64, 32))
            return None if g is None else q.Int4WeightOnlyConfig(group_size=g, int4_packing_format="tile_packed_to_4d")
        from torchao.quantization import PerGroup

        g = _group(in_features, (32, 16, 8))
        return None if g is None else q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(g))
    raise QuantizeError(f"unknown quantisation mode {mode!r}")


def own_int4(mode: str, device: torch.device, wide: bool) -> bool:
    """Whether ``mode`` gives layers on ``device`` vidqa's int4 format: int4 on CUDA, for layers that mostly
    run ``wide`` matmuls (many rows: compression). Everything else is torchao's."""
    return mode == "int4" and torch.device(device).type == "cuda" and wide


def quantize_weight(weight: torch.Tensor, mode: str, wide: bool = False) -> torch.Tensor:
    """``weight [out, in]`` quantised to ``mode`` (the same tensor when no format fits), as torchao's
    tensor or, where ``own_int4``, a ``vidqa.int4`` tensor (see ``quantize``)."""
    if own_int4(mode, weight.device, wide):
        from vidqa import int4

        return int4.quantize_weight(weight)
    return torchao_weight(weight, mode)


def torchao_weight(weight: torch.Tensor, mode: str) -> torch.Tensor:
    """``weight [out, in]`` as a torchao tensor of ``mode`` (``config``; the same tensor when none fits)."""
    cfg = config(mode, weight.device, weight.shape[1])
    if cfg is None:
        return weight
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    lin.weight = nn.Parameter(weight.detach(), requires_grad=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.quantization import quantize_

        quantize_(lin, cfg)
    return lin.weight.detach()


def row_slice(weight: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Rows ``start:end`` of a (quantised) weight, as a view of its data where the layout allows.

    torchao slices its tensors' inner tensors, but some layouts keep per-group parameters with the
    output rows on a later axis (int4 tile-packed: ``scale_and_zero [groups, out, 2]``), whose slice is
    then not contiguous, which that layout's matmul refuses: those inner tensors (scales, 1/64 of the
    weight's bytes or less) are copied to contiguous memory; the packed weight stays a view."""
    part = weight[start:end]
    if type(part) is torch.Tensor or not hasattr(part, "__tensor_flatten__"):
        return part
    names, ctx = part.__tensor_flatten__()
    inner = {n: getattr(part, n) for n in names}
    if all(t.is_contiguous() for t in inner.values()):
        return part
    return type(part).__tensor_unflatten__({n: t.contiguous() for n, t in inner.items()}, ctx, part.shape,
                                           part.stride())


def _set(module: nn.Linear, weight: torch.Tensor) -> None:
    module.weight = nn.Parameter(weight, requires_grad=False)


def quantize_layers(layers, mode: str, wide: bool = False) -> int:
    """Quantise a ModuleList of decoder layers in place (``wide``: see ``quantize_weight``); returns how
    many weights were quantised."""
    done = 0
    if fast.supports_layers(layers):
        fast.fuse_projections(layers)
        for layer in layers:
            a, m = layer.self_attn, layer.mlp
            fused = []
            for (w, b), mods in zip(layer._vidqa_fused, ((a.q_proj, a.k_proj, a.v_proj), (m.gate_proj, m.up_proj))):
                qw = quantize_weight(w, mode, wide)
                start = 0
                for mod in mods:  # row slices of the quantised fused weight (views)
                    _set(mod, row_slice(qw, start, start + mod.out_features))
                    start += mod.out_features
                fused.append((qw, b))
                done += qw is not w
            layer._vidqa_fused = tuple(fused)
            for mod in (a.o_proj, m.down_proj):
                qw = quantize_weight(mod.weight, mode, wide)
                done += qw is not mod.weight
                _set(mod, qw)
        return done
    for mod in list(layers.modules()):
        if isinstance(mod, nn.Linear):
            _set(mod, quantize_weight(mod.weight, mode, wide))
            done += 1
    return done


def quantize(method: nn.Module, mode: str | None) -> str:
    """Quantise a loaded method's LLM decoder layers (and LLaVA-Mini's pre-fusion layers) in place.

    Idempotent for one mode; QuantizeError for another mode on an already quantised model, or for a
    mode the device cannot run. Returns the canonical mode.
    """
    mode = check_mode(mode)
    done = getattr(method, "_vidqa_quantize", "none")
    if mode == done:
        return mode
    if done != "none":
        raise QuantizeError(f"this model is already quantised to {done}; load it again for {mode}")
    if mode == "none":
        return mode
    llm = method.llm
    param = next(llm.model.layers.parameters())
    check(mode, param.device, param.dtype)
    groups = [(llm.model.layers, bool(getattr(method, "llm_compresses", False)))]  # (layers, wide)
    prefusion = getattr(method, "prefusion", None)
    if isinstance(prefusion, nn.ModuleList) and len(prefusion):
        groups.append((prefusion, True))  # LLaVA-Mini's pre-fusion layers run only at compression and prefill
    # inference tensors: torchao's tensors made outside inference mode cannot be sliced inside it
    # (``fast.causal_prefix`` slices the fused Q/K/V weight under ``torch.inference_mode``)
    with torch.inference_mode():
        for layers, wide in groups:
            quantize_layers(layers, mode, wide)
    method._vidqa_quantize = mode
    if any(own_int4(mode, param.device, wide) for _, wide in groups):
        method._vidqa_quant_format = "vidqa-int4"  # its frame caches differ from tinygemm's: the store keys on it
    return mode


def quantized_mode(method: nn.Module) -> str:
    return getattr(method, "_vidqa_quantize", "none")


def quantized_format(method: nn.Module) -> str | None:
    """The weight format behind the mode where there is more than one for it (int4 on CUDA: ``vidqa-int4``
    for layers that compress), else None."""
    return getattr(method, "_vidqa_quant_format", None)


def cache_settings(mode: str, method: nn.Module) -> dict:
    """The quantisation a frame cache records and the store keys on: nothing for ``none`` (entries made
    before quantisation existed keep their keys), else the mode and, where it has more than one weight
    format, the format."""
    if mode == "none":
        return {}
    fmt = quantized_format(method)
    return {"quantize": mode, **({"quantize_format": fmt} if fmt else {})}


# ---- stored caches in 8 bits -------------------------------------------------------------------

def encode_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` as float8 e4m3 bits (``uint8``, same shape) and a float32 scale per row of its last axis
    (shape ``[..., 1]``), so that ``decode_fp8`` gives back ``x`` within:

        |decoded - x| <= 2**-4 * |x| + 2**-10 / 448 * max|row|   (FP8_REL_ERROR, FP8_ABS_ERROR)

    for every element (then cast to the decoded dtype, which adds that dtype's own rounding): each
    row is scaled so that its largest magnitude maps to 448, e4m3 keeps 3 mantissa bits (a relative
    rounding error of at most 2**-4) and its subnormals are spaced 2**-9 apart (half of that, scaled
    back, is the absolute term). Non-finite values are refused. The relative error of the whole tensor
    (Frobenius) is therefore at most 2**-4 + 2**-10/448 * sqrt(n_cols) and about 2% in practice.
    """
    xf = x.detach().float()
    if not torch.isfinite(xf).all():
        raise ValueError("cannot encode non-finite values as fp8")
    amax = xf.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.view(torch.uint8), scale


def decode_fp8(bits: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The inverse of ``encode_fp8`` (on the device the inputs are on)."""
    return (bits.view(FP8).float() * scale.float()).to(dtype)


def encode_cache(cache: FrameCache) -> FrameCache:
    """A cache whose floating tensors are fp8 bits + row scales (frame axis still first: the store's
    layout and ``FrameCache.select`` keep working). Already encoded: returned as it is."""
    if cache.meta.get("cache_dtype") == "fp8":
        return cache
    tensors, dtypes = {}, {}
    for name, t in cache.tensors.items():
        if t.is_floating_point() and t.ndim >= 2:
            bits, scale = encode_fp8(t)
            tensors[name], tensors[name + SCALE_SUFFIX] = bits, scale
            dtypes[name] = str(t.dtype).removeprefix("torch.")
        else:
            tensors[name] = t
    meta = {**cache.meta, "cache_dtype": "fp8", "fp8_tensors": dtypes}
    return replace(cache, tensors=tensors, meta=meta)


def decode_cache(cache: FrameCache, device: torch.device | str | None = None) -> FrameCache:
    """The cache ``encode_cache`` made, back in its tensors' own dtypes (a plain cache: as it is).
    ``device``: decode there (a GPU decodes a 1,000-frame cache in microseconds)."""
    if cache.meta.get("cache_dtype") != "fp8":
        return cache
    dtypes = cache.meta.get("fp8_tensors") or {}
    tensors = {}
    for name, t in cache.tensors.items():
        if name.endswith(SCALE_SUFFIX) and name[:-len(SCALE_SUFFIX)] in dtypes:
            continue
        if name in dtypes:
            scale = cache.tensors[name + SCALE_SUFFIX]
            if device is not None:
                t, scale = t.to(device), scale.to(device)
            tensors[name] = decode_fp8(t, scale, getattr(torch, dtypes[name]))
        else:
            tensors[name] = t
    meta = {k: v for k, v in cache.meta.items() if k not in ("cache_dtype", "fp8_tensors")}
    return replace(cache, tensors=tensors, meta=meta)
