"""CoOp's prompt learner: learned context vectors spliced into frozen class-name embeddings.

Prompt for class c (CoOp, Sec. 3.2; ``class_token_position``):

    end:    [SOS] [V]1 ... [V]M  [CLASS_c] . [EOT]
    middle: [SOS] [V]1 ... [V]M/2  [CLASS_c]  [V]M/2+1 ... [V]M . [EOT]
    front:  [SOS] [CLASS_c]  [V]1 ... [V]M . [EOT]

The prompt is laid out exactly as the backbone's tokenizer lays out the written sentence
``"X X ... X {name}."`` (same start / end / padding tokens, same length), with the M placeholder
tokens replaced by the learned context. Where the placeholder starts is found in the tokenizer's
output (``s`` = 1 after CLIP's SOS, 0 for T5-style SigLIP tokenizers, per class for tokenizers that
pad on the left). The frozen embeddings of that layout (``token_embeds``; for a common start also
``token_prefix [n_cls, s, D]`` and ``token_suffix``: class name, ".", EOT, padding) are buffers
rebuilt from the class names (never stored in checkpoints). The backbone decides how much of the
sequence is encoded (``prompt_length``): cut after the longest EOT for causal towers pooled at EOT
(exact), the full padded sequence otherwise (SigLIP, CLIPA, MobileCLIP-S, CoCa, HF towers).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.core.errors import ModelError


class PromptLearner(nn.Module):
    """Learned context ``ctx`` (``[M, D]`` unified or ``[n_cls, M, D]`` class-specific).

    Args:
        backbone: frozen backbone (token embedding, tokenizer).
        classnames: class names; ``_`` is read as a space, as in CoOp.
        n_ctx: M (ignored when ``ctx_init`` is given: M = its token count, as in CoOp).
        ctx_init: initialisation words, or None for N(0, init_std).
        csc: class-specific context.
        class_token_position: ``end`` / ``middle`` / ``front``.
        name_suffix: the text after the class name (CoOp's ``"."``; GalLoP's prompts have none).
    """

    token_embeds: Tensor  # buffers (register_buffer)
    token_prefix: Tensor
    token_suffix: Tensor
    token_ids: Tensor
    eot_index: Tensor
    order: Tensor

    def __init__(
        self,
        backbone: Backbone,
        classnames: list[str],
        *,
        n_ctx: int = 16,
        ctx_init: str | None = None,
        csc: bool = False,
        class_token_position: str = "end",
        init_std: float = 0.02,
        name_suffix: str = ".",
    ) -> None:
        super().__init__()
        n_cls, dim = len(classnames), backbone.text_width
        with torch.no_grad():
            if ctx_init:
                init_text = ctx_init.replace("_", " ")
                init_ids = backbone.encode_tokens(init_text)
                n_ctx = len(init_ids)
                ctx = backbone.token_embedding(torch.tensor(init_ids)).float().cpu().clone()  # [M, D]
                if csc:
                    ctx = ctx.unsqueeze(0).repeat(n_cls, 1, 1)  # [n_cls, M, D]
                placeholder = init_text
            else:
                ctx = torch.empty(n_cls, n_ctx, dim) if csc else torch.empty(n_ctx, dim)
                nn.init.normal_(ctx, std=init_std)
                placeholder = " ".join(["X"] * n_ctx)
        self.n_ctx = n_ctx
        self.csc = csc
        self.class_token_position = class_token_position
        self.ctx = nn.Parameter(ctx.to(backbone.device))

        names = [name.replace("_", " ") for name in classnames]
        self.name_lens = [len(backbone.encode_tokens(name)) for name in names]
        prompts = [f"{placeholder} {name}{name_suffix}" for name in names]
        ids = backbone.tokenize(prompts, what="the prompt")  # [n_cls, context_length], the tokenizer's layout
        eot = backbone.pooled_index(ids)
        ids = ids[:, : backbone.prompt_length(ids)]  # cut after the longest EOT only where exact
        starts = _context_starts(ids, backbone.encode_tokens(placeholder), n_ctx, backbone.name)
        self.uniform_start = bool((starts == starts[0]).all())
        self.ctx_start = start = int(starts[0])
        with torch.no_grad():
            emb = backbone.token_embedding(ids).float()  # [n_cls, L, D]
        self.register_buffer("token_embeds", emb.clone(), persistent=False)  # placeholders at the context slots
        self.register_buffer("token_prefix", emb[:, :start].clone(), persistent=False)  # SOS (if any)
        self.register_buffer("token_suffix", emb[:, start + n_ctx :].clone(), persistent=False)  # CLS . EOT pad
        self.register_buffer("token_ids", ids.to(backbone.device), persistent=False)
        self.register_buffer("eot_index", eot, persistent=False)
        self.register_buffer("order", self._position_order(starts.tolist(), ids.shape[1]), persistent=False)

    def _position_order(self, starts: list[int], length: int) -> Tensor:
        """``[n_cls, L]`` source index of each output position within ``cat(ctx [M], token_embeds [L])``.

        Class c's context starts at ``starts[c]`` in the tokenizer's layout (the same for every class
        with right padding; left-padding tokenizers shift it per class). "end" puts the context in
        the placeholder slots; "middle" / "front" move the class name around it, so all layouts are
        one batched ``gather``.
        """
        m, half = self.n_ctx, self.n_ctx // 2
        rows = []
        for s, name_len in zip(starts, self.name_lens):
            sos, ctx = [m + p for p in range(s)], list(range(m))
            name = [m + p for p in range(s + m, s + m + name_len)]
            rest = [m + p for p in range(s + m + name_len, length)]
            if self.class_token_position == "end":
                row = sos + ctx + name + rest
            elif self.class_token_position == "middle":
                row = sos + ctx[:half] + name + ctx[half:] + rest
            else:  # front
                row = sos + name + ctx + rest
            rows.append(row)
        return torch.tensor(rows, dtype=torch.long)

    @property
    def shares_prefix(self) -> bool:
        """True when all classes' prompts start with the same SOS + context (unified, class token at the end)."""
        return self.ctx.dim() == 2 and self.class_token_position == "end" and self.uniform_start

    def encode_grouped(self, backbone: Backbone, ctx: Tensor) -> Tensor:
        """Text features of every class for G unified contexts ``ctx [G, M, D]`` -> ``[G, n_cls, E]``.

        On causal towers pooled at EOT the backbone uses the exact shared-prefix encoding (SOS +
        context run once per group, each class runs only its name + "." + EOT tokens); on the others
        it encodes the full prompts.
        """
        if not self.shares_prefix:  # per-class context positions: encode the full prompts of each group
            g, n = ctx.shape[0], self.token_embeds.shape[0]
            full = torch.stack([self(c) for c in ctx])  # [G, n_cls, L, D]
            feats = backbone.encode_text_embeddings(full.flatten(0, 1), self.eot_index.repeat(g),
                                                    ids=self.token_ids.repeat(g, 1))
            return feats.view(g, n, -1)
        sos = self.token_prefix[:1].to(ctx.dtype).expand(ctx.shape[0], -1, -1)  # [G, s, D]
        prefix = torch.cat([sos, ctx], dim=1)  # [G, s + M, D]
        return backbone.encode_text_shared_prefix(prefix, self.token_suffix.to(ctx.dtype),
                                                  self.eot_index - (self.ctx_start + self.n_ctx), ids=self.token_ids)

    def forward(self, ctx: Tensor | None = None) -> Tensor:
        """Prompt embeddings ``[n_cls, L, D]`` (``ctx`` overrides the learned context, e.g. v + pi(x))."""
        ctx = self.ctx if ctx is None else ctx
        n_cls = self.token_embeds.shape[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
        if self.class_token_position == "end" and self.uniform_start:
            prefix, suffix = self.token_prefix.to(ctx.dtype), self.token_suffix.to(ctx.dtype)
            return torch.cat([prefix, ctx, suffix], dim=1)
        source = torch.cat([ctx, self.token_embeds.to(ctx.dtype)], dim=1)  # [n_cls, M + L, D]
        index = self.order.unsqueeze(-1).expand(-1, -1, source.shape[-1])
        return torch.gather(source, 1, index)


def _context_starts(ids: Tensor, placeholder_ids: list[int], n_ctx: int, name: str) -> Tensor:
    """Where the placeholder's ``n_ctx`` tokens start in each row of ``ids [n_cls, L]`` -> ``[n_cls]``."""
    if len(placeholder_ids) != n_ctx:
        raise ModelError(f"the tokenizer of '{name}' reads the context placeholder as {len(placeholder_ids)} tokens, "
                         f"not {n_ctx}; give method.ctx_init instead of method.n_ctx")
    target = torch.tensor(placeholder_ids, dtype=ids.dtype)
    windows = ids.unfold(1, n_ctx, 1)  # [n_cls, L - M + 1, M]
    hit = (windows == target).all(dim=-1)
    if not bool(hit.any(dim=1).all()):
        raise ModelError(f"the tokenizer of '{name}' does not keep the context placeholder's tokens inside the "
                         "prompt; give method.ctx_init with plain words")
    return hit.int().argmax(dim=1)
