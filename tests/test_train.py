"""`vidqa train`: batched inputs equal per-sample passes, resumable runs, bad data, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vidqa import synthetic
from vidqa.methods.mini import IMAGE_TOKEN_INDEX
from vidqa.train import (JsonData, DataError, Sample, SyntheticData, TinyConfig, TrainConfig, build_tiny, export,
                         learning_rate, make_word_tokenizer, train)

TINY = TinyConfig(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, hidden=32, layers=1,
                  heads=2, intermediate=64, prefusion_layers=1)


def _logits(learner, E, M, P):
    mask = torch.where(M, 0.0, torch.finfo(E.dtype).min).to(E.dtype)
    return learner.llm(inputs_embeds=E, attention_mask=mask, position_ids=P).logits


@pytest.mark.parametrize("variant", ["voco", "full", "pool", "mini"])
def test_batched_training_inputs_equal_per_sample_ones(tmp_path, variant):
    """`vidqa train`'s vectorised batch gives each sample the logits of its own single pass."""
    family = "mini" if variant == "mini" else "voco"
    tok = make_word_tokenizer(tmp_path / "tok", ["what colour is it ?", "red", "which way does the circle move ?",
                                                 "left"], family)
    torch.manual_seed(0)
    learner = build_tiny(variant, tok, TINY, tokens_per_frame=2).eval()
    frames = synthetic.render_frames(synthetic.make_clip(0, 1), size=32, fps=1)[:3]
    other = synthetic.render_frames(synthetic.make_clip(0, 2), size=32, fps=1)[:3]
    samples = [Sample(frames, "what colour is it ?", "red"), Sample(other, "which way does the circle move ?", "left")]
    pixels = torch.from_numpy(np.stack([s.frames for s in samples]))
    feats = learner.features(pixels)
    prompts = [learner.prompt_ids(s.question) for s in samples]
    answers = [learner.answer_ids(s.answer) for s in samples]
    assert len(prompts[0]) != len(prompts[1])  # padding is exercised
    batch = learner._mini_batched if variant == "mini" else learner._batched
    E, M, P, starts = batch(feats, prompts, answers)
    batched = _logits(learner, E, M, P)
    for b in range(2):
        e, m, p, st = learner._inputs(feats[b], prompts[b], answers[b])
        single = _logits(learner, e[None], m[None, None], p[None])[0]
        assert st == starts[b]
        assert (batched[b, : e.shape[0]] - single).abs().max() < 1e-4


def test_learning_rate_warms_up_then_decays_by_steps_or_time():
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10)
    assert learning_rate(cfg, 0, 0) == pytest.approx(0.1, abs=1e-3)
    assert learning_rate(cfg, 50, 0) == pytest.approx(0.5)
    assert learning_rate(cfg, 99, 0) < 0.01
    timed = TrainConfig(steps=10**9, lr=1.0, warmup=1, minutes=1)
    assert learning_rate(timed, 5, 30) == pytest.approx(0.5)  # half the time budget gone
    assert learning_rate(timed, 5, 60) == 0.0


def _tiny_run(tmp_path, steps):
    data = SyntheticData(3, seed=1, size=32)
    tok = make_word_tokenizer(tmp_path / "tok", data.texts() + list(synthetic.ANSWERS), "voco")
    torch.manual_seed(0)
    learner = build_tiny("voco", tok, TINY)
    cfg = TrainConfig(steps=steps, batch_size=2, warmup=1, save_every=2, log_every=1, tiny=TINY)
    return learner, train(learner, data, cfg, tmp_path / "run", torch.device("cpu"), log=lambda m: None)


def test_training_resumes_from_its_state_and_reports_progress(tmp_path):
    learner, first = _tiny_run(tmp_path, 3)
    assert first["steps"] == 3 and len(first["history"]) == 3
    assert all(np.isfinite(h["loss"]) for h in first["history"])
    state = torch.load(tmp_path / "run" / "train_state.pt", weights_only=False)
    assert state["step"] == 3
    again, second = _tiny_run(tmp_path, 5)  # same run directory: continues at step 3
    assert second["steps"] == 5
    assert [h["step"] for h in second["history"]] == [1, 2, 3, 4, 5]


def test_exported_demo_checkpoint_loads_and_answers(tmp_path):
    from types import SimpleNamespace

    from vidqa.generate import GenerationConfig
    from vidqa.pipeline import VideoQA

    learner, _ = _tiny_run(tmp_path, 1)
    export(learner, tmp_path / "model", TINY, dtype=torch.float32)
    qa = VideoQA.from_pretrained(str(tmp_path / "model"), device="cpu", dtype="float32")
    frames = synthetic.render_frames(synthetic.make_clip(0, 3), size=32, fps=1)
    cache = qa.compress(SimpleNamespace(pixels=frames, timestamps=np.arange(len(frames)) + 0.5))
    text = "".join(qa.answer(cache, "what colour is the circle ?", GenerationConfig(max_new_tokens=3)))
    assert isinstance(text, str)
    # the trained weights are what the pipeline runs: same logits for the first answer token
    assert torch.equal(qa.method.llm.lm_head.weight, learner.llm.lm_head.weight.float())


def _video(path):
    synthetic.render(synthetic.make_clip(0, 0), path, size=32, fps=2)


def test_bad_json_records_are_reported_by_index_and_skipped_or_refused(tmp_path):
    _video(tmp_path / "a.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    good = {"video": "a.mp4", "conversations": [{"from": "human", "value": "<image>\nwhat colour?"},
                                                {"from": "gpt", "value": "red"}]}
    records = [good, {"video": "missing.mp4", "conversations": good["conversations"]},
               {"video": "broken.mp4", "conversations": good["conversations"]},
               {"video": "a.mp4", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": " "}]},
               "not an object"]
    (tmp_path / "data.json").write_text(json.dumps(records))
    seen = []
    data = JsonData(tmp_path / "data.json", report=seen.append, num_frames=2)
    assert len(data) == 1 and [i for i, _ in data.bad] == [1, 2, 3, 4]
    assert all(m.startswith(f"skipping record {i}") for m, i in zip(seen, [1, 2, 3, 4]))
    with pytest.raises(DataError, match="record 1"):
        JsonData(tmp_path / "data.json", on_bad="refuse", report=seen.append, num_frames=2)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read training data"):
        JsonData(tmp_path / "bad.json")


@pytest.mark.parametrize("variant", ["voco", "full", "pool", "mini"])
def test_packed_questions_equal_their_own_passes(tmp_path, variant):
    """All of a clip's questions in one sequence: each gets the logits of its own single pass (for
    LLaVA-Mini the pre-fusion is packed too, and each question's LLM text is what follows <image>)."""
    tok = make_word_tokenizer(tmp_path / "tok", ["what colour is it ?", "red", "which way does the circle move ?",
                                                 "left", "how many ?", "two"], "mini" if variant == "mini" else "voco")
    torch.manual_seed(0)
    learner = build_tiny(variant, tok, TINY, tokens_per_frame=2).eval()
    clips = [synthetic.render_frames(synthetic.make_clip(0, i), size=32, fps=1)[:3] for i in (1, 2)]
    qs = [("what colour is it ?", "red"), ("which way does the circle move ?", "left"), ("how many ?", "two")]
    owner = [0, 1, 0, 0, 1]
    samples = [Sample(clips[c], *qs[k % 3]) for k, c in enumerate(owner)]
    feats = learner.features(torch.from_numpy(np.stack(clips)))
    prompts = [learner.prompt_ids(s.question) for s in samples]
    answers = [learner.answer_ids(s.answer) for s in samples]
    pack = learner._mini_packed if variant == "mini" else learner._packed
    E, M, P, starts = pack(feats, prompts, answers, owner)
    packed = _logits(learner, E, M, P)
    for i, c in enumerate(owner):
        e, m, p, st = learner._inputs(feats[c], prompts[i], answers[i])
        single = _logits(learner, e[None], m[None, None], p[None])[0]
        text = len(prompts[i]) - (prompts[i].index(IMAGE_TOKEN_INDEX) + 1 if variant == "mini" else 0)  # the question's own
        n = text + len(answers[i])
        first = starts[i] - text  # where this question's text begins in the packed row
        assert (packed[c, first: first + n] - single[-n:]).abs().max() < 1e-4
        assert (packed[c, : e.shape[0] - n] - single[: e.shape[0] - n]).abs().max() < 1e-4  # the shared part
        assert st - text == e.shape[0] - n  # same offset of the answer inside the question


@pytest.mark.parametrize("variant", ["voco", "mini"])
def test_packed_loss_equals_the_unpacked_loss(tmp_path, variant):
    tok = make_word_tokenizer(tmp_path / "tok", ["what colour is it ?", "red", "how many ?", "two"], variant)
    torch.manual_seed(0)
    learner = build_tiny(variant, tok, TINY).eval()
    clips = [synthetic.render_frames(synthetic.make_clip(0, i), size=32, fps=1)[:2] for i in (1, 2)]
    owner = [0, 0, 1]
    samples = [Sample(clips[c], q, a) for c, (q, a) in zip(owner, [("what colour is it ?", "red"), ("how many ?", "two"),
                                                                     ("how many ?", "two")])]
    packed_loss, packed_right, _ = learner(torch.from_numpy(np.stack(clips)), samples, owner)
    loss, right, _ = learner(torch.from_numpy(np.stack([s.frames for s in samples])), samples)
    assert torch.allclose(packed_loss, loss, atol=1e-5) and torch.equal(packed_right, right)


def test_schedule_can_end_at_a_number_of_questions():
    cfg = TrainConfig(steps=10**9, lr=1.0, warmup=1, samples=1000)
    assert learning_rate(cfg, 3, 0.0, seen=500) == pytest.approx(0.5)
    assert learning_rate(cfg, 3, 0.0, seen=1000) == 0.0


def test_vision_tower_from_another_run(tmp_path):
    from vidqa.train import load_vision_from

    learner, _ = _tiny_run(tmp_path, 1)
    other = build_tiny("pool", learner.tokenizer, TINY)
    load_vision_from(other, tmp_path / "run" / "train_state.pt")
    for a, b in zip(other.vision.parameters(), learner.vision.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(DataError):
        load_vision_from(other, tmp_path / "missing.pt")
