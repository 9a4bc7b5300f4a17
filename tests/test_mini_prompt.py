"""`vidqa.methods.mini.prompt`: the official Llama-3.1 prompt around <image> and the stop ids."""

from __future__ import annotations

import pytest
from mini_helpers import _no_grad, ckpt, tokenizer  # noqa: F401 (fixtures)

from vidqa.methods import mini


def test_prompt_ids(tokenizer):
    p = mini.build_prompt_ids(tokenizer, "What is the man doing?")
    bos, eot = tokenizer.convert_tokens_to_ids("<|begin_of_text|>"), tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert p.before[:2] == [bos, bos] and bos not in p.before[2:]  # double BOS, then no more
    assert p.after[-1] == eot and bos not in p.after
    text_after = tokenizer.decode(p.after)
    assert text_after == "\nWhat is the man doing?<|eot_id|>"  # ends at the user's eot: no assistant header
    text_before = tokenizer.decode(p.before)
    assert "system<|end_header_id|>" in text_before and mini.LLAVA_MINI_SYSTEM_PROMPT in text_before
    assert text_before.endswith("<|start_header_id|>user<|end_header_id|>\n\n")
    assert p.ids.count(mini.IMAGE_TOKEN_INDEX) == 1
    assert p.stop_ids == [tokenizer.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")]
    with pytest.raises(mini.VidqaError):
        mini.build_prompt_ids(tokenizer, "a <image> inside")


def test_stop_ids_fall_back_to_llama31():
    class NoSpecials:
        unk_token_id = None

        def convert_tokens_to_ids(self, token):
            return None

    assert mini.stop_token_ids(NoSpecials()) == [128009, 128008, 128001]
