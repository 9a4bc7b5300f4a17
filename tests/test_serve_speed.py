"""benchmarks/serve_speed.py --tiny: the GPU benchmark's code runs on the CPU at small shapes and writes JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_serve_speed_tiny(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_speed.py"), "--tiny", "--out", str(tmp_path),
                        "--parts", "ttft,concurrent,search,mini"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "serve_speed.json").read_text())
    t = res["ttft"]
    assert t["frames"] == 16 and t["first_request"]["from_cache"] and t["cold_index_request"]["from_cache"] is False
    assert t["preloaded_entries"] == 1  # the restarted server read the stored cache before it was ready
    first = t["first_request"]
    assert first["server_prefill_s"] > 0 and first["server_first_token_s"] > 0 and first["frames_on"] == "device"
    assert 0 < t["warm_ttft_median_s"] < 60
    c = res["concurrent"]
    assert c["8_clients"]["tokens"] > 0 and c["1_clients"]["tokens_per_s"] > 0
    assert res["search"]["videos"] == 8 and res["search"]["rank_in_gpu_memory_s"] > 0
    assert "ttft:" in p.stdout and "concurrent:" in p.stdout and "search:" in p.stdout
    m = res["mini"]  # LLaVA-Mini's K/V cache stays in the GPU tier (auto budget; on the CPU: the device itself)
    assert m["tenth_request"]["server_prefill_s"] > 0 and m["cache_bytes_per_frame"] > 0


def test_serve_speed_compile_part_tiny(tmp_path):
    """Two starts with compile on share the compile cache: the second compiles nothing (on the CPU, a probe)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        env.pop(var, None)
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_speed.py"), "--tiny", "--out", str(tmp_path),
                        "--parts", "compile", "--frames", "2"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    c = json.loads((tmp_path / "serve_speed.json").read_text())["compile"]
    assert c["first_start"]["fx_cache_misses"] >= 1 and c["first_start"]["ready_s"] > 0
    assert c["second_start"]["fx_cache_hits"] >= 1 and c["second_recompiled"] is False
    assert "no recompilation" in p.stdout
