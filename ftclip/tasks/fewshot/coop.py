"""CoOp's learnable prompt context (Zhou et al., IJCV 2022; KaiyangZhou/CoOp ``trainers/coop.py``).

The text tower reads, per class, ``[SOS] ctx_1 ... ctx_M <class name> . [EOS]`` where the M
context vectors are learned: shared by all classes (default) or one set per class (CSC); started
from the word embeddings of an init phrase (``"a photo of a"`` -> M = its token count) or drawn
from N(0, 0.02). The class token sits at the ``end`` (default), in the ``middle`` (context split
``M // 2`` before, the rest after the name) or at the ``front``. Everything around the context
is the frozen token embedding of the tokenised prompt text, as CoOp's ``token_prefix`` /
``token_suffix`` buffers.

Wiring (see the task's WIRING notes): ``texts = coop_prompt_texts(classnames, M, init)``;
``tokens = tokenize(texts)``; ``emb = token_embedding(tokens)`` (no grad);
``prompts = context(emb)``; text features = the tower on ``prompts`` read at ``tokens.argmax(-1)``.
One deviation: with an init phrase and ``class_specific=True`` every class starts from the phrase
(CoOp silently falls back to one shared context when an init phrase is given).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ftclip.errors import ConfigError

__all__ = [
    "CLASS_TOKEN_POSITIONS",
    "coop_prompt_texts",
    "name_token_lengths",
    "check_prompt_lengths",
    "assemble_prompts",
    "CoOpContext",
]

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


def _check_position(position: str) -> None:
    if position not in CLASS_TOKEN_POSITIONS:
        raise ConfigError(f"CoOp class token position {position!r} is not one of {', '.join(CLASS_TOKEN_POSITIONS)}")


def coop_prompt_texts(
    classnames: Sequence[str], n_ctx: int, init: str | None = None, placeholder: str = "X"
) -> list[str]:
    """``"<init> <name>."`` per class, or ``"X X ... X <name>."`` with ``n_ctx`` placeholders
    (underscores in names become spaces, as CoOp does)."""
    if init:
        prefix = init.replace("_", " ").strip()
    else:
        if n_ctx < 1:
            raise ConfigError(f"CoOp needs at least one context vector, got n_ctx={n_ctx}")
        prefix = " ".join([placeholder] * n_ctx)
    return [f"{prefix} {name.replace('_', ' ')}." for name in classnames]


def name_token_lengths(tokenize: Callable[[list[str]], Tensor], classnames: Sequence[str]) -> list[int]:
    """BPE tokens per class name (CoOp's ``len(_tokenizer.encode(name))``), from a CLIP tokenizer
    that returns ``[SOS] tokens [EOS] 0...`` rows (the end token has the largest id)."""
    tokens = tokenize([name.replace("_", " ") for name in classnames])
    return (tokens.argmax(dim=-1) - 1).tolist()


def check_prompt_lengths(tokens: Tensor, texts: Sequence[str]) -> None:
    """ConfigError if a tokenised prompt fills the whole text context (it was cut)."""
    full = (tokens.argmax(dim=-1) >= tokens.shape[1] - 1).nonzero().flatten().tolist()
    if full:
        raise ConfigError(
            f"prompt {texts[full[0]]!r} does not fit the text tower's {tokens.shape[1]} tokens: "
            "use fewer context vectors or a shorter class name"
        )


def assemble_prompts(
    prefix: Tensor, ctx: Tensor, suffix: Tensor, name_lens: Sequence[int] | None, position: str
) -> Tensor:
    """Token embeddings ``[C, L, D]`` from ``prefix`` ``[C, 1, D]`` (SOS), ``ctx`` ``[M, D]`` (shared)
    or ``[C, M, D]`` (per class) and ``suffix`` ``[C, L - 1 - M, D]`` (name, '.', EOS, padding)."""
    _check_position(position)
    n_cls = prefix.shape[0]
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
    if position == "end":
        return torch.cat([prefix, ctx, suffix], dim=1)
    if name_lens is None or len(name_lens) != n_cls:
        raise ConfigError(
            f"class token position {position!r} needs the token length of each of the {n_cls} class names"
        )
    half = ctx.shape[1] // 2
    rows = []
    for i, n in enumerate(name_lens):
        name, rest = suffix[i : i + 1, :n], suffix[i : i + 1, n:]
        if position == "middle":
            parts = [prefix[i : i + 1], ctx[i : i + 1, :half], name, ctx[i : i + 1, half:], rest]
        else:
            parts = [prefix[i : i + 1], name, ctx[i : i + 1], rest]
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows, dim=0)


class CoOpContext(nn.Module):
    """The learned context (``ctx``: ``[M, D]`` shared or ``[C, M, D]`` class-specific)."""

    def __init__(
        self,
        num_classes: int,
        n_ctx: int,
        dim: int,
        *,
        class_specific: bool = False,
        position: str = "end",
        name_lens: Sequence[int] | None = None,
        init_vectors: Tensor | None = None,
        init_std: float = 0.02,
    ):
        super().__init__()
        _check_position(position)
        if position != "end" and (name_lens is None or len(name_lens) != num_classes):
            raise ConfigError(
                f"class token position {position!r} needs name_lens for each of the {num_classes} classes"
            )
        shape = (num_classes, n_ctx, dim) if class_specific else (n_ctx, dim)
        if init_vectors is not None:
            if tuple(init_vectors.shape) != (n_ctx, dim):
                raise ConfigError(f"CoOp init vectors have shape {tuple(init_vectors.shape)}, expected {(n_ctx, dim)}")
            ctx = init_vectors.detach().clone().float().expand(shape).clone()
        else:
            ctx = torch.empty(shape)
            nn.init.normal_(ctx, std=init_std)
        self.ctx = nn.Parameter(ctx)
        self.n_ctx = n_ctx
        self.position = position
        self.name_lens = None if name_lens is None else list(name_lens)

    def forward(self, token_embeddings: Tensor) -> Tensor:
        """Replace positions ``1..M`` of the prompts' token embeddings ``[C, L, D]`` by the context."""
        emb = token_embeddings.to(self.ctx.dtype)
        prefix, suffix = emb[:, :1], emb[:, 1 + self.n_ctx :]
        return assemble_prompts(prefix, self.ctx, suffix, self.name_lens, self.position)
