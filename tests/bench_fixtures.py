"""Shared by the bench tests: tiny MSRVTT-style data sets, hand-made answers, and the CLI runner.

The fixtures are imported by name into the test modules that use them.
"""

import json
from pathlib import Path

import pytest

import media
from vidqa import library
from cli_helpers import run  # noqa: F401 (the bench tests import it from here)
from vidqa.pipeline import VideoQA

# ------------------------------------------------------------------------------------------------
# helpers


def one_line_error(code, err, *needles):
    assert code != 0
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def video(path: Path, k: int) -> Path:
    """A small real video whose content depends on k (the store keys videos by content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return media.make_video(path, num_frames=4 + k, fps=4, offset_frames=0)


# MSRVTT-style QA: (video id, question, gold answer, category id)
QA = [
    (7010, "what is the man holding?", "guitar", 0),
    (7010, "who is singing?", "man", 1),
    (7011, "how many people dance?", "two", 2),
    (7011, "what is on the table?", "cup", 0),
    (7012, "where is the dog?", "park", 4),
    (7012, "when does it rain?", "night", 3),
    (7013, "what is the color of the car?", "red", 0),  # video7013 is not on disk
    (7014, "who plays the piano?", "woman", 1),
]
PRESENT = (7010, 7011, 7012, 7014)


def msrvtt_dir(root: Path, *, real: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"question": q, "answer": a, "id": i, "video_id": v, "category_id": c}
            for i, (v, q, a, c) in enumerate(QA)]
    (root / "test_qa.json").write_text(json.dumps(rows))
    for k, v in enumerate(PRESENT):
        p = root / "videos" / f"video{v}.mp4"
        video(p, k) if real else touch(p)
    return root


# Hand-made predictions, by question, for the metric-bearing runs
PREDICTIONS = {
    "what is the man holding?": "A guitar.",  # exact + contains
    "who is singing?": "the man on the left",  # contains only
    "how many people dance?": "Two",  # exact + contains
    "what is on the table?": "cups",  # neither
    "where is the dog?": "in the park",  # contains
    "when does it rain?": "night",  # exact
    "who plays the piano?": "a man",  # neither
}


@pytest.fixture
def fake_answers(monkeypatch):
    """VideoQA.answer replaced: the hand-made prediction of the question; records what it was asked."""
    asked = []

    def answer(self, cache, question, gen=None, stats=None, history=()):
        asked.append(question)
        bare = question.split("\n")[0]
        if stats is not None:
            stats.prefill_s, stats.decode_s, stats.decode_steps, stats.tokens = 0.012, 0.004, 2, 3
        yield PREDICTIONS.get(bare, "no idea")

    monkeypatch.setattr(VideoQA, "answer", answer)
    return asked


@pytest.fixture
def count_compress(monkeypatch):
    calls = []
    original = VideoQA.compress

    def compress(self, frames, *a, **k):
        calls.append(str(frames.info.path))
        return original(self, frames, *a, **k)

    monkeypatch.setattr(VideoQA, "compress", compress)
    return calls


@pytest.fixture
def shared_model(monkeypatch, voco_qa):
    """The CLI gets the session's loaded model instead of loading it again (saves ~2 s a run)."""
    monkeypatch.setattr(library, "load_model", lambda *a, **k: voco_qa)
    return voco_qa


def lines(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def qa_rows(ids_as):
    return [{"question": q, "answer": a, "id": i, "video_id": ids_as(v), "category_id": c}
            for i, (v, q, a, c) in enumerate(QA)]


def build_format(kind: str, root: Path, split: str = "test") -> Path:
    root.mkdir(parents=True)
    if kind == "qa-int":  # MSRVTT-QA release: video_id 7010
        (root / f"{split}_qa.json").write_text(json.dumps(qa_rows(int)))
        for v in PRESENT:
            touch(root / "videos" / f"video{v}.mp4")
    elif kind == "qa-name":  # video_id "video7010", annotations in a subfolder
        (root / "annotations").mkdir()
        (root / "annotations" / f"{split}_qa.json").write_text(json.dumps(qa_rows(lambda v: f"video{v}")))
        for v in PRESENT:
            touch(root / "TestVideo" / f"video{v}.mp4")
    elif kind == "q+a":  # Video-LLaVA / LLaVA-Mini: test_q.json + test_a.json, videos/all/
        qs = [{"video_name": f"video{v}", "question": q, "question_id": f"v_{v}_{i}"} for i, (v, q, a, c) in enumerate(QA)]
        ans = [{"answer": a, "question_id": f"v_{v}_{i}"} for i, (v, q, a, c) in enumerate(QA)]
        (root / f"{split}_q.json").write_text(json.dumps(qs))
        (root / f"{split}_a.json").write_text(json.dumps(list(reversed(ans))))  # joined on question_id
        for v in PRESENT:
            touch(root / "videos" / "all" / f"video{v}.mp4")
    elif kind == "csv":
        text = "video_name,question,answer,question_id\n" + "".join(
            f'video{v},"{q}",{a},{i}\n' for i, (v, q, a, c) in enumerate(QA))
        (root / f"{split}.csv").write_text(text)
        for v in PRESENT:
            touch(root / "videos" / f"video{v}.mp4")
    return root

