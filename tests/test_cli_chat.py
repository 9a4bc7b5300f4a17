"""`vidqa.cli.chat`: several questions on one compression; `--json` gives one object per turn."""

import io
import json
import sys

import media
from cli_helpers import run


def test_chat_json_gives_one_object_per_turn(tmp_path, capsys, voco_dir, monkeypatch):
    vid = media.make_video(tmp_path / "clip.mp4", num_frames=30, fps=10)
    monkeypatch.setattr(sys, "stdin", io.StringIO("what moves?\nand then?\nexit\n"))
    code, out, err = run(capsys, "chat", vid, "--model", voco_dir, "--max-new-tokens", "3", "--json")
    assert code == 0, err
    turns = [json.loads(line) for line in out.splitlines()]
    assert [t["question"] for t in turns] == ["what moves?", "and then?"]
    assert [t["turn"] for t in turns] == [0, 1] and [t["history_turns"] for t in turns] == [0, 1]
    assert all(isinstance(t["answer"], str) and t["frames"] == 3 for t in turns)


def test_chat_keeps_history(tmp_path, capsys, voco_dir, monkeypatch):
    from vidqa.pipeline import VideoQA

    (vid,) = media.videos(tmp_path / "lib", 1)
    seen = []
    real = VideoQA.answer

    def spy(self, cache, question, gen, stats=None, history=()):
        seen.append((question, list(history)))
        return real(self, cache, question, gen, stats, history)

    monkeypatch.setattr(VideoQA, "answer", spy)
    monkeypatch.setattr(sys, "stdin", io.StringIO("what moves?\nand then?\n\n"))
    code, out, err = run(capsys, "chat", vid, "--model", voco_dir, "--max-new-tokens", "3")
    assert code == 0, err
    assert [q for q, _ in seen] == ["what moves?", "and then?"]
    assert seen[1][1][0][0] == "what moves?"  # the first turn is in the second prompt


def test_chat_reports_a_bad_question_and_goes_on(tmp_path, capsys, voco_dir, monkeypatch):
    vid = media.make_video(tmp_path / "clip.mp4", num_frames=20, fps=10)
    raw = io.BytesIO(b"what \xff moves?\n" + b"why " * 600 + b"\nand then?\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(raw, encoding="utf-8"))
    code, out, err = run(capsys, "chat", vid, "--model", voco_dir, "--max-new-tokens", "2", "--json")
    assert code == 0, err
    assert [json.loads(line)["question"] for line in out.splitlines()] == ["and then?"]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "not valid UTF-8" in errors[0] and "context" in errors[1]
    assert "Traceback" not in err and "internal error" not in err
