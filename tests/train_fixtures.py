"""Shared by the training tests: a very small demo architecture and a few-step run."""

import torch

from vidqa import synthetic
from vidqa.train import SyntheticData, TinyConfig, TrainConfig, build_tiny, make_word_tokenizer, train

TINY = TinyConfig(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, hidden=32, layers=1,
                  heads=2, intermediate=64, prefusion_layers=1)


def logits(learner, E, M, P):
    mask = torch.where(M, 0.0, torch.finfo(E.dtype).min).to(E.dtype)
    return learner.llm(inputs_embeds=E, attention_mask=mask, position_ids=P).logits


def tiny_run(tmp_path, steps):
    data = SyntheticData(3, seed=1, size=32)
    tok = make_word_tokenizer(tmp_path / "tok", data.texts() + list(synthetic.ANSWERS), "voco")
    torch.manual_seed(0)
    learner = build_tiny("voco", tok, TINY)
    cfg = TrainConfig(steps=steps, batch_size=2, warmup=1, save_every=2, log_every=1, tiny=TINY)
    return learner, train(learner, data, cfg, tmp_path / "run", torch.device("cpu"), log=lambda m: None)
