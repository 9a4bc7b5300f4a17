"""The decode step's one-query attention over a static KV cache: SDPA with a boolean mask (what
``StaticDecoder._step`` runs today) against ``vidqa.attention.decode_attention`` (split-K Triton kernels).

    python benchmarks/decode_attention.py --out decode_attention.json      # on a GPU (H200)
    python benchmarks/decode_attention.py --config 1,64,4,2 --config 16,32,4,3 --out sweep.json
                                        # also the kernels at fixed SPLITS,BLOCK_N,warps,stages
    python benchmarks/decode_attention.py --tiny --out t.json              # a CPU smoke run

Why: at Vicuna-7B's shapes (C = 256) SDPA with the mask takes 13.4 us per layer on an H200, 0.43 ms of a
3.1 ms decode step, for under a microsecond of valid K/V at 4.8 TB/s (``vidqa/attention.py``'s doc).

Cases: Vicuna-7B (32 heads, 32 KV heads) and Llama-3-8B (32 heads, 8 KV heads), head_dim 128, bf16; cache
capacity C in 256, 1024, 4096; valid length C (full) and C/4.

Timing on CUDA: per model and capacity, ``--layers`` (32) distinct K/V caches, so that the L2 does not serve
one call's K/V to the next (7B at C = 4096 is 64 MB per layer; at C = 256, 4 MB, 128 MB for 32 layers). One
CUDA graph of one call per layer, back to back as a decode step issues them (SDPA: the mask made once, as
``_step`` does), replayed at each length (the graph reads the length from a device tensor), timed with CUDA
events: median of ``--repeats`` replays / layers = us per call. ``min_bytes``: the valid K/V one call must
read (2 x Hkv x length x head_dim x 2 bytes), ``floor_us`` that at 4.8 TB/s; ``ratio`` = SDPA us / kernel us;
``max_abs_diff``: max |SDPA - kernel| over every layer's output. The step as ``StaticDecoder._step`` runs it,
with the new K/V written first: ``sdpa_step`` (index_copy_ of K and V, then SDPA with the mask: session 9's
step) against ``step`` (``vidqa.attention.decode_step``: the write, the attention and the combine in one
kernel); the new K/V are the cache's own at the last position, so the written values change nothing. ``--config``: also the kernels at fixed
SPLITS, BLOCK_N, warps and stages (``vidqa.attention.launch``; the op's own choice is ``splits``).
On the CPU (``--tiny``): small shapes, perf_counter medians, no graph, and ``decode_attention`` is the plain
path (SDPA with the mask), so the ratio says only that both ran.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from int4_gemv import cuda_median_ms, graph_of, overridden  # noqa: E402

from vidqa import attention  # noqa: E402

PEAK_BYTES = 4.8e12  # H200 HBM3e
MODELS = {"vicuna-7b": (32, 32, 128), "llama-3-8b": (32, 8, 128)}  # heads, KV heads, head_dim
FULL = {"capacities": [256, 1024, 4096], "layers": 32, "repeats": 50, "models": MODELS}
TINY = {"capacities": [64, 256], "layers": 2, "repeats": 3,
        "models": {"vicuna-7b": (4, 4, 64), "llama-3-8b": (4, 1, 64)}}  # the same structure, small
NA = "n/a (needs CUDA)"


def parse_config(text: str) -> tuple[int, int, int, int]:
    """``SPLITS,BLOCK_N,warps,stages`` as four positive integers (BLOCK_N a power of two, at least 16)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1 or values[1] < 16 or values[1] & (values[1] - 1):
        raise ValueError(f"a configuration is SPLITS,BLOCK_N,warps,stages (BLOCK_N a power of two >= 16), not {text!r}")
    return values


@contextlib.contextmanager
def kernel_settings(block_n: int, warps: int, stages: int):
    """``vidqa.attention``'s launch constants, for the calls made (and captured) inside."""
    saved = attention.BLOCK_N, attention.NUM_WARPS, attention.NUM_STAGES
    attention.BLOCK_N, attention.NUM_WARPS, attention.NUM_STAGES = block_n, warps, stages
    try:
        yield
    finally:
        attention.BLOCK_N, attention.NUM_WARPS, attention.NUM_STAGES = saved


# ---- timing -------------------------------------------------------------------------------------

def cpu_median_ms(fn, repeats: int) -> tuple[float, list]:
    """Median milliseconds of fn() (after one warm-up call) and its last outputs."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), out


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))


# ---- one model and capacity ---------------------------------------------------------------------

class Caches:
    """``layers`` distinct queries and K/V caches ``[1, Hkv, C, D]`` (bf16), and the length on the device."""

    def __init__(self, heads: int, kv_heads: int, head_dim: int, capacity: int, layers: int, device, seed: int):
        gen = torch.Generator(device=device).manual_seed(seed)

        def randn(*shape):
            return torch.randn(*shape, generator=gen, device=device).to(torch.bfloat16)

        self.q = [randn(1, heads, 1, head_dim) for _ in range(layers)]
        self.k = [randn(1, kv_heads, capacity, head_dim) for _ in range(layers)]
        self.v = [randn(1, kv_heads, capacity, head_dim) for _ in range(layers)]
        self.length = torch.ones(1, dtype=torch.long, device=device)
        # the step's new K/V: the cache's own at position length - 1 (``at``), so writing them changes nothing
        self.k_new = [randn(1, kv_heads, 1, head_dim) for _ in range(layers)]
        self.v_new = [randn(1, kv_heads, 1, head_dim) for _ in range(layers)]
        self.counters = torch.zeros(kv_heads, dtype=torch.int32, device=device)
        self.arange = torch.arange(capacity, device=device)
        self.scale = 1 / math.sqrt(head_dim)
        self.gqa = heads != kv_heads

    def sdpa(self) -> list[torch.Tensor]:
        """A decode step's attention as ``StaticDecoder._step`` runs it: one mask, then one SDPA per layer."""
        visible = (self.arange < self.length).view(1, 1, 1, -1)
        return [F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=self.scale, enable_gqa=self.gqa)
                for q, k, v in zip(self.q, self.k, self.v)]

    def at(self, length: int) -> None:
        for k, v, kn, vn in zip(self.k, self.v, self.k_new, self.v_new):
            kn.copy_(k[:, :, length - 1:length])
            vn.copy_(v[:, :, length - 1:length])

    def sdpa_step(self) -> list[torch.Tensor]:
        """Session 9's step: the new K/V written by index_copy_, one mask, one SDPA per layer."""
        slot = self.length - 1
        visible = (self.arange < self.length).view(1, 1, 1, -1)
        outs = []
        for q, k, v, kn, vn in zip(self.q, self.k, self.v, self.k_new, self.v_new):
            k.index_copy_(2, slot, kn)
            v.index_copy_(2, slot, vn)
            outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=self.scale,
                                                       enable_gqa=self.gqa))
        return outs

    def step(self) -> list[torch.Tensor]:
        """``vidqa.attention.decode_step``: the write, the attention and the combine in one kernel."""
        return [attention.decode_step(q, kn, vn, k, v, self.length, self.counters, self.scale)
                for q, k, v, kn, vn in zip(self.q, self.k, self.v, self.k_new, self.v_new)]

    def kernel(self) -> list[torch.Tensor]:
        return [attention.decode_attention(q, k, v, self.length, self.scale) for q, k, v in zip(self.q, self.k, self.v)]

    def fixed(self, config: tuple[int, int, int, int]):
        splits, block_n, warps, stages = config

        def step() -> list[torch.Tensor]:
            with kernel_settings(block_n, warps, stages):
                return [attention.launch(q, k, v, self.length, self.scale, splits)
                        for q, k, v in zip(self.q, self.k, self.v)]
        return step


def run_capacity(model: str, dims: tuple[int, int, int], capacity: int, sizes: dict, configs: dict,
                 cuda: bool) -> list[dict]:
    """Both lengths of one model and capacity (one graph per implementation, replayed at each length)."""
    heads, kv_heads, head_dim = dims
    layers, repeats = sizes["layers"], sizes["repeats"]
    device = torch.device("cuda" if cuda else "cpu")
    c = Caches(heads, kv_heads, head_dim, capacity, layers, device, seed=capacity)
    uses_kernel = attention.kernel_ok(c.q[0], c.k[0], c.v[0])
    impls = {"sdpa": c.sdpa, "kernel": c.kernel, "sdpa_step": c.sdpa_step, "step": c.step}
    if cuda and uses_kernel:
        impls.update({"config " + name: c.fixed(config) for name, config in configs.items()})
    c.at(1)
    graphs = {name: graph_of([fn]) for name, fn in impls.items()} if cuda else {}  # outputs: [fn's list]
    rows = []
    for length in (capacity, capacity // 4):
        c.length.fill_(length)
        c.at(length)
        us, outs = {}, {}
        for name, fn in impls.items():
            if cuda:
                graph, (outs[name],) = graphs[name]
                us[name] = 1000 * cuda_median_ms(graph.replay, repeats) / layers
            else:
                ms, outs[name] = cpu_median_ms(fn, repeats)
                us[name] = 1000 * ms / layers
        min_bytes = 2 * kv_heads * length * head_dim * 2
        row = {"model": model, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "capacity": capacity,
               "length": length, "layers": layers, "kernel": uses_kernel,
               "splits": attention.splits_for(capacity, kv_heads) if uses_kernel else None,
               "min_bytes": min_bytes, "floor_us": 1e6 * min_bytes / PEAK_BYTES,
               "sdpa_us": us["sdpa"], "kernel_us": us["kernel"], "ratio": us["sdpa"] / us["kernel"],
               "max_abs_diff": max_abs_diff(outs["sdpa"], outs["kernel"]),
               "sdpa_step_us": us["sdpa_step"], "step_us": us["step"], "step_ratio": us["sdpa_step"] / us["step"],
               "step_max_abs_diff": max_abs_diff(outs["sdpa"], outs["step"]),
               "configs": {name.removeprefix("config "): {"us": us[name],
                                                           "max_abs_diff": max_abs_diff(outs["sdpa"], outs[name])}
                           for name in impls if name.startswith("config ")}}
        rows.append(row)
        how = f"kernel, {row['splits']} splits" if uses_kernel else "plain path"
        fixed = "".join(f"; {name} {r['us']:.2f} us" for name, r in row["configs"].items())
        print(f"decode attention {model} C={capacity} length={length}: sdpa {row['sdpa_us']:.2f} us, "
              f"decode_attention {row['kernel_us']:.2f} us ({how}), ratio {row['ratio']:.2f}; floor "
              f"{row['floor_us']:.3f} us ({min_bytes / 1e6:.2f} MB); max |diff| {row['max_abs_diff']:.2e}; with the "
              f"new K/V written: index_copy + sdpa {row['sdpa_step_us']:.2f} us, decode_step {row['step_us']:.2f} us "
              f"(ratio {row['step_ratio']:.2f}, max |diff| {row['step_max_abs_diff']:.2e}){fixed}",
              flush=True)
    del graphs, c
    if cuda:
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="small shapes (a CPU smoke run)")
    ap.add_argument("--out", default=None, help="JSON file with every figure (written after each capacity)")
    ap.add_argument("--config", action="append", default=[], help="SPLITS,BLOCK_N,warps,stages: also the kernels "
                                                                   "at this fixed configuration (CUDA; repeatable)")
    ap.add_argument("--layers", type=int, default=None, help="distinct caches per case (32; tiny 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed graph replays, median (50; tiny 3)")
    args = ap.parse_args()
    sizes = overridden(TINY if args.tiny else FULL, args, ("layers", "repeats"))
    try:
        configs = {text: parse_config(text) for text in args.config}
    except ValueError as e:
        sys.exit(f"error: {e}")
    cuda = torch.cuda.is_available()
    if configs and not (cuda and attention.launch is not None):
        print(f"decode attention --config: {NA} and Triton", flush=True)
    torch.manual_seed(0)
    res = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
           "triton": attention.triton.__version__ if attention.triton is not None else None, "tiny": args.tiny,
           "sizes": {k: v for k, v in sizes.items() if k != "models"}, "models": sizes["models"],
           "dtype": "bf16", "peak_bytes_per_s": PEAK_BYTES,
           "kernel": {"BLOCK_N": attention.BLOCK_N, "num_warps": attention.NUM_WARPS,
                      "num_stages": attention.NUM_STAGES, "sms": attention.SMS},
           "timing": ("CUDA graph of one call per layer, CUDA events, median of replays / layers" if cuda else
                      "CPU perf_counter, median / layers, no graph; decode_attention is the plain path (" + NA + ")"),
           "cases": []}
    with torch.inference_mode():
        for model, dims in sizes["models"].items():
            for capacity in sizes["capacities"]:
                res["cases"] += run_capacity(model, dims, capacity, sizes, configs, cuda)
                if args.out:  # after each capacity: what a cut-off run measured is kept
                    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
