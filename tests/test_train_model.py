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


def test_flex_attention_loss_equals_the_masked_sdpa_reference(tmp_path):
    """FlexAttention with the block mask made from the VoCo mask gives the loss of SDPA with the dense mask:
    a batch of an image (1 frame) and a video (3 frames) of different lengths, padded. Forward on the CPU
    (FlexAttention's reference path; its CPU backward does not exist, so training there materialises the
    same mask for SDPA: the gradients checked here too)."""
    import numpy as np
    from torch.nn.attention.flex_attention import create_mask

    from train_fixtures import make_llava15_base
    from vidqa.train import scale
    from vidqa.train.base import load_base
    from vidqa.train.inputs import stack_rows
    from vidqa.train.model import block_mask, build_from_base

    torch.manual_seed(0)
    learner = build_from_base(load_base(str(make_llava15_base(tmp_path / "base"))), 2).float()
    rng = np.random.default_rng(0)
    records = [{"frames": torch.from_numpy(rng.integers(0, 256, (t, 56, 56, 3), dtype=np.uint8)),
                "turns": [(q, a)]} for t, q, a in [(1, "what colour is it?", "red and a long tail of words here"),
                                                    (3, "what happens?", "it moves")]]
    ref, n_ref, _ = learner.record_loss(records)
    ref.backward()
    ref_grads = [p.grad.clone() for p in learner.parameters() if p.grad is not None]
    learner.zero_grad(set_to_none=True)
    learner.llm.config._attn_implementation = scale.use_flex_attention()
    learner.attention = "flex"
    with torch.no_grad():
        got, n_got, _ = learner.record_loss(records)  # FlexAttention's own kernel (the eager reference)
    assert n_got == n_ref and torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
    loss, _, _ = learner.record_loss(records)  # with gradients: the materialised block mask through SDPA
    loss.backward()
    grads = [p.grad for p in learner.parameters() if p.grad is not None]
    assert len(grads) == len(ref_grads) and all(torch.allclose(a, b, rtol=1e-4, atol=1e-6)
                                                for a, b in zip(grads, ref_grads))
    # the block mask is exactly the dense mask
    with torch.no_grad():
        feats = learner.vision(torch.zeros(3, 3, 56, 56)).split([1, 2])
        rows = [learner.inputs.single(f, learner.inputs.voco.prompt_ids("q?"), learner.inputs.answer_ids(a))
                for f, a in zip(feats, ["a", "b c d e f"])]
    M = stack_rows(rows)[1]
    L = M.shape[-1]
    assert torch.equal(create_mask(block_mask(M).mask_mod, 2, 1, L, L, device="cpu"), M)


def test_packed_rows_give_the_loss_and_gradients_of_padded_rows(tmp_path):
    """``pack``: an image record (two turns) and a video record in one sequence, block-diagonal masks, each row
    its own positions: the summed loss, the token counts and the gradients of the padded batch."""
    import numpy as np

    from train_fixtures import make_llava15_base
    from vidqa.train.base import load_base
    from vidqa.train.model import build_from_base, pack_rows

    torch.manual_seed(0)
    learner = build_from_base(load_base(str(make_llava15_base(tmp_path / "base"))), 2).float()
    learner.max_length = 1000
    rng = np.random.default_rng(1)
    records = [{"frames": torch.from_numpy(rng.integers(0, 256, (1, 56, 56, 3), dtype=np.uint8)),
                "turns": [("what colour is it?", "red"), ("and the shape?", "a long thin square")]},
               {"frames": torch.from_numpy(rng.integers(0, 256, (3, 56, 56, 3), dtype=np.uint8)),
                "turns": [("what happens?", "it moves")]}]

    def run(pack):
        learner.pack = pack
        learner.zero_grad(set_to_none=True)
        loss, n_tok, n_seq = learner.record_loss(records)
        loss.backward()
        return loss.detach(), n_tok, n_seq, [p.grad.clone() for p in learner.parameters() if p.grad is not None]

    ref, packed = run(False), run(True)
    assert packed[1:3] == ref[1:3]
    assert torch.allclose(packed[0], ref[0], rtol=1e-5, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(packed[3], ref[3]))
    # first fit: rows of 5, 4 and 3 into sequences of 8 -> [5, 3], [4]
    rows = [(torch.zeros(n, 2), torch.ones(n, n, dtype=torch.bool).tril(), torch.arange(n), 1) for n in (5, 4, 3)]
    out, where = pack_rows(rows, 8)
    assert [r[0].shape[0] for r in out] == [8, 4] and where == [(0, 0), (1, 0), (0, 5)]
    assert not out[0][1][5:, :5].any() and torch.equal(out[0][2], torch.tensor([0, 1, 2, 3, 4, 0, 1, 2]))
