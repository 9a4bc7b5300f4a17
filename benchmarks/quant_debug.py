"""Where --quantize breaks on a GPU: each stage on its own, with the full traceback (a diagnosis aid).

    python benchmarks/quant_debug.py            # CUDA if present, tiny shapes, bf16

Stages per mode: torchao alone on one nn.Linear (forward); vidqa.quant.quantize_weight + a row slice;
quantize() on a tiny VoCo model; compression; prefill; decoding (transformers path, CUDA graph, compiled).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import voco_speed  # noqa: E402

from vidqa import quant  # noqa: E402
from vidqa.generate import DecodeStats, GenerationConfig, StaticDecoder, generate  # noqa: E402


def stage(name, fn):
    try:
        out = fn()
        print(f"  ok   {name}", flush=True)
        return out
    except Exception:
        print(f"  FAIL {name}", flush=True)
        traceback.print_exc(limit=12)
        sys.stderr.flush()
        return None


def main() -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    import torchao

    print("torch", torch.__version__, "torchao", torchao.__version__, device, flush=True)
    for mode in sys.argv[1:] or ["int8", "int4", "fp8"]:
        print(f"== {mode}", flush=True)
        try:
            quant.check(mode, device, dtype)
        except quant.QuantizeError as e:
            print("  skipped:", e)
            continue

        def alone():
            from torchao.quantization import quantize_

            lin = torch.nn.Linear(256, 512, bias=False, device=device, dtype=dtype)
            quantize_(lin, quant.config(mode, device, 256))
            return lin(torch.randn(3, 256, device=device, dtype=dtype))

        stage("torchao alone on nn.Linear", alone)

        def weight():
            w = torch.randn(512, 256, device=device, dtype=dtype)
            with torch.inference_mode():
                qw = quant.quantize_weight(w, mode)
                x = torch.randn(3, 256, device=device, dtype=dtype)
                y = torch.nn.functional.linear(x, qw)
                ys = torch.nn.functional.linear(x, quant.row_slice(qw, 128, 384))
            ref = x.float() @ w.float().T
            print("    type", type(qw).__name__, "rel", float((y.float() - ref).norm() / ref.norm()),
                  "slice rel", float((ys.float() - ref[:, 128:384]).norm() / ref[:, 128:384].norm()), flush=True)

        stage("quantize_weight + linear + row slice", weight)
        qa = stage("build tiny VoCo", lambda: voco_speed.build(True, device, dtype, 1)[0])
        if qa is None:
            continue
        if stage("quantize(method)", lambda: quant.quantize(qa.method, mode)) is None and \
                quant.quantized_mode(qa.method) != mode:
            continue
        px = np.random.default_rng(0).integers(0, 255, (4, 112, 112, 3), dtype=np.uint8)
        frames = SimpleNamespace(pixels=px, timestamps=np.arange(4.0))
        cache = stage("compress", lambda: qa.compress(frames, batch_size=4))
        if cache is None:
            continue
        pre = lambda: qa.method.prefill(cache, "what is this?")  # noqa: E731
        stage("prefill + transformers forward", lambda: qa.llm(**{k: v for k, v in vars(pre()).items()
                                                                  if k in ("input_ids", "inputs_embeds",
                                                                           "position_ids", "past_key_values")}))
        gen = GenerationConfig(max_new_tokens=4)

        def dec(kind):
            d = None
            if kind == "graph":
                d = qa.decoder(256)
            elif kind == "compiled":
                d = StaticDecoder(qa.llm, 256, compile=True)
            st = DecodeStats()
            toks = list(generate(qa.llm, pre(), gen, set(), st, decoder=d))
            return toks

        stage("decode transformers", lambda: dec("hf"))
        if device.type == "cuda":
            stage("decode CUDA graph", lambda: dec("graph"))
            stage("decode compiled", lambda: dec("compiled"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
