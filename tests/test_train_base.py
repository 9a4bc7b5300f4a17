"""`vidqa.train.base`: the starting points of a real VoCo run, and <voco> as exactly one new row."""

import pytest
import torch

from train_fixtures import VOCAB, make_llava15_base, make_llava_hf_base, make_mixed_data, one_thread  # noqa: F401 (autouse fixture)




def test_llava15_base_gets_voco_as_its_last_id_with_a_new_row_from_the_init_distribution(tmp_path):
    from vidqa.train.base import load_base
    from vidqa.train.model import build_from_base

    base = load_base(str(make_llava15_base(tmp_path / "b")))
    old = base.llm.get_input_embeddings().weight.detach().clone()
    learner = build_from_base(base, 2)
    emb = learner.llm.get_input_embeddings().weight
    assert emb.shape[0] == VOCAB + 1 and torch.equal(emb[:VOCAB], old)
    assert learner.tokenizer.convert_tokens_to_ids("<voco>") == VOCAB
    assert 0 < emb[VOCAB].std() < 0.1  # N(0, initializer_range = 0.02), not a copy or a mean of rows
    assert learner.llm.lm_head.weight.shape[0] == VOCAB + 1


def test_llava_hf_base_loads_and_trains(tmp_path):
    from vidqa.train import scale
    from vidqa.train.base import load_base
    from vidqa.train.model import build_from_base
    from vidqa.train.stream import InstructionData, read_records

    base = load_base(str(make_llava_hf_base(tmp_path / "hf")))
    assert base.llm.get_input_embeddings().num_embeddings == VOCAB  # <image>, <pad> and padding rows dropped
    assert base.mm["mm_vision_select_layer"] == -2 and len(base.tokenizer) == VOCAB
    learner = build_from_base(base, 1)
    assert learner.tokenizer.convert_tokens_to_ids("<voco>") == VOCAB
    assert learner.llm.get_input_embeddings().num_embeddings == VOCAB + 1
    a, _, im, vi = make_mixed_data(tmp_path / "data")
    data = InstructionData(read_records([a], im, vi, report=lambda m: None), learner.vision.spec, 2)
    cfg = scale.ScaleConfig(steps=2, batch_size=2, micro_batch_size=2, workers=0, log_every=1, bf16=False,
                            grad_checkpointing=True)
    result = scale.fit(learner, data, cfg, tmp_path / "run", torch.device("cpu"), log=lambda m: None)
    assert result["steps"] == 2 and all(h["loss"] > 0 for h in result["history"])


def test_llm_tower_and_projector_parts_and_a_pickled_projector_is_not_run(tmp_path):
    from train_fixtures import _sp_tokenizer_dir, _tiny_llama
    from transformers import AutoTokenizer

    from vidqa.errors import ModelError
    from vidqa.testing import make_clip
    from vidqa.train.base import load_base
    from vidqa.vision import build_projector

    llm = _tiny_llama(VOCAB)
    llm.save_pretrained(str(tmp_path / "llm"))
    AutoTokenizer.from_pretrained(str(_sp_tokenizer_dir(tmp_path / "sp"))).save_pretrained(str(tmp_path / "llm"))
    clip = make_clip(tmp_path / "clip")
    proj = build_projector("mlp2x_gelu", 32, 64)
    torch.save({f"model.mm_projector.{k}": v for k, v in proj.state_dict().items()}, tmp_path / "mm_projector.bin")
    base = load_base(llm=str(tmp_path / "llm"), vision_tower=str(clip), projector=str(tmp_path / "mm_projector.bin"))
    assert torch.equal(base.projector[2].weight, proj[2].weight) and base.mm["mm_projector_type"] == "mlp2x_gelu"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    torch.save({"0.weight": Evil()}, tmp_path / "evil.bin")
    with pytest.raises(ModelError, match="tensors only"):
        load_base(llm=str(tmp_path / "llm"), vision_tower=str(clip), projector=str(tmp_path / "evil.bin"))
    assert not marker.exists()


