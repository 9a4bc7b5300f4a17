"""4-bit weights on a CUDA GPU (``--quantize int4``, for the layers ``vidqa.quant`` gives them): vidqa's own
packing, a Triton GEMV for one-row matmuls, and a dequantise + bf16 matmul for everything wider.

Why: torchao's CUDA int4 kernel (tinygemm) is a small-batch kernel. Layers that compress frames run
thousands of rows per matmul, and with it VoCo-7B compressed at 249 ms/frame on an H200; dequantising
here and running bf16 matmuls takes 21-25 ms/frame (benchmarks/NOTES.md, session 8). Those layers still
decode one row at a time (VoCo's LLM), hence the Triton GEMV; inductor could not fuse a plain-torch
dequantisation into one (6.8-8.6 ms for a 7B step's matmuls, ``benchmarks/int4_gemv.py``). The GEMV reads a
7B step's weights in 2.22 ms on an H200 (32% of the bandwidth; torchao's tinygemm 2.31), and the compiled
VoCo-7B decode step with it takes 3.12 ms/token (tinygemm 2.99): session 9, benchmarks/NOTES.md.

Format (``Int4Tensor``), for a weight ``w [N, K]`` with ``K`` a multiple of ``group`` (128, 64 or 32):
  ``packed``      uint8 ``[N, K/2]``, read as little-endian int32 words, ``group / 8`` words per group:
                  byte ``p`` of word ``j`` of group ``g`` holds the column pair ``g * group + 2 (p * group/8
                  + j)`` (low nibble) and the column after it (high nibble). Interleaved so that in the GEMV
                  each byte position of a tile of words meets a contiguous run of x read as bf16 pairs (one
                  int32 per pair, loaded in the words' own layout), not strided scalars: with consecutive
                  columns per word, loading and converting x was most of the kernel's instructions
                  (``benchmarks/int4_sweep.py``, session 9: its time fell as 1 / rows per program).
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
    if K % group or group % 8:
        raise ValueError(f"int4: {K} input columns are not a multiple of the group size {group}")
    w = weight.detach().float().reshape(N, K // group, group)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp(min=torch.finfo(torch.float32).tiny)
    # the stored (rounded) scale and zero are the ones the codes are chosen for
    scale, zero = scale.to(weight.dtype).float(), lo.to(weight.dtype).float()
    q = ((w - zero) / scale).round().clamp(0, 15).to(torch.uint8)  # [N, G, group]
    q = q.reshape(N, K // group, 4, group // 8, 2)  # [N, G, byte p, word j, nibble]: pair p * group/8 + j
    packed = (q[..., 0] | (q[..., 1] << 4)).transpose(-1, -2).reshape(N, K // 2).contiguous()  # [.., j, p]
    scale_zero = torch.cat([scale, zero], dim=-1).to(weight.dtype)
    return packed, scale_zero.contiguous()


def unpack_codes(packed: torch.Tensor, group: int) -> torch.Tensor:
    """The codes 0..15 of ``packed [N, K/2]`` (groups of ``group`` columns), as uint8 ``[N, K]``."""
    N = packed.shape[0]
    b = packed.reshape(N, -1, group // 8, 4).transpose(-1, -2)  # [N, G, byte p, word j]: pair p * group/8 + j
    return torch.stack([b & 15, b >> 4], dim=-1).reshape(N, -1)  # low nibble first


def dequantize(packed: torch.Tensor, scale_zero: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The weight ``[N, K]`` the packed codes stand for (in ``dtype``; scale_zero's by default)."""
    N, G = scale_zero.shape[:2]
    q = unpack_codes(packed, 2 * packed.shape[1] // G).reshape(N, G, -1).float()
    sz = scale_zero.float()  # in float32, as the GEMV computes, then rounded once
    return (q * sz[..., :1] + sz[..., 1:]).reshape(N, -1).to(dtype or scale_zero.dtype)


# ---- the GEMV ----------------------------------------------------------------------------------

if triton is not None:
    def launch_config(n: int, k: int) -> dict:
        """Rows and columns per program, warps and stages for an ``[n, k]`` weight: chosen from every
        configuration timed per shape with cold weights (``benchmarks/int4_sweep.py``, H200, session 9), not
        by Triton's autotuner, which times one weight over and over from the L2 (50 MB holds a 7B layer's
        largest) and picked configurations 5% slower on the weights of a real step; it also costs nothing
        at start-up. Many output rows: 16 rows x 1024 columns, 4 warps (Q/K/V 16.3 us, gate/up 26.4 us);
        otherwise 4 x 2048, 4 warps (o_proj 7.8 us, down 18.4 us)."""
        if n >= 8192 and k <= 8192:
            return {"BLOCK_N": 16, "BLOCK_K": 1024, "num_warps": 4, "num_stages": 2}
        return {"BLOCK_N": 4, "BLOCK_K": 2048, "num_warps": 4, "num_stages": 1}

    @triton.jit
    def _int4_gemv_kernel(x_ptr, w_ptr, sz_ptr, y_ptr, N, KW, stride_xm, stride_ym, MASK, ONE, HIGH,
                          GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """y[m, n] = sum_k x[m, k] * (q[n, k] * scale[n, k // GROUP] + zero[n, k // GROUP]) for one row m
        (program axis 1) and BLOCK_N outputs (axis 0), in float32. ``x_ptr``: bf16 x, read as int32 pairs
        (``stride_xm`` in pairs); ``w_ptr``: the packed bytes, read as int32 words (``KW`` = K / 8 per row),
        in the module doc's interleaved order. ``MASK``, ``ONE``, ``HIGH`` = 0x780000, 0x3F800000, 0xFFFF0000:
        arguments, not literals, so that the compiler keeps them in registers (as literals it re-made one per
        weight).

        Written for few instructions per weight: instructions, not memory, bounded session 8's versions
        (Nsight Compute: 6.8 per weight, the issue slots half busy, DRAM at 23%):
        - no integer-to-float conversions (a quarter of the FP32 rate): a shift moves a nibble to
          mantissa bits 19-22 and one AND/OR makes the float ``f = 1 + q / 16`` exactly;
        - the scale and zero come out of the inner sum: per group, ``sum q x * s + sum x * z`` is
          ``16 s * sum f x + (z - 16 s) * sum x``, so a weight costs a shift, an AND/OR and one FMA;
        - x is read as bf16 pairs through a pointer tile of the words' own shape (the same addresses for
          every row), so it loads in the words' layout with no conversion through shared memory, and a pair
          becomes two floats by a shift and a mask (bf16 is float32's high half).
        The tile is [BLOCK_N rows, NG groups, GROUP/8 words]; per step the products reduce over the words
        of each group, and the per-group sums accumulate in [BLOCK_N, NG], reduced once at the end."""
        GW: tl.constexpr = GROUP // 8
        NG: tl.constexpr = BLOCK_K // GROUP
        x_ptr = x_ptr.to(tl.pointer_type(tl.int32))  # bf16 pairs
        w_ptr = w_ptr.to(tl.pointer_type(tl.int32))  # the packed bytes as words
        m = tl.program_id(1)
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        G = KW // GW
        rg = tl.arange(0, NG)
        rw = tl.arange(0, GW)
        acc = tl.zeros([BLOCK_N, NG], dtype=tl.float32)
        for g0 in range(0, G, NG):
            g = g0 + rg  # [NG] groups of this step
            g_ok = g < G
            word = g[:, None] * GW + rw[None, :]  # [NG, GW] word columns of a row
            ok = n_ok[:, None, None] & g_ok[None, :, None]
            w = tl.load(w_ptr + rn[:, None, None] * KW + word[None, :, :], mask=ok, other=0)
            pair = x_ptr + m * stride_xm + g[:, None] * (GROUP // 2) + rw[None, :]  # [NG, GW]: pair p * GW + j
            pair3 = pair[None, :, :] + 0 * rn[:, None, None]  # the words' tile: x loads in their layout
            x_ok = tl.broadcast_to(g_ok[None, :, None], [BLOCK_N, NG, GW])  # the same for every row
            fx = tl.zeros([BLOCK_N, NG, GW], dtype=tl.float32)
            xsum = tl.zeros([NG, GW], dtype=tl.float32)
            for p in tl.static_range(4):
                xp = tl.load(pair3 + p * GW, mask=x_ok, other=0)
                if 8 * p < 19:  # nibble 2p (the pair's first column) to bits 19-22
                    t = w << (19 - 8 * p)
                else:
                    t = w >> (8 * p - 19)  # arithmetic shift: the sign's copies land above bit 22, masked off
                fx += ((t & MASK) | ONE).to(tl.float32, bitcast=True) * (xp << 16).to(tl.float32, bitcast=True)
                if 8 * p + 4 < 19:  # nibble 2p + 1 (the second column)
                    t = w << (15 - 8 * p)
                else:
                    t = w >> (8 * p - 15)
                fx += ((t & MASK) | ONE).to(tl.float32, bitcast=True) * (xp & HIGH).to(tl.float32, bitcast=True)
                x2 = tl.load(pair + p * GW, mask=g_ok[:, None], other=0)
                xsum += (x2 << 16).to(tl.float32, bitcast=True) + (x2 & HIGH).to(tl.float32, bitcast=True)
            at = sz_ptr + rn[:, None] * (2 * G) + 2 * g[None, :]
            sz_ok = n_ok[:, None] & g_ok[None, :]
            s16 = tl.load(at, mask=sz_ok, other=0.0).to(tl.float32) * 16.0
            z = tl.load(at + 1, mask=sz_ok, other=0.0).to(tl.float32)
            acc += s16 * tl.sum(fx, axis=2) + (z - s16) * tl.sum(xsum, axis=1)[None, :]
        y = tl.sum(acc, axis=1)
        tl.store(y_ptr + m * stride_ym + rn, y.to(y_ptr.dtype.element_ty), mask=n_ok)

    @torch.library.triton_op("vidqa::int4_gemv", mutates_args=())
    def int4_gemv(x: torch.Tensor, packed: torch.Tensor, scale_zero: torch.Tensor) -> torch.Tensor:
        """``x [M, K] @ dequantize(packed, scale_zero).T`` -> ``[M, N]`` in x's dtype (M small)."""
        M, K = x.shape
        N, G = scale_zero.shape[:2]
        y = torch.empty(M, N, device=x.device, dtype=x.dtype)
        meta = launch_config(N, K)
        grid = (triton.cdiv(N, meta["BLOCK_N"]), M)
        torch.library.wrap_triton(_int4_gemv_kernel)[grid](*gemv_args(x, packed, scale_zero, y), GROUP=K // G, **meta)
        return y
else:
    int4_gemv = None


def gemv_args(x: torch.Tensor, packed: torch.Tensor, scale_zero: torch.Tensor, y: torch.Tensor) -> tuple:
    """The GEMV kernel's positional arguments for ``y = x @ W.T`` (x bf16 [M, K], contiguous rows). The kernel
    reads x as int32 pairs and the codes as int32 words through its own pointer casts: a ``Tensor.view(dtype)``
    here became, under torch.compile, a copy of every weight on every decode step (session 9's profile)."""
    return (x, packed, scale_zero, y, packed.shape[0], packed.shape[1] // 4, x.stride(0) // 2, y.stride(0),
            0x780000, 0x3F800000, -65536)


def gemv_ok(x: torch.Tensor, packed: torch.Tensor) -> bool:
    """Whether ``F.linear(x, Int4Tensor)`` runs the GEMV: CUDA, Triton, few rows, contiguous packed rows."""
    return (int4_gemv is not None and x.is_cuda and 0 < x.numel() // x.shape[-1] <= GEMV_ROWS
            and packed.stride(-1) == 1 and x.dtype == torch.bfloat16)


def linear(x: torch.Tensor, packed: torch.Tensor, scale_zero: torch.Tensor, bias: torch.Tensor | None = None):
    """``F.linear(x, dequantize(packed, scale_zero), bias)``, by the GEMV where ``gemv_ok``."""
    if gemv_ok(x, packed):
        rows = x.reshape(-1, x.shape[-1]).contiguous()  # the kernel reads bf16 pairs as int32
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
