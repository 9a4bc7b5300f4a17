"""`vidqa.train.data`: bad training records reported by index, skipped or refused."""

import json

import pytest

from vidqa import synthetic
from vidqa.train import DataError, JsonData


def _video(path):
    synthetic.render(synthetic.make_clip(0, 0), path, size=32, fps=2)


def test_bad_json_records_are_reported_by_index_and_skipped_or_refused(tmp_path):
    _video(tmp_path / "a.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    good = {"video": "a.mp4", "conversations": [{"from": "human", "value": "<image>\nwhat colour?"},
                                                {"from": "gpt", "value": "red"}]}
    records = [good, {"video": "missing.mp4", "conversations": good["conversations"]},
               {"video": "broken.mp4", "conversations": good["conversations"]},
               {"video": "a.mp4", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": " "}]},
               "not an object"]
    (tmp_path / "data.json").write_text(json.dumps(records))
    seen = []
    data = JsonData(tmp_path / "data.json", report=seen.append, num_frames=2)
    assert len(data) == 1 and [i for i, _ in data.bad] == [1, 2, 3, 4]
    assert all(m.startswith(f"skipping record {i}") for m, i in zip(seen, [1, 2, 3, 4]))
    with pytest.raises(DataError, match="record 1"):
        JsonData(tmp_path / "data.json", on_bad="refuse", report=seen.append, num_frames=2)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read training data"):
        JsonData(tmp_path / "bad.json")
