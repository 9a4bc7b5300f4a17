"""fp8 compression's SiLU(gate) * up + row-wise float8 quantisation (``vidqa.fp8.silu_mul_quant``) alone, at
VoCo-7B's shape: a batch of 32 frames x 579 positions, Vicuna-7B's 11,008 intermediate columns.

    python benchmarks/fp8_mlp.py --out fp8_mlp.json           # on a CUDA GPU
    python benchmarks/fp8_mlp.py --tiny --out t.json          # a small shape (TRITON_INTERPRET=1 on a CPU)

Why: in session 13's compiled fp8 compression (H200) the kernel took 0.38 ms of a frame's 7.4 ms of GPU time,
against a 0.21 ms bandwidth floor; one program holds a whole row (its first launch: 16 warps, 32 values per
thread), which may leave too few warps resident per SM to hide the loads. Variants (``fp8.LAUNCH``): warps per row, 4-32 (session
13 also tried holding the product in bf16 between the row's max and the division: no change). Also timed: the float32
reference compiled by inductor (what torchao's down_proj runs) and eager.

Timing: CUDA events around ``--repeats`` calls after a warm-up, median per call; every variant's codes and
scales are checked bit for bit against the shipped launch. Floor: bytes (2N bf16 read, N float8 + a scale
written per row) over 4.8 TB/s (H200; pass ``--bandwidth`` for another GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int4_gemv import cpu_median_ms, cuda_median_ms  # noqa: E402

from vidqa import fp8  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Median ms per call: CUDA events on a GPU, the wall clock on the CPU."""
    return (cuda_median_ms if torch.cuda.is_available() else cpu_median_ms)(fn, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=32 * 579)
    ap.add_argument("--n", type=int, default=11008)
    ap.add_argument("--warps", default="4,8,16,32")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--bandwidth", type=float, default=4.8e12, help="bytes/s for the floor (H200: 4.8e12)")
    ap.add_argument("--tiny", action="store_true", help="64 rows x 1,024 (a CPU smoke run under the interpreter)")
    ap.add_argument("--out", default="fp8_mlp.json")
    args = ap.parse_args()
    if args.tiny:
        args.rows, args.n, args.repeats = 64, 1024, 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=device).manual_seed(0)
    gu = (torch.randn(args.rows, 2 * args.n, device=device, generator=g) * 3).to(torch.bfloat16)
    moved = args.rows * (2 * args.n * 2 + args.n + 4)
    floor_ms = moved / args.bandwidth * 1e3
    res = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
           "rows": args.rows, "n": args.n, "floor_ms": round(floor_ms, 4), "variants": {}}
    print(f"fp8 mlp {res['device']}: {args.rows} rows x {args.n}, floor {floor_ms:.3f} ms at "
          f"{args.bandwidth / 1e12:.1f} TB/s", flush=True)
    shipped = dict(fp8.LAUNCH)
    ref_q, ref_s = fp8.silu_mul_quant(gu)

    def report(name: str, ms: float, same: bool | None) -> None:
        res["variants"][name] = {"ms": round(ms, 4), "x_floor": round(ms / floor_ms, 2),
                                 "tb_per_s": round(moved / ms / 1e9, 2), "same_as_shipped": same}
        print(f"fp8 mlp {name}: {ms:.4f} ms ({ms / floor_ms:.2f}x floor, {moved / ms / 1e9:.2f} TB/s)"
              + ("" if same is None else f", same as shipped: {same}"), flush=True)

    if fp8.kernel_ok(gu):
        for w in (int(x) for x in args.warps.split(",")):
            fp8.LAUNCH.update(num_warps=w)
            q, s = fp8.silu_mul_quant(gu)
            same = torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8)) and torch.equal(s, ref_s)
            report(f"kernel_w{w}", timed(lambda: fp8.silu_mul_quant(gu), args.repeats), same)
        fp8.LAUNCH.update(shipped)
        report("kernel_shipped", timed(lambda: fp8.silu_mul_quant(gu), args.repeats), True)
    report("reference_eager", timed(lambda: fp8.silu_mul_quant_reference(gu), args.repeats), None)
    if device == "cuda":
        compiled = torch.compile(fp8.silu_mul_quant_reference, dynamic=False)
        report("reference_compiled", timed(lambda: compiled(gu), args.repeats), None)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
