"""`vidqa ask` end to end on a tiny random checkpoint on disk: output, --json, and every bad input."""

import json

import media
import pytest
from cli_helpers import one_line_error, run, wide_help


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return media.make_video(tmp_path_factory.mktemp("v") / "clip.mp4", num_frames=40, fps=10)


def test_ask_json(capsys, clip, voco_dir):
    code, out, err = run(capsys, "ask", str(clip), "what moves?", "--model", str(voco_dir), "--json",
                         "--max-new-tokens", "6", "--fps", "2", "--device", "cpu")
    assert code == 0, err
    report = json.loads(out)
    assert report["method"] == "voco" and report["tokens_per_frame"] == 2
    assert [f["index"] for f in report["frames"]] == [2, 7, 12, 17, 22, 27, 32, 37]  # 2 fps, segment midpoints
    assert report["frames"][0]["time"] == pytest.approx(0.2)
    assert report["timings"]["answer_tokens"] <= 6
    assert report["kv_bytes_per_frame"] == 2 * 2 * 2 * 2 * 16 * 4  # K,V x layers x kv heads x N x head_dim x fp32


def test_ask_streams_plain_text_to_a_pipe(capsys, clip, voco_dir):
    code, out, err = run(capsys, "ask", str(clip), "what moves?", "--model", str(voco_dir), "--max-new-tokens", "4",
                         "--num-frames", "3")
    assert code == 0, err
    assert out.endswith("\n") and "frames x 2 tokens" in err


def test_sampling_is_repeatable_with_a_seed(capsys, clip, voco_dir):
    args = ["ask", str(clip), "q?", "--model", str(voco_dir), "--json", "--max-new-tokens", "8", "--num-frames", "2",
            "--temperature", "1.0", "--top-p", "0.9", "--seed", "7"]
    a = json.loads(run(capsys, *args)[1])["answer"]
    b = json.loads(run(capsys, *args)[1])["answer"]
    assert a == b


def test_frames_are_thinned_to_fit_the_context(capsys, tmp_path, voco_dir):
    from vidqa.testing import make_voco_checkpoint

    small = make_voco_checkpoint(tmp_path / "small", max_positions=160)  # p0 = 19: room for few frames
    video = media.make_video(tmp_path / "long.mp4", num_frames=60, fps=10)
    code, out, err = run(capsys, "ask", str(video), "what?", "--model", str(small), "--json", "--fps", "10",
                         "--max-new-tokens", "8")
    assert code == 0, err
    assert "do not fit the context" in err
    frames = json.loads(out)["frames"]
    assert 1 <= len(frames) < 60


@pytest.mark.parametrize("maker,needle", [
    (None, "no such file"),
    (media.make_garbage, ""),
    (media.make_text, ""),
    (media.make_audio_only, "no video stream"),
    (media.make_zero_length, ""),
])
def test_bad_videos(capsys, tmp_path, voco_dir, maker, needle):
    suffix = ".m4a" if maker is media.make_audio_only else ".mp4"
    path = tmp_path / f"bad{suffix}"
    if maker:
        maker(path)
    code, out, err = run(capsys, "ask", str(path), "what?", "--model", str(voco_dir))
    one_line_error(code, err, needle)


def test_missing_model(capsys, clip, tmp_path):
    code, _, err = run(capsys, "ask", str(clip), "what?", "--model", str(tmp_path / "nope"))
    one_line_error(code, err, "not found")


def test_model_of_unknown_kind(capsys, clip, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    code, _, err = run(capsys, "ask", str(clip), "what?", "--model", str(tmp_path / "m"))
    one_line_error(code, err, "unknown model kind")


def test_model_without_weights(capsys, clip, tmp_path, voco_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(voco_dir, broken)
    (broken / "model.safetensors").unlink()
    code, _, err = run(capsys, "ask", str(clip), "what?", "--model", str(broken))
    one_line_error(code, err, "no weights")


def test_no_model_given(capsys, clip, monkeypatch):
    monkeypatch.delenv("VIDQA_MODEL", raising=False)
    code, _, err = run(capsys, "ask", str(clip), "what?")
    one_line_error(code, err, "--model")


def test_question_too_long_for_the_context(capsys, clip, voco_dir):
    code, _, err = run(capsys, "ask", str(clip), "why " * 600, "--model", str(voco_dir))
    one_line_error(code, err, "context")


def test_ask_help_shows_defaults_and_flags(capsys, monkeypatch):
    out = wide_help(capsys, monkeypatch, "ask")
    assert "[default: 256]" in out and "[default: auto]" in out and "VIDQA_MODEL" in out
    assert "--no-cache" in out and "--no-no-cache" not in out and "--no-json" not in out


@pytest.mark.parametrize("args,needle", [
    (["--temperature", "1", "--top-p", "0"], "--top-p"),
    (["--tokens-per-frame", "-2"], "--tokens-per-frame"),
    (["--tokens-per-frame", "0"], "--tokens-per-frame"),  # was silently the config's value
    (["--seed", "99999999999999999999999"], "--seed"),
    (["--temperature", "inf"], "--temperature"),  # was accepted
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "1e-320"], "--temperature"),  # logits / t overflow
    (["--device", "mps"], "device"),
    (["--device", "cuda:7"], "cuda"),
    (["--num-frames", "99999999999999999999"], "--num-frames"),
    (["--fps", "many"], "--fps"),  # click's usage error: one line too
    (["--max-new-tokens", "0"], "--max-new-tokens"),
])
def test_bad_options_are_one_usage_line(capsys, clip, voco_dir, args, needle):
    code, _, err = run(capsys, "ask", str(clip), "what?", "--model", str(voco_dir), "--max-new-tokens", "2", *args)
    one_line_error(code, err, needle)
    assert code == 2 and "internal error" not in err


@pytest.mark.parametrize("question,needle", [("", "empty"), ("   \n", "empty"),
                                             ("what \udcff is it?", "not valid UTF-8")])
def test_bad_questions_are_refused(capsys, clip, voco_dir, question, needle):
    code, _, err = run(capsys, "ask", str(clip), question, "--model", str(voco_dir))
    one_line_error(code, err, needle)
    assert code == 2


def test_non_utf8_question_in_a_real_process(clip, voco_dir):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LC_ALL": "C.UTF-8"}
    p = subprocess.run([sys.executable, "-m", "vidqa", "ask", os.fsencode(str(clip)), b"what \xff\xfe?",
                        "--model", str(voco_dir)], capture_output=True, env=env, timeout=300)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 2 and err.strip().startswith("error:") and len(err.strip().splitlines()) == 1, err
