"""One-query attention over a static KV cache (the decode step's attention): ``decode_attention`` and
``decode_step`` (the same after writing the step's K/V), split-K ("flash-decoding") Triton kernels on CUDA,
``F.scaled_dot_product_attention`` with a boolean mask elsewhere.

Why: ``StaticDecoder._step`` attends one query to a cache of fixed capacity C with a mask for the valid
positions. At Vicuna-7B's shapes (32 heads, head_dim 128, C = 256) SDPA takes 13.4 us per layer on an
H200, 0.43 ms of a 3.1 ms decode step: the mask makes PyTorch pick the memory-efficient CUTLASS kernel,
which runs one program per head (32 programs for 132 SMs, latency-bound) over all C positions. The valid
K/V is 16 KB per position at 7B (4 MB at 256 positions: under a microsecond at 4.8 TB/s).

Split scheme, for q ``[1, H, 1, D]`` and a cache ``[1, Hkv, C, D]`` (``G = H / Hkv`` query heads per KV head):
  phase 1  grid (Hkv, SPLITS): a program takes one KV head and one chunk of C / SPLITS positions (a multiple
           of ``BLOCK_N``), and all G query heads of the group at once, so each K/V byte is read once. It
           loops over blocks of ``BLOCK_N`` positions up to the valid length, read from a device tensor, so
           the grid does not depend on the length and a CUDA graph replays it as the cache grows; chunks past
           the length do no work. Online softmax in float32 (base 2), then the chunk's (max, sum, unnormalised
           output) in float32.
  phase 2  grid (H,): per query head, the chunks' partials rescaled to a common max and summed; the output
           in q's dtype. With SPLITS = 1 phase 1 writes the output itself and phase 2 is not launched.
SPLITS depends on C and Hkv alone (``splits_for``): one shape, one grid, whatever the length.
``decode_step`` is one kernel: phase 1 also writes the new K/V, and the last program of each KV head does
phase 2 (see ``_partial_kernel``). Measured on an H200 (``benchmarks/decode_attention.py``, session 10), per
7B layer: 6.9 us at C = 256 and 23.7 at C = 4096, against 20.1 and 35.5 for the cache writes and SDPA.

``flash_decode`` and ``flash_decode_step`` are ``torch.library.triton_op``s (``torch.ops.vidqa.decode_attention``,
``torch.ops.vidqa.decode_step``), so ``torch.compile`` and CUDA-graph capture take them as they are (as
``vidqa.int4``'s GEMVs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

try:  # Triton comes with CUDA builds of torch; CPU builds have none (and need none: the SDPA path)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None

BLOCK_N = 64  # positions per step: 16 KB of K and 16 KB of V at D = 128 in bf16
NUM_WARPS = 4
NUM_STAGES = 2  # the next block's K/V loads (cp.async) while this one is computed: 38 KB of shared memory
SMS = 132  # an H100/H200 SXM: phase 1 aims for at least one program per SM
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634


def splits_for(capacity: int, n_kv: int) -> int:
    """Chunks per KV head: enough for ``n_kv * splits >= SMS`` (rounded up to a power of two), but no more
    than the cache has blocks, so each program has at least one. 7B (32 KV heads): 4 at C = 256 (128
    programs), 8 from C = 512 (256); Llama-3-8B (8 KV heads): 4 at C = 256, 32 from C = 2048."""
    blocks = -(-capacity // BLOCK_N)
    return max(1, min(blocks, 1 << (-(-SMS // n_kv) - 1).bit_length()))


def reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, length: torch.Tensor,
              scale: float) -> torch.Tensor:
    """The plain path: SDPA with positions ``0..length-1`` visible."""
    visible = torch.arange(keys.shape[-2], device=keys.device) < length
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible.view(1, 1, 1, -1), scale=scale,
                                          enable_gqa=q.shape[1] != keys.shape[1])


if triton is not None:
    @triton.jit
    def _combine(m_ptr, den_ptr, acc_ptr, out_ptr, h, SPLITS, D: tl.constexpr, SP: tl.constexpr,
                 CACHE: tl.constexpr):
        """Phase 2 for query head ``h``: its SPLITS partials (SP: SPLITS padded to a power of two) rescaled to
        their common max. Chunk 0 always holds position 0, so that max is finite. ``CACHE``: the loads' cache
        modifier (".cg" where other programs of the same launch wrote the partials: past the L1)."""
        rs = tl.arange(0, SP)
        rd = tl.arange(0, D)
        ok = rs < SPLITS
        row = h * SPLITS + rs
        m = tl.load(m_ptr + row, mask=ok, other=float("-inf"), cache_modifier=CACHE)
        den = tl.load(den_ptr + row, mask=ok, other=0.0, cache_modifier=CACHE)
        acc = tl.load(acc_ptr + row[:, None] * D + rd[None, :], mask=ok[:, None], other=0.0, cache_modifier=CACHE)
        w = tl.exp2(m - tl.max(m, axis=0))
        o = tl.sum(w[:, None] * acc, axis=0) / tl.sum(w * den, axis=0)
        tl.store(out_ptr + h * D + rd, o.to(out_ptr.dtype.element_ty))

    @triton.jit
    def _partial_kernel(q_ptr, k_ptr, v_ptr, length_ptr, m_ptr, den_ptr, acc_ptr, out_ptr, C, CHUNK, qk_scale,
                        stride_qh, stride_kh, stride_kn, stride_vh, stride_vn,
                        count_ptr, knew_ptr, vnew_ptr, stride_knh, stride_vnh, cos_ptr, sin_ptr,
                        G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
                        FINAL: tl.constexpr, WRITE: tl.constexpr, FUSED: tl.constexpr, SP: tl.constexpr,
                        ROPE: tl.constexpr = False):
        """Phase 1 for KV head ``program_id(0)`` and chunk ``program_id(1)``: positions ``[chunk * CHUNK,
        (chunk + 1) * CHUNK)`` below the length. The G query heads are the rows of a ``[GP, D]`` tile (GP: G
        padded to a power of two, at least 16, as tl.dot needs; the padding rows are zeros and never stored).
        tl.dot also for one head (G = 1): the padding costs tensor-core cycles that a memory-bound loop has to
        spare, and Triton pipelines the loads that feed a dot (``num_stages``; at sm_90 it compiles them to
        cp.async, 80 registers per thread, no spills at D = 128 in bf16).
        ``qk_scale`` is the softmax scale times log2(e): the softmax runs in base 2 (exp2), the max ``m`` too.

        The decode step's form (``decode_step``) adds three things, each saving a kernel per layer:
        - ``ROPE``: q and the new k come unrotated, and RoPE (``cos``/``sin`` ``[D]``, as transformers makes them)
          turns them here, in float32, rounded once to their dtype (as inductor's kernel for it does).
        - ``WRITE``: the step's new K/V (``knew``/``vnew`` ``[Hkv, D]``) go into the cache at position length - 1,
          written by the program whose chunk holds it, before it reads the chunk (a barrier makes the CTA's
          own global writes visible to its threads; no other program reads that position).
        - ``FUSED``: no phase 2 kernel. Each program counts itself done on its KV head's counter (after a
          barrier: the CTA's partials are written; acquire-release at GPU scope), and the last of the SPLITS
          combines them (read past the L1, ``.cg``) and resets the counter to 0 for the next launch."""
        kvh = tl.program_id(0)
        split = tl.program_id(1)
        splits = tl.num_programs(1)
        rg = tl.arange(0, GP)
        rd = tl.arange(0, D)
        rn = tl.arange(0, BLOCK_N)
        head = kvh * G + rg
        g_ok = rg < G
        q = tl.load(q_ptr + head[:, None] * stride_qh + rd[None, :], mask=g_ok[:, None], other=0.0)
        if ROPE:  # x * cos + rotate_half(x) * sin, rotate_half(x) = (-x[D/2:], x[:D/2])
            cos = tl.load(cos_ptr + rd).to(tl.float32)
            sin = tl.where(rd < D // 2, -1.0, 1.0) * tl.load(sin_ptr + rd).to(tl.float32)
            half = (rd + D // 2) % D
            q2 = tl.load(q_ptr + head[:, None] * stride_qh + half[None, :], mask=g_ok[:, None], other=0.0)
            q = (q.to(tl.float32) * cos[None, :] + q2.to(tl.float32) * sin[None, :]).to(q.dtype)
        n = tl.minimum(tl.load(length_ptr).to(tl.int32), C)
        lo = split * CHUNK
        if WRITE:
            slot = n - 1
            if (slot >= lo) & (slot < lo + CHUNK):
                kn = tl.load(knew_ptr + kvh * stride_knh + rd)
                if ROPE:
                    kn2 = tl.load(knew_ptr + kvh * stride_knh + half).to(tl.float32)
                    kn = (kn.to(tl.float32) * cos + kn2 * sin).to(kn.dtype)
                tl.store(k_ptr + kvh * stride_kh + slot * stride_kn + rd, kn)
                tl.store(v_ptr + kvh * stride_vh + slot * stride_vn + rd, tl.load(vnew_ptr + kvh * stride_vnh + rd))
            tl.debug_barrier()
        hi = tl.minimum(lo + CHUNK, n)  # at or below lo for a chunk past the length: no step
        m = tl.full([GP], float("-inf"), dtype=tl.float32)
        den = tl.zeros([GP], dtype=tl.float32)
        acc = tl.zeros([GP, D], dtype=tl.float32)
        k_ptr += kvh * stride_kh
        v_ptr += kvh * stride_vh
        for start in range(lo, hi, BLOCK_N):
            pos = start + rn
            ok = pos < hi
            # positions past the length are not read: a static cache holds stale (or any) values there
            k = tl.load(k_ptr + pos[:, None] * stride_kn + rd[None, :], mask=ok[:, None], other=0.0)
            v = tl.load(v_ptr + pos[:, None] * stride_vn + rd[None, :], mask=ok[:, None], other=0.0)
            # "ieee": float32 inputs not as tf32; the cast: inductor hands a float argument over as float64
            s = (tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale).to(tl.float32)
            s = tl.where(ok[None, :], s, float("-inf"))
            # every step has a valid position (``start < hi``), so m_new is finite: no inf - inf
            m_new = tl.maximum(m, tl.max(s, axis=1))
            alpha = tl.exp2(m - m_new)  # 0 on the first step (m = -inf)
            p = tl.exp2(s - m_new[:, None])
            den = den * alpha + tl.sum(p, axis=1)
            # p in V's dtype for the tensor cores (as flash attention does; exact for float32)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            m = m_new
        if FINAL:  # one chunk: the whole cache, which holds at least one valid position (den >= 1)
            o = acc / den[:, None]
            tl.store(out_ptr + head[:, None] * D + rd[None, :], o.to(out_ptr.dtype.element_ty), mask=g_ok[:, None])
        else:  # a chunk past the length leaves (-inf, 0, 0): weight exp2(-inf) = 0 in phase 2
            row = head * splits + split
            tl.store(m_ptr + row, m, mask=g_ok)
            tl.store(den_ptr + row, den, mask=g_ok)
            tl.store(acc_ptr + row[:, None] * D + rd[None, :], acc, mask=g_ok[:, None])
            if FUSED:
                tl.debug_barrier()
                done = tl.atomic_add(count_ptr + kvh, 1, sem="acq_rel", scope="gpu")
                if done == splits - 1:  # the last program of this KV head: phase 2 for its G query heads
                    for gi in tl.static_range(G):
                        _combine(m_ptr, den_ptr, acc_ptr, out_ptr, kvh * G + gi, splits, D, SP, ".cg")
                    tl.atomic_xchg(count_ptr + kvh, 0)

    @triton.jit
    def _combine_kernel(m_ptr, den_ptr, acc_ptr, out_ptr, SPLITS, D: tl.constexpr, SP: tl.constexpr):
        """Phase 2 as its own kernel, one program per query head (``decode_attention``)."""
        _combine(m_ptr, den_ptr, acc_ptr, out_ptr, tl.program_id(0), SPLITS, D, SP, "")

    def launch(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, length: torch.Tensor, scale: float,
               splits: int, wrap=lambda kernel: kernel, new: tuple | None = None,
               counters: torch.Tensor | None = None, rope: tuple | None = None) -> torch.Tensor:
        """The kernels with ``splits`` chunks per KV head (``wrap``: ``torch.library.wrap_triton`` inside the ops;
        the plain kernels otherwise, as the tests and benchmarks call them). Returns ``[1, H, 1, D]``.
        ``new``: the step's ``(k, v)`` ``[1, Hkv, 1, D]``, written at position length - 1 first; ``counters``:
        int32 ``[Hkv]`` zeros (left zero), for one kernel instead of two; ``rope``: ``(cos, sin)``, D values each
        (contiguous), to turn q and the new k first (with ``new`` only)."""
        _, H, _, D = q.shape
        n_kv, C = keys.shape[1], keys.shape[2]
        G = H // n_kv
        chunk = triton.cdiv(triton.cdiv(C, splits), BLOCK_N) * BLOCK_N  # whole blocks: no step crosses chunks
        out = torch.empty(1, H, 1, D, device=q.device, dtype=q.dtype)
        final = splits == 1
        fused = counters is not None and not final
        # the partials, also when unused (one split): an aliased placeholder would confuse the functionalisation
        # of the kernel's writes under torch.compile; empty() costs no kernel
        m = torch.empty(H, splits, device=q.device, dtype=torch.float32)
        den = torch.empty(H, splits, device=q.device, dtype=torch.float32)
        acc = torch.empty(H, splits, D, device=q.device, dtype=torch.float32)
        k_new, v_new = new if new is not None else (q, q)  # unread without WRITE
        cos, sin = rope if rope is not None else (q, q)  # unread without ROPE
        wrap(_partial_kernel)[(n_kv, splits)](
            q, keys, values, length, m, den, acc, out, C, chunk, scale * LOG2E,
            q.stride(1), keys.stride(1), keys.stride(2), values.stride(1), values.stride(2),
            counters if fused else length, k_new, v_new, k_new.stride(1), v_new.stride(1), cos, sin,
            G=G, GP=max(16, triton.next_power_of_2(G)), D=D, BLOCK_N=BLOCK_N, FINAL=final, WRITE=new is not None,
            FUSED=fused, SP=triton.next_power_of_2(splits), ROPE=rope is not None, num_warps=NUM_WARPS,
            num_stages=NUM_STAGES)
        if not final and not fused:
            wrap(_combine_kernel)[(H,)](m, den, acc, out, splits, D=D, SP=triton.next_power_of_2(splits))
        return out

    @torch.library.triton_op("vidqa::decode_attention", mutates_args=())
    def flash_decode(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, length: torch.Tensor,
                     scale: float) -> torch.Tensor:
        """``decode_attention`` by the kernels (for inputs that pass ``kernel_ok``)."""
        return launch(q, keys, values, length, scale, splits_for(keys.shape[2], keys.shape[1]),
                      torch.library.wrap_triton)
    @torch.library.triton_op("vidqa::decode_step", mutates_args=("keys", "values", "counters"))
    def flash_decode_step(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, keys: torch.Tensor,
                          values: torch.Tensor, length: torch.Tensor, counters: torch.Tensor,
                          scale: float, cos: torch.Tensor | None = None,
                          sin: torch.Tensor | None = None) -> torch.Tensor:
        """``decode_step`` by one kernel (for inputs that pass ``kernel_ok``)."""
        return launch(q, keys, values, length, scale, splits_for(keys.shape[2], keys.shape[1]),
                      torch.library.wrap_triton, (k_new, v_new), counters, None if cos is None else (cos, sin))
else:
    launch = flash_decode = flash_decode_step = None


def kernel_ok(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether the kernels take these inputs: CUDA and Triton, one query of a batch of one, a power-of-two
    head_dim (16 to 256), one float dtype throughout, whole query groups, contiguous head_dim rows."""
    D = q.shape[-1]
    return (flash_decode is not None and q.is_cuda and q.dim() == keys.dim() == 4 and q.shape[0] == q.shape[2] == 1
            and keys.shape == values.shape and keys.shape[0] == 1 and keys.shape[-1] == D
            and q.shape[1] % keys.shape[1] == 0 and 16 <= D <= 256 and D & (D - 1) == 0
            and q.dtype in DTYPES and keys.dtype == values.dtype == q.dtype
            and q.stride(-1) == keys.stride(-1) == values.stride(-1) == 1)


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, length: torch.Tensor,
                     scale: float | None = None) -> torch.Tensor:
    """Attention of q ``[1, H, 1, D]`` to positions ``0..length-1`` of keys/values ``[1, Hkv, C, D]`` (H a
    multiple of Hkv); ``length``: int64 ``[1]`` on the device, at least 1 (the decode step passes slot + 1).
    Equal to ``reference`` (SDPA with the mask ``arange(C) < length``); ``[1, H, 1, D]`` in q's dtype."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    if kernel_ok(q, keys, values):
        return flash_decode(q, keys, values, length, scale)
    return reference(q, keys, values, length, scale)


def decode_step(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                length: torch.Tensor, counters: torch.Tensor, scale: float | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The decode step's attention: write the step's ``k_new``/``v_new`` ``[1, Hkv, 1, D]`` into the cache at
    position ``length - 1``, then ``decode_attention`` over positions ``0..length-1``. ``counters``: int32
    ``[Hkv]`` zeros on the device, kept by the caller (the one-kernel form leaves them zero). On CUDA one kernel
    does all of it: the K/V writes and the second phase each cost a kernel per layer otherwise (1.1 and 1.5 us
    per 7B layer on an H200, session 10's profile). ``rope``: ``(cos, sin)`` (transformers' ``[1, 1, D]``) to apply
    to q and k_new first, in the same kernel (its own kernel per layer otherwise: 1.3 us per 7B layer, session 11)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    D = q.shape[-1]
    if (kernel_ok(q, keys, values) and k_new.shape == v_new.shape == (1, keys.shape[1], 1, D)
            and k_new.dtype == v_new.dtype == q.dtype and k_new.stride(-1) == v_new.stride(-1) == 1
            and counters.shape == (keys.shape[1],) and counters.dtype == torch.int32
            and (rope is None or all(t.numel() == D and t.is_contiguous() and t.dtype == q.dtype for t in rope))):
        return flash_decode_step(q, k_new, v_new, keys, values, length, counters, scale,
                                 *(rope if rope is not None else (None, None)))
    if rope is not None:
        q, k_new = apply_rotary_pos_emb(q, k_new, *rope)
    slot = length - 1
    keys.index_copy_(2, slot, k_new)
    values.index_copy_(2, slot, v_new)
    return reference(q, keys, values, length, scale)
