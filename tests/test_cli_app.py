"""`vidqa.cli.app`: every command and subcommand answers -h and --help; usage errors and failures exit cleanly."""

import os
import subprocess
import sys

import media
import pytest
from cli_helpers import PATHS, run


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return media.make_video(tmp_path_factory.mktemp("v") / "clip.mp4", num_frames=40, fps=10)


def test_missing_argument_is_a_usage_error(capsys):
    code, _, err = run(capsys, "ask")
    assert code == 2 and "Traceback" not in err and "internal error" not in err


def test_help_teaches(capsys):
    code, out, _ = run(capsys, "ask", "--help")
    assert code == 0
    for flag in ("--fps", "--max-frames", "--json", "--temperature", "--decoder", "--device"):
        assert flag in out


def test_real_process_exit_code_and_stderr(tmp_path):
    """The console entry point as a real process: exit 1, one line, no traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "vidqa", "ask", str(tmp_path / "missing.mp4"), "q", "--model", "x/y"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip().startswith("error:") and len(p.stderr.strip().splitlines()) == 1


def test_every_command_is_listed():
    assert {p[0] for p in PATHS} == {"ask", "chat", "index", "cache", "bench", "train", "synthetic"}
    assert {p for p in PATHS if p[0] == "cache"} >= {("cache", "ls"), ("cache", "rm"), ("cache", "verify")}


@pytest.mark.parametrize("flag", ["-h", "--help"])
@pytest.mark.parametrize("path", [()] + PATHS, ids=lambda p: " ".join(p) or "vidqa")
def test_help_for_every_command(capsys, path, flag):
    code, out, err = run(capsys, *path, flag)
    assert code == 0, err
    assert "Usage" in out and "Traceback" not in out + err
