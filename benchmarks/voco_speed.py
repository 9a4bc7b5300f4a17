"""VoCo pipeline speed at Vicuna-7B + CLIP-L/336 shapes (random weights), against naive transformers.

    python benchmarks/voco_speed.py --out results.json        # on a GPU (the device tool)
    python benchmarks/voco_speed.py --tiny                     # a CPU smoke run of the same code (seconds)

What it times, each in the same process and on the same weights:
  compression   vidqa: uint8 frames -> preprocess -> CLIP (truncated at layer -2) -> projector -> LLM
                stage 1 keeping only the VoCo K/V, batched.
                naive: the official code's per-frame loop: CLIPVisionModel(output_hidden_states) ->
                hidden_states[-2] -> projector -> a full LlamaForCausalLM forward with a full KV cache and
                logits, one frame at a time; and the same naive forward batched (as REFERENCE.md's 17 ms).
  decoding      vidqa: generate() over a 64-frame compressed context.
                naive: transformers' generate() from the same context length, greedy.
  floors        FLOPs / 800 TFLOP/s and bytes / 3 TB/s (H100 figures measured on the device machine).
Random weights time the same as real ones. Numbers are medians over repeats, CUDA-event timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import transformers
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from vidqa.checkpoint import load_tokenizer, quiet_transformers
from vidqa.generate import StaticDecoder
from vidqa.generate import DecodeStats, GenerationConfig, generate
from vidqa.methods.voco import VoCo
from vidqa.pipeline import VideoQA
from vidqa.testing import write_vicuna_tokenizer
from vidqa.vision import Preprocess, VisionEncoder, build_projector, preprocess

# the benchmarks' questions: the test tokenizer is trained on them (with the VoCo system prompt in its
# base corpus) until each word is one piece, so prompts take about as many tokens as under Vicuna's
# 32k-piece tokenizer (with ~2 characters per token they took twice as many)
BENCH_QUESTIONS = ["what happens after the door opens?", "what happens in this video?", "what is in this video?",
                   "Does this video show a red circle? Answer yes or no."]
PEAK_FLOPS = 800e12
PEAK_BYTES = 3.0e12
# defaults of the sizes: the real run, and --tiny (a CPU smoke run of the same code in a few seconds)
FULL = {"frames": 64, "batch": [8, 16, 32], "new_tokens": 64, "repeats": 3}
TINY = {"frames": 8, "batch": [4, 8], "new_tokens": 8, "repeats": 1}


def timed(fn, repeats: int, warmup: int = 2) -> float:
    """Median seconds of fn() (synchronised)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def sizes(args, full: dict, tiny: dict) -> None:
    """Fill the size arguments left at None with the defaults of the run (``tiny`` with --tiny)."""
    for name, value in (tiny if args.tiny else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def shown(res: dict, key: str, spec: str = ".2f", missing: str = "n/a (needs CUDA)") -> str:
    """``res[key]`` formatted, or why it is absent (a CUDA-only figure on a CPU run)."""
    return format(res[key], spec) if key in res else missing


def build(tiny: bool, device, dtype, tokens_per_frame: int):
    quiet_transformers()
    if tiny:
        llm_cfg = LlamaConfig(vocab_size=32001, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=4096)
        clip_cfg = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2,
                                    image_size=112, patch_size=14)  # 64 patches: the same code, a fraction of the time
    else:  # lmsys/vicuna-7b-v1.5 (+ <voco>) and openai/clip-vit-large-patch14-336
        llm_cfg = LlamaConfig(vocab_size=32001, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                              num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                              rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
        clip_cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                    num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
                                    hidden_act="quick_gelu")
    llm_cfg._attn_implementation = "sdpa"
    clip_cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        llm = LlamaForCausalLM(llm_cfg).to(dtype).eval()
        tower = CLIPVisionModel(clip_cfg).to(dtype).eval()
        projector = build_projector("mlp2x_gelu", clip_cfg.hidden_size, llm_cfg.hidden_size).to(dtype).eval()
    for p in list(llm.parameters()) + list(tower.parameters()) + list(projector.parameters()):
        p.requires_grad_(False)
    tokdir = Path(tempfile.mkdtemp()) / "tok"
    write_vicuna_tokenizer(tokdir, 4000, corpus=BENCH_QUESTIONS)
    tok = load_tokenizer(tokdir)
    naive_tower = tower  # the same weights; VisionEncoder just stops at layer -2
    vision = VisionEncoder(tower, -2, "patch", Preprocess(size=clip_cfg.image_size, aspect="pad"))
    method = VoCo(llm, projector, tok, vision.num_patches, tokens_per_frame=tokens_per_frame)
    qa = VideoQA(method, vision, tok, model_id="random", model_fingerprint="random")
    return qa, naive_tower, llm_cfg, clip_cfg


def kernel_kind(name: str) -> str:
    n = name.lower()
    if any(t in n for t in ("flash", "fmha", "attention", "cudnn_sdpa", "sdpa")):
        return "attention"
    if any(t in n for t in ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul")):
        return "gemm"
    if n.startswith("triton"):
        return "fused (triton)"
    if "memcpy" in n or "memset" in n or "copy" in n:
        return "copy"
    return "other"


def gpu_us_by_kernel(fn) -> dict[str, float]:
    """GPU microseconds of each kernel (and copy) that one call of ``fn`` launches, by name (the profiler)."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    out: dict[str, float] = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t and e.key and not e.key.startswith(("ProfilerStep", "aten::", "cuda")):
            out[e.key] = out.get(e.key, 0.0) + t
    return out


def profile_compress(qa, frames, batch: int) -> dict:
    """GPU time per frame by kernel kind, for one compression call (its frames in batches of ``batch``)."""
    kinds: dict[str, float] = {}
    for name, us in gpu_us_by_kernel(lambda: qa.compress(frames, batch_size=batch)).items():
        kinds[kernel_kind(name)] = kinds.get(kernel_kind(name), 0.0) + us / 1000  # us -> ms
    n = len(frames.pixels)
    return {k: round(v / n, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}


def compiled_compress(res: dict, qa, frames, pixels, flops: float, args) -> None:
    """Compression with VIDQA_COMPILE=1 (compiled LLM and CLIP layers): per batch size, the tower
    alone, the cuDNN attention backend, and optionally a kernel breakdown."""
    T = len(pixels)
    t0 = time.perf_counter()
    qa.compress(frames, batch_size=32)
    res["compile_compress_first_run_s"] = time.perf_counter() - t0
    res["vidqa_compress_compiled"] = {}
    for bs in (32, 64):
        s = timed(lambda: qa.compress(frames, batch_size=bs), args.repeats, warmup=1)
        res["vidqa_compress_compiled"][bs] = {"ms_per_frame": 1000 * s / T, "tflops": flops * T / s / 1e12}
    best = min(res["vidqa_compress_compiled"], key=lambda b: res["vidqa_compress_compiled"][b]["ms_per_frame"])
    res["vidqa_compress_compiled_ms_per_frame"] = res["vidqa_compress_compiled"][best]["ms_per_frame"]
    res["vidqa_compress_compiled_tflops"] = res["vidqa_compress_compiled"][best]["tflops"]
    res["vidqa_compress_compiled_batch"] = best
    s = timed(lambda: qa.vision.encode(pixels, batch_size=best), args.repeats, warmup=1)
    res["vision_compiled_ms_per_frame"] = 1000 * s / T
    print(f"compiled ({os.environ.get('VIDQA_COMPILE_MODE') or 'default'}): first run "
          f"{res['compile_compress_first_run_s']:.0f} s; {res['vidqa_compress_compiled']}; vision "
          f"{res['vision_compiled_ms_per_frame']:.2f} ms/frame", flush=True)
    try:  # the same with cuDNN's attention kernels first (flash otherwise)
        order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                 SDPBackend.MATH]
        with sdpa_kernel(order, set_priority=True):
            qa.compress(frames, batch_size=best)
            s = timed(lambda: qa.compress(frames, batch_size=best), args.repeats, warmup=1)
        res["vidqa_compress_compiled_cudnn_ms_per_frame"] = 1000 * s / T
    except Exception as e:
        res["cudnn_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    if args.profile:
        res["compiled_compress_gpu_ms_per_frame_by_kind"] = profile_compress(qa, frames, best)


def param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="small shapes and sizes, for a CPU smoke run")
    ap.add_argument("--frames", type=int, default=None, help=f"{FULL['frames']} ({TINY['frames']} with --tiny)")
    ap.add_argument("--batch", type=int, nargs="+", default=None, help=f"{FULL['batch']} ({TINY['batch']} with --tiny)")
    ap.add_argument("--tokens-per-frame", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=None,
                    help=f"{FULL['new_tokens']} ({TINY['new_tokens']} with --tiny)")
    ap.add_argument("--repeats", type=int, default=None, help=f"{FULL['repeats']} ({TINY['repeats']} with --tiny)")
    ap.add_argument("--out", type=str, default=None)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile variants")
    ap.add_argument("--dtype", default=None, help="float32 for an agreement check without bf16 noise")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode for compression (VIDQA_COMPILE_MODE)")
    ap.add_argument("--skip-decode", action="store_true", help="compression only (no decoding or TTFT timings)")
    ap.add_argument("--profile", action="store_true",
                    help="with --compile: GPU time by kernel kind (GEMM, attention, fused/elementwise) per frame")
    args = ap.parse_args()
    sizes(args, FULL, TINY)
    if args.compile_mode:
        os.environ["VIDQA_COMPILE_MODE"] = args.compile_mode
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.dtype:
        dtype = getattr(torch, args.dtype)
    qa, naive_tower, llm_cfg, clip_cfg = build(args.tiny, device, dtype, args.tokens_per_frame)
    llm, m = qa.llm, qa.method
    res: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                 "torch": torch.__version__, "dtype": str(dtype), "tiny": args.tiny,
                 "tokens_per_frame": m.tokens_per_frame, "frames": args.frames,
                 "transformers": transformers.__version__}

    T = args.frames
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (T, 336, 336, 3), dtype=torch.uint8, generator=g).numpy()
    # decoded frames, as vidqa.video.Frames carries them (pixels and timestamps are all compress() reads)
    frames = SimpleNamespace(pixels=pixels, timestamps=np.arange(T, dtype=np.float64))

    # ---- FLOPs and bytes ------------------------------------------------------------------------
    seq = m.p0 + m.tokens_per_frame
    llm_params = param_count(llm.model) - llm.model.embed_tokens.weight.numel()
    L, D = llm_cfg.num_hidden_layers, llm_cfg.hidden_size
    llm_flops = 2 * llm_params * seq + 4 * L * D * seq * seq / 2  # matmuls + causal attention
    clip_layers = clip_cfg.num_hidden_layers - 1
    clip_params_used = param_count(qa.vision.layers)  # truncated
    ntok = qa.vision.num_patches + 1
    clip_flops = 2 * clip_params_used * ntok + 4 * clip_layers * clip_cfg.hidden_size * ntok * ntok
    proj_flops = 2 * param_count(m.projector) * qa.vision.num_patches
    flops = llm_flops + clip_flops + proj_flops
    res["compress_flops_per_frame"] = flops
    res["compress_floor_ms_per_frame"] = 1000 * flops / PEAK_FLOPS

    # ---- vidqa compression, per batch size -------------------------------------------------------
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    res["vidqa_compress"] = {}
    for bs in args.batch:
        s = timed(lambda: qa.compress(frames, batch_size=bs), args.repeats, warmup=1)
        res["vidqa_compress"][bs] = {"ms_per_frame": 1000 * s / T, "tflops": flops * T / s / 1e12}
    if device.type == "cuda":
        res["vidqa_compress_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    best_bs = min(res["vidqa_compress"], key=lambda b: res["vidqa_compress"][b]["ms_per_frame"])
    cache = qa.compress(frames, batch_size=best_bs)
    res["kv_bytes_per_frame"] = cache.bytes_per_frame
    # where the time goes: the vision tower alone, and stage 1 through the transformers model (the
    # reference path vidqa used before vidqa.fast.causal_prefix)
    s = timed(lambda: qa.vision.encode(pixels, batch_size=best_bs), args.repeats, warmup=1)
    res["vision_ms_per_frame"] = 1000 * s / T
    fast_compress = m.compress
    m.compress = m.compress_reference
    s = timed(lambda: qa.compress(frames, batch_size=best_bs), args.repeats, warmup=1)
    m.compress = fast_compress
    res["reference_compress_ms_per_frame"] = 1000 * s / T

    # ---- naive compression: the official code's shape of work ------------------------------------
    def naive(batch: int):
        for i in range(0, T, batch):
            px = preprocess(torch.from_numpy(pixels[i:i + batch]).to(device), qa.vision.spec, dtype)
            hs = naive_tower(pixel_values=px, output_hidden_states=True).hidden_states[-2][:, 1:]
            embeds = m.frame_embeds(hs)  # [BOS, image, "\n", VoCo] via the projector
            out = llm(inputs_embeds=embeds, use_cache=True)  # full cache + full logits, as transformers does
            kv = out.past_key_values
            _ = [(layer.keys[:, :, m.p0:seq], layer.values[:, :, m.p0:seq]) for layer in kv.layers]

    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        s1 = timed(lambda: naive(1), args.repeats, warmup=1)
        res["naive_compress_b1_ms_per_frame"] = 1000 * s1 / T
        sb = timed(lambda: naive(32 if not args.tiny else 8), args.repeats, warmup=1)
        res["naive_compress_b32_ms_per_frame"] = 1000 * sb / T
        if device.type == "cuda":
            res["naive_compress_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30

        # ---- agreement: vidqa's VoCo K/V vs the naive full forward's, same frames ----------------
        px = preprocess(torch.from_numpy(pixels[:4]).to(device), qa.vision.spec, dtype)
        hs = naive_tower(pixel_values=px, output_hidden_states=True).hidden_states[-2][:, 1:]
        out = llm(inputs_embeds=m.frame_embeds(hs), use_cache=True)
        ref = torch.stack([layer.keys[:, :, m.p0:seq] for layer in out.past_key_values.layers], 1).float()
        got = cache.tensors["keys"][:4].float()
        res["kv_rel_err_vs_naive"] = float((got - ref).norm() / ref.norm())
        same = qa.compress(SimpleNamespace(pixels=pixels[:4], timestamps=np.arange(4.0)), batch_size=4)
        res["kv_rel_err_vs_naive_same_batch"] = float((same.tensors["keys"].float() - ref).norm() / ref.norm())

    if args.compile and device.type == "cuda":
        os.environ["VIDQA_COMPILE"] = "1"  # vidqa.fast compiles its per-layer functions (LLM and CLIP)
        try:
            compiled_compress(res, qa, frames, pixels, flops, args)
        except Exception as e:  # report, do not hide
            res["vidqa_compress_compiled_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        finally:
            os.environ.pop("VIDQA_COMPILE", None)

    def decoding():
        # ---- decoding -------------------------------------------------------------------------------
        question = "what happens after the door opens?"
        gen = GenerationConfig(max_new_tokens=args.new_tokens)
        no_stop: set[int] = set()

        ctx_len = T * m.tokens_per_frame + len(m.prompt_ids(question))

        def vidqa_decode(decoder):
            stats = DecodeStats()
            for _ in generate(llm, m.prefill(cache, question), gen, no_stop, stats, decoder=decoder):
                pass
            return stats

        for name, decoder in (("hf", None), ("graph", qa.decoder(ctx_len + args.new_tokens))):
            if name == "graph" and decoder is None:
                continue  # CPU: no CUDA graph
            vidqa_decode(decoder)
            runs = [vidqa_decode(decoder) for _ in range(args.repeats)]
            res[f"vidqa_{name}_ms_per_token"] = statistics.median(r.ms_per_token for r in runs)
            res[f"vidqa_{name}_ttft_ms"] = statistics.median(1000 * r.prefill_s for r in runs)
        if args.compile and device.type == "cuda" and not args.skip_decode:
            t0 = time.perf_counter()
            dec = StaticDecoder(llm, qa.decoder(ctx_len + args.new_tokens).capacity, compile=True)
            vidqa_decode(dec)
            res["compile_decoder_first_run_s"] = time.perf_counter() - t0
            res["vidqa_graph_compiled_ms_per_token"] = statistics.median(vidqa_decode(dec).ms_per_token
                                                                          for _ in range(args.repeats))
        if "vidqa_graph_ms_per_token" in res:
            with torch.inference_mode():
                pre = m.prefill(cache, question)
                out = llm(input_ids=pre.input_ids, position_ids=pre.position_ids, past_key_values=pre.past_key_values)
                dec = qa.decoder(ctx_len + args.new_tokens)
                dec.load(out.past_key_values)
                tok, pos = int(out.logits[0, -1].argmax()), int(pre.position_ids[0, -1]) + 1
                a = dec.step(tok, pos).float()
                b = llm(input_ids=torch.tensor([[tok]], device=device), position_ids=torch.tensor([[pos]], device=device),
                        past_key_values=out.past_key_values).logits[0, -1].float()
                res["graph_vs_hf_logits_rel_err"] = float((a - b).norm() / b.norm())
        # time to first token from stored caches (an indexed video) at 8, 64 and 1,000 frames; a video that
        # is not indexed adds its frames x the compression time
        gen1 = GenerationConfig(max_new_tokens=1)
        res["ttft_indexed_ms"] = {}
        for n in (8, 64) if args.tiny else (8, 64, 1000):
            if n * m.tokens_per_frame + 64 > m.max_context:
                continue
            c = cache.select([i % T for i in range(n)])

            def first():
                for _ in generate(llm, m.prefill(c, question), gen1, no_stop):
                    pass

            res["ttft_indexed_ms"][n] = 1000 * timed(first, args.repeats, warmup=1)
        res["vidqa_ms_per_token"] = res.get("vidqa_graph_ms_per_token", res["vidqa_hf_ms_per_token"])
        res["vidqa_ttft_ms"] = res["vidqa_hf_ttft_ms"]
        res["context_tokens"] = ctx_len

        ids = torch.randint(3, 400, (1, ctx_len), device=device)

        def naive_decode():
            with torch.inference_mode():
                return llm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                                    min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

        naive_decode()
        t_gen = timed(naive_decode, args.repeats, warmup=0)
        one = timed(lambda: llm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1,
                                         min_new_tokens=1, do_sample=False, pad_token_id=0), args.repeats, warmup=1)
        res["naive_ms_per_token"] = 1000 * (t_gen - one) / (args.new_tokens - 1)
        weight_bytes = sum(p.numel() * p.element_size() for p in llm.parameters()) - \
            llm.model.embed_tokens.weight.numel() * llm.model.embed_tokens.weight.element_size()
        res["decode_floor_ms_per_token"] = 1000 * weight_bytes / PEAK_BYTES
        if device.type == "cuda":
            res["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30

    if not args.skip_decode:
        decoding()

    # ---- report ---------------------------------------------------------------------------------
    b = res["vidqa_compress"][best_bs]
    lines = [
        f"device {res['device']}  torch {res['torch']}  transformers {res['transformers']}  {dtype}",
        f"compression ms/frame: vidqa {b['ms_per_frame']:.2f} (batch {best_bs}, {b['tflops']:.0f} TFLOP/s) | "
        f"naive per-frame {res['naive_compress_b1_ms_per_frame']:.2f} | naive batched "
        f"{res['naive_compress_b32_ms_per_frame']:.2f} | floor {res['compress_floor_ms_per_frame']:.2f}",
        f"  ratios: naive-b1/vidqa {res['naive_compress_b1_ms_per_frame'] / b['ms_per_frame']:.2f}x, "
        f"vidqa/floor {b['ms_per_frame'] / res['compress_floor_ms_per_frame']:.2f}x",
        f"  per batch: " + ", ".join(f"b{k}: {v['ms_per_frame']:.2f}" for k, v in res["vidqa_compress"].items()),
        f"  compression breakdown: vision tower {res['vision_ms_per_frame']:.2f} ms/frame; stage 1 through the "
        f"transformers model (the reference path) {res['reference_compress_ms_per_frame']:.2f} ms/frame end to end",
        f"KV bytes per frame: {res['kv_bytes_per_frame']:,}; VoCo K rel. err vs naive: {res['kv_rel_err_vs_naive']:.2e}"
        f" (batch {best_bs} vs 4), {res['kv_rel_err_vs_naive_same_batch']:.2e} (same batch)",
    ]
    if not args.skip_decode:
        ctx_len = res["context_tokens"]
        lines += [
        f"decoding ms/token ({ctx_len}-token context): vidqa static+graph {shown(res, 'vidqa_graph_ms_per_token')}"
        f" | vidqa transformers path {res['vidqa_hf_ms_per_token']:.2f} | naive generate "
        f"{res['naive_ms_per_token']:.2f} | floor {res['decode_floor_ms_per_token']:.2f}",
        f"vidqa time to first token ({T} frames): {res['vidqa_ttft_ms']:.1f} ms",
        "time to first token from stored caches: " + ", ".join(f"{n} frames {v:.1f} ms" for n, v in
                                                              res["ttft_indexed_ms"].items()) +
        f"; not indexed add frames x {b['ms_per_frame']:.2f} ms",
        ]
    if args.compile and device.type == "cuda":
        lines.append(f"torch.compile: decode {shown(res, 'vidqa_graph_compiled_ms_per_token', missing='n/a')} ms/token "
                     f"(first run {shown(res, 'compile_decoder_first_run_s', '.0f', 'n/a')} s)")
        cc = res.get("vidqa_compress_compiled", {})
        lines.append("torch.compile compression ms/frame: " + ", ".join(
            f"b{k}: {v['ms_per_frame']:.2f} ({v['tflops']:.0f} TFLOP/s)" for k, v in cc.items()) +
            f"; vision tower {shown(res, 'vision_compiled_ms_per_frame', missing='n/a')}; cuDNN attention first "
            f"{shown(res, 'vidqa_compress_compiled_cudnn_ms_per_frame', missing='n/a')}; first run "
            f"{shown(res, 'compile_compress_first_run_s', '.0f', 'n/a')} s {res.get('vidqa_compress_compiled_error', '')}"
            f" {res.get('cudnn_error', '')}")
        if "compiled_compress_gpu_ms_per_frame_by_kind" in res:
            lines.append(f"  GPU ms/frame by kernel kind: {res['compiled_compress_gpu_ms_per_frame_by_kind']}")
    if "graph_vs_hf_logits_rel_err" in res:
        lines.append(f"static+graph step logits vs transformers step: rel. err {res['graph_vs_hf_logits_rel_err']:.2e}")
    if device.type == "cuda":
        lines.append(f"peak GiB: vidqa compress {res['vidqa_compress_peak_gib']:.1f}, naive compress "
                     f"{res['naive_compress_peak_gib']:.1f}, overall {torch.cuda.max_memory_allocated() / 2**30:.1f}")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
