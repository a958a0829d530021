"""Views of open_clip's tokenizers and text towers used by :class:`~vlprompt.backbones.openclip.OpenClipBackbone`.

Text towers (open_clip 3.3 ``transformer.TextTransformer`` / ``hf_model.HFTextEncoder``):

* ``TextTransformer`` with a causal mask pooled at EOT (``argmax`` / ``eos``): CLIP, LAION, EVA, ...;
* ``TextTransformer`` with ``no_causal_mask`` (``attn_mask is None``) pooled ``last`` (SigLIP, SigLIP 2,
  CLIPA) or ``argmax`` (MobileCLIP-S / MobileCLIP2);
* ``TextTransformer`` with ``cls_emb`` (CoCa): a class token appended after the padded sequence, a
  causal mask plus a padding mask built from the ids (``_build_additive_mask``), ``ln_final`` on the
  class token only;
* ``HFTextEncoder``: a ``transformers`` encoder run on ``inputs_embeds`` with the attention mask
  ``ids != pad_token_id`` and the model's own pooler (mean / max / CLS).

Each view's ``encode(embeds [P, L, D], pooled_index [P], ids [P, L] | None) -> [P, E]`` computes what
the tower's ``forward(ids)`` computes, with the token embeddings given instead of looked up.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vlprompt.backbones.base import TextTowerFacts
from vlprompt.core.errors import ModelError, VlpromptError


# ---------------------------------------------------------------------------------- tokenizers
class TokenizerView:
    """Uniform view of open_clip's ``SimpleTokenizer``, ``HFTokenizer`` and ``SigLipTokenizer``.

    ``tokenize`` returns exactly what the open_clip tokenizer returns for a text that fits, and raises
    instead of truncating a text that does not.
    """

    def __init__(self, tokenizer: Any, context_length: int, name: str) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.name = name
        self.hf: Any = getattr(tokenizer, "tokenizer", None)  # the transformers tokenizer (HF / SigLIP)
        if self.hf is None:
            self.sot_id: int | None = int(tokenizer.sot_token_id)
            self.eot_id: int | None = int(tokenizer.eot_token_id)
            self.pad_id: int = 0
            self.prefix_len = 1
        else:
            self.pad_id = int(self.hf.pad_token_id if self.hf.pad_token_id is not None else 0)
            eos = self.hf.eos_token_id if self.hf.eos_token_id is not None else getattr(self.hf, "sep_token_id", None)
            self.eot_id = None if eos is None else int(eos)
            self.prefix_len = self._measure_prefix()
            with_special = self.hf(self._clean("x")).input_ids
            self.sot_id = int(with_special[0]) if self.prefix_len else None

    def _clean(self, text: str) -> str:
        clean = getattr(self.tokenizer, "clean_fn", None)
        if clean is not None:
            return clean(text)
        from open_clip.tokenizer import basic_clean, canonicalize_text  # SigLipTokenizer's cleaning

        return canonicalize_text(basic_clean(text))

    def _measure_prefix(self) -> int:
        """Number of special tokens the HF tokenizer puts before the text (0 for T5, 1 for BERT's CLS)."""
        text = self._clean("a photo")
        full = list(self.hf(text).input_ids)
        bare = list(self.hf(text, add_special_tokens=False).input_ids)
        for k in range(len(full) - len(bare) + 1):
            if full[k : k + len(bare)] == bare:
                return k
        raise ModelError(f"cannot locate the text within the tokens of '{self.name}''s tokenizer")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        if self.hf is None:
            return list(self.tokenizer.encode(text))
        return list(self.hf(self._clean(text), add_special_tokens=False).input_ids)

    def decode(self, ids: list[int]) -> str:
        if self.hf is None:
            return str(self.tokenizer.decode(ids))
        return str(self.hf.decode(ids))

    def tokenize(self, texts: list[str], *, what: str) -> Tensor:
        """``[B, context_length]`` ids laid out as the model's tokenizer lays them out (no truncation)."""
        if self.hf is None:
            out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
            for i, text in enumerate(texts):
                ids = [self.sot_id, *self.encode(text), self.eot_id]
                self._check_length(text, len(ids), what)
                out[i, : len(ids)] = torch.tensor(ids)
            return out
        for text in texts:
            self._check_length(text, len(self.hf(self._clean(text)).input_ids), what)
        return self.tokenizer(texts, context_length=self.context_length)

    def _check_length(self, text: str, n: int, what: str) -> None:
        if n > self.context_length:
            raise VlpromptError(
                f"{what} '{text}' is {n} tokens long with start/end tokens, {n - self.context_length} more "
                f"than the context length {self.context_length} of '{self.name}'; shorten it (or use fewer "
                "context tokens, option method.n_ctx)."
            )


# ---------------------------------------------------------------------------------- text towers
def _project(x: Tensor, proj: Any) -> Tensor:
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Module) else x @ proj


class TransformerTextView:
    """open_clip's ``TextTransformer`` (CLIP, SigLIP, CLIPA, MobileCLIP, CoCa) run on embeddings."""

    def __init__(self, src: Any, tok: TokenizerView) -> None:
        self.src = src
        self.token_embedding: nn.Embedding = src.token_embedding
        self.positional_embedding: Tensor = src.positional_embedding
        self.transformer: Any = src.transformer
        self.ln_final: nn.Module = src.ln_final
        self.text_projection = src.text_projection
        self.attn_mask: Tensor | None = src.attn_mask
        self.cls_emb = getattr(src, "cls_emb", None)
        self.use_pad_mask = bool(getattr(src, "use_pad_mask", False))
        pool = getattr(src, "text_pool_type", None) or getattr(src, "pool_type", "argmax")
        self.pool_type = str(pool)
        self.eos_id: int | None = getattr(src, "text_eos_id", None) or getattr(src, "eos_id", None)
        causal = self.attn_mask is not None
        if self.cls_emb is not None:
            kind, pool_kind = "appended-cls", "cls"
        elif pool in ("argmax", "eos"):
            kind, pool_kind = ("causal-eot" if causal else "bidir-eot"), "eot"
        elif pool in ("last", "first"):
            kind, pool_kind = ("causal-" if causal else "bidir-") + pool, pool
        else:
            raise ModelError(f"text pooling '{pool}' gives no sentence feature; prompt learning needs one")
        width = int(self.token_embedding.weight.shape[1])
        self.width = width
        self.facts = TextTowerFacts(
            kind=kind, causal=causal, pool=pool_kind, context_length=tok.context_length,
            prefix_len=tok.prefix_len, pad_id=tok.pad_id,
            eot_id=(self.eos_id if pool == "eos" else tok.eot_id), sot_id=tok.sot_id,
            needs_ids=self.cls_emb is not None or self.use_pad_mask,
        )

    @property
    def output_dim(self) -> int:
        proj = self.text_projection
        if proj is None:
            return self.width
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    def cast_dtype(self) -> torch.dtype:
        return self.transformer.get_cast_dtype()

    def pooled_index(self, ids: Tensor) -> Tensor:
        n, length = ids.shape
        if self.pool_type == "eos" and self.eos_id is not None:
            return (ids == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "argmax" and self.cls_emb is None:
            return ids.argmax(dim=-1)
        if self.pool_type == "first":
            return torch.zeros(n, dtype=torch.long, device=ids.device)
        return torch.full((n,), length - 1, dtype=torch.long, device=ids.device)

    def encode(self, embeds: Tensor, pooled_index: Tensor, ids: Tensor | None) -> Tensor:
        """``TextTransformer.forward`` (open_clip 3.3 transformer.py, ``_embeds`` + ``forward``) on embeddings."""
        cast = self.cast_dtype()
        x = embeds.to(cast)
        n, length = x.shape[0], x.shape[1]
        if self.cls_emb is not None:
            x = torch.cat([x, self.cls_emb.to(cast).view(1, 1, -1).expand(n, -1, -1)], dim=1)
        seq = x.shape[1]
        mask = self.attn_mask[:seq, :seq].to(x.device) if self.attn_mask is not None else None
        if self.cls_emb is not None or self.use_pad_mask:
            if ids is None:
                raise ModelError("this text tower masks padding: the prompt's token ids are needed")
            add = self.src._build_additive_mask(ids[:, :length].to(x.device), seq, x.dtype)
            mask = add if mask is None else mask.unsqueeze(0) + add
        x = x + self.positional_embedding[:seq].to(cast)
        x = self.transformer(x, attn_mask=mask)
        if self.cls_emb is not None:
            pooled = self.ln_final(x[:, -1])
        else:
            x = self.ln_final(x)
            if self.pool_type == "last":
                pooled = x[:, -1]
            elif self.pool_type == "first":
                pooled = x[:, 0]
            else:
                pooled = x[torch.arange(n, device=x.device), pooled_index.to(x.device)]
        return _project(pooled, self.text_projection)


class HFTextView:
    """open_clip's ``HFTextEncoder`` (XLM-R, mT5, NLLB, RoBERTa towers) run on ``inputs_embeds``."""

    def __init__(self, src: Any, tok: TokenizerView) -> None:
        self.src = src
        self.hf = src.transformer
        self.token_embedding: nn.Embedding = self.hf.get_input_embeddings()
        self.width = int(self.token_embedding.weight.shape[1])
        self.pad_id = int(src.config.pad_token_id if src.config.pad_token_id is not None else tok.pad_id)
        pooler = type(src.pooler).__name__
        pool = {"MeanPooler": "mean", "MaxPooler": "max", "ClsPooler": "cls-first",
                "ClsLastHiddenStatePooler": "cls-first"}.get(pooler, pooler)
        self.facts = TextTowerFacts(
            kind="hf-encoder", causal=False, pool=pool, context_length=tok.context_length,
            prefix_len=tok.prefix_len, pad_id=self.pad_id, eot_id=tok.eot_id, sot_id=tok.sot_id, needs_ids=True,
        )

    @property
    def output_dim(self) -> int:
        return int(self.src.output_dim)

    def cast_dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    def pooled_index(self, ids: Tensor) -> Tensor:
        return torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)

    def encode(self, embeds: Tensor, pooled_index: Tensor, ids: Tensor | None) -> Tensor:
        """``HFTextEncoder.forward`` (open_clip 3.3 hf_model.py) with ``inputs_embeds`` for ``input_ids``."""
        if ids is None:
            raise ModelError("Hugging Face text towers need the prompt's token ids (attention mask)")
        mask = (ids.to(embeds.device) != self.pad_id).long()
        out = self.hf(inputs_embeds=embeds.to(self.cast_dtype()), attention_mask=mask)
        return self.src.proj(self.src.pooler(out, mask))


def text_view(model: Any, tok: TokenizerView, name: str) -> TransformerTextView | HFTextView:
    """The text-tower view of an open_clip ``CLIP`` / ``CustomTextCLIP`` / ``CoCa`` model."""
    src = model.text if hasattr(model, "text") else model
    if type(src).__name__ == "HFTextEncoder":
        return HFTextView(src, tok)
    if not hasattr(src, "token_embedding") or not hasattr(src, "transformer"):
        raise ModelError(f"model '{name}' has a text tower ({type(src).__name__}) vlprompt cannot drive")
    return TransformerTextView(src, tok)
