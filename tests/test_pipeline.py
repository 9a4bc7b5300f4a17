"""The LLaVA-Mini method behind vidqa's protocol equals the official single pass; both methods end to end."""

import json

import pytest
import torch

import media
from vidqa import testing
from vidqa.methods import mini
from vidqa.cli import main
from vidqa.methods.base import FrameCache
from vidqa.generate import GenerationConfig
from vidqa.pipeline import VideoQA


@torch.no_grad()
def test_mini_prefill_equals_official_single_pass(mini_qa):
    m = mini_qa.method
    feats = torch.randn(5, mini_qa.vision.num_patches, mini_qa.vision.hidden_size)
    m.chunk_frames = 2  # three chunks: the float32 running sum must equal the official mean
    cache = FrameCache("mini", m.compress(feats), [0.0] * 5, m.tokens_per_frame, m.cache_meta())
    got = m.prefill(cache, "what moves?").inputs_embeds[0]
    ids = torch.tensor(m.prompt_ids("what moves?"))
    frames = mini.encode_frames(feats, m.compressor, m.projector, 1)
    embeds, visible = mini.prompt_embeddings(m.llm.get_input_embeddings(), ids)
    fused = mini.prefusion_full(m.prefusion, m.llm.model.rotary_emb, frames, embeds, visible)
    vision, text = mini.fuse_video(fused)
    ref = mini.assemble_llm_inputs(text, ids, vision)
    assert got.shape == ref.shape == (len(ids) - 1 + 5 * m.tokens_per_frame, m.llm.config.hidden_size)
    assert (got - ref).abs().max() < 1e-5


def test_mini_cache_is_question_independent_and_sized(mini_qa):
    m = mini_qa.method
    feats = torch.randn(2, mini_qa.vision.num_patches, mini_qa.vision.hidden_size)
    t = m.compress(feats)
    cfg = m.llm.config
    prefix = mini_qa.vision.num_patches + m.tokens_per_frame
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert t["keys"].shape == (2, len(m.prefusion), cfg.num_key_value_heads, prefix, head_dim)
    assert t["vision_tokens"].shape == (2, m.tokens_per_frame, cfg.hidden_size)


@pytest.mark.parametrize("fixture", ["voco_dir", "mini_dir"])
def test_an_image_is_a_one_frame_video(request, tmp_path, capsys, fixture):
    image = media.make_image(tmp_path / "photo.jpg")
    code = main(["ask", str(image), "what is it?", "--model", str(request.getfixturevalue(fixture)), "--json",
                 "--max-new-tokens", "4"])
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads(out.out)
    assert report["decoder"] == "image" and len(report["frames"]) == 1


def test_mini_video_end_to_end(tmp_path, capsys, mini_dir):
    video = media.make_video(tmp_path / "v.mp4", num_frames=30, fps=10)
    code = main(["ask", str(video), "what moves?", "--model", str(mini_dir), "--json", "--fps", "2",
                 "--max-new-tokens", "5"])
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads(out.out)
    assert report["method"] == "mini" and report["tokens_per_frame"] == 1 and len(report["frames"]) == 6


def test_mini_hd_mode_end_to_end(tmp_path):
    ckpt = testing.write_tiny_official_checkpoint(tmp_path / "hd", clip_image_size=56, resolution_ratio=2)
    qa = VideoQA.from_pretrained(str(ckpt), device="cpu", dtype="float32")
    video = media.make_video(tmp_path / "v.mp4", num_frames=10, fps=10, size=(64, 48))
    from vidqa.video import Sampling, load_frames

    frames = load_frames(video, Sampling(num_frames=3))
    cache = qa.compress(frames)
    g = qa.vision.num_patches
    assert cache.tensors["keys"].shape[3] == 4 * g + g + 1  # stitched 2x2 crops, whole frame, 1 token
    answer = "".join(qa.answer(cache, "what?", GenerationConfig(max_new_tokens=3)))
    assert isinstance(answer, str)


@pytest.mark.parametrize("maker", [media.make_garbage, media.make_audio_only, media.make_zero_length])
def test_mini_bad_input_is_one_line(tmp_path, capsys, mini_dir, maker):
    path = tmp_path / ("bad.m4a" if maker is media.make_audio_only else "bad.mp4")
    maker(path)
    code = main(["ask", str(path), "what?", "--model", str(mini_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error:")


def test_mini_question_too_long(tmp_path, capsys):
    ckpt = testing.write_tiny_official_checkpoint(tmp_path / "m", clip_image_size=56)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["max_position_embeddings"] = 200
    (ckpt / "config.json").write_text(json.dumps(cfg))
    video = media.make_video(tmp_path / "v.mp4", num_frames=10, fps=10)
    code = main(["ask", str(video), "why " * 200, "--model", str(ckpt)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "context" in err[0]


def test_method_override_and_cache_from_another_model(voco_qa, mini_qa):
    feats = torch.randn(1, voco_qa.vision.num_patches, voco_qa.vision.hidden_size)
    m = voco_qa.method
    cache = FrameCache("voco", m.compress(feats), [0.0], m.tokens_per_frame, voco_qa.cache_meta())
    from vidqa.errors import ModelError

    with pytest.raises(ModelError, match="another model"):
        list(mini_qa.answer(cache, "q?"))


@pytest.mark.parametrize("quantize, env, compiled", [("none", None, False), ("int8", None, True), ("int4", "0", False)])
def test_a_quantised_models_decode_step_is_compiled_unless_turned_off(voco_qa, monkeypatch, quantize, env, compiled):
    """torchao's eager int8 path dequantises every weight at every step: a quantised model's CUDA-graph
    decoder is compiled by default (VIDQA_COMPILE=0 keeps it eager)."""
    import vidqa.pipeline as pipeline
    from vidqa.options import ComputeOptions

    made = []
    monkeypatch.setattr(pipeline, "StaticDecoder", lambda llm, capacity, compile: made.append(compile) or object())
    if env is None:
        monkeypatch.delenv("VIDQA_COMPILE", raising=False)
    else:
        monkeypatch.setenv("VIDQA_COMPILE", env)
    monkeypatch.setattr(voco_qa, "fast", True)
    monkeypatch.setattr(voco_qa, "quantize", quantize)
    monkeypatch.setattr(voco_qa, "compute", ComputeOptions.from_env(device="cpu"))
    monkeypatch.setattr(voco_qa, "_decoder", None)
    voco_qa.decoder(10)
    assert made == [compiled]
