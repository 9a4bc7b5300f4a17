"""`vidqa.bench.datasets`: annotation formats, video names, missing data (one-line errors)."""

import json

import pytest

from vidqa import bench as B
from vidqa.bench.datasets import _youtube_mapping
from bench_fixtures import (QA, build_format, fake_answers, one_line_error, qa_rows, run, shared_model,
                            touch, video)  # noqa: F401 (fixtures)


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
    idx = B.VideoIndex(root, _youtube_mapping(root))
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
    (root / "test_qa.json").write_text(json.dumps(qa_rows(int)))
    code, _, err = run(capsys, "bench", "msrvtt", "--data", root, "--model", tmp_path / "m")
    one_line_error(code, err, "none of their videos")
