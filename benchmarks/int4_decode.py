"""int4 weight-only decoding at Vicuna-7B shapes: the compiled CUDA-graph step under inductor settings.

    python benchmarks/int4_decode.py --out OUT.json          # on a GPU
    python benchmarks/int4_decode.py --tiny                  # a CPU smoke run (eager; nothing compiled)

torchao int4 weight-only (``vidqa.quant``, group 128) on the LLM's layers; the 64-frame context is
compressed in bf16 first (the decode step's time does not depend on where the cache came from). Then
the decode step (``StaticDecoder``, compiled, in a CUDA graph) is timed under each variant:
``default`` (what vidqa does), ``stepwise`` (greedy steps not pipelined: a step, then the host's
argmax, per token, as before session 11), ``eager`` (the CUDA graph of the uncompiled step),
``eager_rope_apart`` (the same with RoPE by transformers' ops, not inside the attention kernel), ``fused``
(the compiled step with the fused layers of ``vidqa.int4.linear_fused``, which vidqa uses only uncompiled),
``coordinate_descent`` (inductor's coordinate-descent tuning of its generated kernels, as gpt-fast sets it)
and ``max_autotune`` (``mode="max-autotune-no-cudagraphs"``).
Reports ms/token (median of repeats) and the bandwidth floor of the bytes one step reads.
``--format tinygemm`` gives the LLM torchao's tinygemm instead of what vidqa ships for VoCo (``vidqa.int4``),
``--profile`` adds the GPU time per decode step by kernel (a whole answer's profile less its prefill and
first token): where a step's time goes beyond its matmuls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch._dynamo  # noqa: E402
import torch._inductor.config as inductor  # noqa: E402

PEAK_BYTES = 4.8e12  # H200


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--variants", default="default,coordinate_descent,max_autotune")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--format", choices=("shipped", "tinygemm"), default="shipped",
                    help="the LLM's int4 kernels: as vidqa ships them for VoCo, or torchao's tinygemm")
    ap.add_argument("--profile", action="store_true", help="GPU time per token by kernel (CUDA)")
    ap.add_argument("--kernel", choices=("auto", "mma", "fma"), default=None,
                    help="vidqa.int4 GEMV: by shape, the tensor-core kernel or the FMA kernel (default: vidqa's, auto)")
    args = ap.parse_args()
    import voco_speed
    from quant_speed import fused_bytes

    from vidqa import int4, quant
    from vidqa.generate import DecodeStats, GenerationConfig, StaticDecoder, generate

    if args.kernel:
        int4.KERNEL = args.kernel
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    qa = voco_speed.build(args.tiny, device, dtype, 1)[0]
    frames = 8 if args.tiny else 64
    size = 112 if args.tiny else 336
    pixels = np.random.default_rng(0).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    cache = qa.compress(SimpleNamespace(pixels=pixels, timestamps=np.arange(frames, dtype=np.float64)))
    if args.format == "tinygemm":
        qa.method.llm_compresses = False  # quant.quantize then gives the LLM torchao's tinygemm
    quant.quantize(qa.method, "int4")
    question = "what happens in this video?"
    gen = GenerationConfig(max_new_tokens=args.tokens)
    cap = 256 * -(-(frames + len(qa.method.prompt_ids(question)) + args.tokens) // 256)
    read = fused_bytes(qa.llm)
    res = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__, "frames": frames,
           "format": args.format, "kernel": int4.KERNEL,
           "bytes_per_token": read, "floor_ms_per_token": 1000 * read / PEAK_BYTES, "variants": {}}

    def run(decoder, config=gen):
        st = DecodeStats()
        for _ in generate(qa.llm, qa.method.prefill(cache, question), config, set(), st, decoder=decoder):
            pass
        return st

    for name in args.variants.split(","):
        torch._dynamo.reset()
        inductor.coordinate_descent_tuning = name == "coordinate_descent"
        try:
            if not cuda:
                d = None
            elif name.startswith("eager"):  # the CUDA graph, not compiled (what vidqa runs unless compiling)
                d = StaticDecoder(qa.llm, cap, compile=False)
                d.rope_in_attention = name != "eager_rope_apart"
            elif name == "max_autotune":
                d = StaticDecoder(qa.llm, cap, compile=False)
                d._run = torch.compile(d._pick, dynamic=False, mode="max-autotune-no-cudagraphs")
            else:  # "fused": with vidqa.int4's fused layers (int4.linear_fused), which vidqa leaves off when compiled
                d = StaticDecoder(qa.llm, cap, compile=True)
                d.fuse_int4 = name == "fused"
                if name == "stepwise":
                    d.greedy = stepwise(d)
            run(d)
            ms = statistics.median(run(d).ms_per_token for _ in range(args.repeats))
            res["variants"][name] = {"ms_per_token": ms, "share_of_bandwidth": res["floor_ms_per_token"] / ms}
            print(f"int4 decode {name} ({args.format}): {ms:.2f} ms/token (floor {res['floor_ms_per_token']:.2f} ms "
                  f"at 4.8 TB/s)", flush=True)
            if args.profile and cuda:
                one = GenerationConfig(max_new_tokens=1)
                res["variants"][name]["gpu_us_per_token"] = kernels_per_token(lambda: run(d), lambda: run(d, one),
                                                                              args.tokens)
                top = list(res["variants"][name]["gpu_us_per_token"].items())[:8]
                print(f"int4 decode {name} ({args.format}) GPU us/token: {top}", flush=True)
        except Exception as e:  # report, do not hide; the next variant still runs
            res["variants"][name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            print(f"int4 decode {name}: {res['variants'][name]['error']}", flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))


def stepwise(d):
    """``StaticDecoder.greedy`` as vidqa ran it before session 11: a step, then the host's argmax, per token (the
    GPU waits for the host's read and launch at every token)."""
    def greedy(token: int, position: int, steps: int):
        for i in range(steps):
            token = int(d.step(token, position + i).argmax())
            yield token
    return greedy


def kernels_per_token(run_all, run_one, tokens: int) -> dict:
    """GPU microseconds per decode step by kernel name, largest first, with their sum as ``total``: the
    profile of a whole answer (``tokens`` tokens) less that of its prefill and first token, over the
    ``tokens - 1`` steps between."""
    from voco_speed import gpu_us_by_kernel

    def by_name(fn) -> dict:  # names cut to 90 characters (C++ template names run to hundreds)
        out: dict = {}
        for name, us in gpu_us_by_kernel(fn).items():
            out[name[:90]] = out.get(name[:90], 0.0) + us
        return out

    full, first = by_name(run_all), by_name(run_one)
    steps = {k: (v - first.get(k, 0.0)) / max(1, tokens - 1) for k, v in full.items()}
    steps = {k: round(v, 2) for k, v in sorted(steps.items(), key=lambda kv: -kv[1]) if v > 0.005}
    return {"total": round(sum(steps.values()), 2), **steps}


if __name__ == "__main__":
    main()
