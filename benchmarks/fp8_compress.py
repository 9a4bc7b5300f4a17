"""Where VoCo-7B's fp8 compression time goes, and which fp8 settings are fastest (H100/H200).

    python benchmarks/fp8_compress.py --out fp8.json                 # every part
    python benchmarks/fp8_compress.py --parts gemm --out g.json      # the matmuls alone
    python benchmarks/fp8_compress.py --tiny --parts compress        # CPU plumbing check (bf16 path, no fp8)

Why: ``--quantize fp8`` compression took 8.18-8.35 ms/frame compiled at batch 16 on an H200 (session 7),
against a goal of 7 and a 4.9 ms floor (FLOPs / 1,600 TFLOP/s). Before changing vidqa, this measures
what the time is made of.

Parts (``--parts``):
  gemm      Vicuna-7B's four matmul shapes at M = batch x 579 rows (BOS, 576 patches, "\\n", <voco>):
            Q/K/V 4096->12288, o_proj 4096->4096, gate/up 4096->22016, down 11008->4096. Per shape:
            bf16 ``F.linear``; ``torch._scaled_mm`` with row-wise scales (torchao's PerRow, what
            ``--quantize fp8`` runs) with and without fast accumulation; with tensor-wise scales; the
            activation's row-wise quantisation alone (compiled); and torchao's whole fp8 ``F.linear``
            (quantisation included), compiled. ms per call (CUDA events, median) and TFLOP/s, and the
            per-frame sum over 32 layers.
  compress  vidqa's compression with ``VIDQA_COMPILE=1`` for variants of the model:
            ``rowwise`` (as shipped) at batch 16 and 32 with the GPU time per frame by kernel kind;
            ``tensorwise`` (torchao PerTensor); ``rowwise_clip`` (CLIP-L's linears in fp8 as well).
  stacked   one fp8 model changed step by step (``stacked_variants``): as shipped (cuDNN attention, the next
            batch staged on the host while the GPU works), with flash attention instead (``vidqa.fast.
            FIXED_SHAPE_CUDNN`` off), + CLIP-L's linears in fp8; a step named ``torchao_mlp...`` runs
            torchao's own down_proj instead of the one-pass SiLU * up quantisation (``vidqa.fp8``); ms/frame,
            the kernel breakdown and the GPU's idle time per frame after each.
  reductions the fused kernels around the matmuls alone (SiLU(gate) * up and the RMSNorm, each with its
            fp8 quantisation), compiled with inductor's reductions and with one-pass ones.
  trace     one compiled fp8 compression call under the profiler (CPU and CUDA): wall time against the
            GPU's busy time, the longest idle gaps with the CPU ops running in them, and the Chrome trace
            (``--out``'s stem + ``_trace.json.gz``).
  attention scaled_dot_product_attention alone at compression's shapes (the LLM's causal 579 rows, CLIP's
            577) under each backend (flash, efficient, cuDNN): ms per frame and TFLOP/s.
Each part and variant reports an error instead of stopping the others.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch._dynamo
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import voco_speed  # noqa: E402 (the VoCo-7B build and the profiler helpers)
from int4_gemv import cuda_median_ms  # noqa: E402 (CUDA-event timing)
from voco_speed import profile_compress, timed  # noqa: E402

from vidqa import quant  # noqa: E402

SHAPES = (("qkv", 12288, 4096), ("o_proj", 4096, 4096), ("gate_up", 22016, 4096), ("down", 4096, 11008))
LAYERS = 32
TOKENS = 579  # per frame: BOS, 576 patches, "\n", one <voco>


def rowwise(x: torch.Tensor):
    """x as float8 e4m3 with one float32 scale per row (shape [rows, 1])."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / quant.FP8_MAX
    return (x.float() / scale).clamp(-quant.FP8_MAX, quant.FP8_MAX).to(quant.FP8), scale


def tensorwise(x: torch.Tensor):
    scale = (x.abs().amax().float().clamp(min=1e-12) / quant.FP8_MAX)
    return (x.float() / scale).clamp(-quant.FP8_MAX, quant.FP8_MAX).to(quant.FP8), scale


def gemm_part(batch: int) -> dict:
    dev = torch.device("cuda")
    M = batch * TOKENS
    out: dict = {"M": M, "shapes": {}}
    q_act = torch.compile(rowwise, dynamic=False)
    totals: dict[str, float] = {}
    for name, N, K in SHAPES:
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16, generator=g)
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16, generator=g) * 0.02
        xr, sxr = rowwise(x)
        wr, swr = rowwise(w)
        xt, sxt = tensorwise(x)
        wt, swt = tensorwise(w)
        tao_w = quant.quantize_weight(w, "fp8")
        tao = torch.compile(lambda x: F.linear(x, tao_w), dynamic=False)
        fns = {
            "bf16": lambda: F.linear(x, w),
            "rowwise_fast_accum": lambda: torch._scaled_mm(xr, wr.t(), scale_a=sxr, scale_b=swr.t(),
                                                           out_dtype=torch.bfloat16, use_fast_accum=True),
            "rowwise": lambda: torch._scaled_mm(xr, wr.t(), scale_a=sxr, scale_b=swr.t(), out_dtype=torch.bfloat16,
                                                use_fast_accum=False),
            "tensorwise_fast_accum": lambda: torch._scaled_mm(xt, wt.t(), scale_a=sxt, scale_b=swt,
                                                              out_dtype=torch.bfloat16, use_fast_accum=True),
            "act_quant_rowwise_compiled": lambda: q_act(x),
            "torchao_linear_compiled": lambda: tao(x),
        }
        row = {}
        for impl, fn in fns.items():
            try:
                ms = cuda_median_ms(fn, 20)
                row[impl] = {"ms": round(ms, 4)}
                if not impl.startswith("act_"):
                    row[impl]["tflops"] = round(2 * M * N * K / ms / 1e9, 1)
                totals[impl] = totals.get(impl, 0.0) + ms
            except Exception as e:  # report, do not hide
                row[impl] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        out["shapes"][name] = row
        print("fp8 gemm", name, json.dumps(row), flush=True)
        del x, w, xr, wr, xt, wt, tao_w
        torch.cuda.empty_cache()
    out["llm_matmuls_ms_per_frame"] = {k: round(v * LAYERS / batch, 3) for k, v in totals.items()}
    print("fp8 gemm ms/frame (32 layers)", json.dumps(out["llm_matmuls_ms_per_frame"]), flush=True)
    return out


def clip_to_fp8(qa) -> int:
    """CLIP-L's encoder linears as torchao fp8 (row-wise) weights, in place; how many."""
    n = 0
    for layer in qa.vision.layers:
        for mod in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.out_proj,
                    layer.mlp.fc1, layer.mlp.fc2):
            mod.weight = torch.nn.Parameter(quant.quantize_weight(mod.weight, "fp8"), requires_grad=False)
            n += 1
    return n


def compress_variant(variant: str, args, pixels, device, dtype) -> dict:
    qa, *_ = voco_speed.build(args.tiny, device, dtype, tokens_per_frame=1)
    res: dict = {}
    fp8 = device.type == "cuda" and variant != "bf16"
    if fp8:
        if variant == "tensorwise":
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerTensor

            orig = quant.config
            quant.config = lambda mode, dev, k: Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor())
            try:
                quant.quantize(qa.method, "fp8")
            finally:
                quant.config = orig
        else:
            quant.quantize(qa.method, "fp8")
        if variant == "rowwise_clip":
            res["clip_linears_fp8"] = clip_to_fp8(qa)
    T = len(pixels)
    frames = SimpleNamespace(pixels=pixels, timestamps=np.arange(T, dtype=np.float64))
    t0 = time.perf_counter()
    qa.compress(frames, batch_size=args.batch[0])
    res["first_run_s"] = round(time.perf_counter() - t0, 1)
    for bs in args.batch:
        s = timed(lambda: qa.compress(frames, batch_size=bs), args.repeats, warmup=1)
        res[f"ms_per_frame_batch{bs}"] = round(1000 * s / T, 3)
    if device.type == "cuda":
        best = min(args.batch, key=lambda b: res[f"ms_per_frame_batch{b}"])
        s = timed(lambda: qa.vision.encode(pixels, batch_size=best), args.repeats, warmup=1)
        res["vision_ms_per_frame"] = round(1000 * s / T, 3)
        if variant == "rowwise" or args.profile_all:
            res["gpu_ms_per_frame_by_kind"] = profile_compress(qa, frames, best)
    del qa
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def timeline(qa, frames, batch: int, trace_path: str | None = None) -> dict:
    """One ``qa.compress`` call under the profiler, CPU and CUDA: its wall time, the GPU's busy time (the
    union of its kernels' and copies' intervals) and idle time, per frame, and the longest idle gaps with
    the longest CPU ops that overlap them. ``trace_path``: the Chrome trace, gzipped."""
    import gzip
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        qa.compress(frames, batch_size=batch)
        voco_speed.sync()
        wall = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        text = raw.read_text()
    if trace_path:
        with gzip.open(trace_path, "wt") as f:
            f.write(text)
    events = [e for e in json.loads(text).get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    gpu = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                 if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"))
    cpu = [e for e in events if e.get("cat") in ("cpu_op", "user_annotation", "python_function")]
    busy, gaps, cur = 0.0, [], None
    for a, b in gpu:
        if cur is None:
            cur = [a, b]
        elif a > cur[1]:
            busy += cur[1] - cur[0]
            gaps.append((cur[1], a))
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    if cur:
        busy += cur[1] - cur[0]
    n = len(frames.pixels)
    span = (gpu[-1][1] - gpu[0][0]) if gpu else 0.0
    top = []
    for a, b in sorted(gaps, key=lambda g: g[0] - g[1])[:8]:
        over = sorted((e for e in cpu if e["ts"] < b and e["ts"] + e["dur"] > a), key=lambda e: -e["dur"])
        top.append({"at_ms": round((a - gpu[0][0]) / 1000, 2), "ms": round((b - a) / 1000, 3),
                    "cpu": [f"{e['name'][:80]} ({e['dur'] / 1000:.2f} ms)" for e in over[:4]]})
    return {"wall_ms_per_frame": round(1000 * wall / n, 3), "gpu_busy_ms_per_frame": round(busy / 1000 / n, 3),
            "gpu_idle_in_span_ms_per_frame": round((span - busy) / 1000 / n, 3),
            "before_first_gpu_op_ms": round((gpu[0][0] - min(e["ts"] for e in events)) / 1000, 2) if gpu else None,
            "gaps_over_0.1ms": sum(1 for a, b in gaps if b - a > 100), "longest_gaps": top}


def stacked_variants(args, pixels, device, dtype) -> dict:
    """One fp8 (row-wise) model, changed step by step and timed after each: ``shipped`` (cuDNN attention for
    the LLM and CLIP), ``flash`` (``vidqa.fast.FIXED_SHAPE_CUDNN`` off: a new guard, so new graphs), then
    ``shipped+clip`` (cuDNN again, CLIP-L's linears in fp8 too). Each: ms/frame, GPU time by kernel kind
    and the GPU's idle time per frame (``timeline``)."""
    from vidqa import fast

    qa, *_ = voco_speed.build(args.tiny, device, dtype, tokens_per_frame=1)
    T = len(pixels)
    frames = SimpleNamespace(pixels=pixels, timestamps=np.arange(T, dtype=np.float64))
    # the same model's bf16 K/V, uncompiled: each step's relative error against it
    qa.method.compile_kernels = qa.vision.compile_kernels = False
    ref = qa.compress(frames, batch_size=16).tensors
    qa.method.compile_kernels = qa.vision.compile_kernels = None
    quant.quantize(qa.method, "fp8")
    bs = max(args.batch)
    out: dict = {}

    def step(name):
        t0 = time.perf_counter()
        got = qa.compress(frames, batch_size=bs).tensors
        res = {"first_run_s": round(time.perf_counter() - t0, 1)}
        res["rel_err_vs_bf16"] = {k: round(float((got[k].float() - v.float()).norm() / v.float().norm()), 5)
                                  for k, v in ref.items()}
        runs = [timed(lambda: qa.compress(frames, batch_size=bs), 1, warmup=0) for _ in range(args.repeats)]
        res[f"ms_per_frame_batch{bs}"] = round(1000 * float(np.median(runs)) / T, 3)
        res["ms_per_frame_runs"] = [round(1000 * r / T, 3) for r in runs]
        res["gpu_ms_per_frame_by_kind"] = profile_compress(qa, frames, bs)
        top = sorted(voco_speed.gpu_us_by_kernel(lambda: qa.compress(frames, batch_size=bs)).items(),
                     key=lambda kv: -kv[1])[:16]
        res["top_kernels_ms_per_frame"] = {k[:110]: round(us / 1000 / T, 4) for k, us in top}
        res["timeline"] = timeline(qa, frames, bs)
        out[name] = res
        print("fp8 compress", name, json.dumps(res), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=1))

    for name in args.steps.split(","):
        fast.FIXED_SHAPE_CUDNN = name != "flash"
        fast.FP8_ONE_PASS_MLP = "torchao_mlp" not in name  # torchao's own down_proj (new graphs: a new argument)
        if "clip" in name and "clip_linears_fp8" not in out:
            out["clip_linears_fp8"] = clip_to_fp8(qa)
        if "persistent" in name:  # new graphs with one-pass reductions (this process, from now on)
            persistent_reductions()
            torch._inductor.config.fx_graph_cache = False  # its key does not see the rule
            fast._compiled.clear()
            torch._dynamo.reset()
        step(name)
    fast.FIXED_SHAPE_CUDNN = fast.FP8_ONE_PASS_MLP = True
    return out


def persistent_reductions(limit: int = 16384) -> None:
    """From now on in this process, inductor reduces rows of up to ``limit`` elements in one pass (a
    persistent reduction: the row stays in registers) where its own rule stops at 1,024 and loops, reading
    the row again for each reduction and for the output (RMSNorm's sum of squares, the fp8 activation's
    row amax, the cast). Its multi-kernel mode, which times both forms, fails on torch 2.11 with Triton 3.6
    (session 12, s35: ``TypeError`` in ``MultiKernelCall.cache_file_path``)."""
    from torch._inductor import config as inductor_config
    from torch._inductor.choices import InductorChoices
    from torch._inductor.runtime.hints import ReductionHint
    from torch._inductor.virtualized import V

    class Wide(InductorChoices):
        @staticmethod
        def should_use_persistent_reduction(features, cooperative_reduction):
            if InductorChoices.should_use_persistent_reduction(features, cooperative_reduction):
                return True
            return bool(inductor_config.triton.persistent_reductions and not cooperative_reduction
                        and features.get_reduction_hint() == ReductionHint.INNER
                        and V.graph.sizevars.statically_known_leq(features.reduction_numel, limit))

    V.set_choices_handler(Wide())


def reductions_part(batch: int) -> dict:
    """The fused kernels around fp8 compression's matmuls alone, at M = batch x 579 rows, compiled with
    inductor's rule and then with one-pass reductions (``persistent_reductions``): SiLU(gate) * up with its
    row-wise fp8 quantisation (gate/up from one [M, 22016] output, as the model has them), and the residual
    add + RMSNorm + quantisation. ms per frame over 32 layers."""
    from torchao.quantization.utils import recommended_inductor_config_setter

    recommended_inductor_config_setter()  # what quantising the model sets (coordinate descent tuning)
    # no cached graphs: the two forms compile the same functions, and the caches' keys do not see the rule
    torch._inductor.config.fx_graph_cache = False
    if hasattr(torch._functorch.config, "enable_autograd_cache"):
        torch._functorch.config.enable_autograd_cache = False
    dev = torch.device("cuda")
    M = batch * TOKENS
    g = torch.Generator(device=dev).manual_seed(0)
    gu = torch.randn(M, 22016, device=dev, dtype=torch.bfloat16, generator=g)
    h = torch.randn(M, 4096, device=dev, dtype=torch.bfloat16, generator=g)
    r = torch.randn(M, 4096, device=dev, dtype=torch.bfloat16, generator=g)
    w = torch.rand(4096, device=dev, dtype=torch.bfloat16, generator=g) + 0.5

    def silu_quant(gu):
        gate, up = gu.chunk(2, dim=-1)
        return rowwise(F.silu(gate) * up)

    def norm_quant(h, r, w):
        x = h + r
        xf = x.float()
        n = w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)
        return x, rowwise(n)

    out: dict = {}
    for form in ("looped", "persistent"):
        if form == "persistent":
            persistent_reductions()
        torch._dynamo.reset()
        row = {}
        for name, fn, inputs in (("silu_quant", silu_quant, (gu,)), ("add_norm_quant", norm_quant, (h, r, w))):
            try:
                c = torch.compile(fn, dynamic=False)
                ms = cuda_median_ms(lambda: c(*inputs), 20)
                row[name] = {"ms_per_frame": round(ms * LAYERS / batch, 4)}
            except Exception as e:
                row[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        out[form] = row
        print("fp8 reductions", form, json.dumps(row), flush=True)
    return out


def trace_part(args, pixels, device, dtype) -> dict:
    """The shipped fp8 compression, compiled and warm, under the profiler (``timeline``)."""
    qa, *_ = voco_speed.build(args.tiny, device, dtype, tokens_per_frame=1)
    quant.quantize(qa.method, "fp8")
    frames = SimpleNamespace(pixels=pixels, timestamps=np.arange(len(pixels), dtype=np.float64))
    bs = max(args.batch)
    qa.compress(frames, batch_size=bs)
    qa.compress(frames, batch_size=bs)
    path = str(Path(args.out).with_suffix("")) + "_trace.json.gz" if args.out else None
    res = timeline(qa, frames, bs, path)
    print("fp8 trace", json.dumps(res), flush=True)
    return res


def attention_part(batch: int) -> dict:
    """SDPA alone at compression's shapes, per backend: the LLM's causal attention over a frame's 579 rows
    (32 heads of 128; x 32 layers) and CLIP-L's full attention over 577 (16 heads of 64; x 24 layers), in
    ms per frame, and TFLOP/s (the causal half counted)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cases = {"llm_causal": (32, 579, 128, True, 32), "clip_full": (16, 577, 64, False, 24)}
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION}
    cudnn_was = torch.backends.cuda.cudnn_sdp_enabled()  # vidqa turns it off (fast.plan_free_attention)
    torch.backends.cuda.enable_cudnn_sdp(True)
    out: dict = {}
    for name, (heads, seq, dim, causal, layers) in cases.items():
        q, k, v = (torch.randn(batch, heads, seq, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * batch * heads * seq * seq * dim * (0.5 if causal else 1.0)
        out[name] = {}
        for bname, backend in backends.items():
            try:
                with sdpa_kernel([backend]):
                    ms = cuda_median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), 20)
                out[name][bname] = {"ms_per_frame": round(ms * layers / batch, 4),
                                    "tflops": round(flops / ms / 1e9, 1)}
            except Exception as e:
                out[name][bname] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        print("fp8 attention", name, json.dumps(out[name]), flush=True)
    torch.backends.cuda.enable_cudnn_sdp(cudnn_was)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="gemm,compress")
    ap.add_argument("--variants", default="rowwise,tensorwise,rowwise_clip")
    ap.add_argument("--steps", default="shipped,flash,shipped+clip", help="the stacked part's steps, in order")
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile-all", action="store_true", help="a kernel breakdown for every variant")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU: the compress plumbing only")
    ap.add_argument("--launch", type=int, default=None, metavar="WARPS",
                    help="the one-pass MLP kernel's warps per row (fp8.LAUNCH)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.launch:
        from vidqa import fp8
        fp8.LAUNCH.update(num_warps=args.launch)
    os.environ.setdefault("VIDQA_COMPILE", "1")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.tiny:
        args.batch, args.frames, args.repeats = [4], 4, 1
        os.environ["VIDQA_COMPILE"] = "0"
    res: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                 "torch": torch.__version__, "batch": args.batch, "frames": args.frames, "launch": args.launch}

    def save():
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1, default=str))

    parts = args.parts.split(",")
    for part, fn in (("stacked", stacked_variants), ("trace", trace_part)):
        if part in parts and device.type == "cuda":
            g = torch.Generator().manual_seed(0)
            pixels = torch.randint(0, 256, (args.frames, 336, 336, 3), dtype=torch.uint8, generator=g).numpy()
            res[part] = fn(args, pixels, device, dtype)
            save()
    if "reductions" in parts and device.type == "cuda":
        res["reductions"] = reductions_part(max(args.batch))
        save()
    if "attention" in parts and device.type == "cuda":
        res["attention"] = attention_part(max(args.batch))
        save()
    if "gemm" in parts and device.type == "cuda":
        try:
            res["gemm"] = gemm_part(max(args.batch))
        except Exception as e:
            traceback.print_exc(limit=6)
            res["gemm"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        save()
    if "compress" in parts:
        g = torch.Generator().manual_seed(0)
        size = 112 if args.tiny else 336
        pixels = torch.randint(0, 256, (args.frames, size, size, 3), dtype=torch.uint8, generator=g).numpy()
        res["compress"] = {}
        for variant in (["bf16"] if args.tiny else args.variants.split(",")):
            t0 = time.perf_counter()
            try:
                res["compress"][variant] = compress_variant(variant, args, pixels, device, dtype)
            except Exception as e:
                traceback.print_exc(limit=6)
                res["compress"][variant] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
                gc.collect()
                torch.cuda.empty_cache() if device.type == "cuda" else None
            res["compress"][variant]["seconds"] = round(time.perf_counter() - t0, 1)
            print("fp8 compress", variant, json.dumps(res["compress"][variant]), flush=True)
            save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
