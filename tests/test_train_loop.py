"""`vidqa.train.loop`: the learning-rate schedule, resumable runs."""

import json

import numpy as np
import pytest
import torch

from train_fixtures import tiny_run
from vidqa.train import TrainConfig, learning_rate


def test_learning_rate_warms_up_then_decays_by_steps_or_time():
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10)
    assert learning_rate(cfg, 0, 0) == pytest.approx(0.1, abs=1e-3)
    assert learning_rate(cfg, 50, 0) == pytest.approx(0.5)
    assert learning_rate(cfg, 99, 0) < 0.01
    timed = TrainConfig(steps=10**9, lr=1.0, warmup=1, minutes=1)
    assert learning_rate(timed, 5, 30) == pytest.approx(0.5)  # half the time budget gone
    assert learning_rate(timed, 5, 60) == 0.0


def test_schedule_can_end_at_a_number_of_questions():
    cfg = TrainConfig(steps=10**9, lr=1.0, warmup=1, samples=1000)
    assert learning_rate(cfg, 3, 0.0, seen=500) == pytest.approx(0.5)
    assert learning_rate(cfg, 3, 0.0, seen=1000) == 0.0


def test_training_resumes_from_its_state_and_reports_progress(tmp_path):
    learner, first = tiny_run(tmp_path, 3)
    assert first["steps"] == 3 and len(first["history"]) == 3
    assert all(np.isfinite(h["loss"]) for h in first["history"])
    state = json.loads((tmp_path / "run" / "train_state" / "meta.json").read_text())
    assert state["step"] == 3
    again, second = tiny_run(tmp_path, 5)  # same run directory: continues at step 3
    assert second["steps"] == 5
    assert [h["step"] for h in second["history"]] == [1, 2, 3, 4, 5]
