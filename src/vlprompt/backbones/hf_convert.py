"""Convert an open_clip CLIP (standard ViT image tower, causal text tower) to a ``transformers`` ``CLIPModel``.

Used by the tests to show that both families compute the same features, and by users who want an
open_clip checkpoint as a Hugging Face directory. Key mapping (open_clip -> transformers):

==========================================  ===============================================================
``token_embedding.weight``                  ``text_model.embeddings.token_embedding.weight``
``positional_embedding``                    ``text_model.embeddings.position_embedding.weight``
``transformer.resblocks.i.ln_1 / ln_2``     ``text_model.encoder.layers.i.layer_norm1 / layer_norm2``
``...attn.in_proj_weight / _bias`` (q;k;v)  ``...self_attn.q_proj / k_proj / v_proj`` (split in three)
``...attn.out_proj``                        ``...self_attn.out_proj``
``...mlp.c_fc / c_proj``                    ``...mlp.fc1 / fc2``
``ln_final``                                ``text_model.final_layer_norm``
``text_projection`` ``[W, E]``              ``text_projection.weight`` ``[E, W]`` (transposed)
``visual.class_embedding``                  ``vision_model.embeddings.class_embedding``
``visual.conv1.weight``                     ``vision_model.embeddings.patch_embedding.weight``
``visual.positional_embedding``             ``vision_model.embeddings.position_embedding.weight``
``visual.ln_pre / ln_post``                 ``vision_model.pre_layrnorm / post_layernorm``
``visual.transformer.resblocks.i.*``        ``vision_model.encoder.layers.i.*`` (as the text blocks)
``visual.proj`` ``[W, E]``                  ``visual_projection.weight`` ``[E, W]`` (transposed)
``logit_scale``                             ``logit_scale``
==========================================  ===============================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from vlprompt.core.errors import ModelError


def _blocks(prefix_src: str, prefix_dst: str, n_layers: int, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for i in range(n_layers):
        s, d = f"{prefix_src}.{i}", f"{prefix_dst}.{i}"
        for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                     ("mlp.c_proj", "mlp.fc2"), ("attn.out_proj", "self_attn.out_proj")):
            out[f"{d}.{b}.weight"] = sd[f"{s}.{a}.weight"]
            out[f"{d}.{b}.bias"] = sd[f"{s}.{a}.bias"]
        for part, w, bias in zip(("q", "k", "v"), sd[f"{s}.attn.in_proj_weight"].chunk(3),
                                 sd[f"{s}.attn.in_proj_bias"].chunk(3)):
            out[f"{d}.self_attn.{part}_proj.weight"] = w
            out[f"{d}.self_attn.{part}_proj.bias"] = bias
    return out


def open_clip_state_to_hf(sd: dict[str, Tensor], text_layers: int, vision_layers: int) -> dict[str, Tensor]:
    """The ``CLIPModel`` state dict holding the weights of an open_clip ``CLIP`` state dict."""
    out = {
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].t(),
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].t(),
        "logit_scale": sd["logit_scale"],
    }
    out.update(_blocks("transformer.resblocks", "text_model.encoder.layers", text_layers, sd))
    out.update(_blocks("visual.transformer.resblocks", "vision_model.encoder.layers", vision_layers, sd))
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def open_clip_to_hf_clip(model: Any, *, quick_gelu: bool = False) -> Any:
    """A ``transformers.CLIPModel`` with the weights of the open_clip ``CLIP`` ``model``.

    Supports open_clip's standard ``VisionTransformer`` (class-token pooling, ``ln_pre``) and the
    causal ``TextTransformer``; ``quick_gelu`` for the OpenAI ``-quickgelu`` variants.
    """
    from transformers import CLIPConfig, CLIPModel

    visual, text_blocks = model.visual, model.transformer.resblocks
    if not hasattr(visual, "class_embedding") or getattr(visual, "attn_pool", None) is not None:
        raise ModelError("only open_clip CLIP models with a standard ViT image tower can be converted")
    t_width = int(model.token_embedding.weight.shape[1])
    v_width = int(visual.class_embedding.shape[0])
    act = "quick_gelu" if quick_gelu else "gelu"
    config = CLIPConfig(
        text_config={
            "vocab_size": int(model.token_embedding.weight.shape[0]), "hidden_size": t_width,
            "intermediate_size": int(text_blocks[0].mlp.c_fc.out_features),
            "num_hidden_layers": len(text_blocks), "num_attention_heads": int(text_blocks[0].attn.num_heads),
            "max_position_embeddings": int(model.positional_embedding.shape[0]), "hidden_act": act,
            "layer_norm_eps": float(text_blocks[0].ln_1.eps), "bos_token_id": 49406, "eos_token_id": 49407,
            "pad_token_id": 49407,
        },
        vision_config={
            "hidden_size": v_width, "intermediate_size": int(visual.transformer.resblocks[0].mlp.c_fc.out_features),
            "num_hidden_layers": len(visual.transformer.resblocks),
            "num_attention_heads": int(visual.transformer.resblocks[0].attn.num_heads),
            "image_size": int(visual.image_size[0]), "patch_size": int(visual.patch_size[0]), "hidden_act": act,
            "layer_norm_eps": float(visual.ln_pre.eps),
        },
        projection_dim=int(model.text_projection.shape[1]),
    )
    hf = CLIPModel(config)
    state = open_clip_state_to_hf(model.state_dict(), len(text_blocks), len(visual.transformer.resblocks))
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelError(f"conversion left weights unmapped: missing {missing}, unexpected {unexpected}")
    return hf.eval()


def clip_tokenizer_from_open_clip() -> Any:
    """A ``transformers.CLIPTokenizer`` with open_clip's own BPE vocabulary (same ids as ``SimpleTokenizer``)."""
    import open_clip
    from transformers import CLIPTokenizer

    st = open_clip.tokenizer.SimpleTokenizer()
    merges = [pair for pair, _ in sorted(st.bpe_ranks.items(), key=lambda kv: kv[1])]
    return CLIPTokenizer(vocab=dict(st.encoder), merges=merges, bos_token="<start_of_text>",
                         eos_token="<end_of_text>", pad_token="<end_of_text>", unk_token="<end_of_text>")


def write_test_text_encoder(folder: str | Path, *, pooling_layer: bool = False, max_positions: int = 80) -> None:
    """A tiny random-init RoBERTa text encoder (as open_clip's xlm-roberta-* towers use) with CLIP's tokenizer in
    ``folder``: the ``hf-encoder`` text tower of vlprompt's tests and of ``scripts/make_catalog.py``
    (``hf_model_name`` / ``hf_tokenizer_name`` of an open_clip config). ``max_positions`` must exceed the
    config's context length by 2 (RoBERTa's position offset)."""
    import torch
    from transformers import RobertaConfig, RobertaModel

    tok = clip_tokenizer_from_open_clip()
    tok.pad_token = "!"
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=49408, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=max_positions, pad_token_id=tok.pad_token_id,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    RobertaModel(config, add_pooling_layer=pooling_layer).save_pretrained(folder)
    tok.save_pretrained(folder)


def save_open_clip_as_hf(model: nn.Module, directory: str, preprocess_cfg: dict[str, Any] | None = None) -> None:
    """Write ``model`` as a Hugging Face CLIP directory (weights, tokenizer, processor config)."""
    import json
    from pathlib import Path

    hf = open_clip_to_hf_clip(model)
    hf.save_pretrained(directory)
    clip_tokenizer_from_open_clip().save_pretrained(directory)
    pre = preprocess_cfg or {}
    size = int(hf.config.vision_config.image_size)
    proc = {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": size},
        "do_center_crop": True, "crop_size": {"height": size, "width": size}, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(pre.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        "image_std": list(pre.get("std", (0.26862954, 0.26130258, 0.27577711))),
    }
    (Path(directory) / "preprocessor_config.json").write_text(json.dumps(proc, indent=1))
