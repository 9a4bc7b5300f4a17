"""Tests for vidqa.synthetic: determinism, the mp4s, the annotations, and that every answer can be
read back from frames sampled at 1 fps by an independent pixel-level checker (below), which knows
the palette and the question wording but never looks at a clip's spec."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from vidqa import synthetic as syn
from vidqa.synthetic import (
    ANSWERS,
    CATEGORIES,
    COLOURS,
    COUNTS,
    DIRECTIONS,
    PALETTE,
    SHAPES,
    ClipSpec,
    SyntheticError,
    generate,
    make_clip,
    questions,
    render,
    render_frames,
)

REPO = Path(__file__).resolve().parents[1]
VOCAB = set(COLOURS) | set(SHAPES) | set(DIRECTIONS) | set(COUNTS) | {"yes", "no"}
assert VOCAB == set(ANSWERS) and len(ANSWERS) == 22


def all_questions(spec: ClipSpec) -> list[dict]:
    """Every question the clip supports (far more than one per category)."""
    return questions(spec, np.random.default_rng(0), per_category=10_000)


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# ---------------------------------------------------------------------------------------------
# An independent checker: what a viewer sees in sampled frames, and the answers that follow.

NAMES = list(PALETTE)
RGB = np.array([PALETTE[c] for c in NAMES], np.float32)


def classify(mask: np.ndarray) -> str:
    """circle / square / triangle / cross from a blob's fill of its bounding box and its balance."""
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    box = mask[y0:y1, x0:x1]
    h = box.shape[0]
    top, bottom = box[: h // 2].sum(), box[h - h // 2 :].sum()
    if bottom > 1.5 * top:  # measured: triangles 1.7-3.2, the rest 0.75-1.33 (64 and 112 px, h264)
        return "triangle"
    fill = box.mean()  # measured: squares 0.96-1, circles 0.67-0.89, crosses 0.33-0.56
    return "square" if fill > 0.94 else "circle" if fill > 0.61 else "cross"


def observe(frame: np.ndarray) -> dict[str, tuple[str, float, float]]:
    """``{shape: (colour, cx, cy)}`` of the shapes in one RGB frame (centre in pixels)."""
    size = frame.shape[0]
    dist = np.linalg.norm(frame.astype(np.float32)[:, :, None, :] - RGB[None, None], axis=-1)
    nearest = dist.argmin(-1)
    close = dist.min(-1) < 45
    min_area = 0.15 * (0.22 * size) ** 2
    seen: dict[str, tuple[str, float, float]] = {}
    for ci, colour in enumerate(NAMES):
        mask = close & (nearest == ci)
        if mask.sum() < min_area:
            continue
        shape = classify(mask)
        assert shape not in seen, f"two {shape}s on screen"
        rows, cols = np.nonzero(mask)
        seen[shape] = (colour, cols.mean(), rows.mean())
    return seen


class Viewer:
    """Answers questions from a list of per-sample observations only."""

    def __init__(self, frames: np.ndarray):
        self.size = frames.shape[1]
        self.obs = [observe(f) for f in frames]
        self.shapes = {s for o in self.obs for s in o}

    def seen(self, shape: str) -> list[int]:
        return [i for i, o in enumerate(self.obs) if shape in o]

    def colours(self, shape: str) -> list[str]:
        out: list[str] = []
        for o in self.obs:
            if shape in o and (not out or out[-1] != o[shape][0]):
                out.append(o[shape][0])
        return out

    def moved(self, shape: str) -> tuple[float, float]:
        i = self.seen(shape)
        (_, x0, y0), (_, x1, y1) = self.obs[i[0]][shape], self.obs[i[-1]][shape]
        return x1 - x0, y1 - y0

    def moves(self, shape: str) -> bool:
        return max(abs(d) for d in self.moved(shape)) > 0.12 * self.size

    def ref(self, text: str) -> str:
        """The shape named by '<shape>' or '<colour> <shape>' (the colour must be its only one)."""
        words = text.split()
        shape = words[-1]
        assert shape in self.shapes, text
        if len(words) == 2:
            assert self.colours(shape) == [words[0]], text
        else:
            assert len(self.colours(shape)) == 2, f"{text}: named without colour but keeps it"
        return shape

    def first(self, shape: str) -> int:
        return self.seen(shape)[0]

    def one(self, items) -> str:
        items = list(items)
        assert len(items) == 1, items
        return items[0]

    def by_appearance(self) -> list[str]:
        firsts = {s: self.first(s) for s in self.shapes}
        assert len(set(firsts.values())) == len(firsts), "two shapes first seen in the same sample"
        return sorted(self.shapes, key=firsts.get)

    def gone(self) -> list[str]:
        return [s for s in self.shapes if s not in self.obs[-1]]

    def colour_around(self, shape: str, before: int, after: int) -> str:
        """The colour of ``shape`` in two neighbouring samples: it must be on screen and the same."""
        a, b = self.obs[before].get(shape), self.obs[after].get(shape)
        assert a and b and a[0] == b[0], (shape, a, b)
        return a[0]

    def answer(self, q: str) -> str:  # noqa: C901 - one branch per template
        count = lambda n: COUNTS[n]  # noqa: E731
        if m := re.fullmatch(r"what colour is the (\w+)\?", q):
            return self.one(self.colours(m[1]))
        if m := re.fullmatch(r"what shape is the (\w+) one\?", q):
            return self.one({s for o in self.obs for s, v in o.items() if v[0] == m[1]})
        if q == "how many shapes appear?":
            return count(len(self.shapes))
        if q == "how many shapes move?":
            return count(sum(self.moves(s) for s in self.shapes))
        if q == "how many shapes disappear?":
            return count(len(self.gone()))
        if q == "how many shapes change colour?":
            return count(sum(len(self.colours(s)) > 1 for s in self.shapes))
        if q == "how many shapes are on screen at the end?":
            return count(len(self.obs[-1]))
        if q == "how many colours appear?":
            return count(len({v[0] for o in self.obs for v in o.values()}))
        if m := re.fullmatch(r"how many other shapes are on screen when the (.+) appears\?", q):
            return count(len(self.obs[self.first(self.ref(m[1]))]) - 1)
        if m := re.fullmatch(r"which way does the (.+) move\?", q):
            dx, dy = self.moved(self.ref(m[1]))
            assert max(abs(dx), abs(dy)) > 0.12 * self.size
            if abs(dx) > abs(dy):
                return "right" if dx > 0 else "left"
            return "down" if dy > 0 else "up"
        if m := re.fullmatch(r"what (shape|colour) is the shape that appears (first|last)\?", q) or re.fullmatch(
            r"what (shape) appears (first|last)\?", q
        ):
            order = self.by_appearance()
            shape = order[0] if m[2] == "first" else order[-1]
            return shape if m[1] == "shape" else self.one(self.colours(shape))
        if m := re.fullmatch(r"what shape appears (after|before) the (.+)\?", q):
            order = self.by_appearance()
            i = order.index(self.ref(m[2]))
            return self.one(order[i + 1 :] if m[1] == "after" else order[:i])
        if m := re.fullmatch(r"what shape disappears (first|last)\?", q):
            last_seen = {s: self.seen(s)[-1] for s in self.gone()}
            assert len(last_seen) >= 2 and len(set(last_seen.values())) == len(last_seen)
            return (min if m[1] == "first" else max)(last_seen, key=last_seen.get)
        if m := re.fullmatch(r"what colour is the (\w+) when the (.+) (appears|disappears)\?", q):
            other = self.ref(m[2])
            if m[3] == "appears":
                i = self.first(other)
                assert i >= 1
                return self.colour_around(m[1], i - 1, i)
            j = self.seen(other)[-1]
            assert other in self.gone()
            return self.colour_around(m[1], j, j + 1)
        if m := re.fullmatch(r"what colour does the (\w+) turn\?", q):
            cols = self.colours(m[1])
            assert len(cols) == 2
            return cols[1]
        if m := re.fullmatch(r"what colour is the (\w+) at first\?", q):
            return self.colours(m[1])[0]
        if m := re.fullmatch(r"does a (\w+) (\w+) appear\?", q):
            return "yes" if any(o.get(m[2], ("",))[0] == m[1] for o in self.obs) else "no"
        if m := re.fullmatch(r"what shape (moves|disappears|changes colour)\?", q):
            test = {"moves": self.moves, "disappears": lambda s: s in self.gone(),
                    "changes colour": lambda s: len(self.colours(s)) > 1}[m[1]]
            return self.one(s for s in self.shapes if test(s))
        raise AssertionError(f"the checker does not know the question {q!r}")


def check_all(spec: ClipSpec, frames_1fps: np.ndarray, qa: list[dict]) -> None:
    viewer = Viewer(frames_1fps)
    for item in qa:
        got = viewer.answer(item["question"])
        assert got == item["answer"], (spec.video_id, item, got)


def samples_1fps(frames: np.ndarray, fps: int, phase: int) -> np.ndarray:
    """One frame a second: frames phase, phase + fps, ... (every phase is a valid 1 fps sampling)."""
    return frames[phase::fps]


# ---------------------------------------------------------------------------------------------


def test_same_seed_same_everything_different_seed_differs():
    a = [make_clip(7, i) for i in range(6)]
    b = [make_clip(7, i) for i in range(6)]
    assert a == b
    assert [questions(s, np.random.default_rng(3)) for s in a] == [questions(s, np.random.default_rng(3)) for s in b]
    assert [questions(s) for s in a] == [questions(s) for s in b]  # default rng from (seed, index)
    for s, t in zip(a, b):
        assert np.array_equal(render_frames(s, 64, 2), render_frames(t, 64, 2))
    c = [make_clip(8, i) for i in range(6)]
    assert all(x != y for x, y in zip(a, c))
    assert not np.array_equal(render_frames(a[0]), render_frames(c[0]))
    assert len({str(make_clip(7, i).shapes) for i in range(6)}) == 6  # indices differ too


def test_spec_round_trips_through_json():
    spec = make_clip(3, 11)
    assert ClipSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.to_dict()["video_id"] == "synth00011"


def test_timeline_rules():
    for i in range(300):
        spec = make_clip(5, i)
        T = spec.seconds
        assert 1 <= len(spec.shapes) <= 3
        assert len({s.shape for s in spec.shapes}) == len(spec.shapes)
        colours = [c for s in spec.shapes for c in s.colours]
        assert len(set(colours)) == len(colours)
        points = sorted(e.time for e in spec.events if e.kind in ("appear", "turn", "disappear"))
        assert all(b - a >= 1 for a, b in zip(points, points[1:])), points  # >= 1 s apart
        for s in spec.shapes:
            end = s.end(T)
            assert 0 <= s.appear <= T - 3 and end <= T and (s.disappear is None or s.disappear <= T - 1)
            if s.turns:
                assert s.appear + 1 <= s.turn <= end - 1
            if s.moves:
                assert s.appear + 1 <= s.move_start and s.move_end <= end - 1
                assert s.move_end - s.move_start >= 2 and s.distance >= 0.25
            for t in np.arange(0, T, 0.25):  # in the frame
                x, y = s.position_at(t)
                assert 0.11 <= x <= 0.89 and 0.11 <= y <= 0.89


@pytest.mark.parametrize("codec", [None, "mpeg4"])
def test_mp4_decodes_to_the_rendered_frames(tmp_path, codec):
    for size, fps in ((112, 4), (64, 2)):
        spec = make_clip(1, 2)
        path = render(spec, tmp_path / f"{spec.video_id}_{size}.mp4", size=size, fps=fps, codec=codec)
        decoded = decode(path)
        ref = render_frames(spec, size, fps)
        assert decoded.shape == ref.shape == (8 * fps, size, size, 3)
        diff = np.abs(decoded.astype(np.int16) - ref.astype(np.int16))
        assert diff.mean() < 3 and np.percentile(diff, 99) < 30, (diff.mean(), np.percentile(diff, 99))
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            assert stream.codec_context.name == ("mpeg4" if codec else "h264")
            assert float(stream.average_rate) == fps


@pytest.mark.parametrize("seed", [0, 1])
def test_every_answer_is_seen_in_1fps_samples(seed):
    """All candidate questions of 40 clips, at every 1 fps sampling phase, from the pixels alone."""
    for i in range(40):
        spec = make_clip(seed, i)
        frames = render_frames(spec, 112, 4)
        qa = all_questions(spec)
        for phase in range(4):
            check_all(spec, samples_1fps(frames, 4, phase), qa)


def test_answers_survive_codec_small_frames_and_the_vidqa_loader(tmp_path):
    from vidqa.video import Sampling, load_frames

    for i in range(8):
        spec = make_clip(2, i)
        path = render(spec, tmp_path / f"{spec.video_id}.mp4", size=64, fps=4)
        frames = load_frames(path, Sampling(fps=1), decoder="av").pixels  # midpoints 0.5, 1.5, ...
        assert len(frames) == spec.seconds
        check_all(spec, frames, all_questions(spec))


def test_questions_use_the_vocabulary_and_ask_one_per_category():
    cats = Counter()
    for i in range(100):
        spec = make_clip(4, i)
        qa = questions(spec, np.random.default_rng(i))
        assert len({q["category_id"] for q in qa}) == len(qa)
        for q in qa:
            assert set(q) == {"question", "answer", "category_id"}
            assert q["answer"] in VOCAB and q["answer"] == q["answer"].lower() and " " not in q["answer"]
            assert q["question"].endswith("?") and q["question"] == q["question"].lower()
            cats[q["category_id"]] += 1
    assert set(cats) == set(CATEGORIES)


def test_answer_distribution_is_flat():
    qa = [q for i in range(400) for q in questions(make_clip(9, i))]
    summary = syn.summarize(qa)
    assert set(summary["answers"]) == VOCAB  # every answer word is used
    assert summary["majority_baseline"] < 0.15
    for name, cat in summary["categories"].items():
        limit = 0.56 if name == "existence" else 0.35
        assert cat["majority_baseline"] < limit, (name, cat)


def test_generate_writes_msrvtt_format(tmp_path):
    summary = generate(tmp_path / "out", n_videos=12, seed=3, size=64, fps=2, seconds=6, split="val", workers=2)
    out = tmp_path / "out"
    qa = json.loads((out / "val_qa.json").read_text())
    assert isinstance(qa, list) and len(qa) == summary["questions"] > 12
    assert [q["id"] for q in qa] == list(range(len(qa)))
    for q in qa:
        assert list(q) == ["question", "answer", "id", "video_id", "category_id"]
        assert isinstance(q["id"], int) and isinstance(q["category_id"], int) and q["category_id"] in CATEGORIES
        assert re.fullmatch(r"synth\d{5}", q["video_id"])
        assert (out / "videos" / f"{q['video_id']}.mp4").is_file()
    assert sorted(p.stem for p in (out / "videos").glob("*.mp4")) == [f"synth{i:05d}" for i in range(12)]
    assert decode(out / "videos" / "synth00004.mp4").shape == (12, 64, 64, 3)
    specs = json.loads((out / "val_clips.json").read_text())
    assert ClipSpec.from_dict(specs[4]) == make_clip(3, 4, seconds=6)
    # the same files whatever the number of workers
    generate(tmp_path / "one", n_videos=12, seed=3, size=64, fps=2, seconds=6, split="val", workers=1)
    assert (tmp_path / "one" / "val_qa.json").read_text() == (out / "val_qa.json").read_text()
    for key in ("answers", "categories", "majority_baseline", "majority_answer", "question_prior_baseline"):
        assert key in summary
    assert json.loads((out / "val_summary.json").read_text())["questions"] == summary["questions"]


def test_entry_point(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "vidqa", "synthetic", str(tmp_path), "--videos", "3", "--seed", "1", "--size", "64"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "majority baseline" in run.stdout and (tmp_path / "test_qa.json").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "vidqa", "synthetic", str(tmp_path), "--size", "63"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and len(bad.stderr.splitlines()) == 1


def test_annotations_only(tmp_path):
    summary = generate(tmp_path, n_videos=5, seed=2, write_videos=False, workers=1)
    assert summary["codec"] is None and not (tmp_path / "videos").exists()
    assert len(json.loads((tmp_path / "test_qa.json").read_text())) == summary["questions"]
    assert syn.summarize([])["questions"] == 0


def test_bad_arguments():
    with pytest.raises(SyntheticError):
        make_clip(-1, 0)
    with pytest.raises(SyntheticError):
        make_clip(0, 0, seconds=2)
    with pytest.raises(SyntheticError):
        render_frames(make_clip(0, 0), size=63)
