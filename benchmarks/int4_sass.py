"""Instructions per weight in the main loop of ``vidqa.int4``'s GEMV, compiled for an H100/H200 (sm_90) here,
with no GPU: the count session 9 used to choose between versions of the kernel.

    python benchmarks/int4_sass.py                        # the launch configurations vidqa uses, 7B shapes
    python benchmarks/int4_sass.py --config 16,256,1,2    # BLOCK_N,BLOCK_K,warps,stages
    python benchmarks/int4_sass.py --out sass.json
    python benchmarks/int4_sass.py --kernel mma           # the tensor-core kernel at its configurations

Why: Nsight Compute showed the kernel bounded by the instructions it issues, not by memory (benchmarks/NOTES.md,
session 9), and the compiled code can be counted without a GPU: Triton compiles for sm_90 with its own ptxas
and ``cuobjdump`` disassembles the result. The kernel's arguments are specialised as on the device for 7B
shapes (pointers and sizes divisible by 16). The loop is the code from the first backward branch's target to
that branch; weights per thread per step = BLOCK_N x BLOCK_K / (32 x warps). The count depends on the Triton
version (the device has 3.6), which the output names. Needs Triton (CUDA builds of torch ship it; elsewhere
``pip install triton``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = {"qkv": (12288, 4096), "o_proj": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008)}  # (N, K)
SIGNATURE = {"x_ptr": "*bf16", "w_ptr": "*u8", "sz_ptr": "*bf16", "y_ptr": "*bf16", "N": "i32", "KW": "i32",
             "stride_xm": "i32", "stride_ym": "i32", "MASK": "i32", "ONE": "i32", "HIGH": "i32", "res_ptr": "*bf16",
             "stride_rm": "i32", "GROUP": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr",
             "RESID": "constexpr"}


MMA_SIGNATURE = {"x_ptr": "*bf16", "w_ptr": "*u8", "sz_ptr": "*bf16", "y_ptr": "*bf16", "N": "i32", "K": "i32",
                 "stride_xm": "i32", "stride_ym": "i32", "nw_ptr": "*bf16", "eps": "fp32", "res_ptr": "*bf16",
                 "stride_rm": "i32", "GROUP": "constexpr", "BLOCK_N": "constexpr", "KS": "constexpr",
                 "ASM": "constexpr", "NORM": "constexpr", "GLU": "constexpr", "RESID": "constexpr"}


def sass(block_n: int, block_k: int, warps: int, stages: int, group: int = 128, kernel: str = "fma") -> str:
    """The kernel's SASS for sm_90 at one launch configuration (for ``mma``, ``block_k`` is KS, groups a step)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from vidqa import int4

    if kernel == "mma":
        src = ASTSource(fn=int4._int4_mma_kernel, signature=MMA_SIGNATURE,
                        constexprs={"GROUP": group, "BLOCK_N": block_n, "KS": block_k, "ASM": True, "NORM": False,
                                    "GLU": False, "RESID": False},
                        attrs={(i,): [["tt.divisibility", 16]] for i in range(8)})
    else:
        src = ASTSource(fn=int4._int4_gemv_kernel, signature=SIGNATURE,
                        constexprs={"GROUP": group, "BLOCK_N": block_n, "BLOCK_K": block_k, "RESID": False},
                        attrs={(i,): [["tt.divisibility", 16]] for i in range(8)})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": warps, "num_stages": stages})
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        return subprocess.run([str(tool), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout


def loop_opcodes(text: str) -> list[str]:
    """The opcodes of the main loop: from the first backward branch's target to that branch."""
    lines = [(int(at, 16), op, rest) for at, op, rest in
             re.findall(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[0-9T] )?([A-Z0-9_.]+)([^;\n]*)", text)]
    for at, op, rest in lines:
        target = re.search(r"0x[0-9a-f]+", rest) if op.startswith("BRA") else None
        if target and int(target.group(), 16) < at:
            return [o for a, o, _ in lines if int(target.group(), 16) <= a <= at]
    raise RuntimeError("no loop found in the SASS")


def parse_config(text: str) -> tuple[int, int, int, int]:
    """``BLOCK_N,BLOCK_K,warps,stages`` as four positive integers (ValueError, one line, otherwise)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1:
        raise ValueError(f"a configuration is BLOCK_N,BLOCK_K,warps,stages (four positive integers), not {text!r}")
    return values


def count(config: tuple[int, int, int, int], kernel: str = "fma") -> dict:
    block_n, block_k, warps, stages = config
    ops = loop_opcodes(sass(*config, kernel=kernel))
    # the mma kernel's second number is groups (of 128 columns) per step
    per_thread = block_n * block_k * (128 if kernel == "mma" else 1) // (32 * warps)
    hist: dict[str, int] = {}
    for op in ops:
        hist[op] = hist.get(op, 0) + 1
    return {"config": list(config), "loop_instructions": len(ops), "weights_per_thread_per_step": per_thread,
            "instructions_per_weight": round(len(ops) / per_thread, 2),
            "top": dict(sorted(hist.items(), key=lambda kv: -kv[1])[:10])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", action="append", default=None,
                    help="BLOCK_N,BLOCK_K,warps,stages (mma: BLOCK_N,KS,warps,stages; repeatable)")
    ap.add_argument("--kernel", choices=("fma", "mma"), default="fma",
                    help="the FMA kernel or the tensor-core one (_int4_mma_kernel, its main loop without the fused parts)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.6's default (3.9 warns it will change)
    try:
        import triton
    except ImportError:
        sys.exit("int4_sass needs Triton (pip install triton)")
    from vidqa import int4

    if args.config:
        try:
            configs = {c: parse_config(c) for c in args.config}
        except ValueError as e:
            sys.exit(f"error: {e}")
    else:
        configs = {}
        for name, (n, k) in SHAPES.items():
            meta = int4.mma_config(n, k) if args.kernel == "mma" else int4.launch_config(n, k)
            configs[name] = (meta["BLOCK_N"], meta["KS" if args.kernel == "mma" else "BLOCK_K"], meta["num_warps"],
                             meta["num_stages"])
    res = {"triton": triton.__version__, "target": "sm_90", "kernel": args.kernel, "configs": {}}
    for name, config in configs.items():
        res["configs"][name] = count(config, args.kernel)
        r = res["configs"][name]
        print(f"int4 sass {args.kernel} {name} {tuple(config)}: {r['loop_instructions']} instructions per step, "
              f"{r['weights_per_thread_per_step']} weights per thread: {r['instructions_per_weight']} per weight "
              f"(Triton {triton.__version__})", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
