"""4-bit weights on a CUDA GPU (``--quantize int4``, for the layers ``vidqa.quant`` gives them: those that
compress frames): vidqa's own packing, a Triton GEMV for one-row matmuls, and a dequantise + bf16
matmul for everything wider.

Why: torchao's CUDA int4 kernel (tinygemm) is a small-batch kernel. Layers that compress frames run
thousands of rows per matmul, and with it VoCo-7B compressed at 249 ms/frame on an H200; dequantising
here and running bf16 matmuls takes 21-25 ms/frame (benchmarks/NOTES.md, session 8). Those layers still
decode one row at a time (VoCo's LLM), hence the Triton GEMV; inductor could not fuse a plain-torch
dequantisation into one (6.8-8.6 ms for a 7B step's matmuls, ``benchmarks/int4_gemv.py``). The GEMV reads
its weights at 23-24% of the H200's bandwidth, below tinygemm's 31%: layers that only decode keep
tinygemm (``vidqa.quant``).

Format (``Int4Tensor``), for a weight ``w [N, K]`` with ``K`` a multiple of ``group`` (128, 64 or 32):
  ``packed``      uint8 ``[N, K/2]``: byte ``j`` of row ``n`` holds column ``2j`` in its low nibble and
                  column ``2j + 1`` in its high nibble.
  ``scale_zero``  the weight's dtype ``[N, K/group, 2]``: per group of ``group`` input columns its scale
                  and zero, ``w ~= q * scale + zero`` with ``q`` in 0..15: zero is the group's minimum and
                  scale (max - min) / 15 (asymmetric, as tinygemm; the error is at most scale / 2).
0.5 byte per weight plus 4 bytes per group (0.53 bytes per weight at group 128).

Matmuls (``F.linear`` on an ``Int4Tensor``): rows of the input (tokens) up to ``GEMV_ROWS`` on a CUDA
device with Triton run the GEMV (``torch.ops.vidqa.int4_gemv``, a ``torch.library.triton_op``, so
``torch.compile`` and CUDA graphs take it as it is); anything else (prefill, compression, the CPU)
dequantises the weight (in row blocks of ``CHUNK`` weights, to bound the temporaries) and runs the
dtype's own matmul (compute-bound there: dequantising costs a few tens of microseconds per weight).
Rows slice as views (``quant.row_slice``: the fused Q/K/V weight hands ``q_proj``/``k_proj``/``v_proj``
their rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # Triton comes with CUDA builds of torch; CPU builds have none (and need none: see above)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None

GROUPS = (128, 64, 32)  # the group size: the first that divides the input width
GEMV_ROWS = 4  # input rows up to which a CUDA matmul runs the GEMV (a decode step has one)
CHUNK = 1 << 24  # weights the wide matmul dequantises at a time: its transient memory stays ~180 MB


def group_for(in_features: int) -> int | None:
    return next((g for g in GROUPS if in_features % g == 0), None)


# ---- format ------------------------------------------------------------------------------------

def pack(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight [N, K]`` as ``(packed uint8 [N, K/2], scale_zero [N, K/group, 2])`` (see the module doc)."""
    N, K = weight.shape
    if K % group or group % 2:
        raise ValueError(f"int4: {K} input columns are not a multiple of the group size {group}")
    w = weight.detach().float().reshape(N, K // group, group)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp(min=torch.finfo(torch.float32).tiny)
    # the stored (rounded) scale and zero are the ones the codes are chosen for
    scale, zero = scale.to(weight.dtype).float(), lo.to(weight.dtype).float()
    q = ((w - zero) / scale).round().clamp(0, 15).to(torch.uint8).reshape(N, K)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    scale_zero = torch.cat([scale, zero], dim=-1).to(weight.dtype)
    return packed.contiguous(), scale_zero.contiguous()


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """The codes 0..15 of ``packed [N, K/2]``, as uint8 ``[N, K]``."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def dequantize(packed: torch.Tensor, scale_zero: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The weight ``[N, K]`` the packed codes stand for (in ``dtype``; scale_zero's by default)."""
    N, G = scale_zero.shape[:2]
    q = unpack_codes(packed).reshape(N, G, -1).float()
    sz = scale_zero.float()  # in float32, as the GEMV computes, then rounded once
    return (q * sz[..., :1] + sz[..., 1:]).reshape(N, -1).to(dtype or scale_zero.dtype)


# ---- the GEMV ----------------------------------------------------------------------------------

if triton is not None:
    _CONFIGS = [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
                for n, k, w, s in ((4, 512, 4, 3), (8, 512, 4, 3), (8, 256, 4, 4), (16, 256, 4, 3), (4, 1024, 4, 2),
                                   (8, 1024, 8, 2), (16, 512, 8, 3), (2, 1024, 4, 3), (4, 256, 2, 4))]

    @triton.autotune(configs=_CONFIGS, key=["N", "K"])
    @triton.jit
    def _int4_gemv_kernel(x_ptr, w_ptr, sz_ptr, y_ptr, N, K, stride_xm, stride_ym,
                          GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """y[m, n] = sum_k x[m, k] * (q[n, k] * scale[n, k // GROUP] + zero[n, k // GROUP]) for one row m
        (program axis 1) and BLOCK_N outputs (axis 0), in float32.

        The tile is [BLOCK_N rows, NG groups, GROUP/2 bytes]: the scales and zeros load as [BLOCK_N, NG]
        and broadcast along the bytes in registers, products accumulate element-wise, and the one
        reduction comes after the loop (a reduction per step cost shuffles that made an earlier
        version of this kernel slower than tinygemm)."""
        GH: tl.constexpr = GROUP // 2
        NG: tl.constexpr = BLOCK_K // GROUP
        m = tl.program_id(1)
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        G = K // GROUP
        rg = tl.arange(0, NG)
        rb = tl.arange(0, GH)
        acc = tl.zeros([BLOCK_N, NG, GH], dtype=tl.float32)
        for g0 in range(0, G, NG):
            g = g0 + rg  # [NG] groups of this step
            g_ok = g < G
            byte = g[:, None] * GH + rb[None, :]  # [NG, GH] byte columns of a row
            ok = n_ok[:, None, None] & g_ok[None, :, None]
            w = tl.load(w_ptr + rn[:, None, None] * (K // 2) + byte[None, :, :], mask=ok, other=0)
            xe = tl.load(x_ptr + m * stride_xm + 2 * byte, mask=g_ok[:, None], other=0.0).to(tl.float32)
            xo = tl.load(x_ptr + m * stride_xm + 2 * byte + 1, mask=g_ok[:, None], other=0.0).to(tl.float32)
            at = sz_ptr + rn[:, None] * (2 * G) + 2 * g[None, :]
            sz_ok = n_ok[:, None] & g_ok[None, :]
            s = tl.load(at, mask=sz_ok, other=0.0).to(tl.float32)[:, :, None]
            z = tl.load(at + 1, mask=sz_ok, other=0.0).to(tl.float32)[:, :, None]
            lo = (w & 15).to(tl.float32) * s + z
            hi = (w >> 4).to(tl.float32) * s + z
            acc += lo * xe[None, :, :] + hi * xo[None, :, :]
        y = tl.sum(tl.sum(acc, axis=2), axis=1)
        tl.store(y_ptr + m * stride_ym + rn, y.to(y_ptr.dtype.element_ty), mask=n_ok)

    @torch.library.triton_op("vidqa::int4_gemv", mutates_args=())
    def int4_gemv(x: torch.Tensor, packed: torch.Tensor, scale_zero: torch.Tensor) -> torch.Tensor:
        """``x [M, K] @ dequantize(packed, scale_zero).T`` -> ``[M, N]`` in x's dtype (M small)."""
        M, K = x.shape
        N, G = scale_zero.shape[:2]
        y = torch.empty(M, N, device=x.device, dtype=x.dtype)
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), M)  # noqa: E731
        torch.library.wrap_triton(_int4_gemv_kernel)[grid](x, packed, scale_zero, y, N, K, x.stride(0), y.stride(0),
                                                           GROUP=K // G)
        return y
else:
    int4_gemv = None


def gemv_ok(x: torch.Tensor, packed: torch.Tensor) -> bool:
    """Whether ``F.linear(x, Int4Tensor)`` runs the GEMV: CUDA, Triton, few rows, contiguous packed rows."""
    return (int4_gemv is not None and x.is_cuda and 0 < x.numel() // x.shape[-1] <= GEMV_ROWS
            and packed.stride(-1) == 1 and x.dtype in (torch.bfloat16, torch.float16, torch.float32))


def linear(x: torch.Tensor, packed: torch.Tensor, scale_zero: torch.Tensor, bias: torch.Tensor | None = None):
    """``F.linear(x, dequantize(packed, scale_zero), bias)``, by the GEMV where ``gemv_ok``."""
    if gemv_ok(x, packed):
        rows = x.reshape(-1, x.shape[-1])
        if rows.stride(-1) != 1:
            rows = rows.contiguous()
        y = int4_gemv(rows, packed, scale_zero.contiguous()).reshape(*x.shape[:-1], packed.shape[0])
        return y if bias is None else y + bias
    rows = max(1, CHUNK // (2 * packed.shape[1]))
    if rows >= packed.shape[0]:
        return F.linear(x, dequantize(packed, scale_zero, x.dtype), bias)
    # a large weight in row blocks (Llama-3-8B's gate/up is 117M weights: 1.3 GB of float32 temporaries at once)
    y = torch.cat([F.linear(x, dequantize(packed[i:i + rows], scale_zero[i:i + rows], x.dtype))
                   for i in range(0, packed.shape[0], rows)], dim=-1)
    return y if bias is None else y + bias


# ---- the weight as a tensor --------------------------------------------------------------------

def _tensor_class():
    """``Int4Tensor``, built on first use: it derives from torchao's ``TorchAOBaseTensor`` (flattening for
    torch.compile, detach/clone/to/copy_), and torchao is an optional dependency (``vidqa[quant]``)."""
    global Int4Tensor
    if Int4Tensor is not None:
        return Int4Tensor
    from torchao.utils import TorchAOBaseTensor, fill_defaults

    class _Int4Tensor(TorchAOBaseTensor):
        """A ``[N, K]`` weight in vidqa's int4 format; ``F.linear`` runs ``int4.linear``."""

        tensor_data_names = ["packed", "scale_zero"]
        tensor_attribute_names = ["shape"]

        def __new__(cls, packed, scale_zero, shape):
            return torch.Tensor._make_wrapper_subclass(cls, shape, device=packed.device, dtype=scale_zero.dtype,
                                                       requires_grad=False)

        def __init__(self, packed, scale_zero, shape):
            self.packed = packed
            self.scale_zero = scale_zero

        def _quantization_type(self):
            return f"shape={tuple(self.shape)}, group={self.shape[1] // self.scale_zero.shape[1]}, vidqa int4"

        @classmethod
        def from_float(cls, weight: torch.Tensor, group: int):
            packed, scale_zero = pack(weight, group)
            return cls(packed, scale_zero, weight.shape)

        def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
            return dequantize(self.packed, self.scale_zero, dtype)

    implements, implements_torch_function = _Int4Tensor.implements, _Int4Tensor.implements_torch_function

    @implements(torch.ops.aten.linear.default)
    @implements_torch_function(F.linear)
    def _(func, types, args, kwargs):
        x, w = args[0], args[1]
        bias = args[2] if len(args) > 2 else (kwargs or {}).get("bias")
        return linear(x, w.packed, w.scale_zero, bias)

    @implements(torch.ops.aten.slice.Tensor)
    def _(func, types, args, kwargs):  # rows only: views of both inner tensors
        self, dim, start, end, step = fill_defaults(args, 5, [0, None, None, 1])
        if dim != 0 or step != 1:
            raise NotImplementedError("an int4 weight slices along its output rows only")
        start, end = slice(start, end).indices(self.shape[0])[:2]
        return _Int4Tensor(self.packed[start:end], self.scale_zero[start:end], (end - start, self.shape[1]))

    Int4Tensor = _Int4Tensor
    return Int4Tensor


Int4Tensor = None


def quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight [N, K]`` as an ``Int4Tensor`` (as it is when no group size divides K)."""
    group = group_for(weight.shape[1])
    if group is None:
        return weight
    return _tensor_class().from_float(weight, group)
