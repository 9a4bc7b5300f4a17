"""int4 weight-only GEMV at M=1 (one decoded token), fused by inductor, against torchao's tinygemm and bf16.

    python benchmarks/int4_gemv.py --out int4_gemv.json          # on a GPU (H200): every implementation
    python benchmarks/int4_gemv.py --impls bf16,torchao,linear_cd --out a.json   # a subset
    python benchmarks/int4_gemv.py --tiny --out t.json           # a CPU smoke run (eager; --compile to try inductor)

Why: vidqa's int4 decode step (torchao ``Int4WeightOnlyConfig``, group 128, tinygemm) takes ~2.98 ms/token
on an H200 against a 0.78 ms bandwidth floor. gpt-fast's int8 path shows that inductor fuses a
dequantisation into a GEMV; this asks whether an int4 version of that beats tinygemm at M=1.

Shapes: Vicuna-7B's decode step per layer, as vidqa's fused decoder runs it: Q/K/V 4096->12288, o_proj
4096->4096, gate/up 4096->22016, down 11008->4096; lm_head 4096->32001 (bf16 in vidqa) is timed apart.

Own int4 format (``quantize_int4``): group-wise along K (``GROUP`` = 128 input columns), asymmetric:
``w ~= q * scale + zero`` with ``q`` in 0..15, ``zero`` the group's minimum, ``scale`` = (max - min) / 15,
both bf16, shape [N, K/128]. Packing: ``vidqa.int4.pack`` (uint8 [N, K/2], read as int32 words whose
nibbles interleave each group's columns; ``unpack`` restores column order). 0.5 byte per weight + 4 bytes
per group (0.531 bytes per weight read in all).

Formulations of ``y = x @ dequant(w).T`` (each in plain torch ops; eager and compiled):
  linear     ``F.linear(x, dequant(packed, scales, zeros))`` (``int4_linear``): fuses only if inductor
             turns the mm into a reduction (it does with ``coordinate_descent_tuning`` on CUDA, M=1).
  grouped    ``(x.view(G, 128) * dequant(...).view(N, G, 128)).sum((-2, -1))``: a reduction as written.
  factored   the scale and zero taken out of the inner sum: ``sum_g s[n,g] * sum_k q[n,g,k] x[g,k]
             + sum_g z[n,g] * sum_k x[g,k]`` (integers in the inner product, one multiply-add per group).
Implementations (``--impls``): ``bf16`` (F.linear, cuBLAS), ``torchao`` (``vidqa.quant.torchao_weight``:
tinygemm on CUDA; on the CPU torchao's portable IntxWeightOnlyConfig, group 32), ``vidqa`` and
``vidqa_compile`` (``vidqa.int4``: its Triton GEMV on CUDA, built after session 8's run of this file showed
that neither torchao nor inductor comes near the bandwidth; its dequantise + matmul on the CPU; session 8's
int32-pairs split-K kernel, 3.47 ms/step in session 9, was removed), ``gemlite`` (GemLite's
Triton kernels on the same codes, group 128; CUDA only, the ``gemlite`` package), and
``<formulation>_<mode>`` with mode ``eager``, ``compile`` (``torch.compile(dynamic=False)``), ``cd`` (that
plus inductor's ``coordinate_descent_tuning``, as gpt-fast sets it) or ``autotune``
(``mode="max-autotune-no-cudagraphs"``).

Timing on CUDA: each shape gets ``--layers`` (32) distinct weights (so no shape's weights fit in the 50 MB
L2 across calls); per shape, a CUDA graph of one call per layer is replayed and timed with CUDA events
(median of ``--repeats``), and the "decode step proxy" is one CUDA graph of all 32 layers x 4 matmuls
(ms/step: comparable to the 2.98 ms/token above, minus attention, norms and lm_head). Also per shape: the
same calls without a graph (median per call, launch overhead included) and the CUDA kernels one call
launches (names from the profiler: one kernel per call means the dequantisation fused). GB/s = bytes of
the weights as stored / time; share_of_peak against 4.8 TB/s. On the CPU: perf_counter medians, no graph.

Errors (layer 0 of each shape, one random x): ``rel_err_vs_bf16`` = max|y - y_bf16| / max|y_bf16| with
y_bf16 = F.linear(x, w) on the original bf16 weights (both int4 quantisations against it: they differ);
for ours also ``rel_err_vs_own_f32`` against float32 x @ dequant_f32(packed).T (the arithmetic alone).
Quantisation checks (``quant``): dequant(quantize(w)) within the 4-bit bound (``dequant_bound``), and
``int4_linear`` equal to ``F.linear(x, dequant(...))`` bit for bit (eager; same ops).
"""

# Over 500 lines: one experiment run as one file on the device: the int4 format and its checks, three
# formulations, and the CUDA-graph / CPU timing of each implementation.
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PEAK_BYTES = 4.8e12  # H200 HBM3e
GROUP = 128
BF16 = torch.bfloat16
U = 2.0 ** -8  # bf16's unit roundoff (8 significant bits)
FULL = {"hidden": 4096, "intermediate": 11008, "vocab": 32001, "layers": 32, "repeats": 50, "lm_head_copies": 4}
TINY = {"hidden": 256, "intermediate": 768, "vocab": 1001, "layers": 2, "repeats": 5, "lm_head_copies": 1}
FORMULATIONS = ("linear", "grouped", "factored")
MODES = ("eager", "compile", "cd", "autotune")
# most telling first (the JSON is written after each, so a cut run keeps them); autotune compiles longest
CUDA_IMPLS = ("vidqa", "gemlite", "vidqa_compile", "bf16", "torchao", "grouped_compile", "linear_cd", "grouped_cd", "bf16_cd", "factored_compile",
              "linear_compile", "factored_cd", "linear_eager", "linear_autotune", "grouped_autotune")
EAGER = ("bf16", "torchao", "vidqa", "gemlite")  # implementations timed as they are (not compiled here)
CPU_IMPLS = ("bf16", "torchao", "linear_eager", "grouped_eager", "factored_eager")
CPU_COMPILED = ("linear_compile", "grouped_compile", "factored_compile")


def shapes(hidden: int, intermediate: int) -> dict[str, tuple[int, int]]:
    """Per layer: name -> (K in, N out), as vidqa's fused decode step multiplies."""
    return {"qkv": (hidden, 3 * hidden), "o_proj": (hidden, hidden), "gate_up": (hidden, 2 * intermediate),
            "down": (intermediate, hidden)}


# ---- the int4 format ---------------------------------------------------------------------------

def quantize_int4(w: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``w [N, K]`` (bf16) -> (packed uint8 [N, K/2], scales bf16 [N, K/group], zeros bf16 [N, K/group]):
    ``vidqa.int4.pack``'s format with its scale and zero apart.

    ``w ~= q * scale + zero`` per group of ``group`` input columns, q in 0..15 (zero: the group's minimum).
    q is rounded against the bf16 scale and zero, so the dequantised weight is the nearest grid point.
    The codes are in ``vidqa.int4``'s interleaved order (its module doc); ``unpack`` puts them back in column order."""
    from vidqa import int4

    if w.shape[1] % group:
        raise ValueError(f"in_features {w.shape[1]} is not a multiple of the group {group}")
    packed, scale_zero = int4.pack(w, group)
    return packed, scale_zero[..., 0].contiguous(), scale_zero[..., 1].contiguous()


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] -> the 4-bit values as uint8 [N, K], in column order."""
    from vidqa import int4

    return int4.unpack_codes(packed, GROUP)


def dequant(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, dtype: torch.dtype = BF16) -> torch.Tensor:
    """The weights [N, K] in ``dtype`` (bf16: each op rounds as eager bf16 does; float32: exact products)."""
    n, g = scales.shape
    q = unpack(packed).view(n, g, -1).to(dtype)
    return (q * scales[..., None].to(dtype) + zeros[..., None].to(dtype)).view(n, -1)


def dequant_bound(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bf16_dequant: bool) -> torch.Tensor:
    """Per element [N, K], the largest |w - dequant| the format allows: half a step, plus bf16's rounding
    of the scale (15 steps of it at the clamped top), of the zero, and (bf16 dequant) of q*scale and of the sum."""
    n, g = scales.shape
    wg = w.float().view(n, g, -1)
    s, z = scales.float()[..., None], zeros.float()[..., None]
    absmax = wg.abs().amax(-1, keepdim=True)
    bound = s / 2 + U * (15 * s + z.abs()) * 1.01
    if bf16_dequant:
        bound = bound + U * (15 * s + absmax + 16 * s) * 1.01
    return bound.expand_as(wg).reshape(n, -1)


# ---- the three formulations ---------------------------------------------------------------------

def int4_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, dequant(packed, scales, zeros))`` in x's dtype."""
    return F.linear(x, dequant(packed, scales, zeros, x.dtype))


def int4_grouped(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """x [1, K]: the product written as a reduction over (group, column in group)."""
    n, g = scales.shape
    w = dequant(packed, scales, zeros, x.dtype).view(n, g, -1)
    return (x.view(1, g, -1) * w).sum((-2, -1)).view(1, n)


def int4_factored(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """x [1, K]: sum_g s * (q . x_g) + sum_g z * sum(x_g), the scale and zero out of the inner sum."""
    n, g = scales.shape
    xg = x.view(1, g, -1)
    q = unpack(packed).view(n, g, -1).to(x.dtype)
    inner = (xg * q).sum(-1)  # [N, G]
    return (inner * scales + xg.sum(-1) * zeros).sum(-1).view(1, n)


FUNCTIONS = {"linear": int4_linear, "grouped": int4_grouped, "factored": int4_factored}


def compiled(fn, mode: str):
    if mode == "eager":
        return fn
    if mode == "compile":
        return torch.compile(fn, dynamic=False)
    if mode == "cd":
        return torch.compile(fn, dynamic=False, options={"coordinate_descent_tuning": True})
    if mode == "autotune":
        return torch.compile(fn, dynamic=False, mode="max-autotune-no-cudagraphs")
    raise ValueError(f"unknown mode {mode!r}")


# ---- weights ------------------------------------------------------------------------------------

def stored_bytes(t: torch.Tensor) -> int:
    """Bytes of a tensor as stored (a torchao tensor: its inner tensors)."""
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor:
        return sum(stored_bytes(getattr(t, name)) for name in t.__tensor_flatten__()[0])
    return t.numel() * t.element_size()


def random_weights(n: int, k: int, count: int, device, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    return [(torch.randn(n, k, generator=gen, device=device, dtype=torch.float32) * 0.02).to(BF16)
            for _ in range(count)]


def torchao_weight(w: torch.Tensor) -> torch.Tensor:
    """vidqa's torchao int4 weight for this device (tinygemm, group 128 on CUDA; portable, group 32 on the CPU)."""
    from vidqa import quant

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quant.torchao_weight(w, "int4")
    if q is w:
        raise ValueError(f"vidqa.quant has no int4 config for in_features {w.shape[1]}")
    return q


def gemlite_weight(w: torch.Tensor):
    """GemLite's int4 layer (``gemlite.helper.A16Wn``: its Triton kernels, group 128) holding the same codes
    as ``vidqa.int4.pack``: GemLite computes ``(q - zero') * scale``, so ``zero' = -zero / scale``. (torchao
    0.18's ``UIntxWeightOnlyConfig`` wraps GemLite too, but unpacks three tensors where GemLite 0.6 gives four.)"""
    from gemlite.helper import A16Wn

    from vidqa import int4

    packed, sz = int4.pack(w, GROUP)
    scale, zero = sz[..., 0].float(), sz[..., 1].float()
    return A16Wn(device=w.device, dtype=w.dtype).from_weights(
        int4.unpack_codes(packed, GROUP), scale.to(w.dtype), (-zero / scale).to(w.dtype), 4, GROUP)


def torchao_description(device: torch.device, k: int) -> str:
    from vidqa import quant

    return repr(quant.config("int4", device, k))


# ---- timing -------------------------------------------------------------------------------------

def overridden(defaults: dict, args, keys) -> dict:
    """``defaults`` with each of ``keys`` that ``args`` sets (a count, at least 1: else one error line)."""
    sizes = dict(defaults)
    for key in keys:
        if getattr(args, key) is not None:
            if getattr(args, key) < 1:
                sys.exit(f"error: --{key} must be at least 1")
            sizes[key] = getattr(args, key)
    return sizes


def cuda_median_ms(fn, repeats: int) -> float:
    """Median milliseconds of fn() between two CUDA events (after two warm-up calls)."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def cpu_median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def graph_of(calls: list) -> tuple[torch.cuda.CUDAGraph, list]:
    """One CUDA graph of the calls (warmed up on a side stream first, as capture needs), and its outputs
    (kept alive as long as the graph)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            for call in calls:
                call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = [call() for call in calls]
    return graph, outputs


def kernels_of(call) -> list[str]:
    """The CUDA kernels (and memsets/copies) one call launches, in order."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == DeviceType.CUDA]


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """max |y - ref| / max |ref| (in float32)."""
    y, ref = y.float().reshape(-1), ref.float().reshape(-1)
    return float((y - ref).abs().max() / ref.abs().max())


def error_text(e: BaseException) -> str:
    first = str(e).splitlines()[0][:300] if str(e) else ""
    return f"{type(e).__name__}: {first}"


# ---- one implementation -------------------------------------------------------------------------

def parse_impl(impl: str) -> tuple[str, str]:
    """(formulation, mode): ``bf16`` and ``torchao`` are eager F.linear; ``bf16_<mode>`` compiles F.linear
    on the bf16 weights (inductor's own GEMV: how close to the bandwidth its reductions get)."""
    if impl in EAGER:
        return impl, "eager"
    form, _, mode = impl.rpartition("_")
    if form not in FORMULATIONS + ("bf16", "vidqa") or mode not in MODES:
        raise ValueError(f"unknown implementation {impl!r} (bf16, torchao or <{'|'.join(FORMULATIONS + ('bf16',))}>"
                         f"_<{'|'.join(MODES)}>)")
    return form, mode


def bf16_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w)


class Case:
    """The weights of every shape (``layers`` of each, ``lm_head_copies`` of lm_head) and the inputs."""

    def __init__(self, sizes: dict, device: torch.device):
        self.device = device
        self.shapes = shapes(sizes["hidden"], sizes["intermediate"])
        self.lm_head = (sizes["hidden"], sizes["vocab"])
        counts = {name: sizes["layers"] for name in self.shapes} | {"lm_head": sizes["lm_head_copies"]}
        dims = self.shapes | {"lm_head": self.lm_head}
        self.bf16 = {name: random_weights(n, k, counts[name], device, seed=i)
                     for i, (name, (k, n)) in enumerate(dims.items())}
        gen = torch.Generator(device=device).manual_seed(123)
        self.x = {k: torch.randn(1, k, generator=gen, device=device, dtype=torch.float32).to(BF16)
                  for k in sorted({k for k, _ in dims.values()})}
        self.own = {name: [quantize_int4(w) for w in ws] for name, ws in self.bf16.items()}
        self._torchao = {}  # shape name -> torchao weights, made when first asked for
        self._vidqa = {}  # shape name -> vidqa.int4 weights (its Triton GEMV on CUDA)
        self._gemlite = {}  # shape name -> torchao's GemLite weights
        self.fns = {}  # implementation -> the (compiled) function being timed

    def torchao(self, name: str) -> list[torch.Tensor]:
        if name not in self._torchao:
            self._torchao[name] = [torchao_weight(w) for w in self.bf16[name]]
        return self._torchao[name]

    def vidqa(self, name: str) -> list[torch.Tensor]:
        if name not in self._vidqa:
            from vidqa import int4

            self._vidqa[name] = [int4.quantize_weight(w) for w in self.bf16[name]]
        return self._vidqa[name]

    def gemlite(self, name: str) -> list[torch.Tensor]:
        if name not in self._gemlite:
            self._gemlite[name] = [gemlite_weight(w) for w in self.bf16[name]]
        return self._gemlite[name]

    def dims(self, name: str) -> tuple[int, int]:
        return self.lm_head if name == "lm_head" else self.shapes[name]

    def calls(self, impl: str, name: str) -> list:
        """Zero-argument calls, one per stored weight of shape ``name``."""
        x = self.x[self.dims(name)[0]]
        form, _ = parse_impl(impl)
        if impl == "bf16":
            return [lambda w=w: F.linear(x, w) for w in self.bf16[name]]
        if impl == "torchao":
            return [lambda w=w: F.linear(x, w) for w in self.torchao(name)]
        if impl == "vidqa":
            return [lambda w=w: F.linear(x, w) for w in self.vidqa(name)]
        if impl == "gemlite":
            return [lambda m=m: m(x) for m in self.gemlite(name)]
        fn = self.fns[impl]
        if form == "vidqa":
            return [lambda w=w: fn(x, w) for w in self.vidqa(name)]
        if form == "bf16":
            return [lambda w=w: fn(x, w) for w in self.bf16[name]]
        return [lambda p=p: fn(x, *p) for p in self.own[name]]

    def weight_bytes(self, impl: str, name: str) -> int:
        """Bytes of one stored weight of shape ``name`` (layer 0)."""
        form, _ = parse_impl(impl)
        if form == "bf16":
            return stored_bytes(self.bf16[name][0])
        if form == "torchao":
            return stored_bytes(self.torchao(name)[0])
        if form == "vidqa":
            return stored_bytes(self.vidqa(name)[0])
        if form == "gemlite":
            m = self.gemlite(name)[0]
            return sum(stored_bytes(t) for t in (m.W_q, m.scales, m.zeros) if isinstance(t, torch.Tensor))
        return sum(stored_bytes(t) for t in self.own[name][0])


def errors(case: Case, impl: str, name: str) -> dict:
    """Relative errors of layer 0's product (this is also the call that compiles and tunes)."""
    x = case.x[case.dims(name)[0]]
    ref = F.linear(x, case.bf16[name][0])
    y = case.calls(impl, name)[0]()
    out = {"rel_err_vs_bf16": rel_err(y, ref)}
    if parse_impl(impl)[0] in FORMULATIONS:
        own32 = x.float() @ dequant(*case.own[name][0], dtype=torch.float32).T
        out["rel_err_vs_own_f32"] = rel_err(y, own32)
    return out


def time_shape(case: Case, impl: str, name: str, repeats: int, cuda: bool) -> dict:
    calls = case.calls(impl, name)
    nbytes = case.weight_bytes(impl, name)
    entry = {"bytes_per_call": nbytes, "weights_timed": len(calls), **errors(case, impl, name)}
    if cuda:
        graph, outputs = graph_of(calls)
        entry["us_per_call"] = 1000 * cuda_median_ms(graph.replay, repeats) / len(calls)
        del graph, outputs
        entry["us_per_call_no_graph"] = 1000 * cuda_median_ms(lambda: [c() for c in calls], repeats) / len(calls)
        try:
            kernels = kernels_of(calls[0])
            entry["kernels_per_call"] = len(kernels)
            entry["kernel_names"] = [k[:120] for k in kernels[:6]]
        except Exception as e:  # the profiler is a diagnosis, not a figure
            entry["kernels_error"] = error_text(e)
    else:
        entry["us_per_call"] = 1000 * cpu_median_ms(lambda: [c() for c in calls], repeats) / len(calls)
    entry["gb_per_s"] = nbytes / entry["us_per_call"] / 1e3
    entry["share_of_peak"] = entry["gb_per_s"] * 1e9 / PEAK_BYTES
    return entry


def run_impl(case: Case, impl: str, repeats: int, cuda: bool) -> dict:
    """Every shape's figures (a shape that fails says why), then the decode step proxy."""
    form, mode = parse_impl(impl)
    if impl not in EAGER:
        torch._dynamo.reset()
        case.fns[impl] = compiled(bf16_linear if form in ("bf16", "vidqa") else FUNCTIONS[form], mode)
    res = {"formulation": form, "mode": mode, "per_shape": {}}
    for name in list(case.shapes) + ["lm_head"]:
        try:
            res["per_shape"][name] = time_shape(case, impl, name, repeats, cuda)
        except Exception as e:
            res["per_shape"][name] = {"error": error_text(e)}
    failed = [name for name in case.shapes if "error" in res["per_shape"][name]]
    if failed:
        raise RuntimeError(f"{', '.join(failed)}: {res['per_shape'][failed[0]]['error']}")
    step = [c for name in case.shapes for c in case.calls(impl, name)]  # layers x 4 matmuls
    step_bytes = sum(case.weight_bytes(impl, name) * len(case.bf16[name]) for name in case.shapes)
    if cuda:
        graph, outputs = graph_of(step)
        res["ms_per_step"] = cuda_median_ms(graph.replay, repeats)
        del graph, outputs
    else:
        res["ms_per_step"] = cpu_median_ms(lambda: [c() for c in step], repeats)
    res["bytes_per_step"] = step_bytes
    res["floor_ms_per_step"] = 1000 * step_bytes / PEAK_BYTES
    res["gb_per_s"] = step_bytes / res["ms_per_step"] / 1e6
    res["share_of_peak"] = res["gb_per_s"] * 1e9 / PEAK_BYTES
    head = res["per_shape"]["lm_head"]
    if "us_per_call" in head:
        res["ms_per_step_with_lm_head"] = res["ms_per_step"] + head["us_per_call"] / 1000
    case.fns.pop(impl, None)
    return res


def checks(case: Case) -> dict:
    """The format's own checks on layer 0 of every shape."""
    out = {"dequant_f32_err_over_bound": 0.0, "dequant_bf16_err_over_bound": 0.0, "err_over_half_step": 0.0,
           "int4_linear_equals_linear_of_dequant": True, "formulations_rel_err_vs_own_f32": {}}
    for name in list(case.shapes) + ["lm_head"]:
        w = case.bf16[name][0]
        packed, scales, zeros = case.own[name][0]
        n, k = w.shape
        assert packed.dtype == torch.uint8 and packed.shape == (n, k // 2) and scales.shape == (n, k // GROUP)
        q = unpack(packed)
        assert int(q.max()) <= 15
        for dtype, key in ((torch.float32, "dequant_f32_err_over_bound"), (BF16, "dequant_bf16_err_over_bound")):
            err = (w.float() - dequant(packed, scales, zeros, dtype).float()).abs()
            ratio = float((err / dequant_bound(w, scales, zeros, dtype == BF16)).max())
            out[key] = max(out[key], ratio)
        half = scales.float().repeat_interleave(GROUP, dim=1) / 2
        err32 = (w.float() - dequant(packed, scales, zeros, torch.float32)).abs()
        out["err_over_half_step"] = max(out["err_over_half_step"], float((err32 / half).max()))
        x = case.x[k]
        same = torch.equal(int4_linear(x, packed, scales, zeros), F.linear(x, dequant(packed, scales, zeros)))
        out["int4_linear_equals_linear_of_dequant"] &= same
        own32 = x.float() @ dequant(packed, scales, zeros, torch.float32).T
        out["formulations_rel_err_vs_own_f32"][name] = {
            form: rel_err(fn(x, packed, scales, zeros), own32) for form, fn in FUNCTIONS.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="small shapes (a CPU smoke run)")
    ap.add_argument("--out", default=None, help="JSON file with every figure (written after each implementation)")
    ap.add_argument("--impls", default=None, help=f"comma-separated; default on CUDA: {','.join(CUDA_IMPLS)}")
    ap.add_argument("--compile", action="store_true", help="on the CPU, also the compiled formulations")
    ap.add_argument("--layers", type=int, default=None, help="distinct weights per shape (32; tiny 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats, median (50; tiny 5)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no implementation after this many seconds (the rest: skipped, said so)")
    args = ap.parse_args()
    t0 = time.monotonic()
    sizes = overridden(TINY if args.tiny else FULL, args, ("layers", "repeats"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    impls = (args.impls.split(",") if args.impls else
             list(CUDA_IMPLS if cuda else CPU_IMPLS + (CPU_COMPILED if args.compile else ())))
    for impl in impls:
        try:
            parse_impl(impl)
        except ValueError as e:
            sys.exit(f"error: {e}")
    torch.manual_seed(0)
    with torch.inference_mode():
        case = Case(sizes, device)
        res = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
               "tiny": args.tiny, "sizes": sizes, "group": GROUP, "peak_bytes_per_s": PEAK_BYTES,
               "shapes": {name: list(kn) for name, kn in case.shapes.items()}, "lm_head": list(case.lm_head),
               "layout": "vidqa.int4: packed uint8 [N, K/2] as int32 words, nibble i of word j of a group = column "
                         "g * 128 + 16 i + j; "
                         "w = q * scale + zero, scale/zero bf16 [N, K/128], q in 0..15",
               "timing": ("CUDA graph of one call per weight, CUDA events, median" if cuda else
                          "CPU perf_counter, median"),
               "quant": checks(case), "impls": {}}
        q = res["quant"]
        print(f"int4 format: dequant error / bound {q['dequant_f32_err_over_bound']:.3f} (f32), "
              f"{q['dequant_bf16_err_over_bound']:.3f} (bf16); max error / half step {q['err_over_half_step']:.3f}; "
              f"int4_linear == F.linear(x, dequant): {q['int4_linear_equals_linear_of_dequant']}", flush=True)
        try:
            import torchao

            res["torchao"] = torchao.__version__
            res["torchao_config"] = torchao_description(device, sizes["hidden"])
        except ImportError:
            res["torchao"] = None
        for impl in impls:
            if impl == "torchao" and res["torchao"] is None:
                res["impls"][impl] = {"skipped": "torchao is not installed"}
                print("int4 gemv torchao: skipped (torchao is not installed)", flush=True)
                continue
            if args.budget_s is not None and time.monotonic() - t0 > args.budget_s:
                res["impls"][impl] = {"skipped": f"--budget-s {args.budget_s:g} spent"}
                print(f"int4 gemv {impl}: skipped (--budget-s spent)", flush=True)
                continue
            started = time.monotonic()
            try:
                r = run_impl(case, impl, sizes["repeats"], cuda)
                r["wall_s"] = time.monotonic() - started
                res["impls"][impl] = r
                head = r["per_shape"]["lm_head"]
                head_text = f"{head['us_per_call']:.1f} us" if "us_per_call" in head else head["error"]
                print(f"int4 gemv {impl}: {r['ms_per_step']:.3f} ms/step ({r['gb_per_s']:.0f} GB/s, "
                      f"{100 * r['share_of_peak']:.0f}% of 4.8 TB/s; floor {r['floor_ms_per_step']:.3f} ms); "
                      f"lm_head {head_text}; rel err vs bf16 "
                      f"{max(e['rel_err_vs_bf16'] for e in r['per_shape'].values() if 'error' not in e):.4f}",
                      flush=True)
                if cuda:
                    kernels = {n: e.get("kernels_per_call") for n, e in r["per_shape"].items()}
                    us = {n: round(e["us_per_call"], 1) for n, e in r["per_shape"].items() if "us_per_call" in e}
                    print(f"    kernels per call {kernels}; us/call {us}", flush=True)
            except Exception as e:  # reported; the next implementation still runs
                res["impls"][impl] = {"error": error_text(e), "wall_s": time.monotonic() - started}
                print(f"int4 gemv {impl}: {res['impls'][impl]['error']}", flush=True)
            finally:
                case.fns.pop(impl, None)
                torch._dynamo.reset()
                if cuda:
                    torch.cuda.empty_cache()
            if args.out:
                Path(args.out).write_text(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
