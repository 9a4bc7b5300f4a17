"""A third int4 GEMV on ``vidqa.int4``'s format, for ``int4_gemv.py --impls pairs`` (not yet measured on a GPU).

Why: ``vidqa.int4``'s GEMV read its weights at 23-24% of an H200's bandwidth (session 8), below torchao's
tinygemm (31%). Its likely limit is loading ``x``: the even and odd columns are read as two strided
streams of 2-byte scalars, one load instruction per element, amortised over only BLOCK_N weight rows.

Here a bf16 ``x`` is read as int32 pairs: ``x.view(int32)[j]`` holds columns ``2j`` (low 16 bits) and
``2j + 1`` (high 16 bits), which line up with weight byte ``j`` (low nibble: column ``2j``). Both bf16 values
become float32 by a shift or a mask and a bitcast (bf16 is float32's high half), so ``x`` loads as
contiguous, vectorised words, one per weight byte column. The row length in bytes, ``KH``, is an argument,
so Triton specialises it (divisible by 16) and can vectorise the weight loads too. Split-K (``SPLIT``
programs per output block, float32 atomics) keeps the GPU busy when N is small.

Same arithmetic as ``vidqa.int4``'s kernel (float32, scale and zero per group), so its results agree with
``vidqa.int4.dequantize`` to float32 summation order; checked on the CPU with ``TRITON_INTERPRET=1``
(``tests/test_benchmarks.py``).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU builds of torch
    triton = None

if triton is not None:
    CONFIGS = [triton.Config({"BLOCK_N": n, "BLOCK_K": k, "SPLIT": s}, num_warps=w, num_stages=st)
               for n, k, s, w, st in ((8, 512, 1, 4, 3), (16, 512, 1, 4, 3), (32, 256, 1, 4, 3), (16, 1024, 1, 8, 2),
                                      (32, 512, 2, 4, 3), (64, 512, 4, 8, 3), (32, 1024, 2, 8, 2), (64, 256, 2, 4, 4))]

    @triton.jit
    def _pairs_kernel(x_ptr, w_ptr, sz_ptr, y_ptr, N, KH, G, stride_xm, stride_ym,
                      GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr):
        """y[m, n] += partial sums over this program's share of the groups (y float32, zeroed when SPLIT > 1)."""
        GH: tl.constexpr = GROUP // 2
        NG: tl.constexpr = BLOCK_K // GROUP
        m = tl.program_id(1)
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        rg = tl.arange(0, NG)
        rb = tl.arange(0, GH)
        acc = tl.zeros([BLOCK_N, NG, GH], dtype=tl.float32)
        per = tl.cdiv(tl.cdiv(G, NG), SPLIT) * NG  # groups per split, a multiple of NG
        g_first = tl.program_id(2) * per
        for g0 in range(g_first, g_first + per, NG):
            g = g0 + rg
            g_ok = g < G
            byte = g[:, None] * GH + rb[None, :]  # [NG, GH]
            ok = n_ok[:, None, None] & g_ok[None, :, None]
            w = tl.load(w_ptr + rn[:, None, None] * KH + byte[None, :, :], mask=ok, other=0)
            xv = tl.load(x_ptr + m * stride_xm + byte, mask=g_ok[:, None], other=0)  # int32 pairs
            xe = (xv << 16).to(tl.float32, bitcast=True)
            xo = (xv & -65536).to(tl.float32, bitcast=True)
            at = sz_ptr + rn[:, None] * (2 * G) + 2 * g[None, :]
            sz_ok = n_ok[:, None] & g_ok[None, :]
            s = tl.load(at, mask=sz_ok, other=0.0).to(tl.float32)[:, :, None]
            z = tl.load(at + 1, mask=sz_ok, other=0.0).to(tl.float32)[:, :, None]
            lo = (w & 15).to(tl.float32) * s + z
            hi = (w >> 4).to(tl.float32) * s + z
            acc += lo * xe[None, :, :] + hi * xo[None, :, :]
        y = tl.sum(tl.sum(acc, axis=2), axis=1)
        if SPLIT == 1:
            tl.store(y_ptr + m * stride_ym + rn, y, mask=n_ok)
        else:
            tl.atomic_add(y_ptr + m * stride_ym + rn, y, mask=n_ok)

    _tuned = triton.autotune(configs=CONFIGS, key=["N", "KH"], reset_to_zero=["y_ptr"])(_pairs_kernel)


def pairs_gemv(x: torch.Tensor, packed: torch.Tensor, scale_zero: torch.Tensor,
               config: dict | None = None) -> torch.Tensor:
    """``x [M, K]`` (bf16) times the int4 weight (``vidqa.int4`` format) -> ``[M, N]`` bf16. ``config``: fixed
    meta-parameters (``BLOCK_N``, ``BLOCK_K``, ``SPLIT``) instead of autotuning (the interpreter needs them)."""
    if triton is None:
        raise RuntimeError("pairs_gemv needs Triton")
    assert x.dtype == torch.bfloat16 and x.shape[-1] % 2 == 0
    M, K = x.shape
    N, G = scale_zero.shape[:2]
    x32 = x.contiguous().view(torch.int32)  # [M, K/2]
    y = torch.zeros(M, N, device=x.device, dtype=torch.float32)
    args = (x32, packed, scale_zero, y, N, K // 2, G, x32.stride(0), y.stride(0))
    if config is None:
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), M, meta["SPLIT"])  # noqa: E731
        _tuned[grid](*args, GROUP=K // G)
    else:
        grid = (triton.cdiv(N, config["BLOCK_N"]), M, config["SPLIT"])
        _pairs_kernel[grid](*args, GROUP=K // G, **config)
    return y.to(x.dtype)
