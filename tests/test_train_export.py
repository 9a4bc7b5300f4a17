"""`vidqa.train.export`: a trained demo model loads in the pipeline and runs the trained weights."""

from types import SimpleNamespace

import numpy as np
import torch

from train_fixtures import TINY, tiny_run
from vidqa import synthetic
from vidqa.generate import GenerationConfig
from vidqa.pipeline import VideoQA
from vidqa.train import export


def test_exported_demo_checkpoint_loads_and_answers(tmp_path):
    learner, _ = tiny_run(tmp_path, 1)
    export(learner, tmp_path / "model", TINY, dtype=torch.float32)
    qa = VideoQA.from_pretrained(str(tmp_path / "model"), device="cpu", dtype="float32")
    frames = synthetic.render_frames(synthetic.make_clip(0, 3), size=32, fps=1)
    cache = qa.compress(SimpleNamespace(pixels=frames, timestamps=np.arange(len(frames)) + 0.5))
    text = "".join(qa.answer(cache, "what colour is the circle ?", GenerationConfig(max_new_tokens=3)))
    assert isinstance(text, str)
    # the trained weights are what the pipeline runs: same logits for the first answer token
    assert torch.equal(qa.method.llm.lm_head.weight, learner.llm.lm_head.weight.float())
