"""benchmarks/*.py --tiny: each runs as a subprocess, exits 0, and reports real numbers (none NaN).

The tiny runs are the same code as the GPU runs at small shapes, so a change that breaks a benchmark
(a moved import, a renamed field) fails here rather than on the device machine. On a CPU the
CUDA-only figures must say so ("n/a (needs CUDA)"), never print as nan. They start together
(one thread each: most of a tiny run is importing torch), so they cost the suite ~the longest one.
Every run is on the CPU (CUDA hidden from it), also on a GPU machine: the tolerances here are float32's
on a CPU (a GPU run is in bf16), and the CPU-only figures are asserted as such.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NAN = re.compile(r"\bnan\b", re.IGNORECASE)
NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?"
SCRIPTS = {"voco_speed.py": [], "mini_speed.py": [], "mini_long.py": [], "index_speed.py": ["--work", "{dir}"],
           "quant_speed.py": ["--modes", "int8"], "serve_profile.py": ["--profile-rows", "3"],
           "int4_decode.py": ["--variants", "default", "--tokens", "3", "--repeats", "1"], "search_hot.py": [], "int4_gemv.py": [],
           "fp8_compress.py": [], "decode_attention.py": [], "fp8_mlp.py": []}
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}  # torch.cuda.is_available() is False in the benchmark's process


@pytest.fixture(scope="module")
def started(tmp_path_factory) -> dict[str, tuple[subprocess.Popen, Path]]:
    """Every benchmark's --tiny run, started at once: {script: (process, its folder)}; the folder gets
    its stdout, stderr and JSON (files, not pipes: nobody reads a pipe while the others run)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **CPU_ONLY,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    runs = {}
    for script, extra in SCRIPTS.items():
        folder = tmp_path_factory.mktemp(script.removesuffix(".py"))
        args = [a.format(dir=folder) for a in extra] + ["--out", str(folder / "r.json")]
        with open(folder / "stdout", "w") as out, open(folder / "stderr", "w") as err:
            runs[script] = (subprocess.Popen([sys.executable, str(REPO / "benchmarks" / script), "--tiny", *args],
                                             cwd=REPO, env=env, stdout=out, stderr=err), folder)
    yield runs
    for proc, _ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run(started, script: str) -> tuple[str, dict]:
    """The script's stdout (rc 0, no nan in it) and the JSON it wrote (every number finite)."""
    proc, folder = started[script]
    proc.wait(timeout=300)
    out, err = (folder / "stdout").read_text(), (folder / "stderr").read_text()
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{out[-3000:]}\n{err[-3000:]}"
    assert not NAN.search(out), f"{script} printed nan:\n{out}"
    res = json.loads((folder / "r.json").read_text())
    assert numbers(res)
    return out, res


def numbers(value, where: str = "") -> list[float]:
    """Every number in a JSON value; each must be finite."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        assert math.isfinite(value), f"{where} is {value}"
        return [float(value)]
    items = value.items() if isinstance(value, dict) else enumerate(value)
    return [x for k, v in items for x in numbers(v, f"{where}.{k}")]


def line(out: str, start: str) -> str:
    found = [ln for ln in out.splitlines() if ln.startswith(start)]
    assert found, f"no line starting {start!r} in:\n{out}"
    return found[0]


def test_voco_speed_tiny(started):
    out, res = run(started, "voco_speed.py")
    assert res["tiny"] is True and res["frames"] == 8
    for key in ("naive_compress_b1_ms_per_frame", "naive_compress_b32_ms_per_frame", "vision_ms_per_frame",
                "reference_compress_ms_per_frame", "vidqa_hf_ms_per_token", "naive_ms_per_token", "vidqa_ttft_ms"):
        assert res[key] > 0, key
    assert all(v["ms_per_frame"] > 0 for v in res["vidqa_compress"].values())
    assert res["kv_rel_err_vs_naive"] < 1e-3 and res["kv_rel_err_vs_naive_same_batch"] < 1e-3  # float32 on CPU
    assert re.search(rf"compression ms/frame: vidqa {NUMBER} \(batch \d+", line(out, "compression ms/frame"))
    assert re.search(rf"time to first token from stored caches: 8 frames {NUMBER} ms", out)
    decoding = line(out, "decoding ms/token")
    assert re.search(rf"vidqa transformers path {NUMBER} \| naive generate {NUMBER}", decoding)
    assert "vidqa static+graph n/a (needs CUDA)" in decoding  # the run was on the CPU


def test_mini_speed_tiny(started):
    out, res = run(started, "mini_speed.py")
    assert res["tiny"] is True
    for n in (4, 8):
        assert res[f"vidqa_question_ms_{n}"] > 0 and res[f"naive_question_ms_{n}"] > 0
        assert re.search(rf"question on {n} frames \(to first token\): vidqa {NUMBER} ms \| naive official loop "
                         rf"{NUMBER} ms", out)
    assert res["llm_inputs_rel_err_vs_naive"] < 1e-3 and res["cache_bytes_per_frame"] > 0
    assert re.search(rf"transformers path {NUMBER}", line(out, "decoding ms/token"))
    assert "static+graph n/a (needs CUDA)" in out and "pre-fusion: n/a (needs CUDA)" in out  # on the CPU


def test_mini_long_tiny(started):
    out, res = run(started, "mini_long.py")
    assert json.loads(out) == res
    assert res["answered"] is True and res["frames"] == 24 and res["compress_ms_per_frame"] > 0
    assert res["context_tokens"] > res["frames"] and res["question_to_first_token_s"] > 0 and res["cache_gb"] > 0


def test_index_speed_tiny(started):
    out, res = run(started, "index_speed.py")
    assert len(res["index"]["indexed"]) == 2 and res["index"]["failed"] == [] and res["index_frames_per_s"] > 0
    assert res["indexed_hit"] is True and res["unindexed_hit"] is False and res["long_frames"] == 20
    assert res["naive_frames_per_s"] > 0 and res["ask_ttft_indexed_s"] > 0
    assert re.search(rf"index: {NUMBER} frames/s .* naive per-frame loop: {NUMBER} frames/s", out)
    assert re.search(rf"ask, 20-frame video, time to first token: indexed {NUMBER} s \| not indexed {NUMBER} s", out)


def test_benchmarks_run_on_the_cpu_whatever_the_machine_has():
    """The tolerances above are float32's on a CPU: a GPU machine's benchmark would run in bf16
    (kv_rel_err_vs_naive 0.0035 there). Hidden CUDA is what keeps the subprocesses off it."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           env={**os.environ, **CPU_ONLY}, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "False"


def test_quant_speed_tiny_reports_the_mini_long_question_with_the_cache_on_the_host(started):
    """LLaVA-Mini's long question: a few distinct frames compressed and tiled (said so in the JSON), the
    cache on the host; the 12 GB cap is CUDA's, so on the CPU its figures are null, never made up."""
    out, res = run(started, "quant_speed.py")
    assert res["tiny"] is True and res["device"] == "cpu"
    mini = res["mini"]["int4"]
    if "skipped" in mini:  # no torchao: the reason is reported instead
        pytest.skip(mini["skipped"])
    assert "error" not in mini, mini
    assert mini["long_frames"] == 8 and mini["long_question_s"] > 0 and mini["compress_ms_per_frame"] > 0
    assert mini["long_cache"] == {"distinct_frames": 4, "tiled_to": 8, "on": "cpu", "pinned": None,
                                  "gib": pytest.approx(mini["long_cache"]["gib"]), "kind": "kv"}
    assert mini["long_compress_s_estimated"] == pytest.approx(mini["compress_ms_per_frame"] * 8 / 1000)
    assert mini["long_fits_12gb"] is None and "long_peak_gib" not in mini
    capped = mini["long_12gb"]
    assert capped["cap_gib"] == 12.0
    assert all(capped[k] is None for k in ("fits", "question_s", "peak_allocated_gib", "peak_reserved_gib",
                                           "compress_fits", "compress_peak_allocated_gib"))
    assert "mini int4 " in out


def test_serve_profile_tiny_splits_the_first_request_and_the_search(started):
    """The first request's split per question, the LLM's forward at new prompt lengths with cuDNN
    attention allowed and not (on the CPU the switch changes nothing), and search step by step."""
    out, res = run(started, "serve_profile.py")
    first, search = res["first"], res["search"]
    assert res["device"] == "cpu" and first["warm_up_s"] > 0 and len(first["requests"]) == 5
    assert all(r["prompt_tokens"] > 0 and r["first_token_s"] > 0 for r in first["requests"])
    assert [s["cudnn_attention"] for s in first["llm_forward_new_lengths"]] == [True] * 4 + [False] * 4
    assert search["videos"] == 8 and search["batch_size"] == 64 and search["score_from_host_s"] > 0
    assert search["batch_copy_in_s"] >= 0 and search["batch_llm_forward_s"] > 0
    assert "Name" in search["profile_gpu"] and line(out, "search:")


def test_int4_decode_tiny_times_the_int4_decode_step(started):
    out, res = run(started, "int4_decode.py")
    v = res["variants"]["default"]
    if "error" in v and "torchao" in v["error"]:
        pytest.skip(v["error"])
    assert "error" not in v, v
    assert v["ms_per_token"] > 0 and res["bytes_per_token"] > 0 and line(out, "int4 decode default (shipped):")


def test_int4_gemv_tiny_checks_the_int4_format_and_times_each_implementation(started):
    """Our int4 format: dequant(quantize(w)) within the 4-bit bound, int4_linear bit-equal to F.linear on the
    dequantised weights, 0.53 bytes per weight; every eager implementation timed (CPU: no graph, no compile)."""
    out, res = run(started, "int4_gemv.py")
    assert res["tiny"] is True and res["device"] == "cpu" and res["group"] == 128
    q = res["quant"]
    assert 0 < q["dequant_f32_err_over_bound"] <= 1 and 0 < q["dequant_bf16_err_over_bound"] <= 1
    assert 0.5 < q["err_over_half_step"] <= 1 + 30 * 2 ** -8  # half a step (+ bf16's rounding of the scale)
    assert q["int4_linear_equals_linear_of_dequant"] is True
    assert all(err < 0.05 for errs in q["formulations_rel_err_vs_own_f32"].values() for err in errs.values())
    assert "int4 format: dequant error / bound" in out
    dims = {**res["shapes"], "lm_head": res["lm_head"]}
    for impl in ("bf16", "linear_eager", "grouped_eager", "factored_eager"):
        r = res["impls"][impl]
        assert "error" not in r, r
        assert r["ms_per_step"] > 0 and r["gb_per_s"] > 0 and r["floor_ms_per_step"] > 0
        assert re.search(rf"int4 gemv {impl}: {NUMBER} ms/step \({NUMBER} GB/s", line(out, f"int4 gemv {impl}:"))
        for name, (k, n) in dims.items():
            e = r["per_shape"][name]
            assert e["us_per_call"] > 0 and e["gb_per_s"] > 0
            bytes_per_weight = 2 if impl == "bf16" else 0.5 + 4 / 128  # packed nibbles + bf16 scale and zero
            assert e["bytes_per_call"] == k * n * bytes_per_weight
            if impl == "bf16":
                assert e["rel_err_vs_bf16"] == 0
            else:
                assert 0 < e["rel_err_vs_bf16"] < 0.3 and e["rel_err_vs_own_f32"] < 0.05
    ours = res["impls"]["linear_eager"]
    assert ours["bytes_per_step"] * 3.7 < res["impls"]["bf16"]["bytes_per_step"]
    ao = res["impls"]["torchao"]
    if "skipped" in ao:
        pytest.skip(ao["skipped"])
    assert "error" not in ao, ao
    assert ao["ms_per_step"] > 0 and all(0 < e["rel_err_vs_bf16"] < 0.3 for e in ao["per_shape"].values())
    assert res["torchao"] and "IntxWeightOnlyConfig" in res["torchao_config"]  # vidqa's CPU int4 config


def test_fp8_compress_tiny_runs_the_compression_plumbing(started):
    """On a CPU the script has no fp8 to time: it checks that its compression path runs (bf16, tiny shapes)."""
    out, res = run(started, "fp8_compress.py")
    assert res["device"] == "cpu" and "gemm" not in res
    assert res["compress"]["bf16"]["ms_per_frame_batch4"] > 0
    assert line(out, "fp8 compress bf16")


def test_fp8_mlp_tiny_times_the_reference_against_its_floor(started):
    """On a CPU without Triton's interpreter there is no kernel to launch: the eager reference is timed, with the
    bandwidth floor of the bytes it moves."""
    out, res = run(started, "fp8_mlp.py")
    assert (res["rows"], res["n"]) == (64, 1024) and res["floor_ms"] > 0
    assert list(res["variants"]) == ["reference_eager"] and res["variants"]["reference_eager"]["ms"] > 0
    assert line(out, "fp8 mlp reference_eager")


def test_search_hot_times_finding_held_caches(started):
    out, res = run(started, "search_hot.py")
    assert res["videos"] == 20 and len(res["indexed_hot_s"]) == 3 and all(t > 0 for t in res["indexed_hot_s"])
    assert line(out, "search_hot: 20 held videos")


def test_decode_attention_tiny_compares_the_plain_path_with_sdpa(started):
    """On the CPU the decode step's attention takes the plain path: every case is timed and equals SDPA."""
    out, res = run(started, "decode_attention.py")
    assert res["cases"] and all(not c["kernel"] and c["max_abs_diff"] == 0 for c in res["cases"])
    assert all(c["sdpa_us"] > 0 and c["kernel_us"] > 0 and c["min_bytes"] > 0 for c in res["cases"])
    assert out.count("decode attention ") == len(res["cases"])


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the Triton kernel on the CPU needs TRITON_INTERPRET=1")
def test_int4_sweep_launches_each_configuration_as_the_op_does():
    """benchmarks/int4_sweep.py's launcher (one fixed configuration of either of vidqa.int4's kernels) gives the
    op's product: the sweep times the kernels vidqa ships, with the arguments it passes."""
    pytest.importorskip("triton")
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import int4_sweep

    from vidqa import int4

    g = torch.Generator().manual_seed(0)
    packed, scale_zero = int4.pack((torch.randn(48, 512, generator=g) * 0.02).bfloat16(), 128)
    x = torch.randn(1, 512, generator=g).bfloat16()
    ref = x.float() @ int4.dequantize(packed, scale_zero, torch.float32).T
    for kernel, config in (("fma", (4, 512, 1, 1)), ("fma", (16, 256, 1, 2)), ("mma", (16, 2, 1, 2)),
                           ("mma", (32, 4, 1, 3))):
        y = torch.empty(1, 48, dtype=torch.bfloat16)
        int4_sweep.launcher(x, packed, scale_zero, y, config, kernel)()
        torch.testing.assert_close(y.float(), ref, rtol=2 ** -7, atol=1e-3 * float(ref.abs().max()))


def test_int4_sweep_says_it_needs_a_gpu_on_a_cpu():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "int4_sweep.py")], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode != 0 and "int4_sweep needs a CUDA GPU and Triton" in proc.stderr


def test_int4_sass_counts_the_gemv_loop_compiled_for_sm90(tmp_path):
    """benchmarks/int4_sass.py compiles vidqa.int4's kernel for sm_90 without a GPU and counts its loop."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "int4_sass.py"), "--config", "16,256,1,2",
                           "--out", str(tmp_path / "r.json")], cwd=REPO, capture_output=True, text=True, env=env)
    if proc.returncode and "ptxas" in proc.stderr:
        pytest.skip("this Triton cannot compile for sm_90 here")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((tmp_path / "r.json").read_text())["configs"]["16,256,1,2"]
    assert r["weights_per_thread_per_step"] == 16 * 256 // 32
    # each weight needs at least a shift, an AND/OR and an FMA; a loop with none of them was not found right
    assert 3 <= r["instructions_per_weight"] < 10 and r["top"].get("FFMA", 0) >= 128
    assert line(proc.stdout, "int4 sass fma 16,256,1,2")


def test_int4_sass_counts_the_tensor_core_gemv_loop(tmp_path):
    """--kernel mma: the tensor-core kernel's loop, with its mma instructions, under 5 instructions per weight."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "int4_sass.py"), "--kernel", "mma", "--config",
                           "32,4,4,3", "--out", str(tmp_path / "r.json")], cwd=REPO, capture_output=True, text=True,
                          env=env)
    if proc.returncode and "ptxas" in proc.stderr:
        pytest.skip("this Triton cannot compile for sm_90 here")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((tmp_path / "r.json").read_text())["configs"]["32,4,4,3"]
    assert r["weights_per_thread_per_step"] == 32 * 4 * 128 // (32 * 4)
    assert 1 <= r["instructions_per_weight"] < 5 and any(op.startswith("HMMA") for op in r["top"])
    assert line(proc.stdout, "int4 sass mma 32,4,4,3")
