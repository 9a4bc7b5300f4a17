"""`vidqa search`: a ranked table or a JSON list over indexed videos; one-line errors."""

import json

from cli_helpers import one_line_error, run
from serve_helpers import CLIPS


def test_search_json_and_table(capsys, tmp_path):
    clips = [CLIPS / f"shapes0{i}.mp4" for i in range(3)]
    code, _, _ = run(capsys, "index", *clips[:2], "--model", "tiny-voco", "--device", "cpu", "--json")
    assert code == 0
    code, out, err = run(capsys, "search", "a green square", *clips, "--model", "tiny-voco", "--device", "cpu",
                         "--json", "--top-k", "1")
    assert code == 0, err
    hits = json.loads(out)
    assert len(hits) == 1 and set(hits[0]) == {"video", "score", "times"} and hits[0]["video"] in map(str, clips[:2])
    assert "1 of 3 videos are not indexed" in err
    code, out, err = run(capsys, "search", "a green square", CLIPS / "shapes00.mp4", CLIPS / "shapes01.mp4",
                         "--model", "tiny-voco", "--device", "cpu")
    assert code == 0 and "shapes00.mp4" in out and "shapes01.mp4" in out and "score" in out


def test_search_errors(capsys, tmp_path):
    code, _, err = run(capsys, "search", "a red circle", CLIPS / "shapes05.mp4", "--model", "tiny-voco", "--device", "cpu")
    one_line_error(code, err, "is indexed", "vidqa index")
    code, _, err = run(capsys, "search", "x", tmp_path / "missing", "--model", "tiny-voco")
    one_line_error(code, err, "no such file")
    code, _, err = run(capsys, "search", "x", CLIPS / "shapes00.mp4", "--model", "tiny-voco", "--template", "nothing")
    one_line_error(code, err, "{query}")
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "search", "x", tmp_path / "empty", "--model", "tiny-voco")
    one_line_error(code, err, "no video files")


def test_search_finds_the_caches_of_the_quantisation_they_were_indexed_with(capsys):
    """The store keys on --quantize: a library indexed with int8 is searched with int8, and an
    unquantised search does not take those entries for its own."""
    import pytest

    pytest.importorskip("torchao")
    clip = CLIPS / "shapes03.mp4"
    code, _, err = run(capsys, "index", clip, "--model", "tiny-voco", "--device", "cpu", "--quantize", "int8", "--json")
    assert code == 0, err
    code, out, err = run(capsys, "search", "a red circle", clip, "--model", "tiny-voco", "--device", "cpu",
                         "--quantize", "int8", "--json")
    assert code == 0, err
    assert [h["video"] for h in json.loads(out)] == [str(clip)]
    code, _, err = run(capsys, "search", "a red circle", clip, "--model", "tiny-voco", "--device", "cpu")
    one_line_error(code, err, "is indexed", "vidqa index")
    code, _, err = run(capsys, "search", "a red circle", clip, "--model", "tiny-voco", "--quantize", "int3")
    one_line_error(code, err, "--quantize")
