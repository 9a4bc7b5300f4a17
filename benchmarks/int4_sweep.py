"""Where ``vidqa.int4``'s GEMV loses time: every launch configuration, timed per shape, on a GPU.

    python benchmarks/int4_sweep.py --out sweep.json                      # the sweep (H200: ~3 minutes)
    python benchmarks/int4_sweep.py --only 16,1024,4,2 --shape gate_up    # one configuration, 3 launches
                                                                          # (for ``ncu``; nothing timed)

Why: ``vidqa.int4``'s kernel autotunes over a dozen configurations and reached 25% of an H200's bandwidth
(session 9's first version, ``int4_gemv.py``); this times each configuration of a wider grid (rows per program, K per
step, warps, pipeline stages) on Vicuna-7B's four decode-step shapes, each as a CUDA graph of 32 calls on 32
distinct weights (none stays in the L2), so the best one per shape, and whether any is near the bandwidth,
is seen rather than guessed. Reports per shape the five fastest configurations (microseconds per call,
GB/s of the weights as stored) and the step the best per shape would make (32 layers x 4 shapes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from int4_gemv import PEAK_BYTES, cuda_median_ms, graph_of, random_weights, shapes  # noqa: E402
from int4_sass import parse_config  # noqa: E402

from vidqa import int4  # noqa: E402

GRID = [  # (BLOCK_N, BLOCK_K, warps, stages)
    (4, 2048, 4, 1), (4, 1024, 2, 1), (8, 1024, 4, 1), (8, 2048, 8, 1), (8, 512, 2, 2), (16, 512, 4, 2),
    (16, 1024, 4, 2), (32, 256, 2, 2), (32, 512, 4, 2), (16, 256, 1, 2), (8, 256, 1, 2), (64, 256, 4, 2),
    (8, 1024, 4, 3), (4, 512, 1, 2), (16, 128, 1, 2), (32, 128, 1, 2), (32, 256, 1, 2), (64, 256, 2, 2),
    (64, 128, 1, 2), (32, 512, 2, 2), (16, 256, 1, 3), (32, 256, 1, 3), (16, 512, 2, 2), (2, 1024, 1, 1),
]


MMA_GRID = [  # (BLOCK_N, KS (groups per step, split between the warps), warps, stages) of the tensor-core kernel
    (16, 4, 4, 3), (16, 4, 4, 2), (16, 4, 4, 4), (32, 4, 4, 3), (32, 4, 4, 2), (16, 8, 4, 3), (16, 8, 8, 3),
    (32, 8, 8, 3), (16, 2, 2, 3), (32, 2, 2, 3), (16, 4, 2, 3), (64, 4, 4, 3), (64, 2, 2, 3), (16, 8, 8, 2),
    (16, 16, 8, 3), (8, 8, 4, 3),
]


def launcher(x, packed, scale_zero, y, config, kernel="fma"):
    """A zero-argument call of one of the kernels with one fixed configuration, as the op launches it."""
    group = 2 * packed.shape[1] // scale_zero.shape[1]
    if kernel == "mma":
        bn, ks, warps, stages = config
        meta = {"BLOCK_N": bn, "KS": ks, "num_warps": warps, "num_stages": stages}
    else:
        bn, bk, warps, stages = config
        if bk < group:
            raise ValueError("BLOCK_K below the group")
        meta = {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages}
    return lambda: int4._launch(x, packed, scale_zero, y, kernel, meta, lambda fn: fn)


def weights(n, k, count, device, seed):
    """``count`` random bf16 weights (``int4_gemv.random_weights``) in vidqa.int4's format."""
    return [int4.pack(w, 128) for w in random_weights(n, k, count, device, seed)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--only", default=None, help="BLOCK_N,BLOCK_K,warps,stages: launch it 3 times (for ncu)")
    ap.add_argument("--shape", default="gate_up", choices=tuple(shapes(4096, 11008)))
    ap.add_argument("--budget-s", type=float, default=240)
    ap.add_argument("--kernel", choices=("fma", "mma"), default="fma",
                    help="fma: session 9's kernel (BLOCK_N,BLOCK_K,warps,stages); mma: the tensor-core kernel "
                         "(BLOCK_N,KS,warps,stages)")
    args = ap.parse_args()
    try:
        only = parse_config(args.only) if args.only else None
    except ValueError as e:
        sys.exit(f"error: {e}")
    if not torch.cuda.is_available() or int4.triton is None:
        sys.exit("int4_sweep needs a CUDA GPU and Triton")
    dev = torch.device("cuda")
    dims = shapes(4096, 11008)
    if only:
        k, n = dims[args.shape]
        packed, sz = weights(n, k, 1, dev, 0)[0]
        x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
        y = torch.empty(1, n, device=dev, dtype=torch.bfloat16)
        call = launcher(x, packed, sz, y, only, args.kernel)
        for _ in range(3):
            call()
        torch.cuda.synchronize()
        return
    t0 = time.monotonic()
    grid = MMA_GRID if args.kernel == "mma" else GRID
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "layers": args.layers,
           "kernel": args.kernel, "shapes": {}, "grid": grid}
    for si, (name, (k, n)) in enumerate(dims.items()):
        ws = weights(n, k, args.layers, dev, si)
        x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
        ref = x.float() @ int4.dequantize(*ws[0], torch.float32).T
        nbytes = sum(t.numel() * t.element_size() for t in ws[0])
        rows = []
        for config in grid:
            if time.monotonic() - t0 > args.budget_s:
                break
            ys = [torch.empty(1, n, device=dev, dtype=torch.bfloat16) for _ in ws]
            try:
                calls = [launcher(x, p, s, y, config, args.kernel) for (p, s), y in zip(ws, ys)]
                calls[0]()
                err = float((ys[0].float() - ref).abs().max() / ref.abs().max())
                graph, _ = graph_of(calls)
                us = 1000 * cuda_median_ms(graph.replay, args.repeats) / len(calls)
                del graph
            except Exception as e:  # a configuration that does not compile or fit says so
                rows.append({"config": config, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                continue
            rows.append({"config": config, "us_per_call": round(us, 2), "gb_per_s": round(nbytes / us / 1e3),
                         "share_of_peak": round(nbytes / us / 1e3 * 1e9 / PEAK_BYTES, 3), "rel_err": err})
        ok = sorted((r for r in rows if "us_per_call" in r), key=lambda r: r["us_per_call"])
        res["shapes"][name] = {"k": k, "n": n, "bytes": nbytes, "best": ok[:5], "all": rows}
        print(f"int4 sweep {args.kernel} {name} [{n}x{k}]: " + "; ".join(
            f"{tuple(r['config'])} {r['us_per_call']:.1f} us {r['gb_per_s']} GB/s" for r in ok[:5]), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
    best = {n: s["best"][0] for n, s in res["shapes"].items() if s["best"]}
    if len(best) == len(dims):
        step_ms = sum(args.layers * b["us_per_call"] for b in best.values()) / 1000
        total = sum(args.layers * s["bytes"] for s in res["shapes"].values())
        res["best_step_ms"] = step_ms
        res["best_step_share_of_peak"] = total / (step_ms / 1000) / PEAK_BYTES
        print(f"int4 sweep: best per shape -> {step_ms:.3f} ms/step ({100 * res['best_step_share_of_peak']:.0f}% "
              f"of 4.8 TB/s)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
