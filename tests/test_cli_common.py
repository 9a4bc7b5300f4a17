"""`vidqa.cli.common`: the one torchrun relaunch drops --gpus from the arguments."""

import typer

from vidqa.cli import app, main
from vidqa.cli.common import without_option


def test_gpus_option_is_dropped_for_torchrun():
    assert without_option(["index", "--gpus", "2", "d", "--gpus=3", "--json"], "--gpus") == ["index", "d", "--json"]


def test_gpus_without_gpus_is_one_line_before_torchrun(capsys, tmp_path, monkeypatch):
    import subprocess

    import torch

    from cli_helpers import one_line_error, run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    launched = []
    monkeypatch.setattr(subprocess, "call", lambda *a, **k: launched.append(a) or 1)
    for env in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(env, raising=False)
    for cmd in (["index", str(tmp_path)], ["bench", "synthetic", "--data", str(tmp_path)]):
        code, _, err = run(capsys, *cmd, "--gpus", "2", "--model", "x")
        one_line_error(code, err, "--gpus 2", "no CUDA GPU")
        assert code == 2
    assert launched == []
