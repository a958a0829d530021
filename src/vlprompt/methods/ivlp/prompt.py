"""The layer-0 language prompt of IVLP and MaPLe: ``[SOS] p_1 .. p_n <rest of the init words> name . [EOT]``.

As in the reference (muzairkhattak/multimodal-prompt-learning, trainers/independentVL.py lines 82-114,
trainers/maple.py ``MultiModalPromptLearner``): when ``ctx_init`` is given and ``n_ctx <= 4``, the prompt
text is ``"{ctx_init} {name}."`` and its first ``n_ctx`` tokens after SOS become the learned vectors,
initialised from their word embeddings; the remaining init words stay as frozen tokens (with
``n_ctx = 2`` and "a photo of a" the prompt is ``[SOS] p_1 p_2 of a {name}. [EOT]``). Otherwise the
vectors are drawn from N(0, init_std) and the prompt is ``"X .. X {name}."``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.deep_prompts import encode_text_deep_shared
from vlprompt.core.errors import ConfigError


class DeepTextPrompt(nn.Module):
    """Learned layer-0 context ``ctx [n_ctx, D]`` and the frozen SOS / suffix embeddings of each class."""

    token_prefix: Tensor  # buffers (register_buffer)
    token_suffix: Tensor
    eot_index: Tensor

    def __init__(self, backbone: Backbone, classnames: list[str], *, n_ctx: int, ctx_init: str | None,
                 init_std: float, option: str = "method.n_ctx") -> None:
        super().__init__()
        dim = backbone.text_width
        with torch.no_grad():
            if ctx_init and n_ctx <= 4:
                prefix_text = ctx_init.replace("_", " ")
                init_ids = backbone.encode_tokens(prefix_text)
                if n_ctx > len(init_ids):
                    raise ConfigError(f"option {option} = {n_ctx} is more than the {len(init_ids)} tokens of "
                                      f"method.ctx_init '{ctx_init}'; use fewer tokens or longer init words.")
                ids = torch.tensor([backbone.text_facts.sot_id, *init_ids])
                ctx = backbone.token_embedding(ids)[1 : 1 + n_ctx].float().cpu().clone()
            else:
                ctx = torch.empty(n_ctx, dim)
                nn.init.normal_(ctx, std=init_std)
                prefix_text = " ".join(["X"] * n_ctx)
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(ctx.to(backbone.device))
        names = [name.replace("_", " ") for name in classnames]
        ids = backbone.tokenize([f"{prefix_text} {name}." for name in names], what="the prompt")
        eot = backbone.eot_index(ids)
        ids = ids[:, : int(eot.max()) + 1]  # cut after the longest EOT: exact under the causal mask
        with torch.no_grad():
            emb = backbone.token_embedding(ids).float()
        self.register_buffer("token_prefix", emb[:, :1].clone(), persistent=False)  # SOS
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx :].clone(), persistent=False)  # rest, name . EOT
        self.register_buffer("eot_index", eot, persistent=False)

    def encode(self, backbone: Backbone, deep: list[Tensor]) -> Tensor:
        """``[n_cls, E]`` unnormalised text features with deep prompts ``deep`` (each ``[n_ctx, D]``): SOS and the
        prompts are the same for every class, so the exact shared-prefix pass runs them once."""
        return encode_text_deep_shared(backbone, self.ctx, self.token_prefix[0], self.token_suffix,
                                       self.eot_index - (1 + self.n_ctx), deep)

    def forward(self) -> Tensor:
        """Prompt embeddings ``[n_cls, L, D]`` with the learned context at positions ``1 .. n_ctx``."""
        n_cls = self.token_prefix.shape[0]
        ctx = self.ctx.unsqueeze(0).expand(n_cls, -1, -1)
        return torch.cat([self.token_prefix.to(ctx.dtype), ctx, self.token_suffix.to(ctx.dtype)], dim=1)
