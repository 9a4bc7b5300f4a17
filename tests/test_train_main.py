"""`vidqa.train.main`: ``python -m vidqa.train`` still parses its options (until the Typer command replaces it)."""

import subprocess
import sys


def test_python_m_vidqa_train_help():
    out = subprocess.run([sys.executable, "-m", "vidqa.train", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: vidqa train" in out.stdout and "--method {voco,mini,full,pool}" in out.stdout
    assert "learn VoCo-LLaMA or LLaVA-Mini compression" in out.stdout
