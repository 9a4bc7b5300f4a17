"""`vidqa.cli.common`: the one torchrun relaunch drops --gpus from the arguments."""

import typer

from vidqa.cli import app, main
from vidqa.cli.common import without_option


def test_gpus_option_is_dropped_for_torchrun():
    assert without_option(["index", "--gpus", "2", "d", "--gpus=3", "--json"], "--gpus") == ["index", "d", "--json"]
