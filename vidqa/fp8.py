"""fp8 compression's MLP tail in one pass: SiLU(gate) * up with its row-wise float8 quantisation
(``silu_mul_quant``), then the down projection on torchao's float8 weight codes (``scaled_linear``).

Why: ``--quantize fp8`` compression ran SiLU(gate) * up and the activation quantisation of torchao's down_proj
as one inductor kernel (compiled) taking 0.63 ms of a VoCo-7B frame's 7.3 ms of GPU time on an H200, three
times its floor (44 KB read and 11 KB written per row of 11,008 values), and as a dozen eager ops uncompiled.
Inductor makes it a looped reduction, which reads each row twice, and its one-pass form did not take
(benchmarks/NOTES.md, session 12). Here one program holds a whole row in registers: read once, written once. At
18,528 rows (32 frames), H200: 0.384 ms, against 0.69 for inductor's kernel and a 0.21 ms floor
(benchmarks/fp8_mlp.py, session 13).

The arithmetic is torchao 0.18's dynamic row-wise activation quantisation (``Float8Tensor.from_hp`` with
``PerRow``), on the values eager PyTorch computes: SiLU in float32 rounded to the input's dtype, the product
rounded to it, ``scale = amax(|a|) / 448`` rounded to the input's dtype, ``q = clamp(a / scale)`` as e4m3.
A row of zeros gets scale 1 (torchao's would be 0, and its codes NaN).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:  # Triton comes with CUDA builds of torch; CPU builds have none (the reference runs there)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's interpreter: the kernel runs on CPU tensors


def silu_mul_quant_reference(gu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``gu [M, 2N]`` (gate, then up) as ``(q [M, N] e4m3, scale [M, 1] float32)``, ``q * scale ~= silu(gate) * up``."""
    gate, up = gu.chunk(2, dim=-1)
    a = F.silu(gate) * up
    amax = a.abs().amax(dim=-1, keepdim=True)
    scale = (amax / FP8_MAX).float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (a.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def kernel_ok(x: torch.Tensor) -> bool:
    """Whether ``silu_mul_quant`` runs the Triton kernel for ``x`` (else the reference)."""
    return triton is not None and (x.is_cuda or INTERPRET) and x.dtype in (torch.bfloat16, torch.float16)


# the kernel's launch: warps per row (None: by the row's length); benchmarks/fp8_mlp.py sweeps it
LAUNCH = {"num_warps": None}

if triton is not None:
    @triton.jit
    def _silu_mul_quant_kernel(gu_ptr, q_ptr, s_ptr, N, stride_gu, stride_q, BLOCK: tl.constexpr):
        """One row: gate at columns [0, N), up at [N, 2N); the codes and the row's scale."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        ok = cols < N
        base = gu_ptr + row * stride_gu
        up = tl.load(base + N + cols, mask=ok, other=0.0)
        g = tl.load(base + cols, mask=ok, other=0.0).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(up.dtype)  # F.silu: float32 inside, rounded to the dtype
        a = (act.to(tl.float32) * up.to(tl.float32)).to(up.dtype).to(tl.float32)  # the dtype's product
        scale = (tl.max(tl.abs(a), axis=0) / 448.0).to(up.dtype).to(tl.float32)  # FP8_MAX (a literal in @jit)
        scale = tl.where(scale > 0, scale, 1.0)
        q = tl.clamp(a / scale, -448.0, 448.0).to(tl.float8e4nv)
        tl.store(q_ptr + row * stride_q + cols, q, mask=ok)
        tl.store(s_ptr + row, scale)

    @torch.library.triton_op("vidqa::silu_mul_fp8", mutates_args=())
    def silu_mul_fp8(gu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``silu_mul_quant``'s kernel for a row-major ``gu [M, 2N]``."""
        M, n = gu.shape[0], gu.shape[1] // 2
        q = torch.empty(M, n, device=gu.device, dtype=FP8)
        scale = torch.empty(M, 1, device=gu.device, dtype=torch.float32)
        block = triton.next_power_of_2(n)
        # a row in registers: 8 warps hold 11,008 values (Vicuna-7B) at 64 per thread and tensor. At 18,528 rows
        # (32 frames), H200: 0.384 ms with 8 warps, 0.400 with 16 or 32, 0.62 with 4 (benchmarks/fp8_mlp.py)
        warps = LAUNCH["num_warps"] or (8 if block >= 2048 else 4)
        torch.library.wrap_triton(_silu_mul_quant_kernel)[(M,)](gu, q, scale, n, gu.stride(0), q.stride(0),
                                                               BLOCK=block, num_warps=warps)
        return q, scale
else:  # pragma: no cover - depends on the torch build
    silu_mul_fp8 = None


def silu_mul_quant(gu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``silu(gate) * up`` of ``gu [..., 2N]`` as row-wise float8: ``(q [M, N], scale [M, 1])`` with M the
    rows of ``gu``; one pass on CUDA (``kernel_ok``), the reference elsewhere."""
    rows = gu.reshape(-1, gu.shape[-1])
    if kernel_ok(rows):
        return silu_mul_fp8(rows.contiguous())
    return silu_mul_quant_reference(rows)


def weight_parts(weight) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
    """``(codes [N, K] e4m3, scale [N, 1] float32, fast accumulation)`` of torchao's row-wise float8 weight
    (``--quantize fp8``), or None for any other weight."""
    codes, scale = getattr(weight, "qdata", None), getattr(weight, "scale", None)
    if not isinstance(codes, torch.Tensor) or not isinstance(scale, torch.Tensor) or codes.dtype != FP8:
        return None
    if codes.dim() != 2 or tuple(scale.shape) != (codes.shape[0], 1):  # row-wise only
        return None
    mm = getattr(weight, "mm_config", None)
    return codes, scale.float(), bool(getattr(mm, "use_fast_accum", True))


def scaled_linear(q: torch.Tensor, q_scale: torch.Tensor, codes: torch.Tensor, w_scale: torch.Tensor,
                  fast_accum: bool, bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """``(q * q_scale) @ (codes * w_scale).T + bias`` in ``out_dtype``: the matmul torchao's row-wise float8
    ``F.linear`` runs after quantising its input (``torch._scaled_mm``)."""
    return torch._scaled_mm(q, codes.t(), scale_a=q_scale, scale_b=w_scale.t(), bias=bias, out_dtype=out_dtype,
                            use_fast_accum=fast_accum)
