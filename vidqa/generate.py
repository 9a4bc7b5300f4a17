"""Context plus question to streamed tokens, in gpt-fast's shape: a static KV cache with a CUDA-graph
decode step (``StaticDecoder``), ``sample`` (greedy or nucleus), ``generate`` and ``Detokenizer``.

Positions are explicit at every step (``Prefill.position_ids`` then one more per token); the
attention mask comes from the cache length alone, since everything in the cache is visible to the
answer. That is what keeps a compressed video's tokens in sight for the whole answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

from vidqa import fast, int4
from vidqa.attention import decode_step
from vidqa.methods.base import Prefill


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class DecodeStats:
    prefill_s: float = 0.0  # time to first token, from the start of prefill
    decode_s: float = 0.0  # time spent on tokens after the first
    tokens: int = 0
    decode_steps: int = 0
    stopped: str = ""  # "stop" (a stop token) or "length"
    times: list[float] = field(default_factory=list)

    @property
    def ms_per_token(self) -> float:
        return 1000 * self.decode_s / max(1, self.decode_steps)


def sample(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> int:
    """One token id from the last position's logits ``[V]``."""
    if cfg.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p  # the smallest set whose mass reaches top_p
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate(llm, prefill: Prefill, cfg: GenerationConfig, stop_ids: set[int],
             stats: DecodeStats | None = None, decoder=None) -> Iterator[int]:
    """Yield answer token ids one at a time (stop tokens are not yielded).

    ``decoder``: a ``StaticDecoder`` to run the decode steps (CUDA graph); the prefill
    always runs through transformers and its cache is copied in.
    """
    stats = stats if stats is not None else DecodeStats()
    pos = prefill.position_ids
    device = pos.device
    generator = None
    if cfg.temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
    cache = prefill.past_key_values
    t0 = time.perf_counter()
    out = llm(input_ids=prefill.input_ids, inputs_embeds=prefill.inputs_embeds, position_ids=pos,
              use_cache=True, logits_to_keep=1, **fast.cache_kwargs(cache))
    next_pos = int(pos[0, -1]) + 1
    if decoder is not None:
        decoder.load(fast.output_cache(out))
    stats.stopped = "length"
    for step, token in enumerate(_tokens(llm, out, next_pos, cfg, generator, decoder)):
        now = time.perf_counter()
        if step == 0:
            stats.prefill_s = now - t0
        else:
            stats.decode_s += now - t_last
            stats.decode_steps += 1
        stats.times.append(now - t0)
        if token in stop_ids:
            stats.stopped = "stop"
            return
        stats.tokens += 1
        yield token
        t_last = time.perf_counter()  # time spent by the consumer (rendering) is not decoding time


def _tokens(llm, out, next_pos: int, cfg: GenerationConfig, generator, decoder) -> Iterator[int]:
    """The answer's token ids (at most ``cfg.max_new_tokens``), the first from the prefill's logits. Greedy with a
    ``StaticDecoder``: its pipelined ``greedy`` steps; otherwise a step (decoder or transformers) per token."""
    device = out.logits.device
    token = sample(out.logits[0, -1], cfg, generator)  # .item() inside: the step is synchronised
    yield token
    if cfg.max_new_tokens <= 1:
        return
    if decoder is not None and cfg.temperature <= 0:
        yield from decoder.greedy(token, next_pos, cfg.max_new_tokens - 1)
        return
    for _ in range(cfg.max_new_tokens - 1):
        if decoder is not None:
            logits = decoder.step(token, next_pos)
        else:
            out = llm(input_ids=torch.tensor([[token]], device=device),
                      position_ids=torch.tensor([[next_pos]], device=device),
                      use_cache=True, **fast.cache_kwargs(fast.output_cache(out)))
            logits = out.logits[0, -1]
        token = sample(logits, cfg, generator)
        yield token
        next_pos += 1


class Detokenizer:
    """Turns a growing list of token ids into text deltas that are safe to print.

    SentencePiece and byte-level tokenizers only produce correct text for whole sequences (leading
    spaces, multi-byte characters split across tokens), so the whole answer is decoded each time and
    only the new, complete suffix is emitted.
    """

    def __init__(self, tokenizer, drop_prefix: str | None = None):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self.drop_prefix = drop_prefix  # e.g. a role header the model writes before its answer
        self.skip = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the next token
            return ""
        if self.drop_prefix:
            if self.drop_prefix.startswith(text.lstrip()):
                return ""  # may still become the prefix: hold it back
            if text.lstrip().startswith(self.drop_prefix):
                rest = text.lstrip()[len(self.drop_prefix):]
                if not rest.strip():
                    return ""  # the header, and nothing after it yet
                self.skip = len(text) - len(rest.lstrip())
            self.drop_prefix = None
        text = text[self.skip:]
        delta, self.text = text[len(self.text):], text
        return delta


class StaticDecoder:
    """One-token decode steps over a KV cache of fixed capacity; ``graph=True`` replays a CUDA graph.

    A transformers decode step at 7B issues several hundred small kernels from Python (~23 ms per token
    measured on an H100, against a 4.4 ms bandwidth floor). Capturing one step into a CUDA graph removes
    the launch overhead, and the graph needs fixed shapes and addresses: a preallocated KV cache of fixed
    capacity, written in place at a position held in a device tensor (gpt-fast's approach). The prefill
    stays on the transformers path; its KV cache is copied in (``load``). Llama-shaped layers only
    (``vidqa.fast.supports``).
    """

    def __init__(self, llm, capacity: int, graph: bool | None = None, compile: bool = False):
        cfg = llm.config
        self.llm = llm
        p = next(llm.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.capacity = capacity
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        shape = (1, self.n_kv, capacity, self.head_dim)
        self.keys = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in llm.model.layers]
        self.values = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in llm.model.layers]
        # the step's inputs live in fixed tensors so that a captured graph reads them
        # and the step advances them itself: the greedy token (``_pick``), the RoPE position and the number of
        # positions attended (the new one last), so that greedy steps follow one another with no host work between
        self.token = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self.state = torch.ones(2, dtype=torch.long, device=self.device)  # one add_ moves both
        self.position, self.visible = self.state[:1].view(1, 1), self.state[1:]
        self.counters = torch.zeros(self.n_kv, dtype=torch.int32, device=self.device)  # vidqa.attention.decode_step's
        fast.fuse_projections(llm.model.layers)
        # vidqa.int4 layers as four fused kernels (``_int4_fused``) when the step is not compiled (VIDQA_COMPILE=0
        # for a quantised model): 4.29 -> 3.40 ms/token at VoCo-7B shapes. Compiled, inductor folds the norms,
        # SiLU and adds into two kernels a layer, and the fused kernels lost: 2.69 -> 2.77 (session 10), 2.58 ->
        # 2.92 with the norm's scale deferred to the GEMV's end (session 11); the norm and gated activation slow
        # the tensor-core GEMV's loop (H200, benchmarks/int4_decode.py --variants default,unfused)
        self.fuse_int4 = not compile
        # RoPE inside the attention kernel (vidqa.attention.decode_step). Compiled it takes the time inductor's own
        # RoPE kernel took (int4 7B: 2.500 ms/token, 2.504 before, separate runs; H200, session 11); uncompiled it
        # replaces transformers' ops, about ten small kernels a layer: 2.65 against 3.29 ms/token in one run
        # (session 12, benchmarks/int4_decode.py --variants eager,eager_rope_apart)
        self.rope_in_attention = True
        self.use_graph = (self.device.type == "cuda") if graph is None else graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.length = 0
        # torch.compile fuses the small ops between the matmuls (norms, RoPE, SiLU): fewer kernels
        # in the graph. It costs a compile at the first step, so it is opt-in (``ComputeOptions.compile``).
        self._run = torch.compile(self._pick, dynamic=False) if compile else self._pick

    def load(self, cache) -> None:
        """Copy a transformers cache (after prefill) into the static buffers."""
        n = cache.layers[0].keys.shape[-2]
        if n >= self.capacity:
            raise ValueError(f"context of {n} tokens does not fit a static cache of {self.capacity}")
        for i, layer in enumerate(cache.layers):
            self.keys[i][:, :, :n].copy_(layer.keys)
            self.values[i][:, :, :n].copy_(layer.values)
        self.length = n

    def _step(self) -> torch.Tensor:
        m = self.llm.model
        h = m.embed_tokens(self.token)
        cos, sin = m.rotary_emb(h, position_ids=self.position)
        rope = (cos, sin) if self.rope_in_attention else None
        if rope is not None:  # the attention kernel turns q and k (decode_step), not transformers' ops in fast.heads
            cos = sin = None
        for i, layer in enumerate(m.layers):
            attn = layer.self_attn
            (w_qkv, b_qkv), (w_gu, b_gu) = layer._vidqa_fused  # one GEMV for Q/K/V, one for gate/up
            ln1, ln2 = layer.input_layernorm, layer.post_attention_layernorm
            if self._int4_fused(h, layer):  # vidqa.int4: each matmul with its norm, activation or residual add
                x = int4.linear_fused(h, w_qkv, norm=(ln1.weight, ln1.variance_epsilon))
                q, k, v = fast.heads(x, cos, sin, self.n_heads, self.n_kv, self.head_dim)
                o = decode_step(q, k, v, self.keys[i], self.values[i], self.visible, self.counters, attn.scaling,
                                rope)
                h = int4.linear_fused(o.transpose(1, 2).reshape(1, 1, -1), attn.o_proj.weight, residual=h)
                a = int4.linear_fused(h, w_gu, norm=(ln2.weight, ln2.variance_epsilon), glu=True)
                h = int4.linear_fused(a, layer.mlp.down_proj.weight, residual=h)
                continue
            q, k, v = fast.qkv(h, cos, sin, ln1.weight, ln1.variance_epsilon, w_qkv, b_qkv, self.n_heads, self.n_kv,
                               self.head_dim)
            # RoPE, the new K/V into the cache and attention over the valid positions: one split-K kernel on CUDA
            # (SDPA with a mask picks a kernel that reads the whole capacity with one program per head:
            # 13.4 us per 7B layer, vidqa.attention)
            o = decode_step(q, k, v, self.keys[i], self.values[i], self.visible, self.counters, attn.scaling,
                            rope)
            h = h + attn.o_proj(o.transpose(1, 2).reshape(1, 1, -1))
            # (SiLU(gate) * up in the int4 gate/up GEMV instead of inductor's kernel: 2.45 against 2.44 ms/token
            # compiled, one run, H200, session 13: not taken)
            gate, up = F.linear(fast.rms_norm(h, ln2.weight, ln2.variance_epsilon), w_gu, b_gu).chunk(2, dim=-1)
            h = h + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
        return self.llm.lm_head(m.norm(h))[0, -1]

    def _int4_fused(self, h: torch.Tensor, layer) -> bool:
        """Whether ``layer`` runs as four ``vidqa.int4.linear_fused`` kernels: its four matmuls in vidqa's int4 on
        the GEMV's terms, no biases, SiLU, and RMSNorm weights in h's dtype."""
        (w_qkv, b_qkv), (w_gu, b_gu) = layer._vidqa_fused
        a, mlp = layer.self_attn, layer.mlp
        weights = (w_qkv, a.o_proj.weight, w_gu, mlp.down_proj.weight)
        return (self.fuse_int4 and all(int4.fused_ok(h, w) for w in weights)
                and b_qkv is None and b_gu is None and a.o_proj.bias is None and mlp.down_proj.bias is None
                and fast._act(mlp.act_fn) is F.silu
                and layer.input_layernorm.weight.dtype == layer.post_attention_layernorm.weight.dtype == h.dtype)

    def _capture(self) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        # Warm-up steps (the first compiles) write K/V at position `length`, which the real step overwrites before
        # reading it, and their token, which is put back.
        token = self.token.clone()
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):
                self._run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.token.copy_(token)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.logits = self._run_and_advance()

    def _pick(self) -> torch.Tensor:
        """The step, with its greedy token written to the next step's input; the logits ``[V]``. (Inside the
        compiled function inductor writes the argmax as a kernel of its own: PyTorch's took 11 us of a 7B step.)"""
        logits = self._step()
        self.token.copy_(logits.argmax(dim=-1, keepdim=True).view(1, 1))
        return logits

    def _run_and_advance(self) -> torch.Tensor:
        """The step, then the position and length one on. The ``add_`` stays outside the compiled function:
        ``position`` and ``visible``, which the step reads, are views of ``state``."""
        logits = self._run()
        self.state.add_(1)
        return logits

    def _launch(self) -> torch.Tensor:
        """One step from the inputs' buffers (queued, not waited for); its logits ``[V]``."""
        if self.length >= self.capacity:
            raise ValueError("static cache is full")
        self.length += 1
        if not self.use_graph:
            with torch.inference_mode():
                return self._run_and_advance()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.logits

    def _set(self, token: int, position: int) -> None:
        self.token.fill_(token)
        self.position.fill_(position)
        self.visible.fill_(self.length + 1)

    def step(self, token: int, position: int) -> torch.Tensor:
        """Append ``token`` at RoPE ``position`` and return the next-token logits ``[V]``."""
        self._set(token, position)
        return self._launch()

    def greedy(self, token: int, position: int, steps: int) -> Iterator[int]:
        """The greedy tokens after ``token`` (at RoPE ``position``), ``steps`` at most, one step ahead of the caller.

        Each step takes its input from the step before on the device (``_pick``), so step n + 1 is queued
        before token n reaches the host: the GPU never waits for the host's read and launch, which a step per
        token (``step`` then ``sample``) costs at every token (int4 7B, compiled: 2.61 ms/token against 2.75 in the
        same run, H200, session 11). If the caller stops early, the step queued ahead is discarded (its K/V lies
        past what the next ``load`` keeps). Tokens reach the host through a pinned pair of slots, one per step in
        flight."""
        cuda = self.device.type == "cuda"
        host = torch.zeros(2, dtype=torch.long, pin_memory=cuda)
        ready = [torch.cuda.Event() if cuda else None for _ in range(2)]

        def queue(i: int) -> None:
            self._launch()
            host[i % 2].copy_(self.token.view(()), non_blocking=cuda)
            if cuda:
                ready[i % 2].record(torch.cuda.current_stream(self.device))  # the copy's stream, on any device

        self._set(token, position)
        queue(0)
        for i in range(steps):
            ahead = i + 1 < steps and self.length < self.capacity
            if ahead:
                queue(i + 1)
            if cuda:
                ready[i % 2].synchronize()
            yield int(host[i % 2])
            if i + 1 < steps and not ahead:
                raise ValueError("static cache is full")  # where ``step`` would raise it: at the token after
