"""`vidqa.train.state`: training state as safetensors + JSON; a pickle is refused and never runs."""

import json
import pickle

import pytest
import torch

from cli_helpers import one_line_error, run
from train_fixtures import TINY, tiny_run
from vidqa.train import build_tiny, load_vision_from
from vidqa.train.state import StateError, read_meta, read_model_tensors


class _Evil:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(path, marker, zip_format=True):
    if zip_format:
        torch.save({"model": _Evil(marker), "step": 1}, path)  # what an old train_state.pt looks like
    else:
        path.write_bytes(pickle.dumps({"model": _Evil(marker)}))
    return path


SMALL = ["--steps", "1", "--batch-size", "1", "--clips", "2", "--eval-clips", "1", "--device", "cpu"]


@pytest.mark.parametrize("name,zip_format", [("evil.pt", True), ("evil.state", False)])
def test_vision_from_a_pickle_is_refused_and_never_runs(capsys, tmp_path, name, zip_format):
    marker = tmp_path / "pwned"
    evil = _crafted(tmp_path / name, marker, zip_format)
    code, _, err = run(capsys, "train", "--out", tmp_path / "run", "--vision-from", evil, *SMALL)
    one_line_error(code, err, "pickle")
    assert not marker.exists()


def test_resuming_an_out_with_a_pickled_state_is_refused_and_never_runs(capsys, tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "run").mkdir()
    _crafted(tmp_path / "run" / "train_state.pt", marker)
    code, _, err = run(capsys, "train", "--out", tmp_path / "run", *SMALL)
    one_line_error(code, err, "train_state.pt", "pickle")
    assert not marker.exists()
    with pytest.raises(StateError):
        read_meta(tmp_path / "run")


def test_state_is_safetensors_and_json_and_feeds_vision_from(tmp_path):
    learner, _ = tiny_run(tmp_path, 2)
    state = tmp_path / "run" / "train_state"
    assert (state / "meta.json").is_file() and not (tmp_path / "run" / "train_state.pt").exists()
    assert {p.suffix for p in state.iterdir()} == {".json", ".safetensors"}
    meta = json.loads((state / "meta.json").read_text())
    assert meta["step"] == 2 and meta["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.95]
    tensors = read_model_tensors(tmp_path / "run")
    assert torch.equal(tensors["llm.lm_head.weight"], learner.llm.lm_head.weight)
    other = build_tiny("voco", learner.tokenizer, TINY)
    for source in (tmp_path / "run", state, next(state.glob("*.safetensors"))):
        load_vision_from(other, source)
        assert all(torch.equal(a, b) for a, b in zip(other.vision.parameters(), learner.vision.parameters()))
