"""vidqa.generate: sampling, detokenizing, the generate loop and the static-cache decoder (CPU; CUDA where present)."""

import pytest
import torch

from vidqa.generate import DecodeStats, Detokenizer, GenerationConfig, StaticDecoder, generate, sample
from vidqa.methods.base import FrameCache


def test_sample_greedy_and_nucleus():
    logits = torch.tensor([0.0, 5.0, 1.0, -2.0])
    assert sample(logits, GenerationConfig(), None) == 1
    g = torch.Generator().manual_seed(0)
    picks = {sample(logits, GenerationConfig(temperature=1.0, top_p=0.5), g) for _ in range(50)}
    assert picks == {1}  # the top token alone holds over half of the mass
    g = torch.Generator().manual_seed(0)
    picks = {sample(torch.zeros(4), GenerationConfig(temperature=1.0), g) for _ in range(200)}
    assert picks == {0, 1, 2, 3}


class _Bytes:
    """A tokenizer whose tokens are single UTF-8 bytes."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_detokenizer_waits_for_whole_characters_and_drops_a_prefix():
    d = Detokenizer(_Bytes())
    text = "é ok"
    deltas = [d.push(b) for b in text.encode()]
    assert deltas[0] == "" and "".join(deltas) == text
    d = Detokenizer(_Bytes(), drop_prefix="assistant")
    assert "".join(d.push(b) for b in "assistant\n\nhi".encode()) == "hi"
    d = Detokenizer(_Bytes(), drop_prefix="assistant")
    assert "".join(d.push(b) for b in "as if".encode()) == "as if"


@torch.no_grad()
def test_generate_stops_on_a_stop_id_or_the_length(voco_qa):
    m, llm = voco_qa.method, voco_qa.llm
    feats = torch.randn(2, voco_qa.vision.num_patches, voco_qa.vision.hidden_size)
    cache = FrameCache("voco", m.compress(feats), [0.0, 1.0], m.tokens_per_frame, m.cache_meta())
    stats = DecodeStats()
    tokens = list(generate(llm, m.prefill(cache, "q?"), GenerationConfig(max_new_tokens=5), set(), stats))
    assert len(tokens) == 5 and stats.stopped == "length" and stats.tokens == 5 and stats.decode_steps == 4
    stats = DecodeStats()
    cut = list(generate(llm, m.prefill(cache, "q?"), GenerationConfig(max_new_tokens=5), {tokens[2]}, stats))
    assert cut == tokens[:tokens.index(tokens[2])] and stats.stopped == "stop"


@torch.no_grad()
def test_static_decoder_on_the_cpu_equals_transformers(voco_qa):
    m, llm = voco_qa.method, voco_qa.llm
    feats = torch.randn(2, voco_qa.vision.num_patches, voco_qa.vision.hidden_size)
    cache = FrameCache("voco", m.compress(feats), [0.0, 1.0], m.tokens_per_frame, m.cache_meta())
    gen = GenerationConfig(max_new_tokens=8)
    pre = m.prefill(cache, "q?")
    context = pre.past_key_values.get_seq_length() + pre.position_ids.shape[1]
    dec = StaticDecoder(llm, context + 8, graph=False)
    assert not dec.use_graph and dec.capacity == context + 8
    plain = list(generate(llm, m.prefill(cache, "q?"), gen, set()))
    assert list(generate(llm, pre, gen, set(), decoder=dec)) == plain and len(plain) == 8
    assert dec.length == context + len(plain) - 1  # the last token is yielded, never fed back


def _collect(tokens) -> tuple[list[int], str]:
    """The tokens an answer yields, and the error that ended it ("" if none)."""
    out: list[int] = []
    try:
        for t in tokens:
            out.append(t)
    except ValueError as e:
        return out, str(e)
    return out, ""


@torch.no_grad()
def test_the_pipelined_greedy_decoder_stops_refills_and_runs_out_as_the_plain_loop(voco_qa):
    """Greedy steps are queued one ahead of the caller (``StaticDecoder.greedy``): a stop leaves one step in
    flight, which the next answer's ``load`` discards; a full cache ends the answer at the same token as a step
    per token does; sampling still takes a step per token and draws as the plain loop."""
    m, llm = voco_qa.method, voco_qa.llm
    feats = torch.randn(2, voco_qa.vision.num_patches, voco_qa.vision.hidden_size,
                        generator=torch.Generator().manual_seed(1))
    cache = FrameCache("voco", m.compress(feats), [0.0, 1.0], m.tokens_per_frame, m.cache_meta())
    gen = GenerationConfig(max_new_tokens=8)
    plain = list(generate(llm, m.prefill(cache, "q?"), gen, set()))
    other = list(generate(llm, m.prefill(cache, "what?"), gen, set()))
    dec = StaticDecoder(llm, 256, graph=False)
    stops = {plain[3]}
    cut = list(generate(llm, m.prefill(cache, "q?"), gen, stops, decoder=dec))
    assert cut == plain[:plain.index(plain[3])]
    assert list(generate(llm, m.prefill(cache, "what?"), gen, set(), decoder=dec)) == other  # the same decoder
    pre = m.prefill(cache, "q?")
    context = pre.past_key_values.get_seq_length() + pre.position_ids.shape[1]
    full = StaticDecoder(llm, context + 3, graph=False)  # room for three steps: four tokens
    assert _collect(generate(llm, pre, gen, set(), decoder=full)) == (plain[:4], "static cache is full")
    sampled = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=3)
    drawn = list(generate(llm, m.prefill(cache, "q?"), sampled, set()))
    assert list(generate(llm, m.prefill(cache, "q?"), sampled, set(), decoder=dec)) == drawn
    full = StaticDecoder(llm, context + 3, graph=False)
    assert _collect(generate(llm, m.prefill(cache, "q?"), sampled, set(), decoder=full)) == (drawn[:4],
                                                                                           "static cache is full")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile", [False, True])
@torch.no_grad()
def test_static_decoder_on_the_gpu_in_a_cuda_graph_equals_transformers(voco_dir, compile):
    """The graph-replayed step (the split-K decode attention over the valid positions) answers as transformers."""
    from vidqa.pipeline import VideoQA

    qa = VideoQA.from_pretrained(str(voco_dir), device="cuda", dtype="float32")
    m, llm = qa.method, qa.llm
    feats = torch.randn(2, qa.vision.num_patches, qa.vision.hidden_size, generator=torch.Generator().manual_seed(0))
    cache = FrameCache("voco", m.compress(feats.cuda()), [0.0, 1.0], m.tokens_per_frame, m.cache_meta())
    gen = GenerationConfig(max_new_tokens=12)
    plain = list(generate(llm, m.prefill(cache, "q?"), gen, set()))
    dec = StaticDecoder(llm, 128, graph=True, compile=compile)
    assert list(generate(llm, m.prefill(cache, "q?"), gen, set(), decoder=dec)) == plain and dec.graph is not None
    # pipelined greedy steps: a stop leaves a step in flight; the next answer on the same graph is unchanged
    cut = list(generate(llm, m.prefill(cache, "q?"), gen, {plain[5]}, decoder=dec))
    assert cut == plain[:plain.index(plain[5])]
    assert list(generate(llm, m.prefill(cache, "q?"), gen, set(), decoder=dec)) == plain
    sampled = GenerationConfig(max_new_tokens=12, temperature=1.0, seed=3)  # a step per token, the host drawing
    drawn = list(generate(llm, m.prefill(cache, "q?"), sampled, set()))
    assert list(generate(llm, m.prefill(cache, "q?"), sampled, set(), decoder=dec)) == drawn


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing torch._dynamo warns about torch.jit
def test_the_decoder_fuses_int4_layers_only_when_its_step_is_not_compiled(voco_qa):
    """Compiled, inductor fuses the norms, SiLU and adds itself, and better (2.58 against 2.92 ms/token at 7B,
    session 11); uncompiled, vidqa.int4's fused layers win (3.40 against 4.29, session 10). On the CPU nothing is
    fused: there is no GEMV."""
    llm = voco_qa.llm
    assert StaticDecoder(llm, 64, graph=False).fuse_int4
    assert not StaticDecoder(llm, 64, graph=False, compile=True).fuse_int4
    h = torch.zeros(1, 1, llm.config.hidden_size)
    assert not StaticDecoder(llm, 64, graph=False)._int4_fused(h, llm.model.layers[0])


def test_the_cache_keyword_is_the_installed_transformers_one():
    """transformers 5.2x takes ``cache`` (``past_key_values`` warns, and goes in 5.40); 5.17 takes only
    ``past_key_values``. vidqa passes the one the installed version declares (read from its signature)."""
    import inspect

    from transformers.models.llama.modeling_llama import LlamaForCausalLM

    from vidqa import fast

    params = inspect.signature(LlamaForCausalLM.forward).parameters
    assert fast.CACHE_KW in params
    assert fast.CACHE_KW == ("cache" if "cache" in params else "past_key_values")
    assert fast.cache_kwargs(None) == {fast.CACHE_KW: None}


def test_answering_raises_no_deprecation_warning(voco_qa, mini_qa, recwarn):
    """No FutureWarning from transformers on any answer (it printed on every ``vidqa ask``)."""
    import warnings

    from vidqa.methods.mini import layers  # noqa: F401 (the pre-fusion runs decoder layers with a cache)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for qa in (voco_qa, mini_qa):
            feats = torch.randn(2, qa.vision.num_patches, qa.vision.hidden_size)
            cache = FrameCache(qa.method.name, qa.method.compress(feats), [0.0, 1.0], qa.method.tokens_per_frame,
                               qa.cache_meta())
            list(qa.answer(cache, "what moves?", GenerationConfig(max_new_tokens=3)))
            if hasattr(qa.method, "compress_reference"):
                qa.method.compress_reference(feats)
