"""`vidqa serve` as a user starts it: a process that listens on 127.0.0.1, says ready on /health after
warm-up, answers, and refuses bad options with one line."""

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from cli_helpers import one_line_error, run, wide_help
from serve_helpers import CLIPS, messages

REPO = Path(__file__).resolve().parent.parent


def test_help(capsys, monkeypatch):
    text = wide_help(capsys, monkeypatch, "serve")
    for opt in ("--host", "--port", "--api-key", "--allow-root", "--cache-gpu-gb", "--cache-host-gb", "127.0.0.1",
                "--preload", "--no-preload", "auto", "--quantize", "--cache-dtype"):
        assert opt in text


def test_bad_cache_gpu_gb(capsys):
    for bad in ("lots", "-1", "nan"):
        code, _, err = run(capsys, "serve", "--model", "tiny-voco", "--cache-gpu-gb", bad, "--port", "0")
        one_line_error(code, err, "--cache-gpu-gb")


def test_bad_quantize_is_one_line_before_listening(capsys):
    import importlib.util

    code, _, err = run(capsys, "serve", "--model", "tiny-voco", "--quantize", "int3", "--port", "0")
    one_line_error(code, err, "--quantize")
    code, _, err = run(capsys, "serve", "--model", "tiny-voco", "--device", "cpu", "--quantize", "fp8", "--port", "0")
    one_line_error(code, err, "fp8" if importlib.util.find_spec("torchao") else "torchao")


def test_gpu_budget_option():
    from vidqa.cli.serve import gpu_budget

    assert gpu_budget("auto") is None and gpu_budget("AUTO") is None
    assert gpu_budget("4") == 4 << 30 and gpu_budget("0.5") == 1 << 29


def test_bad_allow_root(capsys, tmp_path):
    code, _, err = run(capsys, "serve", "--model", "tiny-voco", "--allow-root", tmp_path / "nope", "--port", "0")
    one_line_error(code, err, "--allow-root")


def served_env(tmp_path) -> dict:
    """The served process's environment: this one's, with the repository first on PYTHONPATH (the path
    already there kept: a machine may bring packages through it, as the GPU machine brings fastapi, uvicorn
    and av; replacing it made the process stop at 'vidqa serve needs its extra' before its start line)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "VIDQA_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def test_serve_process_answers(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "vidqa", "serve", "--model", "tiny-voco", "--device", "cpu",
                             "--port", "0", "--warmup-frames", "2", "--allow-root", str(CLIPS)],
                            cwd=tmp_path, env=served_env(tmp_path), stderr=subprocess.PIPE, text=True)
    try:
        url, said = None, []
        for line in proc.stderr:  # the start line names the URL; the ready line follows warm-up
            said.append(line)
            found = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            url = url or (found and found.group(1))
            if line.startswith("ready after"):
                break
        assert url, f"no start line; exit code {proc.poll()}; stderr:\n{''.join(said)[-4000:]}"
        assert said[-1].startswith("ready after"), f"no ready line; stderr:\n{''.join(said)[-4000:]}"
        assert httpx.get(url + "/health").json()["status"] == "ready"
        r = httpx.post(url + "/v1/chat/completions", json={"messages": messages(CLIPS / "shapes00.mp4",
                                                                                 "what colour is the square?")}, timeout=60)
        assert r.json()["choices"][0]["message"]["content"] == "green"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_served_process_keeps_the_path_packages_come_through(tmp_path, monkeypatch):
    """A package reached through PYTHONPATH (fastapi and uvicorn on the GPU machine) stays reachable."""
    elsewhere = tmp_path / "site"
    monkeypatch.setenv("PYTHONPATH", str(elsewhere))
    parts = served_env(tmp_path)["PYTHONPATH"].split(os.pathsep)
    assert parts == [str(REPO), str(elsewhere)]
    monkeypatch.delenv("PYTHONPATH")
    assert served_env(tmp_path)["PYTHONPATH"] == str(REPO)
