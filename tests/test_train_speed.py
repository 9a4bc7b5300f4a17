"""benchmarks/train_speed.py --tiny: every mode runs on the CPU and reports its figures."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))


def test_train_speed_tiny_reports_every_mode(tmp_path, monkeypatch):
    import train_speed

    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", ["train_speed.py", "--tiny", "--out", str(tmp_path / "speed.json")])
    try:
        train_speed.main()
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "speed.json").read_text())
    assert [r["mode"] for r in report["results"]] == ["full", "lora", "video"]
    for r in report["results"]:
        for key in ("tokens_per_s", "samples_per_s", "frames_per_s", "mfu", "data_wait_share"):
            assert r[key] >= 0, key
    assert report["results"][2]["frames_per_sample"] == 8


def test_train_speed_tiny_takes_the_speed_knobs_and_profiles(tmp_path, monkeypatch, capsys):
    import train_speed

    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", ["train_speed.py", "--tiny", "--out", str(tmp_path / "speed.json"),
                                      "--checkpointing", "every:2", "--attention", "flex", "--adam", "foreach",
                                      "--profile", str(tmp_path / "prof")])
    try:
        train_speed.main()
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "speed.json").read_text())
    for r in report["results"]:
        assert r["checkpointing"] == "every:2" and r["attention"] == "flex" and r["tokens_per_s"] > 0
    assert sorted(p.name for p in (tmp_path / "prof").iterdir()) == ["full_rank0.json", "lora_rank0.json",
                                                                    "video_rank0.json"]
    assert "Self CPU" in capsys.readouterr().out
