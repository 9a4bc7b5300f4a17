"""The LLM inputs of each training variant, behind one interface (``InputBuilder``), and their registry.

A builder turns CLIP features and token ids into ``(embeds, mask, positions, starts)``: embeddings
``[B, L, D]``, a bool attention mask ``[B, 1, L, L]`` (True: may attend), positions ``[B, L]`` and, per
row, the index of the first answer token. Three shapes of batch:

- ``single``: one sample, the reference pass (what inference runs); no batch dimension.
- ``batched``: one row per sample, text padded on the right (padding sees only itself).
- ``packed``: one row per clip, all of a clip's questions after its frames; each question sees the
  frames as it would alone (same mask rule, same positions) and itself, causally, and nothing of the
  other questions. ``None`` when a clip's questions cannot share a row (the caller then batches).

``tests/test_train_inputs.py`` checks ``batched`` and ``packed`` against ``single`` for every variant.

Variants: ``voco`` (``VoCo.frame_embeds`` / ``VoCo.masked_inputs``, the single masked pass that
``tests/test_voco.py`` proves equal to compress-then-prefill), ``mini`` (``mini.encode_frames``,
``mini.prefusion_full``, ``mini.fuse_video``, ``mini.assemble_llm_inputs``, which ``tests/test_pipeline.py``
proves equal to the cached path), and two rows of the retention table only: ``full`` (every vision
token visible to the text: the upper bound) and ``pool`` (each frame's features averaged, then a
linear layer: 1 token).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn

from vidqa.errors import VidqaError
from vidqa.methods import mini
from vidqa.methods.voco import VoCo

Rows = tuple[Tensor, Tensor, Tensor, list[int]]  # embeds [B, L, D], mask [B, 1, L, L], positions [B, L], starts
Single = tuple[Tensor, Tensor, Tensor, int]  # embeds [L, D], mask [L, L], positions [L], start


class InputBuilder(ABC):
    """One variant's prompt and answer ids and its LLM inputs (see the module docstring).

    The builder is not a module: ``modules()`` names the trainable parts it adds, which the ``Learner``
    registers under those names (so a training state's keys are the same as before the builders).
    """

    name: ClassVar[str]
    aspect: ClassVar[str] = "pad"  # how the vision preprocessing fits a frame (vidqa.vision.Preprocess)

    def __init__(self, llm: nn.Module, projector: nn.Module, tokenizer):
        self.llm, self.projector, self.tokenizer = llm, projector, tokenizer
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id

    @classmethod
    @abstractmethod
    def create(cls, llm: nn.Module, projector: nn.Module, tokenizer, *, num_patches: int, vision_hidden: int,
               tokens_per_frame: int = 1, prefusion_layers: int = 2) -> "InputBuilder":
        """A builder with freshly initialised parts of its own (pooling layer, compressor, pre-fusion)."""

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The parts this variant adds to vision + projector + LLM, by the name the Learner gives them."""

    @abstractmethod
    def prompt_ids(self, question: str) -> list[int]:
        """The question's prompt ids, as inference tokenises it."""

    def answer_ids(self, answer: str) -> list[int]:
        """What the model must write after the prompt (VoCo's Vicuna turn ends with </s>)."""
        return self.tokenizer(" " + answer, add_special_tokens=False).input_ids + [self.eos]

    @property
    def answer_offset(self) -> int:
        """Tokens the model writes before the answer's first word."""
        return 0

    @abstractmethod
    def single(self, feats: Tensor, prompt: list[int], answer: list[int]) -> Single:
        """One sample from its features ``[T, P, C]``: the reference pass."""

    @abstractmethod
    def batched(self, feats: Tensor, prompts: list[list[int]], answers: list[list[int]]) -> Rows:
        """One row per sample, from features ``[B, T, P, C]``."""

    @abstractmethod
    def packed(self, feats: Tensor, prompts: list[list[int]], answers: list[list[int]], owner: list[int]) -> Rows | None:
        """One row per clip, from clip features ``[C, T, P, C]``; ``owner[i]`` is sample i's clip."""


def stack_rows(rows: list[Single]) -> Rows:
    """Pad per-sample (embeds, mask, positions, start) to one batch; padding sees only itself."""
    L = max(e.shape[0] for e, _, _, _ in rows)
    e0 = rows[0][0]
    E = torch.zeros(len(rows), L, e0.shape[-1], device=e0.device, dtype=e0.dtype)
    M = torch.zeros(len(rows), 1, L, L, dtype=torch.bool, device=e0.device)
    P = torch.zeros(len(rows), L, dtype=torch.long, device=e0.device)
    for b, (e, m, p, _) in enumerate(rows):
        n = e.shape[0]
        E[b, :n], M[b, 0, :n, :n], P[b, :n] = e, m, p
        M[b, 0, n:, n:] = torch.eye(L - n, dtype=torch.bool, device=e0.device)
    return E, M, P, [r[3] for r in rows]


def _causal(L: int, device) -> Tensor:
    return torch.ones(L, L, dtype=torch.bool, device=device).tril()


# ---- voco, full, pool: a vision prefix, then the text -------------------------------------------

class PrefixInputs(InputBuilder):
    """A vision prefix per sample (``prefix``) laid out by ``layout``, then the VoCo prompt's text."""

    def __init__(self, llm, projector, tokenizer, voco: VoCo):
        super().__init__(llm, projector, tokenizer)
        self.voco = voco  # the prompt's ids (every prefix variant asks as VoCo does)

    def modules(self) -> dict[str, nn.Module]:
        return {"voco": self.voco}

    def prompt_ids(self, question: str) -> list[int]:
        return self.voco.prompt_ids(question)

    @abstractmethod
    def prefix(self, feats: Tensor) -> Tensor:
        """Embeddings ``[B, P, D]`` of the vision prefix of features ``[B, T, P, C]``."""

    @abstractmethod
    def layout(self, num_frames: int, n_prefix: int, n_text: int, device) -> tuple[Tensor, Tensor]:
        """The mask ``[L, L]`` and positions ``[L]`` of a prefix followed by ``n_text`` text tokens."""

    def batched(self, feats: Tensor, prompts: list[list[int]], answers: list[list[int]]) -> Rows:
        """One layout for the batch, text padded on the right."""
        B, T = feats.shape[:2]
        device = feats.device
        texts = [p + a for p, a in zip(prompts, answers)]
        n_text = max(len(t) for t in texts)
        ids = torch.tensor([t + [0] * (n_text - len(t)) for t in texts], device=device)
        embed = self.llm.get_input_embeddings()
        vis = self.prefix(feats)
        E = torch.cat([vis, embed(ids)], dim=1)
        mask, pos = self.layout(T, vis.shape[1], n_text, device)
        L, prefix = E.shape[1], E.shape[1] - n_text
        lengths = torch.tensor([prefix + len(t) for t in texts], device=device)
        pad = torch.arange(L, device=device).view(1, -1) >= lengths.view(-1, 1)  # [B, L]
        eye = torch.eye(L, dtype=torch.bool, device=device)
        M = (mask.unsqueeze(0) & ~pad.unsqueeze(1)) | (eye.unsqueeze(0) & pad.unsqueeze(2))
        starts = [prefix + len(p) for p in prompts]
        return E, M.unsqueeze(1), pos.expand(B, -1), starts

    def packed(self, feats: Tensor, prompts: list[list[int]], answers: list[list[int]], owner: list[int]) -> Rows:
        """One sequence per clip, ``[frames, q1 a1, q2 a2, ...]`` (the module docstring's rule)."""
        C, T = feats.shape[:2]
        device = feats.device
        embed = self.llm.get_input_embeddings()
        prefix = self.prefix(feats)
        layout, layout_pos = self.layout(T, prefix.shape[1], 1, device)
        P = prefix.shape[1]
        streams: list[list[int]] = [[] for _ in range(C)]
        qid: list[list[int]] = [[] for _ in range(C)]
        local: list[list[int]] = [[] for _ in range(C)]
        starts = []
        for i, (p, a, c) in enumerate(zip(prompts, answers, owner)):
            starts.append(P + len(streams[c]) + len(p))
            streams[c] += p + a
            qid[c] += [i] * (len(p) + len(a))
            local[c] += list(range(len(p) + len(a)))
        n = max(len(x) for x in streams)
        packed = torch.tensor([[x + [0] * (n - len(x)) for x in streams], [q + [-1] * (n - len(q)) for q in qid],
                               [o + [0] * (n - len(o)) for o in local]], device=device)
        ids, q, off = packed[0], packed[1], packed[2]
        E = torch.cat([prefix, embed(ids).to(prefix.dtype)], dim=1)
        L = P + n
        valid = q >= 0
        M = torch.zeros(C, L, L, dtype=torch.bool, device=device)
        M[:, :P, :P] = layout[:P, :P]
        M[:, P:, :P] = valid[:, :, None] & layout[P, :P][None, None, :]  # what a text token sees of the frames
        text = _causal(n, device)[None] & (q[:, :, None] == q[:, None, :])
        eye = torch.eye(n, dtype=torch.bool, device=device)[None]
        M[:, P:, P:] = (text & valid[:, :, None]) | (eye & ~valid[:, :, None])  # padding sees only itself
        pos = torch.cat([layout_pos[:P].expand(C, -1), layout_pos[P] + off], dim=1)
        return E, M.unsqueeze(1), pos, starts


class VoCoInputs(PrefixInputs):
    """VoCo-LLaMA: each frame's block ``[BOS, image, "\\n", VoCo x N]`` sees only itself; the text sees the
    VoCo spans (``VoCo.single_pass_layout``)."""

    name = "voco"

    @classmethod
    def create(cls, llm, projector, tokenizer, *, num_patches, vision_hidden, tokens_per_frame=1, prefusion_layers=2):
        return cls(llm, projector, tokenizer, VoCo(llm, projector, tokenizer, num_patches, tokens_per_frame=tokens_per_frame))

    def prefix(self, feats: Tensor) -> Tensor:
        B = feats.shape[0]
        blocks = self.voco.frame_embeds(feats.flatten(0, 1))  # [B*T, blk, D]
        return blocks.reshape(B, -1, blocks.shape[-1])

    def layout(self, num_frames, n_prefix, n_text, device):
        return self.voco.single_pass_layout(num_frames, n_text, device)

    def single(self, feats, prompt, answer):
        e, m, p = self.voco.masked_inputs(feats, prompt + answer)
        return e, m, p, e.shape[0] - len(answer)


class CausalPrefixInputs(PrefixInputs):
    """``[BOS, vision tokens, text]``, plainly causal: ``vision`` makes the tokens."""

    @abstractmethod
    def vision(self, feats: Tensor) -> Tensor:
        """Vision tokens ``[..., N, D]`` of features ``[..., T, P, C]``."""

    def prefix(self, feats: Tensor) -> Tensor:
        embed = self.llm.get_input_embeddings()
        bos = embed(torch.full((feats.shape[0], 1), self.bos, device=feats.device))
        return torch.cat([bos, self.vision(feats)], dim=1)

    def layout(self, num_frames, n_prefix, n_text, device):
        L = n_prefix + n_text
        return _causal(L, device), torch.arange(L, device=device)

    def single(self, feats, prompt, answer):
        embed = self.llm.get_input_embeddings()
        device = feats.device
        e = torch.cat([embed(torch.tensor([self.bos], device=device)), self.vision(feats),
                       embed(torch.tensor(prompt + answer, device=device))])
        L = e.shape[0]
        return e, _causal(L, device), torch.arange(L, device=device), L - len(answer)


class FullInputs(CausalPrefixInputs):
    """Every vision token of every frame visible to the text: the retention table's upper bound."""

    name = "full"

    @classmethod
    def create(cls, llm, projector, tokenizer, *, num_patches, vision_hidden, tokens_per_frame=1, prefusion_layers=2):
        return cls(llm, projector, tokenizer, VoCo(llm, projector, tokenizer, num_patches, tokens_per_frame=tokens_per_frame))

    def vision(self, feats: Tensor) -> Tensor:
        return self.projector(feats).flatten(-3, -2)  # every token of every frame


class PoolInputs(CausalPrefixInputs):
    """Each frame's features averaged, then a linear layer: one token per frame."""

    name = "pool"

    def __init__(self, llm, projector, tokenizer, voco: VoCo, pool: nn.Module):
        super().__init__(llm, projector, tokenizer, voco)
        self.pool = pool

    @classmethod
    def create(cls, llm, projector, tokenizer, *, num_patches, vision_hidden, tokens_per_frame=1, prefusion_layers=2):
        voco = VoCo(llm, projector, tokenizer, num_patches, tokens_per_frame=tokens_per_frame)
        return cls(llm, projector, tokenizer, voco, nn.Linear(vision_hidden, llm.config.hidden_size))

    def modules(self) -> dict[str, nn.Module]:
        return {"pool": self.pool, "voco": self.voco}  # this order: the optimizer state's parameter order

    def vision(self, feats: Tensor) -> Tensor:
        return self.pool(feats.mean(dim=-2))


# ---- LLaVA-Mini: a compressor and pre-fusion layers before the LLM ------------------------------

class MiniInputs(InputBuilder):
    """LLaVA-Mini's official pass, with its prompt (the Llama-3.1 chat template); the answer starts
    with the assistant's role header."""

    name = "mini"
    aspect = "squash"

    def __init__(self, llm, projector, tokenizer, modules: mini.LlavaMiniModules):
        super().__init__(llm, projector, tokenizer)
        self.mini = mini.Mini(modules, tokenizer)
        self.compressor, self.prefusion = modules.compressor, modules.prefusion_layers
        t = tokenizer
        self.header = [t.convert_tokens_to_ids("<|start_header_id|>")] + \
            t("assistant", add_special_tokens=False).input_ids + [t.convert_tokens_to_ids("<|end_header_id|>")]

    @classmethod
    def create(cls, llm, projector, tokenizer, *, num_patches, vision_hidden, tokens_per_frame=1, prefusion_layers=2):
        options = mini.LlavaMiniOptions(compressor_size=1, prefusion_layer_num=prefusion_layers,
                                        mm_hidden_size=vision_hidden, mm_projector_type="mlp2x_gelu")
        modules = mini.LlavaMiniModules(llm, projector, mini.Compressor(1, vision_hidden),
                                        mini.build_prefusion_layers(llm.config, prefusion_layers), options, {})
        return cls(llm, projector, tokenizer, modules)

    def modules(self) -> dict[str, nn.Module]:
        return {"mini": self.mini, "compressor": self.compressor, "prefusion": self.prefusion}

    def prompt_ids(self, question: str) -> list[int]:
        return self.mini.prompt_ids(question)

    def answer_ids(self, answer: str) -> list[int]:
        words = self.tokenizer(" " + answer, add_special_tokens=False).input_ids
        return self.header + words + [self.eos]

    @property
    def answer_offset(self) -> int:
        return len(self.header)

    def single(self, feats, prompt, answer):
        embed = self.llm.get_input_embeddings()
        device = feats.device
        ids = torch.tensor(prompt, device=device)
        frames = mini.encode_frames(feats, self.compressor, self.projector, 1)
        t_emb, visible = mini.prompt_embeddings(embed, ids)
        fused = mini.prefusion_full(self.prefusion, self.llm.model.rotary_emb, frames, t_emb, visible)
        vision, text = mini.fuse_video(fused)
        inputs = mini.assemble_llm_inputs(text, ids, vision)
        e = torch.cat([inputs, embed(torch.tensor(answer, device=device))])
        L = e.shape[0]
        return e, _causal(L, device), torch.arange(L, device=device), L - len(answer)

    def batched(self, feats: Tensor, prompts: list[list[int]], answers: list[list[int]]) -> Rows:
        """Vectorised LLaVA-Mini inputs: every frame of every sample through the pre-fusion at once.

        Prompts are right-padded with id 0, which the official pre-fusion treats as invisible (no key,
        no position, output replaced), so padding changes nothing; then the same layout as ``single``:
        ``[fused text before <image>, T*C vision tokens, fused text after, answer]``, padded on the right.
        """
        where = {p.index(mini.IMAGE_TOKEN_INDEX) for p in prompts}
        if len(where) != 1:  # the placeholder moved (a different template per sample): one at a time
            return stack_rows([self.single(feats[b], p, a) for b, (p, a) in enumerate(zip(prompts, answers))])
        i = where.pop()
        B, T = feats.shape[:2]
        device = feats.device
        embed = self.llm.get_input_embeddings()
        frames = mini.encode_frames(feats.flatten(0, 1), self.compressor, self.projector, 1)
        n = max(len(p) for p in prompts)
        ids = torch.tensor([p + [0] * (n - len(p)) for p in prompts], device=device)
        t_emb, visible = mini.prompt_embeddings(embed, ids)  # [B, n, H], [B, n]
        n_prefix, n_comp = frames.num_prefix, frames.compressed.shape[1]
        x = torch.cat([frames.prefix(), t_emb.to(frames.vision.dtype).repeat_interleave(T, 0)], dim=1)
        vis = visible.repeat_interleave(T, 0)  # [B*T, n]
        keys = torch.cat([torch.ones(B * T, n_prefix, dtype=torch.bool, device=device), vis], dim=1)
        causal = torch.ones(n_prefix + n, n_prefix + n, dtype=torch.bool, device=device).tril()
        mask = torch.zeros(keys.shape[0], 1, *causal.shape, dtype=x.dtype, device=device)
        mask = mask.masked_fill(~(causal[None, None] & keys[:, None, None, :]), torch.finfo(x.dtype).min)
        pos = (keys.long().cumsum(1) - 1).masked_fill(~keys, 1)
        out = mini.run_layers(self.prefusion, self.llm.model.rotary_emb, x, pos, mask)
        fused = torch.where(vis[:, :, None], out[:, n_prefix:], x[:, n_prefix:])  # [B*T, n, H]
        text = fused.view(B, T, n, -1).float().mean(dim=1).to(fused.dtype)  # mean over frames, in float32
        vision = out[:, n_prefix - n_comp: n_prefix].reshape(B, T * n_comp, -1)
        # after the placeholder: the rest of the prompt (fused) then the answer (plain embeddings)
        tails = [p[i + 1:] + a for p, a in zip(prompts, answers)]
        m = max(len(t) for t in tails)
        tail_ids = torch.tensor([t + [0] * (m - len(t)) for t in tails], device=device)
        tail = embed(tail_ids).to(text.dtype)
        n_fused = torch.tensor([len(p) - i - 1 for p in prompts], device=device)
        width = min(m, n - i - 1)
        use = torch.arange(width, device=device)[None, :] < n_fused[:, None]
        tail[:, :width] = torch.where(use[:, :, None], text[:, i + 1: i + 1 + width], tail[:, :width])
        E = torch.cat([text[:, :i], vision.to(text.dtype), tail], dim=1)
        L, prefix = E.shape[1], i + T * n_comp
        lengths = torch.tensor([prefix + len(t) for t in tails], device=device)
        pad = torch.arange(L, device=device).view(1, -1) >= lengths.view(-1, 1)
        causal = _causal(L, device)
        eye = torch.eye(L, dtype=torch.bool, device=device)
        M = (causal.unsqueeze(0) & ~pad.unsqueeze(1)) | (eye.unsqueeze(0) & pad.unsqueeze(2))
        starts = [prefix + len(p) - i - 1 for p in prompts]
        return E, M.unsqueeze(1), torch.arange(L, device=device).expand(B, -1), starts

    def packed(self, feats: Tensor, prompts: list[list[int]], answers: list[list[int]], owner: list[int]) -> Rows | None:
        """LLaVA-Mini with a clip's questions packed, or None when the prompts differ before ``<image>``.

        Pre-fusion, per frame: ``[vision prefix, text before <image>, q1 after <image>, q2 ..., pad]``;
        the shared text sees the prefix, each question the prefix, the shared text and itself, causally,
        at the positions it has alone (the placeholder is no key and takes no position, as in the
        official pass). LLM, per clip: ``[fused text before <image>, T vision tokens, q1 + a1, q2 + a2,
        ...]`` with ``PrefixInputs.packed``'s rule.
        """
        where = {p.index(mini.IMAGE_TOKEN_INDEX) for p in prompts}
        if len(where) != 1:
            return None
        i = where.pop()
        pre = prompts[0][:i]
        if any(p[:i] != pre for p in prompts):
            return None
        C, T = feats.shape[:2]
        device = feats.device
        embed = self.llm.get_input_embeddings()
        frames = mini.encode_frames(feats.flatten(0, 1), self.compressor, self.projector, 1)
        n_prefix, n_comp = frames.num_prefix, frames.compressed.shape[1]
        # ---- the pre-fusion rows: host lists, then one copy to the device
        text: list[list[int]] = [list(pre) for _ in range(C)]
        qid: list[list[int]] = [[-1] * i for _ in range(C)]
        pos: list[list[int]] = [[] for _ in range(C)]
        vis_pre = [t > 0 for t in pre]
        shared = sum(vis_pre)
        for c in range(C):
            k = 0
            for v in vis_pre:
                pos[c].append(n_prefix + k if v else 1)
                k += v
        where_post: list[int] = []  # where each question's post-<image> text starts in its clip's row
        for q, (p, c) in enumerate(zip(prompts, owner)):
            post = p[i + 1:]
            where_post.append(len(text[c]))
            text[c] += post
            qid[c] += [q] * len(post)
            k = shared
            for t in post:
                pos[c].append(n_prefix + k if t > 0 else 1)
                k += t > 0
        n = max(len(t) for t in text)
        rows = torch.tensor([[t + [0] * (n - len(t)) for t in text], [q + [-2] * (n - len(q)) for q in qid],
                             [x + [1] * (n - len(x)) for x in pos]], device=device)
        ids, q_of, t_pos = rows[0], rows[1], rows[2]
        t_emb, visible = mini.prompt_embeddings(embed, ids)  # [C, n, H], [C, n]
        L = n_prefix + n
        kind = torch.cat([torch.full((C, n_prefix), -1, device=device), q_of], dim=1)  # -1 prefix/shared
        keys = torch.cat([torch.ones(C, n_prefix, dtype=torch.bool, device=device), visible], dim=1)
        causal = _causal(L, device)
        same = (kind[:, None, :] == -1) | (kind[:, None, :] == kind[:, :, None])
        allowed = causal[None] & keys[:, None, :] & same  # [C, L, L]
        mask = torch.zeros(C, 1, L, L, dtype=frames.vision.dtype, device=device)
        mask = mask.masked_fill(~allowed[:, None], torch.finfo(mask.dtype).min).repeat_interleave(T, 0)
        x = torch.cat([frames.prefix(), t_emb.to(frames.vision.dtype).repeat_interleave(T, 0)], dim=1)
        p_ids = torch.cat([torch.arange(n_prefix, device=device).expand(C, -1), t_pos], dim=1).repeat_interleave(T, 0)
        out = mini.run_layers(self.prefusion, self.llm.model.rotary_emb, x, p_ids, mask)
        vis = visible.repeat_interleave(T, 0)
        fused = torch.where(vis[:, :, None], out[:, n_prefix:], x[:, n_prefix:])
        fused = fused.view(C, T, n, -1).float().mean(dim=1).to(fused.dtype)  # mean over frames, in float32
        vision = out[:, n_prefix - n_comp: n_prefix].reshape(C, T * n_comp, -1).to(fused.dtype)
        # ---- the LLM rows: [fused shared text, vision, then per question its fused text and its answer]
        P = i + T * n_comp
        src: list[list[int]] = [[] for _ in range(C)]  # index into the clip's fused text, or -1: plain answer
        plain: list[list[int]] = [[] for _ in range(C)]
        sq: list[list[int]] = [[] for _ in range(C)]
        local: list[list[int]] = [[] for _ in range(C)]
        starts = []
        for q, (p, a, c) in enumerate(zip(prompts, answers, owner)):
            m = len(p) - i - 1
            starts.append(P + len(src[c]) + m)
            src[c] += list(range(where_post[q], where_post[q] + m)) + [-1] * len(a)
            plain[c] += [0] * m + list(a)
            sq[c] += [q] * (m + len(a))
            local[c] += list(range(m + len(a)))
        w = max(len(x) for x in src)
        llm_rows = torch.tensor([[x + [-1] * (w - len(x)) for x in src], [x + [0] * (w - len(x)) for x in plain],
                                 [x + [-1] * (w - len(x)) for x in sq], [x + [0] * (w - len(x)) for x in local]],
                                device=device)
        s_idx, s_plain, s_q, s_off = llm_rows
        gathered = torch.gather(fused, 1, s_idx.clamp(min=0)[:, :, None].expand(-1, -1, fused.shape[-1]))
        stream = torch.where((s_idx >= 0)[:, :, None], gathered, embed(s_plain).to(fused.dtype))
        E = torch.cat([fused[:, :i], vision, stream], dim=1)
        valid = s_q >= 0
        M = torch.zeros(C, P + w, P + w, dtype=torch.bool, device=device)
        M[:, :P, :P] = _causal(P, device)
        M[:, P:, :P] = valid[:, :, None]
        tri = torch.ones(w, w, dtype=torch.bool, device=device).tril()[None] & (s_q[:, :, None] == s_q[:, None, :])
        eye = torch.eye(w, dtype=torch.bool, device=device)[None]
        M[:, P:, P:] = (tri & valid[:, :, None]) | (eye & ~valid[:, :, None])  # padding sees only itself
        positions = torch.cat([torch.arange(P, device=device).expand(C, -1), P + s_off], dim=1)
        return E, M.unsqueeze(1), positions, starts


BUILDERS: dict[str, type[InputBuilder]] = {b.name: b for b in (VoCoInputs, MiniInputs, FullInputs, PoolInputs)}


def builder_class(variant: str) -> type[InputBuilder]:
    """The input builder of a variant, by name (``voco``, ``mini``, ``full``, ``pool``)."""
    try:
        return BUILDERS[variant]
    except KeyError:
        raise VidqaError(f"unknown training variant {variant!r} (use {', '.join(BUILDERS)})", exit_code=2) from None
