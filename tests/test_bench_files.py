"""`vidqa.bench.files`: prediction files (torn tails, one writer at a time), run.json agreement."""

import json

import pytest

from vidqa.bench.files import (PredictionWriter, check_run_settings, part_name, read_records, read_settings,
                               repair_tail, write_json_atomic)
from vidqa.errors import VidqaError


def test_part_names():
    assert part_name(None) == "predictions.jsonl"
    assert part_name((1, 4)) == "predictions.part-1-of-4.jsonl"


@pytest.mark.parametrize("tail,cut", [(b'{"id": 3, "pred', True), (b'\x00\x00\x00\n', True), (b"", False)])
def test_a_torn_last_line_is_cut_and_complete_lines_stay(tmp_path, tail, cut):
    path = tmp_path / "p.jsonl"
    good = b'{"id": 1, "pred": "a"}\n{"id": 2, "pred": "b"}\n'
    path.write_bytes(good + tail)
    assert repair_tail(path) is cut
    assert path.read_bytes() == good
    assert [r["id"] for r in read_records(path)] == [1, 2]


def test_writer_appends_after_a_repair_and_refuses_a_second_writer(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"id": 1}\n{"id": 2, "pr')
    with PredictionWriter(path) as w:
        assert w.torn
        w.write({"id": 2, "pred": "é"})
        with pytest.raises(VidqaError, match="another vidqa bench"):
            PredictionWriter(path)
    assert [r["id"] for r in read_records(path)] == [1, 2]
    assert "é" in path.read_text(encoding="utf-8")


def test_run_settings_must_agree_on_what_changes_answers(tmp_path):
    settings = {"dataset": "msrvtt", "prompt": "{question}", "max_new_tokens": 32, "note": "x"}
    check_run_settings(tmp_path, settings)
    assert read_settings(tmp_path)["dataset"] == "msrvtt"
    check_run_settings(tmp_path, {**settings, "note": "other"})  # not an answer-changing key
    with pytest.raises(VidqaError, match="another prompt"):
        check_run_settings(tmp_path, {**settings, "prompt": "Q: {question}"})


def test_write_json_atomic_leaves_no_temporary_file(tmp_path):
    write_json_atomic(tmp_path / "sub" / "r.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "sub" / "r.json").read_text()) == {"a": [1, 2]}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["r.json"]
