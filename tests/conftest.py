import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/media.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def voco_dir(tmp_path_factory) -> Path:
    from vidqa.testing import make_voco_checkpoint

    return make_voco_checkpoint(tmp_path_factory.mktemp("models") / "voco")


@pytest.fixture(scope="session")
def voco_qa(voco_dir):
    from vidqa.pipeline import VideoQA

    return VideoQA.from_pretrained(str(voco_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def mini_dir(tmp_path_factory) -> Path:
    from vidqa.testing import write_tiny_official_checkpoint

    return write_tiny_official_checkpoint(tmp_path_factory.mktemp("models") / "mini", clip_image_size=56)


@pytest.fixture(scope="session")
def mini_qa(mini_dir):
    from vidqa.pipeline import VideoQA

    return VideoQA.from_pretrained(str(mini_dir), device="cpu", dtype="float32")


@pytest.fixture(autouse=True)
def _private_cache_store(tmp_path, monkeypatch):
    """Every test gets its own cache store; none writes to the user's ~/.cache."""
    monkeypatch.setenv("VIDQA_CACHE_DIR", str(tmp_path / "vidqa-cache"))


@pytest.fixture(autouse=True)
def _grad_mode_is_not_leaked():
    """A test that turns autograd off globally would break every training test after it."""
    yield
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled(), "a test left autograd disabled"
