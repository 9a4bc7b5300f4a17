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
    assert {p[0] for p in PATHS} == {"ask", "chat", "index", "cache", "bench", "train", "synthetic", "serve", "search"}
    assert {p for p in PATHS if p[0] == "cache"} >= {("cache", "ls"), ("cache", "rm"), ("cache", "verify")}


@pytest.mark.parametrize("flag", ["-h", "--help"])
@pytest.mark.parametrize("path", [()] + PATHS, ids=lambda p: " ".join(p) or "vidqa")
def test_help_for_every_command(capsys, path, flag):
    code, out, err = run(capsys, *path, flag)
    assert code == 0, err
    assert "Usage" in out and "Traceback" not in out + err


# ------------------------------------------------------------------------------------------------
# stderr: vidqa's warnings as one note line each, nothing from third parties, Ctrl-C as one line

def _vidqa(*args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("VIDQA_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "vidqa", *map(str, args)], env=env, text=True, **kw)


def test_a_normal_ask_prints_only_its_summary_on_stderr(clip, voco_dir, tmp_path):
    p = _vidqa("ask", clip, "what moves?", "--model", voco_dir, "--max-new-tokens", "3", "--cache-dir", tmp_path,
               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert len(err.strip().splitlines()) == 1 and "frames x 2 tokens" in err, err  # no warning, no log line


def test_video_warnings_are_note_lines_and_others_are_hidden(capsys, tmp_path, voco_dir, monkeypatch):
    import warnings

    from vidqa.pipeline import VideoQA

    bad = media.truncate(media.make_video(tmp_path / "cut.mkv", num_frames=60, fps=10), keep=0.5)
    real = VideoQA.answer

    def noisy(self, *a, **k):
        warnings.warn("`past_key_values` is deprecated", FutureWarning)  # as transformers does
        return real(self, *a, **k)

    monkeypatch.setattr(VideoQA, "answer", noisy)
    monkeypatch.delenv("VIDQA_DEBUG", raising=False)
    code, _, err = run(capsys, "ask", bad, "what?", "--model", voco_dir, "--max-new-tokens", "2", "--json")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("note: ") for line in lines), err
    assert any("cut.mkv" in line and "decode" in line for line in lines)
    assert "Warning" not in err and "past_key_values" not in err
    monkeypatch.setenv("VIDQA_DEBUG", "1")
    code, _, err = run(capsys, "ask", bad, "what?", "--model", voco_dir, "--max-new-tokens", "2", "--json")
    assert code == 0 and "FutureWarning" in err  # shown when debugging


def test_ctrl_c_is_one_line_and_exit_130(clip, voco_dir, tmp_path):
    """SIGINT while chat waits for the next question: it has answered the first (a deterministic point)."""
    import signal

    p = _vidqa("chat", clip, "--model", voco_dir, "--cache-dir", tmp_path, "--json", "--max-new-tokens", "2",
               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        p.stdin.write("what moves?\n")
        p.stdin.flush()
        first = p.stdout.readline()
        assert '"turn": 0' in first, first + p.stderr.read()
        p.send_signal(signal.SIGINT)
        rest = p.stderr.read()
        p.wait(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130
    assert rest.strip() == "interrupted", (first, rest)
