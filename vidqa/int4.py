"""4-bit weights on a CUDA GPU (``--quantize int4``, for the layers ``vidqa.quant`` gives them): vidqa's own
packing, Triton GEMVs for one-row matmuls, and a dequantise + bf16 matmul for everything wider.

Why: torchao's CUDA int4 kernel (tinygemm) is a small-batch kernel. Layers that compress frames run
thousands of rows per matmul, and with it VoCo-7B compressed at 249 ms/frame on an H200; dequantising
here (one Triton kernel) and running bf16 matmuls takes 20.6 ms/frame (benchmarks/NOTES.md, sessions 8 and
10). Those layers still decode one row at a time (VoCo's LLM), hence the GEMVs; inductor could not fuse a
plain-torch dequantisation into one (6.8-8.6 ms for a 7B step's matmuls, ``benchmarks/int4_gemv.py``).

Two GEMV kernels, chosen by shape (``gemv_plan``; H200 timings with cold weights, session 12,
``benchmarks/int4_sweep.py``): ``_int4_mma_kernel`` sums on the tensor cores (about 2.5 instructions per
weight) and wins where there are many output rows or a long reduction (7B Q/K/V 13.6 us, gate/up 21.6 us,
down 16.2 us); ``_int4_gemv_kernel`` sums with FMAs (5.6-6.6 instructions per weight) and wins for a square
weight (o_proj 7.65 us). Both load their scales and x (the FMA kernel also its codes) a step ahead. A 7B
decode step's matmuls take 1.81 ms in the step's profile, and the compiled VoCo-7B decode step 2.44 ms/token
(session 12; session 11: 2.50, session 9: 3.12).
``linear_fused`` adds the decoder's RMSNorm, SiLU gate and residual add to the GEMVs, so that the uncompiled
CUDA-graph step runs six kernels per layer, not about ten (3.40 against 4.29 ms/token, session 10); compiled,
inductor fuses those itself and does better (2.58 against 2.77-2.92, session 11).

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

# Over 500 lines: one 4-bit format with the three Triton kernels that read its packing (two GEMVs, the
# dequantisation), their launch plans and the tensor that dispatches to them; apart, each would need the others.
from __future__ import annotations

import os

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
KERNEL = "auto"  # the GEMV: "auto" (per shape, ``gemv_plan``), "mma" (tensor cores) or "fma" (FMA units)
ASM = os.environ.get("TRITON_INTERPRET") != "1"  # inline PTX, which Triton's interpreter cannot run


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
    """The weight ``[N, K]`` the packed codes stand for (in ``dtype``; scale_zero's by default): ``q * scale +
    zero`` in float32, rounded once. On a CUDA device, to a 16-bit dtype, one Triton kernel (``int4_dequantize``,
    the same values bit for bit); elsewhere torch ops."""
    dtype = dtype or scale_zero.dtype
    if int4_dequantize is not None and packed.is_cuda and dtype in (torch.bfloat16, torch.float16):
        return int4_dequantize(packed.contiguous(), scale_zero.contiguous(), dtype)
    return dequantize_reference(packed, scale_zero, dtype)


def dequantize_reference(packed: torch.Tensor, scale_zero: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``dequantize`` in torch ops (any device and dtype)."""
    N, G = scale_zero.shape[:2]
    q = unpack_codes(packed, 2 * packed.shape[1] // G).reshape(N, G, -1).float()
    sz = scale_zero.float()  # in float32, as the GEMV computes, then rounded once
    return (q * sz[..., :1] + sz[..., 1:]).reshape(N, -1).to(dtype)


# ---- the GEMV ----------------------------------------------------------------------------------

if triton is not None:
    def launch_config(n: int, k: int) -> dict:
        """Rows and columns per program, warps and stages for an ``[n, k]`` weight: chosen from every
        configuration timed per shape with cold weights (``benchmarks/int4_sweep.py``, H200, session 9), not
        by Triton's autotuner, which times one weight over and over from the L2 (50 MB holds a 7B layer's
        largest) and picked configurations 5% slower on the weights of a real step; it also costs nothing
        at start-up. Many output rows: 16 rows x 1024 columns, 4 warps (Q/K/V 16.3 us, gate/up 26.4 us);
        otherwise, since its loads run a step ahead, 2 x 1024 and one warp (session 12: o_proj 7.65 us
        against 7.99 for session 9's 4 x 2048 and 4 warps)."""
        if n >= 8192 and k <= 8192:
            return {"BLOCK_N": 16, "BLOCK_K": 1024, "num_warps": 4, "num_stages": 2}
        return {"BLOCK_N": 2, "BLOCK_K": 1024, "num_warps": 1, "num_stages": 1}

    @triton.jit
    def _add_residual(y, res_row, rn, n_ok, dtype: tl.constexpr):
        """The decoder's residual add as torch rounds it: the product to the output's dtype, then the sum."""
        res = tl.load(res_row + rn, mask=n_ok, other=0.0).to(tl.float32)
        return res + y.to(dtype).to(tl.float32)

    @triton.jit
    def _fma_loads(w_ptr, sz_ptr, rn, n_ok, g, G, KW, GW: tl.constexpr, rw):
        """The FMA kernel's codes [rows, NG, GW] (int32 words) and its ``16 * scale`` and zero [rows, NG] for groups
        ``g`` (masked past the end)."""
        g_ok = g < G
        word = g[:, None] * GW + rw[None, :]  # [NG, GW] word columns of a row
        w = tl.load(w_ptr + rn[:, None, None] * KW + word[None, :, :], mask=n_ok[:, None, None] & g_ok[None, :, None],
                    other=0)
        at = sz_ptr + rn[:, None] * (2 * G) + 2 * g[None, :]
        sz_ok = n_ok[:, None] & g_ok[None, :]
        s16 = tl.load(at, mask=sz_ok, other=0.0).to(tl.float32) * 16.0
        return w, s16, tl.load(at + 1, mask=sz_ok, other=0.0).to(tl.float32)

    @triton.jit
    def _int4_gemv_kernel(x_ptr, w_ptr, sz_ptr, y_ptr, N, KW, stride_xm, stride_ym, MASK, ONE, HIGH, res_ptr,
                          stride_rm, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          RESID: tl.constexpr = False):
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
        # the codes and scales are loaded a step ahead (``_n``): their DRAM latency passes under a step's work
        # (Triton's pipeliner stages only loads that feed a dot)
        w_n, s16_n, z_n = _fma_loads(w_ptr, sz_ptr, rn, n_ok, rg, G, KW, GW, rw)
        for g0 in range(0, G, NG):
            g = g0 + rg  # [NG] groups of this step
            g_ok = g < G
            w, s16, z = w_n, s16_n, z_n
            w_n, s16_n, z_n = _fma_loads(w_ptr, sz_ptr, rn, n_ok, g + NG, G, KW, GW, rw)
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
            acc += s16 * tl.sum(fx, axis=2) + (z - s16) * tl.sum(xsum, axis=1)[None, :]
        y = tl.sum(acc, axis=1)
        if RESID:
            y = _add_residual(y, res_ptr + m * stride_rm, rn, n_ok, y_ptr.dtype.element_ty)
        tl.store(y_ptr + m * stride_ym + rn, y.to(y_ptr.dtype.element_ty), mask=n_ok)

    @triton.jit
    def _nibbles_asm(b):
        """``(b & 15) + 128`` and ``(b >> 4) + 128`` as bf16, four bytes per 32-bit register: a byte permute
        spreads two bytes into the halves of a word, and one three-input logic op keeps each half's nibble and
        ORs in 128.0's bf16 bits (0x4300: 128 + q for q in 0..15, exact). Two instructions per two weights,
        where Triton's own casts spent about five (PRMTs, 16-bit ops)."""
        return tl.inline_asm_elementwise(
            """{
            .reg .b32 t, u;
            prmt.b32 t, $4, 0, 0x7170;
            prmt.b32 u, $4, 0, 0x7372;
            lop3.b32 $0, t, 0x000F000F, 0x43004300, 0xea;
            lop3.b32 $1, u, 0x000F000F, 0x43004300, 0xea;
            shr.b32 t, t, 4;
            shr.b32 u, u, 4;
            lop3.b32 $2, t, 0x000F000F, 0x43004300, 0xea;
            lop3.b32 $3, u, 0x000F000F, 0x43004300, 0xea;
            }""",
            "=r,=r,=r,=r,r", [b], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)

    @triton.jit
    def _scale_zero(sz_ptr, rn, n_ok, g, g_ok, G):
        """The scales ``s`` and ``z - 128 s`` (the factor of a group's sum of x) of groups ``g`` and rows ``rn``,
        [KS, rows]."""
        at = sz_ptr + rn[None, :] * (2 * G) + 2 * g[:, None]
        sz_ok = g_ok[:, None] & n_ok[None, :]
        s = tl.load(at, mask=sz_ok, other=0.0).to(tl.float32)
        z = tl.load(at + 1, mask=sz_ok, other=0.0).to(tl.float32)
        return s, z - 128.0 * s

    @triton.jit
    def _mma_groups(w_ptr, rn, n_ok, g, g_ok, ri, xl, xh, s, KB, H: tl.constexpr, KS: tl.constexpr, ASM: tl.constexpr):
        """One step of ``_int4_mma_kernel`` for the rows ``rn``: per group of the step, ``s * sum (128 + q) x``
        ([KS, rows, 16], every column alike)."""
        b = tl.load(w_ptr + rn[None, :, None] * KB + g[:, None, None] * H + ri[None, None, :],
                    mask=g_ok[:, None, None] & n_ok[None, :, None], other=0)
        if ASM:
            lo, hi = _nibbles_asm(b)
            c = tl.dot(lo, tl.broadcast_to(xl[:, :, None], [KS, H, 16]))
            c = tl.dot(hi, tl.broadcast_to(xh[:, :, None], [KS, H, 16]), c)
        else:  # the same values in float32 (the interpreter's bf16 dot multiplies raw bits)
            lo = (b & 15).to(tl.float32) + 128.0
            hi = (b >> 4).to(tl.float32) + 128.0
            c = tl.dot(lo, tl.broadcast_to(xl.to(tl.float32)[:, :, None], [KS, H, 16]), input_precision="ieee")
            c = tl.dot(hi, tl.broadcast_to(xh.to(tl.float32)[:, :, None], [KS, H, 16]), c, input_precision="ieee")
        return c * s[:, :, None]

    @triton.jit
    def _int4_mma_kernel(x_ptr, w_ptr, sz_ptr, y_ptr, N, K, stride_xm, stride_ym, nw_ptr, eps, res_ptr, stride_rm,
                         GROUP: tl.constexpr, BLOCK_N: tl.constexpr, KS: tl.constexpr, ASM: tl.constexpr,
                         NORM: tl.constexpr = False, GLU: tl.constexpr = False, RESID: tl.constexpr = False):
        """The same product as ``_int4_gemv_kernel``, its inner sums on the tensor cores: per group, the codes
        become bf16 ``128 + q`` (exact) and ``tl.dot`` sums them against x in float32; then
        ``s * sum (128 + q) x + (z - 128 s) * sum x`` per row.

        The packed bytes are read as they are stored: a group's ``GROUP / 2`` bytes are a [BLOCK_N, GROUP/2]
        tile whose low nibbles hold the group's even columns and high nibbles the odd ones, both in the
        interleaved order of the module doc; x is gathered in that order (x is small and stays in the L1).
        x is the dot's right operand broadcast to 16 identical columns (a dot is at least 16 wide): every
        column of the result is the same sum, and their total over 16 is exact. Each step takes ``KS``
        consecutive groups as the batch of a 3-D dot, so the warps of a program split K between them and the
        partial sums meet once, at the end (one warp per program left too few loads in flight for the narrow
        shapes). The last step masks groups past the end (11008 columns are 86 groups). ``ASM`` off
        (Triton's interpreter, which cannot run inline PTX or bf16 dots) makes the same values in float32.

        The decoder's neighbours, each a kernel of its own otherwise (``linear_fused``):
        - ``NORM``: x is the residual stream and the product is of its RMSNorm (weight ``nw``, ``eps``), as
          transformers rounds it: ``bf16(w * bf16(x * rsqrt(mean(x^2) + eps)))``; every program sums the
          squares itself (K values from the L2).
        - ``GLU``: the weight is gate rows then up rows (N each); a program takes rows ``rn`` of both and
          writes ``bf16(bf16(silu(gate)) * up)``, each of gate and up rounded to bf16 first.
        - ``RESID``: ``bf16(res + bf16(y))``, the residual add."""
        H: tl.constexpr = GROUP // 2
        GW: tl.constexpr = GROUP // 8
        m = tl.program_id(1)
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        ri = tl.arange(0, H)
        rs = tl.arange(0, KS)
        col = 2 * ((ri % 4) * GW + ri // 4)  # byte i = word i // 4, byte i % 4: its low nibble's column
        G = K // GROUP
        KB = K // 2
        xrow = x_ptr + m * stride_xm
        if NORM:
            rk = tl.arange(0, 1024)
            sq = tl.zeros([1024], dtype=tl.float32)
            for k0 in range(0, K, 1024):
                xk = tl.load(xrow + k0 + rk, mask=k0 + rk < K, other=0.0).to(tl.float32)
                sq += xk * xk
            r = tl.rsqrt((tl.sum(sq, axis=0) / K + eps).to(tl.float32))
        acc = tl.zeros([KS, BLOCK_N, 16], dtype=tl.float32)
        zsum = tl.zeros([KS, BLOCK_N], dtype=tl.float32)
        if GLU:
            acc2 = tl.zeros([KS, BLOCK_N, 16], dtype=tl.float32)
            zsum2 = tl.zeros([KS, BLOCK_N], dtype=tl.float32)
        # x and the scales are loaded a step ahead (``_n``): Triton's pipeliner stages the codes, which feed the
        # dot, through shared memory, but not these, whose latency (the scales come from DRAM) each step waited out
        xat = rs[:, None] * GROUP + col[None, :]  # [KS, H]
        xl_n = tl.load(xrow + xat, mask=rs[:, None] < G, other=0.0)
        xh_n = tl.load(xrow + xat + 1, mask=rs[:, None] < G, other=0.0)
        s_n, zf_n = _scale_zero(sz_ptr, rn, n_ok, rs, rs < G, G)
        if GLU:
            s2_n, zf2_n = _scale_zero(sz_ptr, rn + N, n_ok, rs, rs < G, G)
        for g0 in range(0, G, KS):
            g = g0 + rs  # [KS]
            g_ok = g < G
            xat = g[:, None] * GROUP + col[None, :]  # [KS, H]
            xl, xh, s, zf = xl_n, xh_n, s_n, zf_n
            if GLU:
                s2, zf2 = s2_n, zf2_n
            gn = g + KS
            xl_n = tl.load(xrow + xat + KS * GROUP, mask=gn[:, None] < G, other=0.0)
            xh_n = tl.load(xrow + xat + KS * GROUP + 1, mask=gn[:, None] < G, other=0.0)
            s_n, zf_n = _scale_zero(sz_ptr, rn, n_ok, gn, gn < G, G)
            if GLU:
                s2_n, zf2_n = _scale_zero(sz_ptr, rn + N, n_ok, gn, gn < G, G)
            if NORM:
                wl = tl.load(nw_ptr + xat, mask=g_ok[:, None], other=0.0).to(tl.float32)
                wh = tl.load(nw_ptr + xat + 1, mask=g_ok[:, None], other=0.0).to(tl.float32)
                xl = (wl * (xl.to(tl.float32) * r).to(xl.dtype).to(tl.float32)).to(xl.dtype)
                xh = (wh * (xh.to(tl.float32) * r).to(xh.dtype).to(tl.float32)).to(xh.dtype)
            xs = tl.sum(xl.to(tl.float32) + xh.to(tl.float32), axis=1)  # [KS]
            acc += _mma_groups(w_ptr, rn, n_ok, g, g_ok, ri, xl, xh, s, KB, H, KS, ASM)
            zsum += zf * xs[:, None]
            if GLU:
                acc2 += _mma_groups(w_ptr, rn + N, n_ok, g, g_ok, ri, xl, xh, s2, KB, H, KS, ASM)
                zsum2 += zf2 * xs[:, None]
        y = tl.sum(tl.sum(acc, axis=2), axis=0) * 0.0625 + tl.sum(zsum, axis=0)
        if GLU:
            up = tl.sum(tl.sum(acc2, axis=2), axis=0) * 0.0625 + tl.sum(zsum2, axis=0)
            gate = y.to(y_ptr.dtype.element_ty).to(tl.float32)
            act = (gate / (1.0 + tl.exp(-gate))).to(y_ptr.dtype.element_ty).to(tl.float32)
            y = act * up.to(y_ptr.dtype.element_ty).to(tl.float32)
        if RESID:
            y = _add_residual(y, res_ptr + m * stride_rm, rn, n_ok, y_ptr.dtype.element_ty)
        tl.store(y_ptr + m * stride_ym + rn, y.to(y_ptr.dtype.element_ty), mask=n_ok)

    def mma_config(n: int, k: int) -> dict:
        """Rows per program, groups per step (``KS``, split between the warps), warps and stages of the
        tensor-core kernel for an ``[n, k]`` weight: the fastest of 16 configurations per shape with cold weights
        (``benchmarks/int4_sweep.py --kernel mma``, H200; session 12, with its loads a step ahead): gate/up
        21.6 us, Q/K/V 13.6 us, o_proj 8.0 us, down 16.2 us."""
        if n >= 16384 and k <= 8192:
            return {"BLOCK_N": 32, "KS": 2, "num_warps": 2, "num_stages": 3}
        if n >= 8192 and k <= 8192:
            return {"BLOCK_N": 32, "KS": 4, "num_warps": 4, "num_stages": 3}
        return {"BLOCK_N": 32, "KS": 8, "num_warps": 8, "num_stages": 3}

    def gemv_plan(n: int, k: int) -> tuple[str, dict]:
        """The kernel (``KERNEL``; by shape when "auto") and its launch configuration for an ``[n, k]`` weight.
        By shape (H200, session 12, ``benchmarks/int4_sweep.py``, both kernels loading a step ahead): the tensor
        cores for many output rows (7B Q/K/V 13.6 us against the FMA kernel's 17.3, gate/up 21.6 against
        26.9) or a long reduction (down, 11008 columns: 16.2 against 17.1); the FMA kernel for a square
        weight (o_proj 7.65 against 8.0)."""
        kernel = KERNEL if KERNEL != "auto" else ("mma" if (n >= 8192 and k <= 8192) or k >= 2 * n else "fma")
        return kernel, (mma_config(n, k) if kernel == "mma" else launch_config(n, k))

    def _launch(x, packed, scale_zero, y, kernel: str, meta: dict, wrap, norm_weight=None, eps: float = 0.0,
                residual=None, glu: bool = False) -> None:
        M, K = x.shape
        N, G = y.shape[1], scale_zero.shape[1]
        grid = (triton.cdiv(N, meta["BLOCK_N"]), M)
        if kernel == "mma":
            res, stride_rm = (residual, residual.stride(0)) if residual is not None else (y, 0)
            nw = norm_weight if norm_weight is not None else x
            wrap(_int4_mma_kernel)[grid](x, packed, scale_zero, y, N, K, x.stride(0), y.stride(0), nw, eps, res,
                                         stride_rm, GROUP=K // G, ASM=ASM, NORM=norm_weight is not None, GLU=glu,
                                         RESID=residual is not None, **meta)
        else:
            wrap(_int4_gemv_kernel)[grid](*gemv_args(x, packed, scale_zero, y, residual), GROUP=K // G,
                                          RESID=residual is not None, **meta)

    @torch.library.triton_op("vidqa::int4_gemv", mutates_args=())
    def int4_gemv(x: torch.Tensor, packed: torch.Tensor, scale_zero: torch.Tensor) -> torch.Tensor:
        """``x [M, K] @ dequantize(packed, scale_zero).T`` -> ``[M, N]`` in x's dtype (M small)."""
        y = torch.empty(x.shape[0], packed.shape[0], device=x.device, dtype=x.dtype)
        _launch(x, packed, scale_zero, y, *gemv_plan(*packed.shape[:1], x.shape[1]), torch.library.wrap_triton)
        return y

    @torch.library.triton_op("vidqa::int4_gemv_fused", mutates_args=())
    def int4_gemv_fused(x: torch.Tensor, packed: torch.Tensor, scale_zero: torch.Tensor,
                        norm_weight: torch.Tensor | None, eps: float, residual: torch.Tensor | None,
                        glu: bool) -> torch.Tensor:
        """``int4_gemv`` with the decoder's neighbours fused (``linear_fused``): x RMS-normed first
        (``norm_weight``, ``eps``), ``silu(gate) * up`` of a gate/up weight (``glu``), ``residual`` added."""
        N = packed.shape[0] // 2 if glu else packed.shape[0]
        y = torch.empty(x.shape[0], N, device=x.device, dtype=x.dtype)
        kernel, meta = fused_plan(packed.shape[0], x.shape[1], norm_weight is not None or glu)
        _launch(x, packed, scale_zero, y, kernel, meta, torch.library.wrap_triton, norm_weight, eps, residual, glu)
        return y

    def fused_plan(n: int, k: int, needs_mma: bool) -> tuple[str, dict]:
        """``gemv_plan`` for ``int4_gemv_fused``: the norm and the gated activation are written for the
        tensor-core kernel only; with the gated activation a program takes BLOCK_N rows of gate and of up."""
        kernel, meta = gemv_plan(n, k)
        if needs_mma and kernel != "mma":
            kernel, meta = "mma", mma_config(n, k)
        return kernel, meta

    @triton.jit
    def _dequantize_kernel(w_ptr, sz_ptr, out_ptr, N, KW, GROUP: tl.constexpr, BLOCK_N: tl.constexpr,
                           NG: tl.constexpr, BF16: tl.constexpr):
        """out [N, K] (bf16 if BF16, else fp16) = q * scale + zero for BLOCK_N rows x NG groups: float32,
        rounded once to nearest even, as ``dequantize_reference``. Both columns of a byte are written as one
        int32 (the pair is adjacent in the output row), so the stores are as contiguous as the loads."""
        GW: tl.constexpr = GROUP // 8
        w_ptr = w_ptr.to(tl.pointer_type(tl.int32))
        pairs_ptr = out_ptr.to(tl.pointer_type(tl.int32))
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        g = tl.program_id(1) * NG + tl.arange(0, NG)
        G = KW // GW
        ok2 = (rn < N)[:, None] & (g < G)[None, :]
        ok = ok2[:, :, None]
        word = (g[:, None] * GW + tl.arange(0, GW)[None, :])[None, :, :]  # [1, NG, GW]
        pair_col = (g[:, None] * (4 * GW) + tl.arange(0, GW)[None, :])[None, :, :]  # + p * GW: pair p * GW + j
        w = tl.load(w_ptr + rn[:, None, None] * KW + word, mask=ok, other=0)
        at = sz_ptr + rn[:, None] * (2 * G) + 2 * g[None, :]
        s = tl.load(at, mask=ok2, other=0.0).to(tl.float32)[:, :, None]
        z = tl.load(at + 1, mask=ok2, other=0.0).to(tl.float32)[:, :, None]
        for p in tl.static_range(4):  # byte p of each word: the column pair p * GW + j of its group
            lo = ((w >> (8 * p)) & 15).to(tl.float32) * s + z
            hi = ((w >> (8 * p + 4)) & 15).to(tl.float32) * s + z
            if BF16:  # round to nearest even in integers (Triton's interpreter truncates a .to(bfloat16))
                lo_b, hi_b = lo.to(tl.int32, bitcast=True), hi.to(tl.int32, bitcast=True)
                lo_b = ((lo_b + 0x7FFF + ((lo_b >> 16) & 1)) >> 16) & 0xFFFF
                hi_b = (hi_b + 0x7FFF + ((hi_b >> 16) & 1)) >> 16
            else:
                lo_b = lo.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
                hi_b = hi.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
            pair = lo_b | (hi_b << 16)
            tl.store(pairs_ptr + rn[:, None, None] * (4 * KW) + pair_col + p * GW, pair, mask=ok)

    @torch.library.triton_op("vidqa::int4_dequantize", mutates_args=())
    def int4_dequantize(packed: torch.Tensor, scale_zero: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``dequantize_reference(packed, scale_zero, dtype)`` for a 16-bit ``dtype``, in one kernel (contiguous
        inputs). Session 9's profile of an int4 VoCo answer found the torch-op version (unpack, transpose,
        float, multiply-add, cast: several passes over every weight) at about 94 ms of GPU time per prefill."""
        N, G = scale_zero.shape[:2]
        K = 2 * packed.shape[1]
        out = torch.empty(N, K, device=packed.device, dtype=dtype)
        grid = (triton.cdiv(N, 16), triton.cdiv(G, 8))
        torch.library.wrap_triton(_dequantize_kernel)[grid](packed, scale_zero, out, N, K // 8, GROUP=K // G,
                                                            BLOCK_N=16, NG=8, BF16=dtype == torch.bfloat16,
                                                            num_warps=4)
        return out
else:
    int4_gemv = int4_gemv_fused = int4_dequantize = None


def gemv_args(x: torch.Tensor, packed: torch.Tensor, scale_zero: torch.Tensor, y: torch.Tensor,
              residual: torch.Tensor | None = None) -> tuple:
    """The FMA kernel's positional arguments for ``y = x @ W.T`` (x bf16 [M, K], contiguous rows; ``residual``
    added when given, with ``RESID``). The kernel reads x as int32 pairs and the codes as int32 words through
    its own pointer casts: a ``Tensor.view(dtype)`` here became, under torch.compile, a copy of every weight on
    every decode step (session 9's profile)."""
    res, stride_rm = (residual, residual.stride(0)) if residual is not None else (y, 0)
    return (x, packed, scale_zero, y, packed.shape[0], packed.shape[1] // 4, x.stride(0) // 2, y.stride(0),
            0x780000, 0x3F800000, -65536, res, stride_rm)


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


def fused_ok(x: torch.Tensor, weight) -> bool:
    """Whether ``linear_fused`` takes ``x`` and ``weight``: an ``Int4Tensor`` on the GEMV's terms (``gemv_ok``)."""
    return (Int4Tensor is not None and isinstance(weight, Int4Tensor) and int4_gemv_fused is not None
            and gemv_ok(x, weight.packed) and weight.packed.is_contiguous())


def linear_fused(x: torch.Tensor, weight, norm: tuple[torch.Tensor, float] | None = None,
                 residual: torch.Tensor | None = None, glu: bool = False) -> torch.Tensor:
    """One kernel for a decoder's matmul and its neighbours (where ``fused_ok``; the decode step's layers):
    ``residual + act(F.linear(rms_norm(x, *norm), weight))`` with each part optional, where ``glu`` means
    ``silu(gate) * up`` of the output's halves (a fused gate/up weight). Rounded to x's dtype where torch's
    separate ops round. A decode step has 9-10 kernels per layer without this and 6 with it; each small kernel
    costs about 1.2 us plus a gap in a CUDA graph (H200, session 10's profile)."""
    K = x.shape[-1]
    rows = x.reshape(-1, K).contiguous()
    n = weight.shape[0] // 2 if glu else weight.shape[0]
    res = residual.reshape(-1, n).contiguous() if residual is not None else None
    nw, eps = norm if norm is not None else (None, 0.0)
    y = int4_gemv_fused(rows, weight.packed, weight.scale_zero.contiguous(), nw, float(eps), res, glu)
    return y.reshape(*x.shape[:-1], n)


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
