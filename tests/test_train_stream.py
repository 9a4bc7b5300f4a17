"""`vidqa.train.stream`: instruction records, fitted frames, and a step order that does not depend on
the number of processes."""

import numpy as np
import pytest
import torch

from vidqa.errors import VidqaError
from vidqa.train.data import DataError
from vidqa.train.stream import StepSampler, fit_frames, read_records
from vidqa.vision import Preprocess


def test_step_order_is_the_same_for_one_or_two_processes_and_resumes():
    one = StepSampler(10, 4, 2, 0, 1, seed=3)
    two = [StepSampler(10, 4, 1, r, 2, seed=3) for r in range(2)]
    for step in range(6):  # across epochs too
        assert sorted(one.step_indices(step)) == sorted(two[0].step_indices(step) + two[1].step_indices(step))
    later = StepSampler(10, 4, 2, 0, 1, seed=3, start_step=2, steps=4)
    assert list(later) == [one.step_indices(2)[:2], one.step_indices(2)[2:], one.step_indices(3)[:2],
                           one.step_indices(3)[2:]]
    with pytest.raises(VidqaError, match="multiple"):
        StepSampler(10, 3, 2, 0, 1, seed=0)


def test_frames_are_padded_square_with_the_mean_colour():
    frames = np.full((2, 20, 40, 3), 255, dtype=np.uint8)
    out = fit_frames(frames, Preprocess(size=16, aspect="pad"))
    assert out.shape == (2, 16, 16, 3) and out.dtype == torch.uint8
    assert out[0, 0, 8].tolist() == [round(255 * m) for m in Preprocess().mean]  # padding row
    assert out[0, 8, 8].tolist() == [255, 255, 255]


def test_records_are_checked_and_bad_ones_named_or_refused(tmp_path):
    (tmp_path / "d.json").write_text('[{"image": "a.png", "conversations": [{"from": "human", "value": "<image>\\nq"},'
                                     '{"from": "gpt", "value": "a"}]}, {"video": "v.mp4", "conversations": []}]')
    seen = []
    recs = read_records([tmp_path / "d.json"], tmp_path / "img", None, report=seen.append)
    assert len(recs) == 1 and recs[0].media == tmp_path / "img" / "a.png" and recs[0].turns == [("q", "a")]
    assert seen == ["skipping d.json record 1: needs an image or video path and at least one human/gpt pair"]
    with pytest.raises(DataError, match="record 1"):
        read_records([tmp_path / "d.json"], None, None, on_bad="refuse")
