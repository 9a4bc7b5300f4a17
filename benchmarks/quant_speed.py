"""--quantize speed, memory and agreement at VoCo-7B (Vicuna-7B + CLIP-L/336) and LLaVA-Mini-8B shapes, random weights.

    python benchmarks/quant_speed.py --out quant.json       # on a GPU (torchao installed from its wheel)
    python benchmarks/quant_speed.py --tiny --out q.json    # a CPU smoke run of the same code

Every mode loads the same random weights (seed 0) and is compared with the unquantised model:
  compression   VoCo ms/frame (CLIP + projector + LLM K/V at the VoCo positions) per mode; floor =
                FLOPs / 800 TFLOP/s (bf16, int8, int4: their matmuls run in bf16) or / 1600 (fp8).
  decoding      ms/token through the CUDA-graph decoder (and compiled with --compile); floor = bytes of
                the weights read per token (the quantised tensors' own storage) / 4.8 TB/s.
  agreement     relative error (Frobenius) of the VoCo K/V and of the first-token logits against the
                unquantised model on the same frames and question.
  LLaVA-Mini    int4: compression ms/frame; a --long (1,000) frame question with the cache on the host
                (pinned; 64 distinct frames compressed and tiled to 1,000, said so in ``long_cache``):
                its seconds and peak GPU memory, then again under a 12 GiB cap of PyTorch's GPU memory
                (``long_12gb``, ``long_fits_12gb``: does it run on a 12 GB GPU; null on a CPU).
Modes that cannot run here (fp8 without compute capability 8.9; every mode without torchao) are
reported with the reason. H200 figures: 4.8 TB/s, 800 TFLOP/s dense bf16 sustained, 1600 fp8.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import mini_speed  # noqa: E402 (the LLaVA-Mini-8B build)
import voco_speed  # noqa: E402 (the VoCo-7B build and the shared helpers)
from voco_speed import sizes, sync, timed  # noqa: E402

from vidqa import fast, quant  # noqa: E402
from vidqa.options import ComputeOptions  # noqa: E402
from vidqa.generate import DecodeStats, GenerationConfig, StaticDecoder, generate  # noqa: E402

PEAK_BYTES = 4.8e12
PEAK_FLOPS = {"none": 800e12, "int8": 800e12, "int4": 800e12, "fp8": 1600e12}
FULL = {"frames": 64, "batch": 16, "new_tokens": 64, "repeats": 3, "long": 1000}
TINY = {"frames": 4, "batch": 4, "new_tokens": 4, "repeats": 1, "long": 8}
MINI_DISTINCT = {False: 64, True: 4}  # frames LLaVA-Mini compresses; its --long cache tiles them
QUESTION = "what happens after the door opens?"


def weight_bytes(module) -> int:
    """Bytes of every parameter as stored (a torchao tensor counts its inner tensors)."""
    total = 0
    for p in module.parameters():
        t = p.data if isinstance(p, torch.nn.Parameter) else p
        if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor:
            names, _ = t.__tensor_flatten__()
            total += sum(getattr(t, n).numel() * getattr(t, n).element_size() for n in names)
        else:
            total += t.numel() * t.element_size()
    return total


def fused_bytes(llm) -> int:
    """Bytes read per decoded token: the layers' weights (fused Q/K/V and gate/up as the decoder reads
    them) plus the final norm and lm_head (the embedding row is negligible)."""
    return weight_bytes(llm) - weight_bytes(llm.model.embed_tokens)


def first_logits(qa, cache) -> torch.Tensor:
    m = qa.method
    with torch.inference_mode():
        pre = m.prefill(cache, QUESTION)
        out = qa.llm(input_ids=pre.input_ids, inputs_embeds=pre.inputs_embeds, position_ids=pre.position_ids,
                     **fast.cache_kwargs(pre.past_key_values))
    return out.logits[0, -1].float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    b = b.to(a.device)  # the reference is kept on the host
    return float((a.float() - b.float()).norm() / b.float().norm())


def store_read(qa, cache, frames: int) -> dict:
    """Seconds to read a ``frames``-frame cache from the store onto the model's device (the file in the
    page cache, as for an indexed video asked again), stored in the model's dtype and with
    ``--cache-dtype fp8`` (decoded on the device), median of 3; and the bytes each entry holds."""
    import dataclasses
    import tempfile

    from vidqa import library
    from vidqa.store import Store
    from vidqa.video import Sampling

    big = cache.select([i % cache.num_frames for i in range(frames)]).to("cpu")
    picked = SimpleNamespace(indices=list(range(frames)))
    out = {"frames": frames}
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "v.mp4"
        video.write_bytes(b"not decoded: the store keys on the file's content")
        for cache_dtype in ("auto", "fp8"):
            store = Store(Path(tmp) / cache_dtype)
            qa.compute = dataclasses.replace(qa.compute or ComputeOptions(), cache_dtype=cache_dtype)
            settings = library.cache_settings(qa, Sampling(fps=1.0))
            key = store.key(video, settings)
            library.put(store, key, video, settings, big, picked, qa.model_id)
            nbytes = sum(f.stat().st_size for f in (Path(tmp) / cache_dtype).rglob("*") if f.is_file())
            times = []
            for _ in range(4):
                t0 = time.perf_counter()
                got = library.stored(qa, store, key, settings)
                got = got.to(qa.device)
                sync()
                times.append(time.perf_counter() - t0)
            out[cache_dtype] = {"read_s": statistics.median(times[1:]), "store_bytes_total": nbytes}
            assert got.num_frames == frames
        qa.compute = dataclasses.replace(qa.compute, cache_dtype="auto")
    return out


def voco_mode(mode: str, args, device, dtype, pixels, ref: dict | None) -> dict:
    """Build VoCo-7B (seed 0), quantise it to ``mode``, time compression and decoding."""
    qa, _, llm_cfg, clip_cfg = voco_speed.build(args.tiny, device, dtype, tokens_per_frame=1)
    res: dict = {}
    if mode != "none":
        quant.quantize(qa.method, mode)
    qa.quantize = mode
    T = len(pixels)
    frames = SimpleNamespace(pixels=pixels, timestamps=np.arange(T, dtype=np.float64))
    s = timed(lambda: qa.compress(frames, batch_size=args.batch), args.repeats)
    res["compress_ms_per_frame"] = 1000 * s / T
    cache = qa.compress(frames, batch_size=args.batch)
    n_tok = qa.vision.num_patches + 3  # BOS, patches, "\n", <voco>
    llm_params = sum(p.numel() for p in qa.llm.model.layers.parameters())
    clip_params = sum(p.numel() for p in qa.vision.parameters()) if hasattr(qa.vision, "parameters") else 0
    flops = 2 * llm_params * n_tok + 2 * clip_params * (qa.vision.num_patches + 1)
    res["compress_tflop_per_frame"] = flops / 1e12
    res["compress_floor_ms_per_frame"] = 1000 * flops / PEAK_FLOPS[mode]
    res["cache_bytes_per_frame"] = cache.bytes_per_frame
    res["cache_fp8_bytes_per_frame"] = quant.encode_cache(cache).bytes_per_frame
    logits = first_logits(qa, cache)
    if ref is not None:
        res["kv_rel_err"] = {k: rel(cache.tensors[k], ref["cache"].tensors[k]) for k in ("keys", "values")}
        res["first_logits_rel_err"] = rel(logits, ref["logits"])
        res["first_token_agrees"] = int(logits.argmax()) == int(ref["logits"].argmax())
    else:
        ref = {"cache": cache.to("cpu"), "logits": logits}
        res["store_read"] = store_read(qa, cache, args.long)
        dec = quant.decode_cache(quant.encode_cache(cache))
        res["cache_fp8_kv_rel_err"] = {k: rel(dec.tensors[k], cache.tensors[k]) for k in ("keys", "values")}
        res["cache_fp8_first_logits_rel_err"] = rel(first_logits(qa, dec), logits)

    # decoding: the CUDA-graph decoder (the transformers path on a CPU)
    gen = GenerationConfig(max_new_tokens=args.new_tokens)
    ctx = T + len(qa.method.prompt_ids(QUESTION)) + args.new_tokens

    def run(decoder):
        st = DecodeStats()
        for _ in generate(qa.llm, qa.method.prefill(cache, QUESTION), gen, set(), st, decoder=decoder):
            pass
        return st

    cap = 256 * -(-ctx // 256)  # as VideoQA.decoder sizes it; built here to time eager and compiled apart
    decoders = [("graph", StaticDecoder(qa.llm, cap, compile=False))] if device.type == "cuda" else [("hf", None)]
    if args.compile and device.type == "cuda":
        decoders.append(("graph_compiled", StaticDecoder(qa.llm, cap, compile=True)))
    for name, d in decoders:
        try:
            run(d)
            res[f"decode_{name}_ms_per_token"] = statistics.median(run(d).ms_per_token for _ in range(args.repeats))
        except Exception as e:  # report, do not hide
            traceback.print_exc(limit=8)
            res[f"decode_{name}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    read = fused_bytes(qa.llm)
    res["decode_weight_bytes_per_token"] = read
    res["decode_floor_ms_per_token"] = 1000 * read / PEAK_BYTES
    if device.type == "cuda":
        res["weights_gib"] = weight_bytes(qa.method) / 2**30
    del qa, cache
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res, ref


def mini_mode(mode: str, args, device, dtype, pixels) -> dict:
    """LLaVA-Mini-8B in ``mode``: compression ms/frame on ``pixels`` (distinct frames), then an ``args.long``-frame
    question with the cache on the host (pinned), once as it comes and once under a 12 GiB cap of the GPU
    memory (``long_12gb``)."""
    qa, _, llm_cfg = mini_speed.build(args.tiny, device, dtype)
    if mode != "none":
        quant.quantize(qa.method, mode)
    res = {"weights_gib": weight_bytes(qa.method) / 2**30 + weight_bytes(qa.vision.tower) / 2**30
           if hasattr(qa.vision, "tower") else weight_bytes(qa.method) / 2**30}
    n0 = min(len(pixels), MINI_DISTINCT[args.tiny])
    frames = lambda n: SimpleNamespace(pixels=pixels[:n], timestamps=np.arange(n, dtype=np.float64))  # noqa: E731
    res["compress_ms_per_frame"] = 1000 * timed(lambda: qa.compress(frames(n0), batch_size=args.batch),
                                                args.repeats) / n0
    n = args.long
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    # the long cache: n0 distinct frames compressed to the host, tiled to n frames (a question's cost does not
    # depend on what the frames show; compressing all n would cost n x compress_ms_per_frame, estimated below)
    t0 = time.perf_counter()
    distinct = qa.compress(frames(n0), batch_size=args.batch, offload=cuda)
    res["long_compress_distinct_s"] = time.perf_counter() - t0
    if cuda:
        res["long_compress_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    cache = tiled(distinct, n)
    del distinct
    res["long_cache"] = {"distinct_frames": n0, "tiled_to": n, "on": str(next(iter(cache.tensors.values())).device),
                         "pinned": all(t.is_pinned() for t in cache.tensors.values()) if cuda else None,
                         "gib": cache.nbytes / 2**30, "kind": cache.meta.get("cache_kind")}
    res["long_compress_s_estimated"] = res["compress_ms_per_frame"] * n / 1000  # all n frames compressed
    res["long_frames"] = n
    res.update(long_question(qa, cache, device))
    res["long_12gb"] = long_question_capped(qa, cache, device, 12 * 2**30,
                                            compress=lambda: qa.compress(frames(n0), batch_size=args.batch,
                                                                         offload=cuda))
    cap = res["long_12gb"]  # both steps a 12 GB GPU runs: compressing a batch, and the question
    res["long_fits_12gb"] = None if cap["fits"] is None else bool(cap["fits"] and cap["compress_fits"])
    del qa, cache
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return res


def tiled(cache, n: int):
    """``cache``'s frames repeated to ``n`` frames, on the host (pinned when CUDA is there), timestamps 0..n-1."""
    import dataclasses

    big = cache.to("cpu").select([i % cache.num_frames for i in range(n)])
    if torch.cuda.is_available():
        big = dataclasses.replace(big, tensors={k: v.pin_memory() for k, v in big.tensors.items()})
    meta = {**big.meta, "frame_indices": list(range(n))}
    return dataclasses.replace(big, timestamps=[float(i) for i in range(n)], meta=meta)


def long_question(qa, cache, device) -> dict:
    """Seconds to the end of 8 answer tokens for ``cache`` (streamed to the GPU by ``prefill`` in chunks), and
    the GPU memory it peaked at (allocated and reserved by PyTorch, the weights included)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in generate(qa.llm, qa.method.prefill(cache, QUESTION), GenerationConfig(max_new_tokens=8), set()):
        pass
    sync()
    out = {"long_question_s": time.perf_counter() - t0}
    if cuda:
        out["long_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["long_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return out


def long_question_capped(qa, cache, device, cap: int, compress=None) -> dict:
    """``long_question`` (and ``compress()``, a batch of frames, when given) with PyTorch's share of the GPU
    capped at ``cap`` bytes (``torch.cuda.set_per_process_memory_fraction``, set back to 1 after): does a GPU
    of that size answer? On a CPU there is no cap to set: every figure is null. The CUDA context (a few
    hundred MB on a real card) is outside the cap."""
    res: dict = {"cap_gib": cap / 2**30, "fits": None, "question_s": None, "peak_allocated_gib": None,
                 "peak_reserved_gib": None}
    if compress is not None:
        res.update(compress_fits=None, compress_peak_allocated_gib=None)
    if device.type != "cuda":
        return res
    device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory
    res["cap_fraction"] = cap / total
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
    try:
        if compress is not None:
            _, err = under_cap(lambda: compress() and None)  # the batch's cache is dropped at once
            res.update(compress_fits=err is None, compress_peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30)
            if err:
                res["compress_error"] = err
        got, err = under_cap(lambda: long_question(qa, cache, device))
        res.update(fits=err is None, peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
                   peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30)
        if err:
            res["error"] = err
        else:
            res["question_s"] = got["long_question_s"]
    finally:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    return res


def under_cap(fn):
    """``(fn(), None)``, or ``(None, the error's first line)`` when the GPU ran out of memory; the peak
    statistics start from this call."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        got = fn()
        sync()
        return got, None
    except (torch.OutOfMemoryError, RuntimeError) as e:  # some kernels (cuBLAS workspaces) raise a plain one
        if not isinstance(e, torch.OutOfMemoryError) and "out of memory" not in str(e).lower():
            raise
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="small shapes and sizes, for a CPU smoke run")
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--long", type=int, default=None, help="frames of the LLaVA-Mini long question")
    ap.add_argument("--modes", nargs="+", default=["fp8", "int8", "int4"])
    ap.add_argument("--mini-modes", nargs="*", default=["int4"])
    ap.add_argument("--compile", action="store_true", help="also the compiled CUDA-graph decoder")
    ap.add_argument("--no-voco", action="store_true", help="only the LLaVA-Mini modes")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    sizes(args, FULL, TINY)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        import torchao

        tao = torchao.__version__
    except ImportError:
        tao = None
    res: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
                 "torchao": tao, "dtype": str(dtype), "tiny": args.tiny, "frames": args.frames,
                 "floors": {"bytes_per_s": PEAK_BYTES, "flops_per_s": PEAK_FLOPS}, "voco": {}, "mini": {}}
    g = torch.Generator().manual_seed(0)
    size = 112 if args.tiny else 336
    count = max(args.frames, min(args.long, MINI_DISTINCT[args.tiny]))  # the long caches tile these
    pixels = torch.randint(0, 256, (count, size, size, 3), dtype=torch.uint8, generator=g).numpy()
    ref = None
    for mode in [] if args.no_voco else ["none", *args.modes]:
        try:
            quant.check(mode, device, dtype)
        except quant.QuantizeError as e:
            res["voco"][mode] = {"skipped": str(e)}
            continue
        t0 = time.perf_counter()
        try:
            res["voco"][mode], r = voco_mode(mode, args, device, dtype, pixels[:args.frames], ref)
        except Exception as e:  # report, do not hide; the other modes still run
            traceback.print_exc(limit=8)
            res["voco"][mode], r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}, None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        res["voco"][mode]["seconds"] = round(time.perf_counter() - t0, 1)
        ref = ref or r
        print(mode, json.dumps(res["voco"][mode]), flush=True)
    for mode in args.mini_modes:
        try:
            quant.check(mode, device, dtype)
        except quant.QuantizeError as e:
            res["mini"][mode] = {"skipped": str(e)}
            continue
        try:
            res["mini"][mode] = mini_mode(mode, args, device, dtype, pixels[:min(args.long, MINI_DISTINCT[args.tiny])])
        except Exception as e:  # report, do not hide
            traceback.print_exc(limit=8)
            res["mini"][mode] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        print("mini", mode, json.dumps(res["mini"][mode]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
