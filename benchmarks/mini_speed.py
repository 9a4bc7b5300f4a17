"""LLaVA-Mini speed at LLaMA-3.1-8B + CLIP-L/336 shapes (random weights), against the official approach.

    python benchmarks/mini_speed.py --out results.json      # on a GPU (the device tool)
    python benchmarks/mini_speed.py --tiny                   # a CPU smoke run of the same code (seconds)

vidqa:  frames -> CLIP -> compressor -> projector -> pre-fusion over the 577 vision positions, once per
        frame (the cache: pre-fusion K/V + the fused frame token). A question then runs only its
        prompt through the 4 pre-fusion layers against every frame's K/V, averages the fused text, and
        prefills the LLM over [fused text, T frame tokens].
naive:  the official code's per-question, per-frame loop: every frame goes alone through CLIP
        (output_hidden_states), the compressor, the projector and the full pre-fusion over
        [576, C*C, prompt]; then the LLM prefill. Nothing is reused between questions.
The prompt is ~100 token ids of the official layout (double BOS, system block, user turn, <image>),
drawn at random: the real Llama-3.1 tokenizer is not available here, and ids do not change timings.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import transformers
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from vidqa import testing
from vidqa.checkpoint import load_tokenizer, quiet_transformers
from vidqa.generate import DecodeStats, GenerationConfig, generate
from vidqa.methods import mini
from vidqa.methods.mini.layers import LLAVA_MINI_SYSTEM_PROMPT
from vidqa.pipeline import VideoQA
from vidqa.vision import Preprocess, VisionEncoder, build_projector, preprocess

sys.path.insert(0, str(Path(__file__).parent))
from voco_speed import BENCH_QUESTIONS, PEAK_BYTES, shown, sizes, sync, timed  # noqa: E402 (the shared helpers)

FULL = {"frames": [64, 1000], "new_tokens": 32, "repeats": 3, "warmup": 2}
TINY = {"frames": [4, 8], "new_tokens": 8, "repeats": 1, "warmup": 1}


def build(tiny: bool, device, dtype):
    quiet_transformers()
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
    if tiny:
        llm_cfg = LlamaConfig(vocab_size=128256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072,
                              rope_parameters=rope)
        clip_cfg = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2,
                                    image_size=112, patch_size=14)  # 64 patches: the same code, a fraction of the time
    else:  # meta-llama/Llama-3.1-8B-Instruct and openai/clip-vit-large-patch14-336
        llm_cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                              num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                              rms_norm_eps=1e-5, rope_parameters=rope, tie_word_embeddings=False)
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
        compressor = mini.Compressor(1, clip_cfg.hidden_size, num_heads=8 if not tiny else 2).to(dtype).eval()
        prefusion = mini.build_prefusion_layers(llm.config, 4).to(dtype).eval()
    for mod in (llm, tower, projector, compressor, prefusion):
        mod.to(device).requires_grad_(False)  # the sin-cos table is built from numpy, on the CPU
    tokdir = Path(tempfile.mkdtemp()) / "tok"
    # trained until each word of the official prompt is one token, as under Llama-3's 128k vocabulary:
    # the pre-fusion runs every prompt token once per frame, so the prompt's length sets its cost
    testing.write_tiny_tokenizer(tokdir, corpus=[LLAVA_MINI_SYSTEM_PROMPT, "Cutting Knowledge Date: December 2023",
                                                 "Today Date: 26 Jul 2024", "system user assistant",
                                                 *BENCH_QUESTIONS])
    tok = load_tokenizer(tokdir)
    options = mini.LlavaMiniOptions(compressor_size=1, mm_hidden_size=clip_cfg.hidden_size,
                                    mm_projector_type="mlp2x_gelu")
    modules = mini.LlavaMiniModules(llm, projector, compressor, prefusion, options, {})
    method = mini.Mini(modules, tok)
    vision = VisionEncoder(tower, -2, "patch", Preprocess(size=clip_cfg.image_size, aspect="squash"))
    return VideoQA(method, vision, tok, model_id="random", model_fingerprint="random"), tower, llm_cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="small shapes and sizes, for a CPU smoke run")
    ap.add_argument("--frames", type=int, nargs="+", default=None, help=f"{FULL['frames']} ({TINY['frames']} with --tiny)")
    ap.add_argument("--prompt-tokens", type=int, default=100)
    ap.add_argument("--new-tokens", type=int, default=None,
                    help=f"{FULL['new_tokens']} ({TINY['new_tokens']} with --tiny)")
    ap.add_argument("--repeats", type=int, default=None, help=f"{FULL['repeats']} ({TINY['repeats']} with --tiny)")
    ap.add_argument("--warmup", type=int, default=None, help=f"{FULL['warmup']} ({TINY['warmup']} with --tiny)")
    ap.add_argument("--long", type=int, default=0, help="also a question on this many frames (cache offloaded)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sizes(args, FULL, TINY)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    qa, tower, llm_cfg = build(args.tiny, device, dtype)
    m, llm = qa.method, qa.llm

    # a prompt of the official shape: [BOS, BOS, ..., <image>, ...]
    g = torch.Generator().manual_seed(0)
    body = torch.randint(1, 120000, (args.prompt_tokens - 3,), generator=g).tolist()
    ids = [128000, 128000] + body[:20] + [mini.IMAGE_TOKEN_INDEX] + body[20:]
    m.prompt_ids = lambda question, history=(): ids  # timing only: the tokenizer here is a byte-level stand-in

    res: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
                 "transformers": transformers.__version__, "dtype": str(dtype), "tiny": args.tiny,
                 "prompt_tokens": len(ids)}
    Tmax = max(args.frames)
    pixels = torch.randint(0, 256, (Tmax, 336, 336, 3), dtype=torch.uint8, generator=g).numpy()

    def frames(n):
        return SimpleNamespace(pixels=pixels[:n], timestamps=np.arange(n, dtype=np.float64))

    # ---- compression: ms per frame ------------------------------------------------------------------
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    n0 = min(256, Tmax)
    s = timed(lambda: qa.compress(frames(n0), batch_size=32), args.repeats, args.warmup)
    res["vidqa_compress_ms_per_frame"] = 1000 * s / n0
    s = timed(lambda: qa.vision.encode(pixels[:n0], batch_size=32), args.repeats, args.warmup)
    res["vision_ms_per_frame"] = 1000 * s / n0
    if device.type == "cuda":
        os.environ["VIDQA_COMPILE"] = "1"  # the pre-fusion's per-layer function, compiled
        t0 = time.perf_counter()
        qa.compress(frames(n0), batch_size=32)
        res["compile_compress_first_run_s"] = time.perf_counter() - t0
        res["vidqa_compress_compiled_ms_per_frame"] = 1000 * timed(lambda: qa.compress(frames(n0), batch_size=32),
                                                                   args.repeats, args.warmup) / n0
        os.environ.pop("VIDQA_COMPILE")
    caches = {}
    for n in args.frames:
        caches[n] = qa.compress(frames(n), batch_size=32)
    res["cache_bytes_per_frame"] = caches[args.frames[0]].bytes_per_frame
    res["projected_features_bytes_per_frame"] = (qa.vision.num_patches + 1) * llm_cfg.hidden_size * 2
    if device.type == "cuda":
        res["vidqa_compress_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30

    # ---- per question, from the cache: time to first token ----------------------------------------
    gen1 = GenerationConfig(max_new_tokens=1)
    for n in args.frames:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def ask():
            for _ in generate(llm, m.prefill(caches[n], "q"), gen1, set()):
                pass

        res[f"vidqa_question_ms_{n}"] = 1000 * timed(ask, args.repeats, args.warmup)
        if device.type == "cuda":
            res[f"vidqa_question_peak_gib_{n}"] = torch.cuda.max_memory_allocated() / 2**30

    # ---- decoding ------------------------------------------------------------------------------------
    n = args.frames[0]
    gen = GenerationConfig(max_new_tokens=args.new_tokens)
    for name, dec in (("hf", None), ("graph", qa.decoder(len(ids) + n + args.new_tokens))):
        if name == "graph" and dec is None:
            continue

        def run():
            st = DecodeStats()
            for _ in generate(llm, m.prefill(caches[n], "q"), gen, set(), st, decoder=dec):
                pass
            return st

        run()
        res[f"vidqa_{name}_ms_per_token"] = statistics.median(run().ms_per_token for _ in range(args.repeats))
    res["decode_floor_ms_per_token"] = 1000 * (sum(p.numel() * 2 for p in llm.parameters())
                                               - llm.model.embed_tokens.weight.numel() * 2) / PEAK_BYTES

    # ---- naive: the official per-question, per-frame loop ---------------------------------------------
    ids_t = torch.tensor(ids, device=device)
    embeds, visible = mini.prompt_embeddings(llm.get_input_embeddings(), ids_t)

    def naive_question(n):
        vis, txt = [], None
        for i in range(n):
            px = preprocess(torch.from_numpy(pixels[i:i + 1]).to(device), qa.preprocess_spec(False), dtype)
            raw = tower(pixel_values=px, output_hidden_states=True).hidden_states[-2][:, 1:]
            f = mini.encode_frames(raw, m.compressor, m.projector, 1)
            fused = mini.prefusion_full(m.prefusion, llm.model.rotary_emb, f, embeds, visible)
            vis.append(fused.vision_tokens[0])
            txt = fused.text[0].float() if txt is None else txt + fused.text[0].float()
        inputs = mini.assemble_llm_inputs((txt / n).to(dtype), ids_t, torch.cat(vis))[None]
        out = llm(inputs_embeds=inputs, logits_to_keep=1)
        return int(out.logits[0, -1].argmax())

    with torch.inference_mode():
        for n in args.frames:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            res[f"naive_question_ms_{n}"] = 1000 * timed(lambda: naive_question(n), 1 if n > 100 else args.repeats,
                                                         args.warmup)
            if device.type == "cuda":
                res[f"naive_question_peak_gib_{n}"] = torch.cuda.max_memory_allocated() / 2**30

        # agreement: vidqa's LLM input embeddings vs the naive loop's, 4 frames
        cache4 = qa.compress(frames(4), batch_size=4)
        got = m.prefill(cache4, "q").inputs_embeds[0].float()
        vis, txt = [], None
        for i in range(4):
            px = preprocess(torch.from_numpy(pixels[i:i + 1]).to(device), qa.preprocess_spec(False), dtype)
            raw = tower(pixel_values=px, output_hidden_states=True).hidden_states[-2][:, 1:]
            fused = mini.prefusion_full(m.prefusion, llm.model.rotary_emb,
                                        mini.encode_frames(raw, m.compressor, m.projector, 1), embeds, visible)
            vis.append(fused.vision_tokens[0])
            txt = fused.text[0].float() if txt is None else txt + fused.text[0].float()
        ref = mini.assemble_llm_inputs((txt / 4).to(dtype), ids_t, torch.cat(vis)).float()
        res["llm_inputs_rel_err_vs_naive"] = float((got - ref).norm() / ref.norm())

    if args.long:
        del caches
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        n = args.long
        big = pixels[np.arange(n) % Tmax]  # frames' content does not change timings
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        cache = qa.compress(SimpleNamespace(pixels=big, timestamps=np.arange(n, dtype=np.float64)), batch_size=32)
        sync()
        res["long_frames"] = n
        res["long_compress_ms_per_frame"] = 1000 * (time.perf_counter() - t0) / n
        first = next(iter(cache.tensors.values()))
        res["long_cache_device"] = str(first.device)
        res["long_cache_kind"] = cache.meta.get("cache_kind")
        res["long_cache_gb"] = cache.nbytes / 1e9
        res["long_kv_cache_would_be_gb"] = res["cache_bytes_per_frame"] * n / 1e9
        if device.type == "cuda":
            res["long_compress_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        res["long_question_ms"] = 1000 * timed(lambda: [None for _ in generate(llm, m.prefill(cache, "q"), gen1, set())], 1,
                                               warmup=0)
        if device.type == "cuda":
            res["long_question_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            res["long_question_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    lines = [f"device {res['device']}  torch {res['torch']}  transformers {res['transformers']}  {dtype}",
             f"compression: vidqa {res['vidqa_compress_ms_per_frame']:.2f} ms/frame; cache (pre-fusion K/V + token) "
             f"{res['cache_bytes_per_frame'] / 1e6:.2f} MB/frame (projected features would be "
             f"{res['projected_features_bytes_per_frame'] / 1e6:.2f} MB)"]
    for n in args.frames:
        v, nv = res[f"vidqa_question_ms_{n}"], res[f"naive_question_ms_{n}"]
        peak = f", peak GiB vidqa {res[f'vidqa_question_peak_gib_{n}']:.1f} / naive {res[f'naive_question_peak_gib_{n}']:.1f}" \
            if device.type == "cuda" else ""
        lines.append(f"question on {n} frames (to first token): vidqa {v:.1f} ms | naive official loop {nv:.1f} ms "
                     f"| {nv / v:.1f}x{peak}")
    lines.append(f"decoding ms/token: vidqa static+graph {shown(res, 'vidqa_graph_ms_per_token')} | "
                 f"transformers path {res['vidqa_hf_ms_per_token']:.2f} | floor {res['decode_floor_ms_per_token']:.2f}")
    lines.append(f"LLM input embeddings, vidqa vs naive loop: rel. err {res['llm_inputs_rel_err_vs_naive']:.2e}")
    compiled = (f"{res['vidqa_compress_compiled_ms_per_frame']:.2f} ms/frame (first run "
                f"{res['compile_compress_first_run_s']:.0f} s)" if "vidqa_compress_compiled_ms_per_frame" in res
                else "n/a (needs CUDA)")
    lines.append(f"compression breakdown: vision tower {res['vision_ms_per_frame']:.2f} ms/frame; compiled "
                 f"pre-fusion: {compiled}")
    if args.long:
        lines.append(f"{res['long_frames']} frames: compress {res['long_compress_ms_per_frame']:.2f} ms/frame, "
                     f"{res['long_cache_kind']} cache of {res['long_cache_gb']:.1f} GB on {res['long_cache_device']} "
                     f"(the K/V cache would be {res['long_kv_cache_would_be_gb']:.0f} GB), question "
                     f"{res['long_question_ms']:.0f} ms, peak GPU allocated {shown(res, 'long_question_peak_gib', '.1f')}"
                     f" GiB (reserved {shown(res, 'long_question_peak_reserved_gib', '.1f')}) during the question, "
                     f"{shown(res, 'long_compress_peak_gib', '.1f')} GiB during compression")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
