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
from train_fixtures import VOCAB, fit_worker, make_llava15_base, make_mixed_data, one_thread  # noqa: F401 (autouse fixture)

STEPS = 24




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


# ---- speed knobs (issue 16, MFU): same curve, fewer FLOPs wasted ---------------------------------------------
def test_speed_knobs_give_the_same_curve(world, tmp_path):
    """Checkpointing every other layer, FlexAttention with the VoCo block mask, foreach AdamW, each decoder layer
    through torch.compile (the aot_eager backend: no C++ build on the CPU): the curve of the
    plain run (recomputation, the kernel and the optimizer's loop change no number beyond rounding)."""
    _, base, files, folders = world
    fit_worker(0, 1, 0, base, files, folders, tmp_path / "plain", 3, tmp_path / "plain.json")
    fit_worker(0, 1, 0, base, files, folders, tmp_path / "knobs", 3, tmp_path / "knobs.json",
               knobs={"checkpointing": "every:2", "attention": "flex", "adam": "foreach", "compile": "aot_eager"})
    plain, knobs = (json.loads((tmp_path / f).read_text()) for f in ("plain.json", "knobs.json"))
    assert knobs == pytest.approx(plain, rel=1e-4)


def test_checkpoint_plan_and_bad_knobs():
    from vidqa.errors import VidqaError
    from vidqa.train import scale

    assert scale.checkpoint_plan(None, 3) == [True] * 3
    assert scale.checkpoint_plan(None, 3, default=False) == [False] * 3
    assert scale.checkpoint_plan("none", 3) == [False] * 3 and scale.checkpoint_plan("full", 2) == [True] * 2
    assert scale.checkpoint_plan("every:2", 5) == [True, False, True, False, True]
    for bad in ("every:0", "every:x", "some"):
        with pytest.raises(VidqaError, match="--checkpointing"):
            scale.checkpoint_plan(bad, 4)
    with pytest.raises(VidqaError, match="--adam"):
        scale.make_optimizer([torch.nn.Parameter(torch.zeros(2))], scale.ScaleConfig(adam="sgd"), torch.device("cpu"))
    opt = scale.make_optimizer([torch.nn.Parameter(torch.zeros(2))], scale.ScaleConfig(), torch.device("cpu"))
    assert not opt.defaults["fused"]  # auto: fused only on CUDA


def test_checkpointing_every_n_sets_the_layers(world):
    from vidqa.train import scale
    from vidqa.train.base import load_base
    from vidqa.train.model import build_from_base

    _, base, _, _ = world
    learner = build_from_base(load_base(str(base)), 2)
    scale.prepare(learner, scale.ScaleConfig(checkpointing="every:2", bf16=False), torch.device("cpu"), 1)
    assert [layer.gradient_checkpointing for layer in learner.llm.model.layers] == [True, False]
    learner = build_from_base(load_base(str(base)), 2)
    scale.prepare(learner, scale.ScaleConfig(checkpointing="none", bf16=False), torch.device("cpu"), 1)
    assert not any(layer.gradient_checkpointing for layer in learner.llm.model.layers)


def test_mfu_counts_the_vision_layers_that_run_and_the_projector(world):
    """Frozen tower: forward only, its layers up to the selected one (-2 of 3: 2 layers), the projector per patch;
    the LLM 6 FLOPs per weight per token (trained) and 12·d·L² attention per layer."""
    from vidqa.train import scale
    from vidqa.train.base import load_base
    from vidqa.train.model import build_from_base

    _, base, _, _ = world
    learner = build_from_base(load_base(str(base)), 2)
    scale.prepare(learner, scale.ScaleConfig(bf16=False, grad_checkpointing=False), torch.device("cpu"), 1)
    v = learner.vision
    assert len(v.layers) == 2
    n = lambda ps: sum(p.numel() for name, p in ps if p.ndim >= 2 and "embed_tokens" not in name
                       and "position_embedding" not in name)
    n_llm = n(learner.llm.named_parameters())
    n_vis = n(list(v.layers.named_parameters()) + list(v.core.embeddings.named_parameters()))
    n_prj = n(learner.projector.named_parameters())
    cfg = learner.llm.config
    tokens, frames, seq_sq = 100, 3, 5000.0
    patches = frames * v.num_patches
    want = 6 * n_llm * tokens + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_sq \
        + 2 * n_vis * patches + 4 * 2 * v.hidden_size * frames * (v.num_patches + 1) ** 2 + 4 * n_prj * patches
    assert scale.flops_per_token(learner, tokens, frames, seq_sq) == pytest.approx(want)


def test_two_process_fsdp_without_resharding_and_with_prefetch_gives_the_curve(world, tmp_path):
    _, base, files, folders = world
    knobs = {"reshard_after_forward": False, "prefetch": 1, "checkpointing": "every:2"}
    fit_worker(0, 1, 0, base, files, folders, tmp_path / "one", 3, tmp_path / "one.json")
    mp.spawn(fit_worker, args=(2, 31000 + (hash(str(tmp_path)) % 2000), base, files, folders, tmp_path / "two", 3,
                               tmp_path / "two.json", True, None, knobs), nprocs=2)
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two == pytest.approx(one, rel=1e-4)


def test_export_writes_the_slow_tokenizer_files_transformers_4_37_reads(trained):
    """VoCo-LLaMA's loader asks for the slow tokenizer (``use_fast=False``, transformers 4.37): the export has
    tokenizer.model (the base's), added_tokens.json with <voco> as the last id, special_tokens_map.json and an
    old-format tokenizer_config.json; the sentencepiece model + added tokens give the fast tokenizer's ids."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    model = trained[2] / "model"
    for name in ("tokenizer.model", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json",
                 "tokenizer.json"):
        assert (model / name).is_file(), name
    fast = AutoTokenizer.from_pretrained(str(model))
    voco = fast.convert_tokens_to_ids("<voco>")
    assert voco == len(fast) - 1 == VOCAB
    assert json.loads((model / "added_tokens.json").read_text()) == {"<voco>": voco}
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "LlamaTokenizer" and cfg["added_tokens_decoder"][str(voco)]["content"] == "<voco>"
    assert cfg["added_tokens_decoder"][str(voco)]["special"] and cfg["add_bos_token"] and not cfg["add_eos_token"]
    assert not {"backend", "extra_special_tokens", "is_local"} & set(cfg)
    assert json.loads((model / "special_tokens_map.json").read_text())["eos_token"]["content"] == "</s>"
    sp = spm.SentencePieceProcessor(model_file=str(model / "tokenizer.model"))
    assert sp.get_piece_size() == VOCAB
    text = "what colour is the square"
    assert sp.encode(text) == fast(text, add_special_tokens=False).input_ids
    assert fast("<voco>", add_special_tokens=False).input_ids == [voco]


def test_fsdp_on_the_cpu_never_takes_the_default_accelerator_mesh(world, tmp_path, monkeypatch):
    """A gloo run on the CPU: ``fully_shard`` without a mesh builds its default one on the machine's accelerator
    (CUDA whenever it is available: the GPU machine's 'found at least two devices, cuda:0 and cpu'). The run
    must hand it a mesh of its own device; here the default mesh raises, as it would land on CUDA there."""
    import torch.distributed as dist
    import torch.distributed.fsdp._fully_shard._fully_shard as fsdp_impl

    from vidqa.train import scale
    from vidqa.train.base import load_base
    from vidqa.train.model import build_from_base

    def default_mesh(*a, **k):
        raise AssertionError("fully_shard fell back to its default (accelerator) mesh")
    for name in ("_init_default_mesh", "_init_default_fully_shard_mesh"):
        monkeypatch.setattr(fsdp_impl, name, default_mesh, raising=False)
    _, base, _, _ = world
    learner = build_from_base(load_base(str(base)), 2)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:  # world 2 asks for FSDP; the process group (one process) sizes the mesh
        scale.prepare(learner, scale.ScaleConfig(bf16=False, grad_checkpointing=False), torch.device("cpu"), 2)
        assert {p.device.type for p in learner.parameters()} == {"cpu"}
    finally:
        scale.cleanup()
