"""`vidqa.train.inputs`: batched and packed inputs equal per-sample passes, for every variant."""

import numpy as np
import pytest
import torch

from train_fixtures import TINY, logits
from vidqa import synthetic
from vidqa.methods.mini import IMAGE_TOKEN_INDEX
from vidqa.train import BUILDERS, InputBuilder, Sample, build_tiny, make_word_tokenizer


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
    batch = learner.inputs.batched
    E, M, P, starts = batch(feats, prompts, answers)
    batched = logits(learner, E, M, P)
    for b in range(2):
        e, m, p, st = learner.inputs.single(feats[b], prompts[b], answers[b])
        single = logits(learner, e[None], m[None, None], p[None])[0]
        assert st == starts[b]
        assert (batched[b, : e.shape[0]] - single).abs().max() < 1e-4


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
    pack = learner.inputs.packed
    E, M, P, starts = pack(feats, prompts, answers, owner)
    packed = logits(learner, E, M, P)
    for i, c in enumerate(owner):
        e, m, p, st = learner.inputs.single(feats[c], prompts[i], answers[i])
        single = logits(learner, e[None], m[None, None], p[None])[0]
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


def test_one_builder_per_variant_behind_one_interface(tmp_path):
    assert sorted(BUILDERS) == ["full", "mini", "pool", "voco"]
    assert all(issubclass(b, InputBuilder) and b.name == name for name, b in BUILDERS.items())
    tok = make_word_tokenizer(tmp_path / "tok", ["what is it ?", "red"], "mini")
    learner = build_tiny("mini", tok, TINY)
    header = learner.inputs.answer_ids("red")[: learner.inputs.answer_offset]  # Mini writes its role first
    assert tok.convert_ids_to_tokens(header) == ["<|start_header_id|>", "assistant", "<|end_header_id|>"]
    assert learner.vision.spec.aspect == "squash" and BUILDERS["voco"].aspect == "pad"
