"""Prompt learning: learnable token vectors spliced into a frozen text template.

``IdPrompts`` is CLIP-ReID's stage-1 learner: the template "A photo of a X X X X person."
has its N placeholder tokens replaced by N learnable vectors *per identity* (init
N(0, 0.02)); the start token + "a photo of a" (prefix) and "person." + end token + padding
(suffix) are the backbone's token embeddings of the template, looked up at every call (no
gradient), so they always match the weights loaded into the backbone. The text feature is the text tower's output at the
token it pools (CLIP, MobileCLIP: the end-of-text token; SigLIP: the last position), projected -- no
normalisation, no logit scale. Causal and bidirectional text towers alike (``Backbone.encode_text_embeddings``).

``SharedPrompts`` is a CoOp-style learnable context around each prompt text (shared or one per
prompt, in front of the text or split around it), used by the supervised IQA recipe (CLIP-IQA+ as
pyiqa implements it: "X*8 Good photo. X*8", one context per prompt, started from the "X" token).
"""

from __future__ import annotations

import torch
from torch import nn

from ftclip.backbone import Backbone
from ftclip.errors import ConfigError


def _placeholder_id(backbone: Backbone, placeholder: str) -> int:
    """The token id of ``placeholder``: what tokenising it adds to the tokeniser's empty row (start/end/pad)."""
    special = set(backbone.tokenize([""])[0].tolist())
    ids = [t for t in backbone.tokenize([placeholder])[0].tolist() if t not in special]
    if len(ids) != 1:
        raise ConfigError(f"prompt placeholder '{placeholder}' is {len(ids)} tokens for {backbone.name}'s tokenizer; "
                          "use a placeholder that is one token (e.g. X)")
    return ids[0]


def _placeholder_span(backbone: Backbone, template: str, placeholder: str) -> tuple[torch.Tensor, int, int]:
    """Tokenise ``template`` and find the contiguous run of placeholder tokens."""
    tokens = backbone.tokenize([template])
    positions = (tokens[0] == _placeholder_id(backbone, placeholder)).nonzero().flatten().tolist()
    if not positions:
        raise ConfigError(
            f"prompt template '{template}' contains no placeholder token '{placeholder}'; "
            f"write it like 'A photo of a {placeholder} {placeholder} {placeholder} {placeholder} person.'"
        )
    first, last = positions[0], positions[-1]
    if positions != list(range(first, last + 1)):
        raise ConfigError(f"prompt template '{template}': the '{placeholder}' placeholders must be contiguous")
    return tokens, first, last + 1


class IdPrompts(nn.Module):
    """N learnable context vectors per identity inside a fixed template."""

    def __init__(
        self, backbone: Backbone, num_ids: int, template: str = "A photo of a X X X X person.",
        placeholder: str = "X", init_std: float = 0.02,
    ):
        super().__init__()
        if num_ids < 1:
            raise ConfigError(f"prompt learning needs at least one identity, got num_ids={num_ids}")
        tokens, start, stop = _placeholder_span(backbone, template, placeholder)
        self.template = template
        self.start, self.stop = start, stop
        self.num_tokens = stop - start
        # the template's token ids; their embeddings come from the backbone at call time
        self.register_buffer("tokens", tokens, persistent=False)
        self.ctx = nn.Parameter(torch.empty(num_ids, self.num_tokens, backbone.text_width))
        nn.init.normal_(self.ctx, std=init_std)

    @property
    def num_ids(self) -> int:
        return self.ctx.shape[0]

    def embeddings(self, backbone: Backbone, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings [B, 77, width] and end-token positions [B] for identity ``labels``."""
        ctx = self.ctx[labels]
        batch = ctx.shape[0]
        with torch.no_grad():
            template = backbone.embed_tokens(self.tokens).to(ctx.dtype)
        prefix = template[:, :self.start].expand(batch, -1, -1)
        suffix = template[:, self.stop:].expand(batch, -1, -1)
        eot = backbone.pool_index(self.tokens).expand(batch)
        return torch.cat([prefix, ctx, suffix], dim=1), eot

    def text_features(self, backbone: Backbone, labels: torch.Tensor) -> torch.Tensor:
        emb, eot = self.embeddings(backbone, labels)
        return backbone.encode_text_embeddings(emb, eot)


CONTEXT_LAYOUTS = ("middle", "front")
CONTEXT_INITS = ("token", "normal")


class SharedPrompts(nn.Module):
    """CoOp-style learnable context of N vectors around every prompt text.

    * ``per_prompt``: one context per text (CLIP-IQA+ and QualiCLIP+ in pyiqa) or one shared by all
      texts (CoOp's unified context);
    * ``layout``: ``"middle"`` -- the first N // 2 vectors, then the text's tokens, then the other
      N - N // 2 (pyiqa's CLIP-IQA+: ``[SOS] X*8 good photo . X*8 [EOS]``), or ``"front"`` -- all N
      before the text (CoOp's class-token-at-the-end: ``[SOS] X*16 good photo . [EOS]``);
    * ``init``: ``"token"`` -- the token embedding of ``placeholder`` (pyiqa initialises CLIP-IQA+'s
      context from the embeddings of its "X" tokens), or ``"normal"`` -- N(0, ``init_std``) (CoOp).

    The token sequence is the tokenised ``"X X ... X <text>"`` (so the end token stays where the
    tokeniser put it); only the order of the embeddings changes with the layout. The start, text and
    end-token embeddings come from the backbone at call time (no gradient).
    """

    def __init__(self, backbone: Backbone, texts: list[str], num_tokens: int = 16, init_std: float = 0.02,
                 placeholder: str = "X", *, per_prompt: bool = False, layout: str = "front", init: str = "normal"):
        super().__init__()
        if num_tokens < 1:
            raise ConfigError(f"prompt context needs num_tokens >= 1, got {num_tokens}")
        if layout not in CONTEXT_LAYOUTS:
            raise ConfigError(f"prompt context layout '{layout}' is not one of {', '.join(CONTEXT_LAYOUTS)}")
        if init not in CONTEXT_INITS:
            raise ConfigError(f"prompt context init '{init}' is not one of {', '.join(CONTEXT_INITS)}")
        prompts = [" ".join([placeholder] * num_tokens) + " " + text for text in texts]
        tokens = backbone.tokenize(prompts)
        if int(tokens.argmax(dim=-1).max()) >= tokens.shape[1] - 1 and tokens[:, -1].ne(0).any():
            raise ConfigError(f"prompts with {num_tokens} context tokens exceed the text length {tokens.shape[1]}")
        _, self.start, stop = _placeholder_span(backbone, prompts[0], placeholder)  # after the start token, if any
        if stop - self.start != num_tokens:
            raise ConfigError(f"shared prompt context: '{texts[0]}' itself contains the placeholder '{placeholder}'")
        self.texts = list(texts)
        self.num_tokens, self.layout, self.per_prompt = num_tokens, layout, per_prompt
        self.register_buffer("tokens", tokens, persistent=False)
        # per text: its own tokens between the context and the first special (end / padding) token
        special = torch.tensor(sorted(set(backbone.tokenize([""])[0].tolist())), device=tokens.device)
        rest = torch.isin(tokens[:, stop:], special)
        self.text_lengths = rest.int().argmax(dim=1).tolist()
        shape = (len(texts), num_tokens, backbone.text_width) if per_prompt else (num_tokens, backbone.text_width)
        if init == "token":
            with torch.no_grad():
                marker = backbone.embed_tokens(tokens[:1, self.start:self.start + 1])[0, 0].float()
            self.ctx = nn.Parameter(marker.expand(shape).clone())
        else:
            self.ctx = nn.Parameter(torch.empty(shape))
            nn.init.normal_(self.ctx, std=init_std)

    def embeddings(self) -> torch.Tensor:
        """The context per text, ``[T, N, width]``."""
        n = self.tokens.shape[0]
        return self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(n, -1, -1)

    def text_features(self, backbone: Backbone) -> torch.Tensor:
        ctx = self.embeddings()
        with torch.no_grad():
            template = backbone.embed_tokens(self.tokens).to(ctx.dtype)
        start, stop = self.start, self.start + self.num_tokens
        head, text = template[:, :start], template[:, stop:]  # head: the start token, if any; text: the rest
        if self.layout == "front":
            emb = torch.cat([head, ctx, text], dim=1)
        else:
            half = self.num_tokens // 2
            rows = []
            for i in range(ctx.shape[0]):
                length = int(self.text_lengths[i])  # the text's own tokens, without the end token
                rows.append(torch.cat([head[i], ctx[i, :half], text[i, :length], ctx[i, half:], text[i, length:]]))
            emb = torch.stack(rows)
        return backbone.encode_text_embeddings(emb, backbone.pool_index(self.tokens))
