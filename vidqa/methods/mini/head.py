"""LLaVA-Mini's question-independent prompt head, and the pre-fusion of a prompt's tail against it.

The pre-fusion is causal, so every prompt token before the question (the chat template, the system
prompt, the masked ``<image>`` placeholder, the newline after it) sees only the frame's prefix and
earlier head tokens: its per-layer K/V and its fused output are the same for every question. They are
computed once per frame at compression time (``Mini.compress``) and kept in the frame cache; a question then
runs only its tail (the question and the template after it) through the layers (``prefusion_tail``),
against ``[prefix K/V ; head K/V]``.

The head is found, not assumed: the longest common prefix of the prompt ids of dissimilar questions
(``common_head``; BPE may merge the template's last characters with a question's first). A cache
records the head ids it was made with; a prompt that does not start with exactly those ids (another
template, a question that merges with the template) takes the full path.

``prefusion_tail`` is the pre-fusion layers written out against split K/V: one concatenation per
layer (a ``DynamicCache`` seeded with the prefix copies it twice), and grouped-query attention with
the query heads folded onto their K/V head (no ``repeat_kv`` copies of the keys). It uses each layer's
own modules (norms, projections, MLP), so it is the transformers layer up to the attention kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

# Questions that share no first character or word: their prompts agree only on the template's head.
PROBE_QUESTIONS = ("What happens in this video?", "12 + 7 = ?", "¡Hola! ¿Qué ves?", "\n- list the colours")


def common_head(prompts: Sequence[Sequence[int]]) -> list[int]:
    """The longest common prefix of token id lists."""
    first = list(prompts[0])
    n = len(first)
    for ids in prompts[1:]:
        n = min(n, len(ids))
        for i in range(n):
            if ids[i] != first[i]:
                n = i
                break
    return first[:n]


def prefusion_tail(layers: nn.ModuleList, rotary_emb: nn.Module, keys: Sequence[Sequence[Tensor]],
                   values: Sequence[Sequence[Tensor]], embeds: Tensor, visible: Tensor, positions: Tensor,
                   keep_kv: bool = False) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Fused outputs ``[F, T, H]`` of prompt tokens against earlier keys, through the pre-fusion layers.

    ``keys[i]`` / ``values[i]``: the parts of layer i's earlier K/V, each ``[F, kv_heads, n, head_dim]``
    (rotated; every one a visible key): the frame prefix, then the head's visible tokens. ``embeds
    [T, H]`` / ``visible [T]``: the tokens (masked ones are no keys and keep their embedding);
    ``positions [T]``: their RoPE positions in the full prompt. ``keep_kv``: also return each layer's
    K/V of the visible tokens (``[F, kv_heads, n_visible, head_dim]``), for a head.
    """
    first = keys[0][0]
    n_frames, device, dtype = first.shape[0], first.device, first.dtype
    visible = visible.to(device)
    x = embeds.to(device=device, dtype=dtype).expand(n_frames, -1, -1)
    n_tok = x.shape[1]
    n_before = sum(k.shape[2] for k in keys[0])
    causal = torch.ones(n_tok, n_tok, dtype=torch.bool, device=device).tril() & visible[None, :]
    allowed = torch.cat([torch.ones(n_tok, n_before, dtype=torch.bool, device=device), causal], dim=1)
    cos, sin = rotary_emb(x, positions.to(device)[None])
    kept = visible.nonzero().flatten() if keep_kv else None
    out_k: list[Tensor] = []
    out_v: list[Tensor] = []
    h = x
    for i, layer in enumerate(layers):
        attn = layer.self_attn
        d, groups = attn.head_dim, attn.num_key_value_groups
        normed = layer.input_layernorm(h)
        q = attn.q_proj(normed).view(n_frames, n_tok, -1, d).transpose(1, 2)
        k = attn.k_proj(normed).view(n_frames, n_tok, -1, d).transpose(1, 2)
        v = attn.v_proj(normed).view(n_frames, n_tok, -1, d).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if keep_kv:
            out_k.append(k.index_select(2, kept))
            out_v.append(v.index_select(2, kept))
        kv_heads = k.shape[1]
        all_k = torch.cat([*keys[i], k], dim=2)
        all_v = torch.cat([*values[i], v], dim=2)
        # query head j*groups + g reads K/V head j (repeat_kv's order): fold the groups into the rows
        qg = q.reshape(n_frames, kv_heads, groups * n_tok, d)
        o = F.scaled_dot_product_attention(qg, all_k, all_v, attn_mask=allowed.repeat(groups, 1), scale=attn.scaling)
        # reshape, not view: GPU kernels may return the output in another memory layout ([F, rows, heads, D])
        o = o.reshape(n_frames, kv_heads * groups, n_tok, d).transpose(1, 2).reshape(n_frames, n_tok, -1)
        h = h + attn.o_proj(o)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return torch.where(visible[None, :, None], h, x), out_k, out_v
