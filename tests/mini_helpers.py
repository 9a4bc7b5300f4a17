"""Fixtures the LLaVA-Mini tests share: a tiny official-layout checkpoint, its modules and tokenizer."""

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from vidqa import testing
from vidqa.methods import mini


@pytest.fixture(autouse=True)
def _no_grad():
    """Inference only here; scoped so that other test modules (training) keep autograd."""
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return testing.write_tiny_official_checkpoint(tmp_path_factory.mktemp("llava-mini-tiny"))


@pytest.fixture(scope="module")
def model(ckpt) -> mini.LlavaMiniModules:
    return mini.load_llava_mini_state(ckpt, dtype=torch.float32)


@pytest.fixture(scope="module")
def tokenizer(ckpt):
    return PreTrainedTokenizerFast.from_pretrained(str(ckpt))


def prompt_tensor(tokenizer, question: str) -> torch.Tensor:
    return torch.tensor(mini.build_prompt_ids(tokenizer, question).ids)
