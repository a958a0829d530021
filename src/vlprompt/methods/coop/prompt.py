"""CoOp's prompt learner: learned context vectors spliced into frozen class-name embeddings.

Prompt for class c (CoOp, Sec. 3.2; ``class_token_position``):

    end:    [SOS] [V]1 ... [V]M  [CLASS_c] . [EOT]
    middle: [SOS] [V]1 ... [V]M/2  [CLASS_c]  [V]M/2+1 ... [V]M . [EOT]
    front:  [SOS] [CLASS_c]  [V]1 ... [V]M . [EOT]

The SOS embedding (``token_prefix [n_cls, 1, D]``) and the class-name / "." / EOT embeddings
(``token_suffix [n_cls, L - 1 - M, D]``) are frozen buffers rebuilt from the class names (never
stored in checkpoints). Sequences are cut after the longest EOT (exact: causal mask).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlprompt.backbones.openclip import OpenClipBackbone


class PromptLearner(nn.Module):
    """Learned context ``ctx`` (``[M, D]`` unified or ``[n_cls, M, D]`` class-specific).

    Args:
        backbone: frozen backbone (token embedding, tokenizer).
        classnames: class names; ``_`` is read as a space, as in CoOp.
        n_ctx: M (ignored when ``ctx_init`` is given: M = its token count, as in CoOp).
        ctx_init: initialisation words, or None for N(0, init_std).
        csc: class-specific context.
        class_token_position: ``end`` / ``middle`` / ``front``.
    """

    def __init__(
        self,
        backbone: OpenClipBackbone,
        classnames: list[str],
        *,
        n_ctx: int = 16,
        ctx_init: str | None = None,
        csc: bool = False,
        class_token_position: str = "end",
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        n_cls, dim = len(classnames), backbone.text_width
        with torch.no_grad():
            if ctx_init:
                init_text = ctx_init.replace("_", " ")
                init_ids = backbone.encode_tokens(init_text)
                n_ctx = len(init_ids)
                ids = torch.tensor([backbone.sot_token_id, *init_ids])
                ctx = backbone.token_embedding(ids)[1:].float().cpu().clone()  # [M, D]
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
        prompts = [f"{placeholder} {name}." for name in names]
        ids = backbone.tokenize(prompts, what="the prompt")  # [n_cls, context_length]
        eot = backbone.eot_index(ids)
        ids = ids[:, : int(eot.max()) + 1]  # cut after the longest EOT: exact under the causal mask
        with torch.no_grad():
            emb = backbone.token_embedding(ids).float()  # [n_cls, L, D]
        self.register_buffer("token_prefix", emb[:, :1].clone(), persistent=False)  # SOS
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx :].clone(), persistent=False)  # CLS . EOT
        self.register_buffer("eot_index", eot, persistent=False)
        self.register_buffer("order", self._position_order(ids.shape[1]), persistent=False)

    def _position_order(self, length: int) -> Tensor:
        """``[n_cls, L]`` source index of each output position within ``cat(prefix, ctx, suffix)``.

        The "end" layout is the concatenation itself; "middle" / "front" permute positions per
        class (name lengths differ), so all layouts are one batched ``gather``.
        """
        m, half = self.n_ctx, self.n_ctx // 2
        rows = []
        for name_len in self.name_lens:
            sos, ctx = [0], list(range(1, 1 + m))
            name = list(range(1 + m, 1 + m + name_len))
            rest = list(range(1 + m + name_len, length))
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
        return self.ctx.dim() == 2 and self.class_token_position == "end"

    def encode_grouped(self, backbone: OpenClipBackbone, ctx: Tensor) -> Tensor:
        """Text features of every class for G unified contexts ``ctx [G, M, D]`` -> ``[G, n_cls, E]``.

        Uses the exact shared-prefix encoding: SOS + context run once per group, each class runs only
        its name + "." + EOT tokens.
        """
        sos = self.token_prefix[:1].to(ctx.dtype).expand(ctx.shape[0], -1, -1)  # [G, 1, D]
        prefix = torch.cat([sos, ctx], dim=1)  # [G, 1 + M, D]
        return backbone.encode_text_shared_prefix(prefix, self.token_suffix.to(ctx.dtype),
                                                  self.eot_index - (1 + self.n_ctx))

    def forward(self, ctx: Tensor | None = None) -> Tensor:
        """Prompt embeddings ``[n_cls, L, D]`` (``ctx`` overrides the learned context, e.g. v + pi(x))."""
        ctx = self.ctx if ctx is None else ctx
        n_cls = self.token_prefix.shape[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
        prefix, suffix = self.token_prefix.to(ctx.dtype), self.token_suffix.to(ctx.dtype)
        prompts = torch.cat([prefix, ctx, suffix], dim=1)  # "end" layout
        if self.class_token_position == "end":
            return prompts
        index = self.order.unsqueeze(-1).expand(-1, -1, prompts.shape[-1])
        return torch.gather(prompts, 1, index)
