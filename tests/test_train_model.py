"""`vidqa.train.model`: the Learner's parts, a vision tower from another run."""

import pytest
import torch

from train_fixtures import TINY, tiny_run
from vidqa.errors import VidqaError
from vidqa.train import DataError, build_tiny, load_vision_from, make_word_tokenizer


def test_vision_tower_from_another_run(tmp_path):
    learner, _ = tiny_run(tmp_path, 1)
    other = build_tiny("pool", learner.tokenizer, TINY)
    load_vision_from(other, tmp_path / "run")
    for a, b in zip(other.vision.parameters(), learner.vision.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(DataError):
        load_vision_from(other, tmp_path / "missing.pt")


@pytest.mark.parametrize("variant,parts,first_seen", [
    ("voco", ["vision", "projector", "llm", "voco"], ["vision", "projector", "llm"]),
    ("full", ["vision", "projector", "llm", "voco"], ["vision", "projector", "llm"]),
    ("pool", ["vision", "projector", "llm", "pool", "voco"], ["vision", "projector", "llm", "pool"]),
    ("mini", ["vision", "projector", "llm", "mini", "compressor", "prefusion"], ["vision", "projector", "llm", "mini"]),
])
def test_a_training_state_keeps_its_parameter_names(tmp_path, variant, parts, first_seen):
    """The builder's parts sit on the Learner under the names they always had: an older run's
    ``train_state.pt`` (model and optimizer, whose state follows the parameter order) still resumes."""
    tok = make_word_tokenizer(tmp_path / "tok", ["what is it ?", "red"], "mini" if variant == "mini" else "voco")
    learner = build_tiny(variant, tok, TINY)
    assert learner.variant == variant
    assert list(dict.fromkeys(k.split(".")[0] for k in learner.state_dict())) == parts
    order = list(dict.fromkeys(n.split(".")[0] for n, _ in learner.named_parameters()))
    assert order == first_seen


def test_an_unknown_variant_is_refused(tmp_path):
    tok = make_word_tokenizer(tmp_path / "tok", ["what is it ?", "red"], "voco")
    with pytest.raises(VidqaError, match="unknown training variant 'lstm'"):
        build_tiny("lstm", tok, TINY)
