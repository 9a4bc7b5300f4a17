"""`vidqa.quant`: --quantize through torchao on the CPU (int8, int4; fp8 refused), fused projections of
quantised weights, fp8 stored caches within their stated error, and a store that keeps quantised and
unquantised runs apart."""

from __future__ import annotations

import re
from pathlib import Path

import media
import pytest
import torch

from vidqa import quant
from vidqa.errors import VidqaError
from vidqa.framecache import FrameCache
from vidqa.options import ComputeOptions

pytest.importorskip("torchao")

REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


def load(name: str, mode: str = "none", **kw):
    from vidqa.pipeline import VideoQA

    return VideoQA.from_pretrained(name, compute=ComputeOptions(device="cpu", dtype="fp32", quantize=mode, **kw))


def first_logits(qa, cache, question: str = "what colour is the square?") -> torch.Tensor:
    with torch.inference_mode():
        pre = qa.method.prefill(cache, question)
        out = qa.llm(input_ids=pre.input_ids, inputs_embeds=pre.inputs_embeds, position_ids=pre.position_ids,
                     past_key_values=pre.past_key_values)
    return out.logits[0, -1].float()


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    from vidqa.video import Sampling, load_frames

    clip = REPO / "examples" / "clips" / "shapes00.mp4"
    return load_frames(clip, Sampling(fps=1))


# ---- modes ---------------------------------------------------------------------------------------

def test_unknown_modes_and_fp8_on_cpu_are_clear_errors():
    with pytest.raises(VidqaError, match="unknown --quantize 'int3'"):
        quant.check("int3", CPU)
    with pytest.raises(VidqaError, match="unknown --cache-dtype"):
        quant.check_cache_dtype("fp4")
    with pytest.raises(VidqaError, match="fp8 needs a CUDA GPU"):
        quant.check("fp8", CPU, torch.float32)
    assert quant.check(None, CPU) == "none" and quant.check("INT8", CPU) == "int8"
    with pytest.raises(VidqaError, match="fp8 needs a CUDA GPU"):
        load("tiny-voco", "fp8")  # refused before any weight is read


@pytest.mark.parametrize("name", ["tiny-voco", "tiny-mini"])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_cpu_modes_run_the_demo_models_close_to_fp32(name, mode, frames):
    base, qa = load(name), load(name, mode)
    assert qa.quantize == mode and base.quantize == "none"
    layer = qa.llm.model.layers[0]
    w_qkv = layer._vidqa_fused[0][0]
    assert type(w_qkv).__module__.startswith("torchao"), type(w_qkv)
    assert type(layer.self_attn.o_proj.weight).__module__.startswith("torchao")
    assert type(qa.vision.tower.parameters().__next__()) is torch.nn.Parameter  # the tower stays as loaded
    # q/k/v modules are row slices of the one quantised fused weight: the same int data, no copy
    inner = w_qkv.__tensor_flatten__()[0][0]  # qdata
    q_w, k_w = layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight
    assert getattr(q_w, inner).data_ptr() == getattr(w_qkv, inner).data_ptr()
    assert getattr(k_w, inner).untyped_storage().data_ptr() == getattr(w_qkv, inner).untyped_storage().data_ptr()
    assert q_w.shape[0] + k_w.shape[0] + layer.self_attn.v_proj.weight.shape[0] == w_qkv.shape[0]
    cache_b, cache_q = base.compress(frames), qa.compress(frames)
    for k in cache_b.tensors:
        ref, got = cache_b.tensors[k].float(), cache_q.tensors[k].float()
        assert ((got - ref).norm() / ref.norm()) < (0.05 if mode == "int8" else 0.3), k
    a, b = first_logits(base, cache_b), first_logits(qa, cache_q)
    assert ((a - b).norm() / a.norm()) < (0.05 if mode == "int8" else 0.3)
    assert int(a.argmax()) == int(b.argmax())
    assert "".join(qa.answer(cache_q, "what colour is the square?")) == "".join(base.answer(cache_b, "what colour is the square?"))
    assert cache_q.meta["quantize"] == mode and "quantize" not in cache_b.meta


def test_quantize_is_idempotent_and_refuses_a_second_mode():
    qa = load("tiny-voco", "int8")
    assert quant.quantize(qa.method, "int8") == "int8"
    with pytest.raises(VidqaError, match="already quantised to int8"):
        quant.quantize(qa.method, "int4")


def test_quantised_fused_weights_serve_the_static_decoder_step():
    """The CUDA-graph decoder's step (run here without a graph) reads the quantised fused weights."""
    from vidqa.generate import StaticDecoder

    base, qa = load("tiny-voco"), load("tiny-voco", "int8")
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.inference_mode():
        outs = []
        for m in (base, qa):
            out = m.llm(input_ids=ids, use_cache=True)
            dec = StaticDecoder(m.llm, 256, graph=False)
            dec.load(out.past_key_values)
            outs.append(dec.step(11, 4).float())
    assert ((outs[0] - outs[1]).norm() / outs[0].norm()) < 0.05


# ---- fp8 stored caches ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_round_trip_is_within_the_stated_bound(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 4, 3, 128, generator=g) * torch.logspace(-3, 2, 128)).to(dtype)
    x[0, 0, 0] = 0  # a zero row
    x[1, 1, 1, 5] = 1e-9  # far below its row's maximum: subnormal territory
    bits, scale = quant.encode_fp8(x)
    assert bits.dtype == torch.uint8 and bits.shape == x.shape and scale.shape == (*x.shape[:-1], 1)
    y = quant.decode_fp8(bits, scale, torch.float32)
    xf = x.float()
    bound = quant.FP8_REL_ERROR * xf.abs() + quant.FP8_ABS_ERROR * xf.abs().amax(-1, keepdim=True)
    assert ((y - xf).abs() <= bound * (1 + 1e-6)).all()
    assert (y[0, 0, 0] == 0).all()
    rel = float((y - xf).norm() / xf.norm())
    assert rel < quant.FP8_REL_ERROR
    with pytest.raises(ValueError, match="non-finite"):
        quant.encode_fp8(torch.tensor([[1.0, float("nan")]]))


def test_fp8_cache_halves_bf16_and_round_trips_through_select():
    g = torch.Generator().manual_seed(1)
    kv = torch.randn(5, 32, 32, 1, 128, generator=g).to(torch.bfloat16)  # VoCo-7B shape: 0.26 MB/frame of K
    cache = FrameCache("voco", {"keys": kv, "values": -kv, "ids": torch.arange(5)}, [0.0, 1, 2, 3, 4], 1, {"p0": 3})
    enc = quant.encode_cache(cache)
    assert enc.tensors["keys"].dtype == torch.uint8 and enc.meta["cache_dtype"] == "fp8"
    float_bytes = sum(cache.tensors[k].nbytes for k in ("keys", "values"))
    enc_bytes = sum(enc.tensors[k].nbytes for k in ("keys", "values", "keys.fp8_scale", "values.fp8_scale"))
    assert enc_bytes / float_bytes == pytest.approx(0.5 + 4 / 128 / 2)  # half, plus one f32 scale per 128
    assert quant.encode_cache(enc) is enc
    dec = quant.decode_cache(enc.select([4, 1]))
    assert dec.tensors["keys"].dtype == torch.bfloat16 and dec.meta == {"p0": 3}
    assert torch.equal(dec.tensors["ids"], torch.tensor([4, 1]))
    ref = cache.select([4, 1]).tensors["keys"].float()
    assert float((dec.tensors["keys"].float() - ref).norm() / ref.norm()) < quant.FP8_REL_ERROR
    assert quant.decode_cache(cache) is cache


# ---- the store -----------------------------------------------------------------------------------

def test_quantised_runs_never_read_or_write_unquantised_entries(tmp_path):
    from vidqa.library import cache_settings, load_or_compress
    from vidqa.store import Store
    from vidqa.video import Sampling

    video = media.make_video(tmp_path / "v.mp4", num_frames=30)
    store = Store(tmp_path / "store")
    sampling = Sampling(fps=1)
    base, q8, fp8c = load("tiny-voco"), load("tiny-voco", "int8"), load("tiny-voco", cache_dtype="fp8")
    settings = {n: cache_settings(m, sampling) for n, m in (("base", base), ("q8", q8), ("fp8c", fp8c))}
    assert "quantize" not in settings["base"] and "cache_dtype" not in settings["base"]  # old keys stay valid
    assert settings["q8"]["quantize"] == "int8" and settings["fp8c"]["cache_dtype"] == "fp8"
    keys = {n: store.key(video, s) for n, s in settings.items()}
    assert len(set(keys.values())) == 3

    c0, _, hit = load_or_compress(base, video, sampling, store=store)
    assert not hit
    c1, _, hit = load_or_compress(q8, video, sampling, store=store)
    assert not hit  # the unquantised entry is not served to an int8 run
    assert store.get(keys["base"], settings["base"]) is not None
    again, _, hit = load_or_compress(base, video, sampling, store=store)
    assert hit and all(torch.equal(again.tensors[k], c0.tensors[k]) for k in c0.tensors)  # not overwritten
    c8, _, hit = load_or_compress(q8, video, sampling, store=store)
    assert hit and all(torch.equal(c8.tensors[k], c1.tensors[k]) for k in c1.tensors)
    assert store.metadata(keys["q8"])["settings"]["quantize"] == "int8"  # recorded

    # --cache-dtype fp8: 8-bit entries on disk, float tensors back, within the fp8 bound
    f0, _, hit = load_or_compress(fp8c, video, sampling, store=store)
    assert not hit
    raw = store.get(keys["fp8c"], settings["fp8c"])
    assert raw.tensors["keys"].dtype == torch.uint8 and "keys.fp8_scale" in raw.tensors
    f1, _, hit = load_or_compress(fp8c, video, sampling, store=store)
    assert hit and f1.tensors["keys"].dtype == c0.tensors["keys"].dtype
    for k in ("keys", "values"):
        ref = c0.tensors[k].float()
        assert float((f1.tensors[k].float() - ref).norm() / ref.norm()) < quant.FP8_REL_ERROR
    assert "".join(fp8c.answer(f1, "what colour is the square?"))  # answers from the decoded cache


# ---- options and the CLI builder -----------------------------------------------------------------

def test_compute_options_carry_quantize_and_cache_dtype():
    from vidqa.cli.params import compute_options

    assert ComputeOptions().quantize == "none" and ComputeOptions().cache_dtype == "auto"
    c = compute_options("cpu", "fp32", None, "int4", "fp8")
    assert (c.quantize, c.cache_dtype) == ("int4", "fp8")
    assert compute_options("cpu", "fp32", None).quantize == "none"


def test_importing_torchao_through_transformers_prints_nothing():
    """With torchao installed, transformers imports it; its import-time log lines must not reach stderr
    (the CLI's error contract is one `error:` line). Python's own SyntaxWarning from compiling a third-party
    source file that has no bytecode yet (torchao installed with ``pip --no-compile``, as on the GPU
    machine) is not an import-time line of torchao or transformers: it is left out (``compile_noise``)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    code = "import vidqa.fast, sys; assert 'torchao' in sys.modules"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0 and without_compile_noise(p.stderr) == "", p.stderr


COMPILE_WARNING = re.compile(r"^(?P<file>.+\.py):\d+: SyntaxWarning: .*$")


def without_compile_noise(stderr: str) -> str:
    """``stderr`` less the compiler's SyntaxWarnings about files outside this repository (each is its
    ``FILE:LINE: SyntaxWarning: ...`` line and the indented source line Python prints under it)."""
    out, lines, i = [], stderr.splitlines(keepends=True), 0
    while i < len(lines):
        found = COMPILE_WARNING.match(lines[i].rstrip("\n"))
        if found and not Path(found["file"]).resolve().is_relative_to(REPO):
            i += 2 if i + 1 < len(lines) and lines[i + 1].startswith((" ", "\t")) else 1
            continue
        out.append(lines[i])
        i += 1
    return "".join(out)


def test_only_third_party_compile_warnings_are_left_out():
    torchao = "/tmp/site/torchao/quantization/quant_api.py:1542: SyntaxWarning: invalid escape sequence '\\.'\n"
    src = "  pattern = \"model\\.layers\"\n"
    ours = f"{REPO}/vidqa/quant.py:3: SyntaxWarning: invalid escape sequence '\\.'\n"
    assert without_compile_noise(torchao + src) == ""
    assert without_compile_noise(ours + src) == ours + src  # vidqa's own: kept, the test fails
    assert without_compile_noise("INFO torchao: loaded kernels\n" + torchao + src) == "INFO torchao: loaded kernels\n"
    assert without_compile_noise(torchao + "a warning of another kind\n") == "a warning of another kind\n"


class _Split(torch.Tensor):
    """A stand-in for a torchao layout whose per-group scales keep the output rows on a later axis
    (int4 tile-packed: ``scale_and_zero [groups, out, 2]``): its row slice has non-contiguous scales."""

    @staticmethod
    def __new__(cls, data, scale):
        return torch.Tensor._make_wrapper_subclass(cls, data.shape, dtype=data.dtype, device=data.device)

    def __init__(self, data, scale):
        self.data_, self.scale = data, scale

    def __tensor_flatten__(self):
        return ["data_", "scale"], None

    @classmethod
    def __tensor_unflatten__(cls, inner, ctx, size, stride):
        return cls(inner["data_"], inner["scale"])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.slice.Tensor:
            t, dim, start, end = args[:4]
            return cls(t.data_[start:end], t.scale[:, start:end])
        raise NotImplementedError(func)


def test_row_slice_makes_a_layouts_inner_tensors_contiguous():
    w = torch.randn(8, 4)
    assert torch.equal(quant.row_slice(w, 2, 6), w[2:6])  # a plain tensor: a view
    t = _Split(torch.randn(8, 4), torch.randn(3, 8, 2))
    assert not t[2:6].scale.is_contiguous()
    part = quant.row_slice(t, 2, 6)
    assert type(part) is _Split and part.scale.is_contiguous() and part.data_.is_contiguous()
    assert torch.equal(part.scale, t.scale[:, 2:6]) and torch.equal(part.data_, t.data_[2:6])


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_row_slices_of_a_quantised_weight_give_its_rows(mode):
    torch.manual_seed(0)
    w = torch.randn(96, 64)
    with torch.inference_mode():
        qw = quant.quantize_weight(w, mode)
        x = torch.randn(3, 64)
        full = torch.nn.functional.linear(x, qw)
        part = torch.nn.functional.linear(x, quant.row_slice(qw, 32, 80))
    torch.testing.assert_close(part, full[:, 32:80], rtol=1e-5, atol=1e-5)


def test_int8_answers_agree_with_float32_on_a_seed_the_demo_models_never_saw(tmp_path):
    """The issue's bar: int8 answers equal float32's on >= 95% of held-out synthetic questions (seed 9;
    3 clips here, 22 questions; `benchmarks/quant_agreement.py` reports all 290 and every CPU mode)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import quant_agreement
    from vidqa.synthetic import generate

    generate(tmp_path, 3, seed=9, size=64, workers=1)
    result = quant_agreement.agreement(tmp_path, ("tiny-voco", "tiny-mini"), ["int8"])
    for model, modes in result.items():
        assert modes["none"]["questions"] == 22
        assert modes["int8"]["agree"] >= 0.95, (model, modes)
        assert modes["cache-fp8"]["agree"] >= 0.9, (model, modes)
