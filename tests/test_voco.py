"""VoCo two-stage compression equals the single masked pass it replaces (tiny random model, float32)."""

import torch

from vidqa.methods.base import FrameCache


TOL = 1e-4


def voco_mask(length: int, first_voco: int, last_voco: int) -> torch.Tensor:
    """VoCo-LLaMA's mask as an additive [1, 1, L, L] float mask.

    Up to the last VoCo token: causal. After it: keys from the first VoCo token on, causally.
    """
    q = torch.arange(length).view(-1, 1)
    k = torch.arange(length).view(1, -1)
    allowed = (k <= q) & ((q <= last_voco) | (k >= first_voco))
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min).view(1, 1, length, length)


def features(qa, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, qa.vision.num_patches, qa.vision.hidden_size, generator=g)


def two_stage_logits(qa, feats, question, steps):
    """Logits at every prompt position, then at each greedy decode step; and the generated ids."""
    m = qa.method
    cache = FrameCache("voco", m.compress(feats), [0.0] * feats.shape[0], m.tokens_per_frame, m.cache_meta())
    pre = m.prefill(cache, question)
    out = qa.llm(input_ids=pre.input_ids, position_ids=pre.position_ids, past_key_values=pre.past_key_values)
    logits = [out.logits[0]]
    tokens, pos = [], int(pre.position_ids[0, -1]) + 1
    for _ in range(steps):
        tok = int(logits[-1][-1].argmax())
        tokens.append(tok)
        out = qa.llm(input_ids=torch.tensor([[tok]]), position_ids=torch.tensor([[pos]]),
                     past_key_values=out.past_key_values)
        logits.append(out.logits[0])
        pos += 1
    return torch.cat(logits), tokens, pre.input_ids[0].tolist()


def single_pass_logits(qa, feats, text_ids):
    """One forward over [frame blocks..., text] with the VoCo mask, generalised to T frames.

    Frame t's block ``[BOS, image, "\\n", VoCo x N]`` sits at positions shifted by ``t * N``
    (vidqa's temporal layout), sees only itself, causally; text sees every VoCo span and itself.
    """
    m = qa.method
    T, N = feats.shape[0], m.tokens_per_frame
    blocks = m.frame_embeds(feats)  # T, B, D
    B = blocks.shape[1]
    text = qa.llm.get_input_embeddings()(torch.tensor(text_ids))
    embeds = torch.cat([blocks.reshape(T * B, -1), text]).unsqueeze(0)
    L = embeds.shape[1]
    block_of = torch.cat([torch.arange(T).repeat_interleave(B), torch.full((len(text_ids),), -1)])
    is_voco = torch.zeros(L, dtype=torch.bool)
    for t in range(T):
        is_voco[t * B + m.p0 : t * B + m.p0 + N] = True
    pos = torch.cat([torch.arange(B) + t * N for t in range(T)] + [m.p0 + T * N + torch.arange(len(text_ids))])
    q, k = torch.arange(L).view(-1, 1), torch.arange(L).view(1, -1)
    same_block = (block_of.view(-1, 1) == block_of.view(1, -1)) & (block_of.view(-1, 1) >= 0)
    text_row = (block_of == -1).view(-1, 1)
    allowed = (k <= q) & (same_block | (text_row & (is_voco.view(1, -1) | (block_of == -1).view(1, -1))))
    mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min).view(1, 1, L, L)
    out = qa.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos.unsqueeze(0))
    return out.logits[0, T * B:]


@torch.no_grad()
def test_two_stage_equals_masked_single_pass_at_prompt_and_every_decode_step(voco_qa):
    feats = features(voco_qa, 1, seed=1)
    got, tokens, prompt = two_stage_logits(voco_qa, feats, "what happens after the door opens?", steps=6)
    ref = single_pass_logits(voco_qa, feats, prompt + tokens)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() < TOL
    # and the single pass with the mask exactly as VoCo-LLaMA writes it (one frame: same thing)
    m = voco_qa.method
    seq = torch.cat([m.frame_embeds(feats)[0], voco_qa.llm.get_input_embeddings()(torch.tensor(prompt + tokens))])
    L = seq.shape[0]
    mask = voco_mask(L, m.p0, m.p0 + m.tokens_per_frame - 1)
    out = voco_qa.llm(inputs_embeds=seq[None], attention_mask=mask, position_ids=torch.arange(L)[None])
    assert (out.logits[0, -len(prompt + tokens):] - got).abs().max() < TOL


@torch.no_grad()
def test_decoding_keeps_seeing_the_voco_tokens(voco_qa):
    """Late decode steps still attend to the VoCo span (the public code's drifting marker hides it)."""
    m = voco_qa.method
    cache = FrameCache("voco", m.compress(features(voco_qa, 1, seed=1)), [0.0], m.tokens_per_frame, m.cache_meta())
    pre = m.prefill(cache, "what?")
    out = voco_qa.llm(**_kw(pre))
    pos = int(pre.position_ids[0, -1]) + 1
    voco_qa.llm.set_attn_implementation("eager")
    try:
        for step in range(16):
            tok = int(out.logits[0, -1].argmax())
            out = voco_qa.llm(input_ids=torch.tensor([[tok]]), position_ids=torch.tensor([[pos + step]]),
                              past_key_values=out.past_key_values, output_attentions=True)
    finally:
        voco_qa.llm.set_attn_implementation("sdpa")
    for attn in out.attentions:  # the 16th generated token, every layer and head
        assert attn[0, :, -1, : m.tokens_per_frame].min() > 0  # masked keys get exactly 0


@torch.no_grad()
def test_text_never_attends_to_bos_image_or_newline(voco_qa):
    """With the cache fixed, the vision tokens are out of reach: zero attention weight, every layer."""
    m = voco_qa.method
    feats = features(voco_qa, 1, seed=3)
    prompt = m.prompt_ids("how many?")
    seq = torch.cat([m.frame_embeds(feats)[0], voco_qa.llm.get_input_embeddings()(torch.tensor(prompt))])
    L = seq.shape[0]
    mask = voco_mask(L, m.p0, m.p0 + m.tokens_per_frame - 1)
    voco_qa.llm.set_attn_implementation("eager")
    try:
        out = voco_qa.llm(inputs_embeds=seq[None], attention_mask=mask, position_ids=torch.arange(L)[None],
                          output_attentions=True)
    finally:
        voco_qa.llm.set_attn_implementation("sdpa")
    text_rows = slice(m.p0 + m.tokens_per_frame, L)
    for attn in out.attentions:
        assert attn[0, :, text_rows, : m.p0].abs().max() == 0.0
        assert attn[0, :, text_rows, m.p0:].sum(-1).sub(1).abs().max() < 1e-5


@torch.no_grad()
def test_changing_the_frame_after_compression_changes_nothing(voco_qa):
    """The answer reads the cache only: other pixels, same cache, same logits."""
    m = voco_qa.method
    cache = FrameCache("voco", m.compress(features(voco_qa, 1, seed=4)), [0.0], m.tokens_per_frame, m.cache_meta())
    first = voco_qa.llm(**_kw(m.prefill(cache, "what colour?"))).logits
    m.compress(features(voco_qa, 1, seed=5))  # another frame through the model in between
    again = voco_qa.llm(**_kw(m.prefill(cache, "what colour?"))).logits
    assert torch.equal(first, again)


def _kw(pre):
    return dict(input_ids=pre.input_ids, position_ids=pre.position_ids, past_key_values=pre.past_key_values)


@torch.no_grad()
def test_multi_frame_two_stage_equals_masked_single_pass(voco_qa):
    feats = features(voco_qa, 3, seed=6)
    got, tokens, prompt = two_stage_logits(voco_qa, feats, "what appeared after the square?", steps=4)
    ref = single_pass_logits(voco_qa, feats, prompt + tokens)
    assert (got - ref).abs().max() < TOL


@torch.no_grad()
def test_training_pass_equals_compress_then_prefill(voco_qa):
    """VoCo.masked_inputs (what `vidqa train` runs, padded) gives the two-stage path's logits."""
    m = voco_qa.method
    feats = features(voco_qa, 3, seed=8)
    got, tokens, prompt = two_stage_logits(voco_qa, feats, "which way does it move?", steps=3)
    text = prompt + tokens
    embeds, mask, pos = m.masked_inputs(feats, text, length=len(text) + 5)
    additive = torch.where(mask, 0.0, torch.finfo(torch.float32).min)[None, None]
    out = voco_qa.llm(inputs_embeds=embeds[None], attention_mask=additive, position_ids=pos[None])
    T, B = feats.shape[0], m.p0 + m.tokens_per_frame
    assert (out.logits[0, T * B : T * B + len(text)] - got).abs().max() < TOL


def test_prompt_layout_matches_training(voco_qa):
    """[BOS][image][pre-VoCo ids][VoCo x N] | prompt, split where VoCo-LLaMA's own tokenisation puts it."""
    m = voco_qa.method
    tok = voco_qa.tokenizer
    text = "\n" + "<voco>" * m.tokens_per_frame + "\n" + "A chat"
    whole = tok(text, add_special_tokens=False).input_ids
    assert whole[len(m.pre_voco_ids) : len(m.pre_voco_ids) + m.tokens_per_frame] == [m.voco_id] * m.tokens_per_frame
    prompt = tok.decode(m.prompt_ids("is it red?"))
    assert "USER: is it red? ASSISTANT:" in prompt and "assistant of the image" in prompt
    assert m.p0 == 1 + voco_qa.vision.num_patches + len(m.pre_voco_ids)


def test_fast_compression_equals_the_transformers_model(voco_qa):
    torch.manual_seed(0)  # unseeded, the float32 difference of the two paths drew 1.05e-5 once
    feats = torch.randn(3, voco_qa.vision.num_patches, voco_qa.vision.hidden_size)
    fast, ref = voco_qa.method.compress(feats), voco_qa.method.compress_reference(feats)
    for k in ("keys", "values"):
        assert fast[k].shape == ref[k].shape and (fast[k] - ref[k]).abs().max() < 1e-5
