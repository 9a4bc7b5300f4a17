"""`vidqa.train.scale` (+ base, stream, export_voco): a real VoCo run from tiny random bases, on CPU.

One small run through the CLI is shared: a LLaVA-1.5 base, a mixture of image and video instruction
JSON with a bad record and a broken video, 24 steps; then its export is asked through ``vidqa ask``."""

import contextlib
import io
import json

import pytest
import torch
import torch.multiprocessing as mp

from cli_helpers import run
from media import make_video
from test_voco import TOL, features, two_stage_logits
from train_fixtures import VOCAB, fit_worker, make_llava15_base, make_mixed_data

STEPS = 24


@pytest.fixture(autouse=True)
def _one_thread():
    """2 shared cores: more intra-op threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    base = make_llava15_base(root / "base")
    a, b, im, vi = make_mixed_data(root / "data")
    return root, base, [a, b], (im, vi)


@pytest.fixture(scope="module")
def trained(world):
    root, base, files, (im, vi) = world
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = __import__("vidqa.cli", fromlist=["main"]).main([
            "train", "--base", str(base), "--data", ",".join(map(str, files)), "--image-folder", str(im),
            "--video-folder", str(vi), "--out", str(root / "run"), "--steps", str(STEPS), "--batch-size", "4",
            "--micro-batch-size", "2", "--lr", "2e-3", "--warmup", "2", "--workers", "1", "--tokens-per-frame", "2",
            "--max-frames", "3", "--log-every", "4", "--device", "cpu"])
    return code, err.getvalue(), root / "run"


def test_loss_falls_on_a_mixed_image_and_video_set_and_logs_jsonl(trained):
    code, err, run_dir = trained
    assert code == 0, err
    assert "skipping llava.json record 4" in err and "video.json record 2" in err  # bad ones named by index
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(4, STEPS + 1, 4))
    for key in ("loss", "tokens_per_s", "samples_per_s", "frames_per_s", "mfu", "data_wait", "eta_s"):
        assert all(key in e for e in log), key
    assert log[-1]["loss"] < 0.7 * log[0]["loss"], [e["loss"] for e in log]
    assert "tokens/s" in err and "MFU" in err and "ETA" in err


def test_export_is_the_voco_layout_and_vidqa_ask_answers(trained, capsys, tmp_path):
    _, _, run_dir = trained
    model = run_dir / "model"
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["model_type"] == "llava_llama" and cfg["voco_num"] == 2 and cfg["mm_vision_tower"] == "clip"
    from safetensors import safe_open
    with safe_open(str(model / "model.safetensors"), "pt") as f:
        assert f.get_slice("model.embed_tokens.weight").get_shape()[0] == VOCAB + 1  # exactly one new row
        assert f.get_slice("lm_head.weight").get_shape()[0] == VOCAB + 1
        assert "model.mm_projector.0.weight" in f.keys()
    from vidqa.checkpoint import load_tokenizer
    assert load_tokenizer(model).convert_tokens_to_ids("<voco>") == VOCAB  # the last id
    video = make_video(tmp_path / "q.mp4", num_frames=8, fps=4)
    code, out, err = run(capsys, "ask", video, "What happens in the video?", "--model", model, "--no-cache",
                         "--max-new-tokens", "4", "--device", "cpu")
    assert code == 0, err
    assert out.strip()


@torch.no_grad()
def test_trained_model_voco_path_equals_its_masked_single_pass(trained):
    from vidqa.pipeline import VideoQA

    qa = VideoQA.from_pretrained(str(trained[2] / "model"), device="cpu", dtype="float32")
    m = qa.method
    feats = features(qa, 2, seed=3)
    got, tokens, prompt = two_stage_logits(qa, feats, "what colour is it?", steps=2)
    text = prompt + tokens
    embeds, mask, pos = m.masked_inputs(feats, text)
    additive = torch.where(mask, 0.0, torch.finfo(torch.float32).min)[None, None]
    out = qa.llm(inputs_embeds=embeds[None], attention_mask=additive, position_ids=pos[None])
    T, B = feats.shape[0], m.p0 + m.tokens_per_frame
    assert (out.logits[0, T * B: T * B + len(text)] - got).abs().max() < TOL


def test_resume_after_a_kill_continues_the_curve(world, tmp_path):
    _, base, files, folders = world
    fit_worker(0, 1, 0, base, files, folders, tmp_path / "whole", 5, tmp_path / "whole.json")
    fit_worker(0, 1, 0, base, files, folders, tmp_path / "cut", 5, tmp_path / "cut.json", stop_at=3)
    assert not (tmp_path / "cut.json").exists()  # killed at step 3: the state of step 2 is on disk
    assert json.loads((tmp_path / "cut" / "train_state" / "meta.json").read_text())["step"] == 2
    fit_worker(0, 1, 0, base, files, folders, tmp_path / "cut", 5, tmp_path / "cut.json")
    whole, resumed = (json.loads((tmp_path / f).read_text()) for f in ("whole.json", "cut.json"))
    assert len(resumed) == 5 and resumed == pytest.approx(whole, rel=1e-4)


def test_two_process_fsdp_gives_the_one_process_curve(world, tmp_path):
    _, base, files, folders = world
    fit_worker(0, 1, 0, base, files, folders, tmp_path / "one", 3, tmp_path / "one.json")
    mp.spawn(fit_worker, args=(2, 29000 + (hash(str(tmp_path)) % 2000), base, files, folders, tmp_path / "two", 3,
                               tmp_path / "two.json"), nprocs=2)
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two == pytest.approx(one, rel=1e-4)
    shards = sorted(p.name for p in (tmp_path / "two" / "train_state").glob("*.safetensors"))
    assert len(shards) == 2  # each rank wrote its own shards


def test_lora_run_exports_merged_weights(world, tmp_path):
    from safetensors.torch import load_file

    from vidqa.train import scale
    from vidqa.train.base import load_base
    from vidqa.train.export import export_voco
    from vidqa.train.model import build_from_base
    from vidqa.train.stream import InstructionData, read_records

    _, base, files, (im, vi) = world
    torch.manual_seed(0)
    learner = build_from_base(load_base(str(base)), 2)
    before = learner.llm.model.layers[0].self_attn.q_proj.weight.detach().clone()
    data = InstructionData(read_records(files[:1], im, vi, report=lambda m: None), learner.vision.spec, 2)
    cfg = scale.ScaleConfig(steps=3, batch_size=2, micro_batch_size=2, lr=1e-2, warmup=1, lora_r=4, workers=0,
                            log_every=1, bf16=False, grad_checkpointing=False)
    scale.fit(learner, data, cfg, tmp_path / "run", torch.device("cpu"), log=lambda m: None)
    assert any("lora_" in n for n, p in learner.named_parameters() if p.requires_grad)
    assert not learner.llm.model.layers[0].self_attn.q_proj.base_layer.weight.requires_grad
    export_voco(learner, tmp_path / "model")
    state = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in state)
    merged = state["model.layers.0.self_attn.q_proj.weight"].float()
    assert merged.shape == before.shape and not torch.allclose(merged, before.to(merged.dtype), atol=1e-4)
