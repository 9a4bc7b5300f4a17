"""Shared by the training tests: a very small demo architecture and a few-step run."""

from pathlib import Path

import pytest
import torch

from vidqa import synthetic
from vidqa.train import SyntheticData, TinyConfig, TrainConfig, build_tiny, make_word_tokenizer, train

TINY = TinyConfig(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, hidden=32, layers=1,
                  heads=2, intermediate=64, prefusion_layers=1)


def logits(learner, E, M, P):
    mask = torch.where(M, 0.0, torch.finfo(E.dtype).min).to(E.dtype)
    return learner.llm(inputs_embeds=E, attention_mask=mask, position_ids=P).logits


def tiny_run(tmp_path, steps, variant="voco"):
    data = SyntheticData(3, seed=1, size=32)
    tok = make_word_tokenizer(tmp_path / "tok", data.texts() + list(synthetic.ANSWERS), "voco")
    torch.manual_seed(0)
    learner = build_tiny(variant, tok, TINY)
    cfg = TrainConfig(steps=steps, batch_size=2, warmup=1, save_every=2, log_every=1, tiny=TINY)
    return learner, train(learner, data, cfg, tmp_path / "run", torch.device("cpu"), log=lambda m: None)


# ---- tiny random bases in the layouts users start from (issue 16) -----------------------------------
VOCAB = 400  # the sentencepiece vocabulary of vidqa.testing's corpus


def _tiny_llama(vocab: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def _sp_tokenizer_dir(directory):
    """A Vicuna-style sentencepiece tokenizer without <voco> (a LLaVA-1.5 / Vicuna base)."""
    import json

    from vidqa.testing import train_sentencepiece

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(train_sentencepiece(VOCAB))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "legacy": False, "model_max_length": 2048, "padding_side": "left",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False}))
    return directory


def make_llava15_base(directory):
    """A LLaVA-1.5 checkpoint (model_type llava_llama, model.mm_projector.*, CLIP named by mm_vision_tower)."""
    from vidqa.checkpoint import PROJECTOR, llava_config, prefixed, write_checkpoint, write_tower
    from vidqa.testing import _clip
    from vidqa.vision import build_projector

    _sp_tokenizer_dir(directory)
    llm = _tiny_llama(VOCAB)
    tower = _clip(56, 14, 32, 3, 0)
    clip = write_tower(directory.parent / (directory.name + "-clip"), tower)
    projector = build_projector("mlp2x_gelu", 32, 64)
    cfg = llava_config(llm.config, model_type="llava_llama", architectures=["LlavaLlamaForCausalLM"],
                       mm_vision_tower=str(clip), mm_hidden_size=32, mm_projector_type="mlp2x_gelu",
                       mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_use_im_start_end=False,
                       image_aspect_ratio="pad")
    return write_checkpoint(directory, cfg, {**llm.state_dict(), **prefixed(PROJECTOR, projector)})


def make_llava_hf_base(directory):
    """A transformers llava-hf checkpoint, written by transformers itself (save_pretrained)."""
    from transformers import (AutoTokenizer, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration)

    tok_dir = _sp_tokenizer_dir(directory.parent / (directory.name + "-sp"))
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    from tokenizers import AddedToken

    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    assert tok.convert_tokens_to_ids("<image>") == VOCAB
    text = _tiny_llama(VOCAB + 8).config  # padded vocabulary, as llava-hf pads 32002 to 32064
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=56, patch_size=14, projection_dim=32)
    cfg = LlavaConfig(text_config=text, vision_config=vision, image_token_index=VOCAB, vision_feature_layer=-2,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu")
    torch.manual_seed(1)
    LlavaForConditionalGeneration(cfg).save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory


def make_mixed_data(root):
    """A tiny image + video instruction set: two JSON files (a mixture), a bad record, a broken video."""
    import json

    from media import make_image, make_video

    images, videos = root / "images", root / "videos"
    images.mkdir(parents=True, exist_ok=True)
    videos.mkdir(parents=True, exist_ok=True)
    image_recs, video_recs = [], []
    for i in range(4):
        make_image(images / f"im{i}.png", index=7 * i, size=(40, 56))
        answer = ["red", "blue", "green", "white"][i]
        image_recs.append({"id": str(i), "image": f"im{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": answer},
            {"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": "a square" if i % 2 else "a circle"}]})
    image_recs.append({"id": "bad", "conversations": []})  # no image: reported by index, skipped
    for i in range(2):
        make_video(videos / f"v{i}.mp4", num_frames=12, fps=6, size=(48, 32), pattern="blocks")
        video_recs.append({"id": f"v{i}", "video": f"v{i}.mp4", "conversations": [
            {"from": "human", "value": "<image>\nWhat happens in the video?"},
            {"from": "gpt", "value": "the blocks move" if i else "nothing moves"}]})
    (videos / "broken.mp4").write_bytes(b"not a video at all")
    video_recs.append({"id": "broken", "video": "broken.mp4", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "no"}]})
    (root / "llava.json").write_text(json.dumps(image_recs))
    (root / "video.json").write_text(json.dumps(video_recs))
    return root / "llava.json", root / "video.json", images, videos


def fit_worker(rank, world, port, base, data_files, folders, out, steps, result_file, fsdp=True, stop_at=None,
               knobs=None):
    """One process of a run of ``vidqa.train.scale.fit`` (spawned for the FSDP test; rank 0 alone for the
    one-process reference). ``stop_at``: the log callback raises there, as a kill would end the run.
    ``knobs``: more ``ScaleConfig`` fields (the speed settings)."""
    import json
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from vidqa.checkpoint import quiet_transformers
    from vidqa.train import scale
    from vidqa.train.base import load_base
    from vidqa.train.model import build_from_base
    from vidqa.train.stream import InstructionData, read_records

    quiet_transformers()
    records = read_records(data_files, folders[0], folders[1], report=lambda m: None)
    torch.manual_seed(0)
    learner = build_from_base(load_base(str(base)), 2)
    cfg = scale.ScaleConfig(steps=steps, batch_size=4, micro_batch_size=1 if world > 1 else 2, lr=2e-3, warmup=2,
                            grad_checkpointing=False, bf16=False, fsdp=fsdp, max_frames=3, workers=0, save_every=2,
                            log_every=1, **(knobs or {}))
    data = InstructionData(records, learner.vision.spec, cfg.max_frames)

    def log(line):
        if stop_at is not None and line.startswith(f"step {stop_at}/"):
            raise KeyboardInterrupt  # a kill: the state on disk is the last save's
    try:
        result = scale.fit(learner, data, cfg, Path(out), torch.device("cpu"), log=log)
    except KeyboardInterrupt:
        result = None
    finally:
        scale.cleanup()
    if rank == 0 and result is not None:
        Path(result_file).write_text(json.dumps([h["loss"] for h in result["history"]]))
    return learner


@pytest.fixture(autouse=True)
def one_thread():
    """2 shared cores: more intra-op threads only contend (autouse in the modules that import it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
