"""CoOp's prompt layout against its PromptLearner.forward, on identical token embeddings."""

from __future__ import annotations

import open_clip
import pytest
import torch

from ftclip.errors import ConfigError
from ftclip.tasks.fewshot.coop import (
    CoOpContext,
    assemble_prompts,
    check_prompt_lengths,
    coop_prompt_texts,
    name_token_lengths,
)


def _coop_forward(ctx, prefix, suffix, name_lens, position):
    """trainers/coop.py PromptLearner.forward, verbatim apart from the attribute names."""
    n_cls, n_ctx = prefix.shape[0], ctx.shape[-2]
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
    if position == "end":
        return torch.cat([prefix, ctx, suffix], dim=1)
    prompts = []
    for i in range(n_cls):
        name_len = name_lens[i]
        prefix_i, class_i, suffix_i = prefix[i : i + 1], suffix[i : i + 1, :name_len], suffix[i : i + 1, name_len:]
        if position == "middle":
            half = n_ctx // 2
            prompt = torch.cat([prefix_i, ctx[i : i + 1, :half], class_i, ctx[i : i + 1, half:], suffix_i], dim=1)
        else:
            prompt = torch.cat([prefix_i, class_i, ctx[i : i + 1], suffix_i], dim=1)
        prompts.append(prompt)
    return torch.cat(prompts, dim=0)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("class_specific", [False, True])
def test_layout_matches_coop(position: str, class_specific: bool) -> None:
    torch.manual_seed(0)
    n_cls, length, dim, n_ctx, name_lens = 3, 14, 5, 5, [1, 2, 4]
    emb = torch.randn(n_cls, length, dim)
    module = CoOpContext(n_cls, n_ctx, dim, class_specific=class_specific, position=position, name_lens=name_lens)
    assert module.ctx.shape == ((n_cls, n_ctx, dim) if class_specific else (n_ctx, dim))
    assert module.ctx.std().item() == pytest.approx(0.02, rel=0.5)
    out = module(emb)
    ref = _coop_forward(module.ctx, emb[:, :1], emb[:, 1 + n_ctx :], name_lens, position)
    assert torch.equal(out, ref) and out.shape == emb.shape
    out.sum().backward()
    assert module.ctx.grad is not None


def test_prompt_texts_and_name_lengths_with_the_clip_tokenizer() -> None:
    names = ["golden_retriever", "cat", "Annual Crop Land"]
    assert coop_prompt_texts(names, 4) == ["X X X X golden retriever.", "X X X X cat.", "X X X X Annual Crop Land."]
    assert coop_prompt_texts(names[:1], 16, init="a photo of a") == ["a photo of a golden retriever."]
    bpe = open_clip.tokenizer.SimpleTokenizer()
    assert name_token_lengths(open_clip.tokenize, names) == [len(bpe.encode(n.replace("_", " "))) for n in names]
    with pytest.raises(ConfigError, match="at least one context vector"):
        coop_prompt_texts(names, 0)


def test_word_init_starts_from_the_hand_written_prompt() -> None:
    names = ["golden retriever", "cat"]
    n_ctx = name_token_lengths(open_clip.tokenize, ["a photo of a"])[0]
    tokens = open_clip.tokenize(coop_prompt_texts(names, n_ctx, init="a photo of a"))
    table = torch.nn.Embedding(49408, 8)
    emb = table(tokens).detach()
    for position in ("end", "middle"):
        module = CoOpContext(2, n_ctx, 8, position=position, name_lens=name_token_lengths(open_clip.tokenize, names),
                             init_vectors=emb[0, 1 : 1 + n_ctx], class_specific=position == "middle")
        if position == "end":  # "a photo of a <name>." exactly
            assert torch.equal(module(emb), emb)
        else:
            assert torch.equal(module.ctx[0], module.ctx[1])  # every class starts from the phrase


def test_errors_name_the_setting() -> None:
    with pytest.raises(ConfigError, match="'centre' is not one of end, middle, front"):
        CoOpContext(2, 4, 8, position="centre")
    with pytest.raises(ConfigError, match="needs name_lens"):
        CoOpContext(2, 4, 8, position="middle")
    with pytest.raises(ConfigError, match="needs the token length"):
        assemble_prompts(torch.zeros(2, 1, 3), torch.zeros(4, 3), torch.zeros(2, 5, 3), None, "front")
    long = coop_prompt_texts(["word " * 70], 16)
    with pytest.raises(ConfigError, match="does not fit the text tower's 77 tokens"):
        check_prompt_lengths(open_clip.tokenize(long), long)
