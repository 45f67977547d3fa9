"""TOFU greedy generation depends on the prompt.

The tiny Llama is turned into a copy model (attention and MLP outputs zeroed, lm_head = the
embedding), so the greedy continuation of any prompt is its last token repeated: different
prompts in one left-padded batch must give different, exactly known continuations. A generator
that ignored the prompt or padded on the wrong side fails."""

from __future__ import annotations

import pytest
import torch

from lathe.eval import tofu as te

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_generation_depends_on_the_prompt(tiny_tokenizer, tiny_model):
    model = tiny_model.eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.copy_(model.model.embed_tokens.weight)
    special = set(tiny_tokenizer.all_special_ids)
    words = [t for t in range(50, 400) if t not in special][:12]
    prompts = [words[0:3], words[3:5], words[5:9], words[9:10]]  # lengths 3, 2, 4, 1: left padding
    cfg = te.TofuEvalConfig(max_new_tokens=5, batch_size=4)
    got = te.greedy_generate(model, tiny_tokenizer, prompts, cfg)
    want = [tiny_tokenizer.decode([p[-1]] * 5, skip_special_tokens=True).strip() for p in prompts]
    assert got == want
    assert len(set(got)) == 4, got
