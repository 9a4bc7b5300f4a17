"""The average-pooling method: its answer through the pipeline is one causal pass over [BOS, pool tokens, prompt]."""

import json

import pytest
import torch
from safetensors import safe_open

from vidqa import checkpoint, testing
from vidqa.errors import ContextError, ModelError
from vidqa.generate import Detokenizer, GenerationConfig
from vidqa.methods.base import FrameCache
from vidqa.methods.pool import POOL, Pool
from vidqa.methods.voco import VOCO_TOKEN, vicuna_prompt
from vidqa.pipeline import VideoQA


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    return testing.make_pool_checkpoint(tmp_path_factory.mktemp("models") / "pool")


@pytest.fixture(scope="module")
def pool_qa(pool_dir):
    return VideoQA.from_pretrained(str(pool_dir), device="cpu", dtype="float32")


def test_pool_is_picked_from_the_config_and_round_trips(pool_dir, pool_qa):
    m = pool_qa.method
    assert isinstance(m, Pool) and m.name == "pool" and m.tokens_per_frame == 1
    keys = set(checkpoint.weight_map(pool_dir))
    loaded = {POOL + k for k in m.pool.state_dict()} | set(m.llm.state_dict())
    assert keys == loaded  # no missing, no unexpected keys
    with safe_open(str(pool_dir / "model.safetensors"), framework="pt") as f:
        assert torch.equal(f.get_tensor(POOL + "weight"), m.pool.weight)
        assert torch.equal(f.get_tensor("model.layers.1.mlp.up_proj.weight"), m.llm.model.layers[1].mlp.up_proj.weight)
    cfg = json.loads((pool_dir / "config.json").read_text())
    assert cfg["vidqa_method"] == "pool" and cfg["model_type"] == "llava_llama" and cfg["mm_vision_tower"] == "clip"


@torch.no_grad()
def test_pool_answer_equals_one_causal_pass(pool_qa):
    torch.manual_seed(0)
    m, llm = pool_qa.method, pool_qa.llm
    feats = torch.randn(4, pool_qa.vision.num_patches, pool_qa.vision.hidden_size)
    cache = FrameCache("pool", m.compress(feats), [0.0, 1.0, 2.0, 3.0], 1, pool_qa.cache_meta())
    assert cache.tensors["tokens"].shape == (4, 1, llm.config.hidden_size)
    question = "what moves?"
    got = list(pool_qa.answer(cache, question, GenerationConfig(max_new_tokens=6)))
    # by hand: the training row's prompt (VoCo's, after the VoCo span), one causal pass, greedy
    tok = pool_qa.tokenizer
    ids = tok("\n" + VOCO_TOKEN + "\n" + vicuna_prompt(question), add_special_tokens=False).input_ids
    prompt = ids[ids.index(tok.convert_tokens_to_ids(VOCO_TOKEN)) + 1:]
    embed = llm.get_input_embeddings()
    vis = feats.mean(dim=1) @ m.pool.weight.T + m.pool.bias
    seq = torch.cat([embed(torch.tensor([tok.bos_token_id])), vis, embed(torch.tensor(prompt))])
    pre = m.prefill(cache, question).inputs_embeds[0]
    assert (pre - seq).abs().max() < 1e-6
    out = []
    for _ in range(6):
        logits = llm(inputs_embeds=seq[None], position_ids=torch.arange(seq.shape[0])[None]).logits[0, -1]
        t = int(logits.argmax())
        if t == tok.eos_token_id:
            break
        out.append(t)
        seq = torch.cat([seq, embed(torch.tensor([t]))])
    assert len(out) == 6  # random weights: no early stop, so the comparison covers every step
    detok = Detokenizer(tok)  # what the pipeline streams for those tokens
    assert "".join(got) == "".join(detok.push(t) for t in out)


def test_pool_budget_and_errors(pool_qa):
    m = pool_qa.method
    n = m.max_frames("q?", 16)
    assert n == m.max_context - 1 - len(m.prompt_ids("q?")) - 16
    with pytest.raises(ContextError):
        m.max_frames("why " * 600, 16)
    with pytest.raises(ModelError, match="compact"):
        pool_qa.compress(None, compact=True)
