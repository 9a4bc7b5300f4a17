"""`vidqa bench`: dataset formats, video names, metrics, resumability, shards, the judge (fake local server).

Datasets are built here, with tiny generated videos; answers come from the tiny random VoCo checkpoint
(noise) or, where metrics must be non-trivial, from a hand-made ``VideoQA.answer``.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import media
from vidqa import bench as B
from vidqa import cli
from vidqa.cli import main
from vidqa.pipeline import VideoQA

# ------------------------------------------------------------------------------------------------
# helpers


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


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
    monkeypatch.setattr(cli, "_load", lambda *a, **k: voco_qa)
    return voco_qa


def lines(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


# ------------------------------------------------------------------------------------------------
# metrics: the exact rule


@pytest.mark.parametrize("text,expected", [
    ("A Guitar.", "guitar"),
    ("  The   man's  hat! ", "mans hat"),
    ("t-shirt", "t shirt"),
    ("An apple, the pear and a plum?", "apple pear and plum"),
    ("“Quoted” (text) [here]", "quoted text here"),
    ("don’t", "dont"),
    ("3.5 $", "3 5 $"),
    ("ＦＵＬＬ width", "full width"),  # NFKC
    ("the", ""),
    ("theater anatomy", "theater anatomy"),  # articles only as whole words
    (None, ""),
])
def test_normalize(text, expected):
    assert B.normalize(text) == expected


@pytest.mark.parametrize("pred,gold,em,cont", [
    ("A guitar.", "guitar", True, True),
    ("guitar", "Guitar", True, True),
    ("the man on the left", "man", False, True),
    ("woman", "man", False, False),  # word boundary: no substring match inside a word
    ("mans", "man", False, False),
    ("in the park", "park", False, True),
    ("a red car", "red car", True, True),  # the article goes
    ("big red car", "red car", False, True),
    ("red and blue car", "red car", False, False),
    ("two", "2", False, False),  # no number words: the rule is literal
    ("", "guitar", False, False),
    ("the", "the", False, False),  # a gold that normalises to nothing matches nothing
])
def test_exact_match_and_contains(pred, gold, em, cont):
    assert B.exact_match(pred, gold) is em
    assert B.contains(pred, gold) is cont
    assert B.score(pred, gold) == {"exact_match": em, "contains": cont}


@pytest.mark.parametrize("reply,pred,score", [
    ("{'pred': 'yes', 'score': 4}", "yes", 4.0),
    ('{"pred": "no", "score": 0}', "no", 0.0),
    ("```python\n{'pred': 'yes', 'score': 4.8}\n```", "yes", 4.8),
    ("Sure! Here it is: {'pred': 'Yes', 'score': '3'} Hope that helps.", "yes", 3.0),
    ("{'PRED': 'no.', 'Score': 1}", "no", 1.0),
    ("pred: yes, score: 5", "yes", 5.0),
    ("{'pred': 'yes', 'score': 7}", "yes", 5.0),  # clamped to the scale
])
def test_parse_judgement(reply, pred, score):
    assert B.parse_judgement(reply) == {"pred": pred, "score": score}


@pytest.mark.parametrize("reply", ["", "I cannot judge this.", "{'pred': 'maybe', 'score': 3}", "{'pred': 'yes'}",
                                   "{'pred': 'yes', 'score': 'high'}"])
def test_parse_judgement_refuses_what_it_cannot_read(reply):
    assert B.parse_judgement(reply) is None


def test_judge_prompt_is_the_protocols():
    system, user = B.judge_messages("what?", "dog", "a dog")
    assert system["role"] == "system" and "intelligent chatbot designed for evaluating the correctness" in system["content"]
    assert "Question: what?\nCorrect Answer: dog\nPredicted Answer: a dog\n\n" in user["content"]
    assert "Python dictionary string with keys 'pred' and 'score'" in user["content"]
    assert user["content"].endswith("{'pred': 'yes', 'score': 4.8}.")


# ------------------------------------------------------------------------------------------------
# formats and video names (no model: annotations and file names only)


def test_video_name_variants(tmp_path):
    root = tmp_path / "d"
    touch(root / "videos" / "all" / "video7010.mp4")
    touch(root / "7011.mkv")
    touch(root / "videos" / "v_abcDEF123.webm")
    touch(root / "YouTubeClips" / "-4wsuPCjDBc_5_15.avi")
    touch(root / "TestVideo" / "video7012.MP4")
    touch(root / "videos" / "video7013.avi")  # in a preferred folder and ...
    touch(root / "video7013.mp4")  # ... in the data folder itself: this one wins
    touch(root / "deep" / "er" / "clip9.mov")
    touch(root / "videos" / "note.txt")
    (root / "youtube_mapping.txt").write_text("-4wsuPCjDBc_5_15 vid1\nother_1_2 vid2\n")
    idx = B.VideoIndex(root, B._youtube_mapping(root))
    assert idx.find(7010) == root / "videos" / "all" / "video7010.mp4"  # int id -> video prefix
    assert idx.find("video7010") == idx.find("7010.mp4") == idx.find(7010)
    assert idx.find("video7011") == root / "7011.mkv"  # name -> bare number
    assert idx.find("abcDEF123") == root / "videos" / "v_abcDEF123.webm"  # ActivityNet v_ prefix
    assert idx.find("v_abcDEF123") == root / "videos" / "v_abcDEF123.webm"
    assert idx.find(1) == root / "YouTubeClips" / "-4wsuPCjDBc_5_15.avi"  # MSVD: vid1 through the mapping
    assert idx.find("-4wsuPCjDBc_5_15") == root / "YouTubeClips" / "-4wsuPCjDBc_5_15.avi"
    assert idx.find(7012) == root / "TestVideo" / "video7012.MP4"
    assert idx.find(7013) == root / "video7013.mp4"
    assert idx.find("clip9") == root / "deep" / "er" / "clip9.mov"
    assert idx.find("abcdef123") == root / "videos" / "v_abcDEF123.webm"  # case folded when unambiguous
    assert idx.find(2) is None and idx.find("note") is None and idx.find(9999) is None


def _qa_rows(ids_as):
    return [{"question": q, "answer": a, "id": i, "video_id": ids_as(v), "category_id": c}
            for i, (v, q, a, c) in enumerate(QA)]


def build_format(kind: str, root: Path, split: str = "test") -> Path:
    root.mkdir(parents=True)
    if kind == "qa-int":  # MSRVTT-QA release: video_id 7010
        (root / f"{split}_qa.json").write_text(json.dumps(_qa_rows(int)))
        for v in PRESENT:
            touch(root / "videos" / f"video{v}.mp4")
    elif kind == "qa-name":  # video_id "video7010", annotations in a subfolder
        (root / "annotations").mkdir()
        (root / "annotations" / f"{split}_qa.json").write_text(json.dumps(_qa_rows(lambda v: f"video{v}")))
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


@pytest.mark.parametrize("kind,fmt", [("qa-int", "qa.json"), ("qa-name", "qa.json"), ("q+a", "q+a.json"),
                                      ("csv", "csv")])
def test_msrvtt_formats(tmp_path, kind, fmt):
    ds = B.load_dataset("msrvtt", build_format(kind, tmp_path / "d"))
    assert ds.format == fmt
    assert [(it.question, it.answer) for it in ds.items] == [(q, a) for _, q, a, _ in QA]
    assert len({it.id for it in ds.items}) == len(QA)
    found = [it.video for it in ds.items if ds.video_path(it.video)]
    assert len(found) == len(QA) - 1  # all but video7013
    if kind.startswith("qa"):
        assert [it.category for it in ds.items] == [c for *_, c in QA]
        assert {ds.category_name(c) for c in (0, 1, 2, 3, 4)} == {"what", "who", "how", "when", "where"}


def test_val_split(tmp_path):
    root = build_format("qa-int", tmp_path / "d", split="val")
    assert B.load_dataset("msrvtt", root, "val").split == "val"
    with pytest.raises(B.DatasetNotFound, match="no test annotations"):
        B.load_dataset("msrvtt", root, "test")


def test_msvd_release_with_mapping(tmp_path):
    root = tmp_path / "MSVD-QA"
    rows = [{"question": "what is a cat doing?", "answer": "play", "id": 0, "video_id": 1, "category_id": 0},
            {"question": "who is cooking?", "answer": "woman", "id": 1, "video_id": 2, "category_id": 1}]
    root.mkdir()
    (root / "test_qa.json").write_text(json.dumps(rows))
    (root / "youtube_mapping.txt").write_text("-4wsuPCjDBc_5_15 vid1\nzv2RIbUsnSw_159_170 vid2\n")
    touch(root / "YouTubeClips" / "-4wsuPCjDBc_5_15.avi")
    touch(root / "YouTubeClips" / "zv2RIbUsnSw_159_170.avi")
    ds = B.load_dataset("msvd", root)
    assert [ds.video_path(it.video).name for it in ds.items] == ["-4wsuPCjDBc_5_15.avi", "zv2RIbUsnSw_159_170.avi"]


def test_msvd_video_llava_layout(tmp_path):
    root = tmp_path / "MSVD_Zero_Shot_QA"
    root.mkdir()
    (root / "test_q.json").write_text(json.dumps([{"video_name": "-4wsuPCjDBc_5_15", "question": "what?",
                                                   "question_id": "v_0"}]))
    (root / "test_a.json").write_text(json.dumps([{"answer": "cat", "question_id": "v_0"}]))
    touch(root / "videos" / "-4wsuPCjDBc_5_15.avi")
    ds = B.load_dataset("msvd", root)
    assert ds.format == "q+a.json" and ds.video_path("-4wsuPCjDBc_5_15").suffix == ".avi"


def test_activitynet(tmp_path):
    root = tmp_path / "activitynet-qa"
    (root / "dataset").mkdir(parents=True)
    qs = [{"video_name": "1QIUV7WYKXg", "question": "what is the person doing", "question_id": "v_1QIUV7WYKXg_0"},
          {"video_name": "1QIUV7WYKXg", "question": "is it outdoors", "question_id": "v_1QIUV7WYKXg_1"},
          {"video_name": "xyzABC12345", "question": "what color is the ball", "question_id": "v_xyzABC12345_0"},
          {"video_name": "gone0000000", "question": "how many", "question_id": "v_gone0000000_0"}]
    ans = [{"answer": "dance", "type": 0, "question_id": "v_1QIUV7WYKXg_0"},
           {"answer": "yes", "type": 3, "question_id": "v_1QIUV7WYKXg_1"},
           {"answer": "red", "type": 4, "question_id": "v_xyzABC12345_0"},
           {"answer": "2", "type": 7, "question_id": "v_gone0000000_0"}]
    (root / "dataset" / "test_q.json").write_text(json.dumps(qs))
    (root / "dataset" / "test_a.json").write_text(json.dumps(ans))
    touch(root / "videos" / "v_1QIUV7WYKXg.mkv")
    touch(root / "videos" / "v_xyzABC12345.webm")
    ds = B.load_dataset("activitynet", root)
    assert ds.format == "q+a.json"
    assert [it.category for it in ds.items] == [0, 3, 4, 7]
    assert [ds.category_name(it.category) for it in ds.items] == ["motion", "yes/no", "color", "number"]
    assert ds.video_path("1QIUV7WYKXg").name == "v_1QIUV7WYKXg.mkv"
    assert ds.video_path("xyzABC12345").name == "v_xyzABC12345.webm"
    assert ds.video_path("gone0000000") is None


def test_synthetic_with_category_names(tmp_path):
    root = tmp_path / "syn"
    rows = [{"question": "what colour is the cross?", "answer": "white", "id": 0, "video_id": "synth00000",
             "category_id": 0},
            {"question": "how many shapes disappear?", "answer": "one", "id": 1, "video_id": "synth00001",
             "category_id": 2}]
    root.mkdir()
    (root / "test_qa.json").write_text(json.dumps(rows))
    (root / "test_summary.json").write_text(json.dumps({"categories": {"colour": {"id": 0}, "count": {"id": 2}}}))
    touch(root / "synth00000.mp4")
    touch(root / "synth00001.mp4")
    ds = B.load_dataset("synthetic", root)
    assert ds.format == "qa.json" and len(ds.items) == 2
    assert [ds.category_name(it.category) for it in ds.items] == ["colour", "count"]


def test_synthetic_generator_output_end_to_end(capsys, tmp_path, shared_model, fake_answers):
    from vidqa.synthetic import generate

    generate(tmp_path / "syn", n_videos=2, seed=0, size=64, fps=2, workers=1)
    ds = B.load_dataset("synthetic", tmp_path / "syn")
    assert ds.format == "qa.json" and all(ds.video_path(it.video) for it in ds.items)
    assert {ds.category_name(it.category) for it in ds.items} <= {"colour", "shape", "count", "direction", "order",
                                                                  "state", "existence", "event"}
    code, out, err = run(capsys, "bench", "synthetic", "--data", tmp_path / "syn", "--out", tmp_path / "o",
                         "--model", "x", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["questions"]["answered"] == len(ds.items) and report["videos"]["missing"] == 0
    assert set(report["per_category"]) == {ds.category_name(it.category) for it in ds.items}


def test_shard_split_is_by_video_and_covers_everything(tmp_path):
    ds = B.load_dataset("msrvtt", build_format("qa-int", tmp_path / "d"))
    parts = [B.select(ds.items, None, (i, 3)) for i in range(3)]
    assert sorted(it.id for p in parts for it in p) == sorted(it.id for it in ds.items)
    for i, p in enumerate(parts):
        for it in p:
            assert all(B.shard_of(o.video, 3) == i for o in ds.items if o.video == it.video)
    assert B.select(ds.items, 3) == ds.items[:3]
    with pytest.raises(Exception, match="I/N"):
        B.parse_shard("3/3")


# ------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("name,title", [("msrvtt", "MSRVTT-QA"), ("msvd", "MSVD-QA"), ("activitynet", "ActivityNet-QA"),
                                        ("synthetic", "synthetic")])
def test_missing_dataset_is_one_line(capsys, tmp_path, name, title):
    code, out, err = run(capsys, "bench", name, "--data", tmp_path / "nowhere", "--model", tmp_path / "no-model")
    one_line_error(code, err, f"{title}", "not found under", "expected")
    (tmp_path / "empty").mkdir()
    code, out, err = run(capsys, "bench", name, "--data", tmp_path / "empty", "--model", tmp_path / "no-model")
    one_line_error(code, err, "expected")


def test_annotations_without_any_video(capsys, tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "test_qa.json").write_text(json.dumps(_qa_rows(int)))
    code, _, err = run(capsys, "bench", "msrvtt", "--data", root, "--model", tmp_path / "m")
    one_line_error(code, err, "none of their videos")


def test_bad_options(capsys, tmp_path):
    root = msrvtt_dir(tmp_path / "d", real=False)
    code, _, err = run(capsys, "bench", "ucf101", "--data", root)
    one_line_error(code, err, "unknown dataset")
    code, _, err = run(capsys, "bench", "msrvtt")
    one_line_error(code, err, "--data")
    code, _, err = run(capsys, "bench", "msrvtt", "--data", root, "--prompt", "no placeholder", "--out", tmp_path / "o")
    one_line_error(code, err, "{question}")
    code, _, err = run(capsys, "bench", "msrvtt", "--data", root, "--shard", "2/2", "--out", tmp_path / "o")
    one_line_error(code, err, "I/N")
    code, _, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "empty-out", "--merge")
    one_line_error(code, err, "nothing to merge")


# ------------------------------------------------------------------------------------------------
# end to end on the tiny random model


def test_run_resume_and_torn_line(capsys, tmp_path, voco_dir, count_compress):
    """The real path (model loaded by the CLI, real decoding): --limit, a rerun continues, a torn line."""
    root = msrvtt_dir(tmp_path / "d")
    out = tmp_path / "out"
    base = ["bench", "msrvtt", "--data", root, "--model", voco_dir, "--out", out, "--max-new-tokens", "2",
            "--device", "cpu", "--json"]
    code, stdout, err = run(capsys, *base, "--limit", "3")
    assert code == 0, err
    report = json.loads(stdout)
    first = lines(out / "predictions.jsonl")
    assert [r["id"] for r in first] == ["0", "1", "2"]
    assert report["questions"] == {"selected": 3, "answered": 3, "errors": 0, "pending": 0, "missing_video": 0}
    for r in first:
        assert set(r) >= {"id", "video", "question", "answer", "prediction", "metrics", "timings"}
        assert set(r["metrics"]) == {"exact_match", "contains"}
        assert r["timings"]["tokens_per_frame"] == 2 and r["timings"]["answer_tokens"] <= 2
        assert r["timings"]["peak_gpu_mem_bytes"] is None  # CPU
    assert [Path(p).name for p in count_compress] == ["video7010.mp4", "video7011.mp4"]

    # interrupted mid-write: a torn last line
    with open(out / "predictions.jsonl", "a") as f:
        f.write('{"id": "3", "video": "7011", "quest')
    code, stdout, err = run(capsys, *base)
    assert code == 0, err
    report = json.loads(stdout)
    recs = lines(out / "predictions.jsonl")  # parses: the torn line is gone
    ids = [r["id"] for r in recs]
    assert ids[:3] == ["0", "1", "2"] and len(ids) == len(set(ids)) == len(QA) - 1  # no duplicates, 7013 missing
    assert [r["prediction"] for r in recs[:3]] == [r["prediction"] for r in first]  # kept, not redone
    assert report["questions"] == {"selected": 8, "answered": 7, "errors": 0, "pending": 0, "missing_video": 1}
    assert report["videos"]["missing_names"] == ["7013"]
    # each video compressed once over both runs (7011 came from the store for its second question)
    assert sorted(Path(p).name for p in count_compress) == sorted(f"video{v}.mp4" for v in PRESENT)
    e = report["efficiency"]
    assert e["tokens_per_frame"] == 2 and e["kv_bytes_per_frame"] == 2 * 2 * 2 * 2 * 16 * 4
    assert e["compress_frames_per_s"] > 0 and e["ttft_ms_mean"] > 0 and e["peak_gpu_mem_bytes"] is None
    assert e["videos_compressed"] + e["videos_from_store"] == 5  # 7011 loaded again after the resume
    assert set(report["per_category"]) == {"what", "who", "how", "when", "where"}
    assert 0.0 <= report["metrics"]["exact_match"] <= report["metrics"]["contains"] <= 1.0
    assert json.loads((out / "report.json").read_text())["metrics"] == report["metrics"]

    # a third run has nothing to do; another max-new-tokens into the same folder is refused
    code, stdout, err = run(capsys, *base)
    assert code == 0 and len(lines(out / "predictions.jsonl")) == 7
    code, _, err = run(capsys, *[a if a != "2" else "3" for a in base])
    one_line_error(code, err, "max_new_tokens")


def test_table_closes_the_run(capsys, tmp_path, shared_model, fake_answers):
    root = msrvtt_dir(tmp_path / "d")
    code, out, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "o", "--model", "x")
    assert code == 0, err
    for needle in ("exact match", "contains", "what", "who", "tokens/frame", "ms/token", "peak", "7 of 8"):
        assert needle in out, out
    assert "1 videos not found" in err


def test_metrics_on_hand_made_predictions(capsys, tmp_path, shared_model, fake_answers):
    root = msrvtt_dir(tmp_path / "d")
    code, out, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "o", "--model", "x", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["metrics"] == {"answered": 7, "exact_match": round(3 / 7, 6), "contains": round(5 / 7, 6)}
    cats = report["per_category"]
    assert cats["what"] == {"category_id": 0, "answered": 2, "exact_match": 0.5, "contains": 0.5}
    assert cats["who"] == {"category_id": 1, "answered": 2, "exact_match": 0.0, "contains": 0.5}
    assert cats["when"]["exact_match"] == 1.0 and cats["where"]["contains"] == 1.0
    # the default prompt appends the short-answer instruction; --prompt replaces it
    assert fake_answers[0] == "what is the man holding?\nAnswer the question using a single word or phrase."
    fake_answers.clear()
    code, out, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "o2", "--model", "x", "--json",
                         "--prompt", "Q: {question}\\nA:", "--limit", "1")
    assert code == 0, err
    assert fake_answers == ["Q: what is the man holding?\nA:"]
    assert json.loads(out)["prompt"] == "Q: {question}\nA:"


def test_videos_compressed_once_and_indexed_library_reused(capsys, tmp_path, shared_model, fake_answers,
                                                           count_compress):
    root = msrvtt_dir(tmp_path / "d")
    code, _, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "a", "--model", "x", "--no-cache",
                       "--json")
    assert code == 0, err
    assert len(count_compress) == len(PRESENT) == len(set(count_compress))  # one compression per video, no store
    count_compress.clear()
    # `vidqa index` first (same sampling): the bench then compresses nothing
    code, _, err = run(capsys, "index", root / "videos", "--model", "x", "--json")
    assert code == 0, err
    assert len(count_compress) == len(PRESENT)
    count_compress.clear()
    code, out, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "b", "--model", "x", "--json")
    assert code == 0, err
    assert count_compress == []
    e = json.loads(out)["efficiency"]
    assert e["videos_compressed"] == 0 and e["videos_from_store"] == len(PRESENT)


def test_unreadable_video_is_counted_not_fatal(capsys, tmp_path, shared_model, fake_answers):
    root = msrvtt_dir(tmp_path / "d")
    media.make_garbage(root / "videos" / "video7012.mp4")
    code, out, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "o", "--model", "x", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["questions"]["errors"] == 2 and report["questions"]["answered"] == 5
    assert report["videos"]["failed"] == ["7012"]


def test_shards_and_ranks_merge_to_the_unsharded_report(capsys, tmp_path, shared_model, fake_answers, monkeypatch):
    root = msrvtt_dir(tmp_path / "d")
    common = ["bench", "msrvtt", "--data", root, "--model", "x", "--json"]

    def metrics(report):
        return {k: report[k] for k in ("metrics", "per_category", "questions")}

    code, out, err = run(capsys, *common, "--out", tmp_path / "whole")
    assert code == 0, err
    whole = json.loads(out)

    # --shard I/N, then --merge
    parts = []
    for i in range(3):
        code, out, err = run(capsys, *common, "--out", tmp_path / "sharded", "--shard", f"{i}/3")
        assert code == 0, err
        parts.append(json.loads(out))
    assert sum(p["questions"]["selected"] for p in parts) == len(QA)
    assert not (tmp_path / "sharded" / "report.json").exists()
    names = sorted(p.name for p in (tmp_path / "sharded").glob("predictions*.jsonl"))
    assert names == [f"predictions.part-{i}-of-3.jsonl" for i in range(3)]
    code, out, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", tmp_path / "sharded", "--merge", "--json")
    assert code == 0, err
    assert metrics(json.loads(out)) == metrics(whole)
    assert json.loads((tmp_path / "sharded" / "report.json").read_text())["metrics"] == whole["metrics"]

    # torchrun: RANK/WORLD_SIZE shard automatically; rank 0 waits for the others and merges
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run-1")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    code, out, err = run(capsys, *common, "--out", tmp_path / "ranks")
    assert code == 0 and out == "", err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    code, out, err = run(capsys, *common, "--out", tmp_path / "ranks")
    assert code == 0, err
    assert metrics(json.loads(out)) == metrics(whole)
    assert sorted(p.name for p in (tmp_path / "ranks").glob("*.jsonl")) == [
        "predictions.part-0-of-2.jsonl", "predictions.part-1-of-2.jsonl"]


# ------------------------------------------------------------------------------------------------
# the judge, against a fake OpenAI-compatible server on 127.0.0.1


class FakeJudge:
    """Answers chat completions like a judge: 'yes' when the prediction contains the gold answer.

    Replies vary in form (python dict, JSON in a code fence, prose around a dict) to exercise parsing.
    It refuses to serve more than ``max_requests``.
    """

    def __init__(self, max_requests: int = 50):
        self.requests: list[dict] = []
        self.max_requests = max_requests
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge.lock:
                    judge.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                    n = len(judge.requests)
                if n > judge.max_requests:
                    self.send_response(500)
                    self.end_headers()
                    return
                user = body["messages"][1]["content"]
                gold = user.split("Correct Answer: ")[1].split("\n")[0]
                pred = user.split("Predicted Answer: ")[1].split("\n")[0]
                yes = B.contains(pred, gold)
                forms = ["{'pred': '%s', 'score': %d}", '```json\n{"pred": "%s", "score": %d}\n```',
                         "Evaluation: {'pred': '%s', 'score': %d}."]
                content = forms[n % 3] % ("yes" if yes else "no", 4 if yes else 1)
                data = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                                "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_judge_with_a_local_fake_server(capsys, tmp_path, shared_model, fake_answers, monkeypatch):
    monkeypatch.setenv("VIDQA_JUDGE_KEY", "test-key")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    root = msrvtt_dir(tmp_path / "d")
    out = tmp_path / "o"
    with FakeJudge(max_requests=len(QA) + 2) as server:
        judge = ["--judge-model", "fake-judge-1", "--judge-url", server.url]
        code, stdout, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", out, "--model", "x", "--json", *judge)
        assert code == 0, err
        report = json.loads(stdout)
        j = report["judge"]
        assert j["model"] == "fake-judge-1" and j["protocol"] == "video-chatgpt" and j["url"] == server.url
        assert (j["yes"], j["no"], j["failed"]) == (5, 2, 0)  # the 'contains' answers
        assert j["accuracy"] == round(5 / 7, 6) and j["score"] == round((5 * 4 + 2 * 1) / 7, 4)
        assert j["requests"] == 7 and j["cache_hits"] == 0
        assert len(server.requests) == 7
        req = server.requests[0]
        assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer test-key"
        assert req["model"] == "fake-judge-1" and req["temperature"] == 0
        assert req["messages"][0]["content"] == B.JUDGE_SYSTEM
        assert report["per_category"]["who"]["judge_accuracy"] == 0.5
        verdicts = lines(out / "judge.fake-judge-1.jsonl")
        assert len(verdicts) == 7 and {v["judge_model"] for v in verdicts} == {"fake-judge-1"}

        # a rerun (and a --merge) costs nothing: every verdict comes from the disk cache
        code, stdout, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", out, "--model", "x", "--json", *judge)
        assert code == 0, err
        code, stdout2, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", out, "--merge", "--json", *judge)
        assert code == 0, err
        assert len(server.requests) == 7
        for s in (stdout, stdout2):
            again = json.loads(s)["judge"]
            assert again["cache_hits"] == 7 and again["requests"] == 0 and again["accuracy"] == j["accuracy"]

        # another judge model is another cache key: it is asked again
        code, stdout, err = run(capsys, "bench", "msrvtt", "--data", root, "--out", out, "--merge", "--json",
                                "--judge-model", "fake-judge-2", "--judge-url", server.url, "--limit", "2")
        assert code == 0, err
        assert json.loads(stdout)["judge"]["model"] == "fake-judge-2" and len(server.requests) == 9


def test_judge_retries_and_refusals(tmp_path):
    replies = iter(["not a verdict", "{'pred': 'no', 'score': 2}"])

    class Flaky(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if self.path.startswith("/denied"):
                self.send_response(401)
                self.end_headers()
                self.wfile.write(b'{"error": "bad key"}')
                return
            data = json.dumps({"choices": [{"message": {"content": next(replies)}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        judge = B.Judge("m", base + "/v1", key="k", cache_dir=tmp_path / "j", sleep=lambda s: None)
        assert judge("q?", "a", "b") == {"pred": "no", "score": 2.0, "raw": "{'pred': 'no', 'score': 2}",
                                         "model": "m", "cached": False}
        assert judge.requests == 2  # the unparseable reply was asked again
        assert judge("q?", "a", "b")["cached"] is True and judge.requests == 2
        denied = B.Judge("m", base + "/denied", key="k", cache_dir=tmp_path / "j", sleep=lambda s: None)
        with pytest.raises(B.JudgeError, match="HTTP 401"):
            denied("q?", "a", "other")
    finally:
        server.shutdown()
        server.server_close()


def test_judge_needs_a_key_for_openai(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("VIDQA_JUDGE_KEY", raising=False)
    with pytest.raises(B.JudgeError, match="OPENAI_API_KEY"):
        B.Judge("gpt-4o-mini", None, cache_dir=tmp_path)
