"""The two open_clip ViT-H-14 conditioners of Geo4D on ``transformers`` CLIP classes.

* Text (``cond_stage_model``): token ids → token + position embeddings → all blocks but the last →
  ``final_layer_norm`` → (b, 77, width). No attention mask (pad id 0 positions are kept), causal
  self-attention as in CLIP.
* Image (``embedder``): image in [-1, 1] → :func:`preprocess` (squash to 224×224 with kornia's
  antialiased bicubic resize, CLIP normalisation) → ViT → all 257 tokens *before* ``post_layernorm``
  and without projection.

The official checkpoint stores the towers with open_clip names; :func:`text_state_dict` and
:func:`vision_state_dict` map them to ``transformers`` names (the fused ``in_proj`` of each block is
split row-wise into q, k, v). Tokenisation is not needed at inference: the prompt is fixed
(:data:`GEO4D_PROMPT_IDS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from geo4d.errors import InputError

__all__ = [
    "GEO4D_PROMPT",
    "GEO4D_PROMPT_IDS",
    "EMPTY_PROMPT_IDS",
    "TEXT_PREFIX",
    "VISION_PREFIX",
    "DEAD_KEYS",
    "preprocess",
    "text_state_dict",
    "vision_state_dict",
    "build_text_encoder",
    "build_vision_encoder",
    "encode_text",
    "encode_image",
]

GEO4D_PROMPT = "Output a video that assigns each 3D location in the world a consistent color."
# open_clip BPE ids of the fixed prompt and of "" (start 49406, end 49407, padded with 0 to 77).
# Hard-coded because the BPE vocabulary cannot be downloaded here and the prompt never changes.
GEO4D_PROMPT_IDS = [49406, 17255, 320, 1455, 682, 587, 4659, 2416, 274, 323, 4372, 530, 518, 1002, 320, 16439,
                    3140, 269, 49407] + [0] * 58
EMPTY_PROMPT_IDS = [49406, 49407] + [0] * 75

TEXT_PREFIX = "cond_stage_model.model."
VISION_PREFIX = "embedder.model.visual."
#: Checkpoint entries no Geo4D computation reads.
DEAD_KEYS = (
    "cond_stage_model.model.text_projection", "cond_stage_model.model.logit_scale",
    "embedder.model.token_embedding.weight", "embedder.model.positional_embedding",
    "embedder.model.ln_final.weight", "embedder.model.ln_final.bias", "embedder.model.text_projection",
    "embedder.model.logit_scale", "embedder.model.visual.proj",
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


# ---- preprocessing ---------------------------------------------------------------------------------
def _gaussian_blur_axis(x: torch.Tensor, factor: float, dim: int) -> torch.Tensor:
    sigma = max((factor - 1.0) / 2.0, 0.001)
    ks = int(max(4.0 * sigma, 3))
    if ks % 2 == 0:
        ks += 1
    offs = torch.arange(ks, dtype=torch.float64) - ks // 2
    k = torch.exp(-(offs**2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    C = x.shape[1]
    if dim == 2:  # along H
        weight = k.view(1, 1, ks, 1).repeat(C, 1, 1, 1)
        x = F.pad(x, (0, 0, ks // 2, ks // 2), mode="reflect")
    else:
        weight = k.view(1, 1, 1, ks).repeat(C, 1, 1, 1)
        x = F.pad(x, (ks // 2, ks // 2, 0, 0), mode="reflect")
    return F.conv2d(x, weight, groups=C)


def preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """CLIP input from images in [-1, 1] (b, 3, H, W) → (b, 3, size, size).

    Reproduces kornia's ``resize(..., 'bicubic', align_corners=True, antialias=True)`` by hand (kornia
    is not a dependency): when any axis shrinks, a separable Gaussian blur with reflect padding,
    per axis ``σ = max((in/size − 1)/2, 0.001)``, kernel ``max(4σ, 3)`` made odd; then PyTorch
    bicubic (A = −0.75) with ``align_corners=True``. Then ``(x + 1)/2`` and CLIP mean/std.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected shape (b, 3, H, W), got {tuple(images.shape)}")
    x = images.float()
    H, W = x.shape[-2:]
    if max(H / size, W / size) > 1:
        x = _gaussian_blur_axis(x, H / size, 2)
        x = _gaussian_blur_axis(x, W / size, 3)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=True)
    x = (x + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


# ---- key mapping -----------------------------------------------------------------------------------
def _map_blocks(sd: Mapping[str, torch.Tensor], prefix: str, out: dict) -> None:
    tag = prefix + "transformer.resblocks."
    for key, value in sd.items():
        if not key.startswith(tag):
            continue
        i, rest = key[len(tag):].split(".", 1)
        base = f"encoder.layers.{i}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = "weight" if rest.endswith("weight") else "bias"
            q, k, v = value.chunk(3, dim=0)
            out[base + f"self_attn.q_proj.{kind}"] = q
            out[base + f"self_attn.k_proj.{kind}"] = k
            out[base + f"self_attn.v_proj.{kind}"] = v
            continue
        module, kind = rest.rsplit(".", 1)
        if module not in _BLOCK:
            raise InputError(f"checkpoint key {key}: unknown CLIP block entry")
        out[base + f"{_BLOCK[module]}.{kind}"] = value


def text_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``cond_stage_model.model.*`` (open_clip) → ``CLIPTextModel`` names (no ``text_model.`` prefix)."""
    p = TEXT_PREFIX
    out = {
        "embeddings.token_embedding.weight": sd[p + "token_embedding.weight"],
        "embeddings.position_embedding.weight": sd[p + "positional_embedding"],
        "final_layer_norm.weight": sd[p + "ln_final.weight"],
        "final_layer_norm.bias": sd[p + "ln_final.bias"],
    }
    _map_blocks(sd, p, out)
    return out


def vision_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``embedder.model.visual.*`` (open_clip) → ``CLIPVisionModel`` names (no ``vision_model.`` prefix)."""
    p = VISION_PREFIX
    out = {
        "embeddings.patch_embedding.weight": sd[p + "conv1.weight"],
        "embeddings.class_embedding": sd[p + "class_embedding"],
        "embeddings.position_embedding.weight": sd[p + "positional_embedding"],
        "pre_layrnorm.weight": sd[p + "ln_pre.weight"],
        "pre_layrnorm.bias": sd[p + "ln_pre.bias"],
        "post_layernorm.weight": sd[p + "ln_post.weight"],
        "post_layernorm.bias": sd[p + "ln_post.bias"],
    }
    _map_blocks(sd, p, out)
    return out


def _n_layers(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    tag = prefix + "transformer.resblocks."
    idx = {int(k[len(tag):].split(".", 1)[0]) for k in sd if k.startswith(tag)}
    return max(idx) + 1 if idx else 0


def _strip_prefix(model: torch.nn.Module, mapped: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers versions differ on a ``text_model.``/``vision_model.`` prefix: follow the model."""
    names = set(model.state_dict().keys())
    if mapped and next(iter(mapped)) in names:
        return mapped
    for pre in ("text_model.", "vision_model."):
        if any(n.startswith(pre) for n in names):
            return {pre + k: v for k, v in mapped.items()}
    return mapped


def _load(model: torch.nn.Module, mapped: dict[str, torch.Tensor], what: str) -> torch.nn.Module:
    mapped = _strip_prefix(model, mapped)
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    wrong = sorted(k for k in set(expected) & set(mapped) if tuple(expected[k]) != tuple(mapped[k].shape))
    if missing or unexpected or wrong:
        raise InputError(f"{what}: CLIP weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                         f"wrong shapes {[(k, tuple(mapped[k].shape), tuple(expected[k])) for k in wrong[:5]]}")
    model.load_state_dict(mapped, strict=False, assign=True)
    # Non-persistent buffers are not in any checkpoint: rebuild them off the meta device.
    for name, buf in list(model.named_buffers()):
        if buf.is_meta and name.endswith("position_ids"):
            owner = model.get_submodule(name.rsplit(".", 1)[0])
            owner.register_buffer("position_ids", torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise InputError(f"{what}: CLIP tensors left unloaded: {leftover[:5]}")
    return model.eval()


def build_text_encoder(sd: Mapping[str, torch.Tensor], heads: int | None = None, dtype=torch.float32):
    """A ``transformers.CLIPTextModel`` holding the checkpoint's text tower.

    Attention heads cannot be read from weight shapes: default ``width // 64`` (16 for ViT-H-14).
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = sd[TEXT_PREFIX + "token_embedding.weight"]
    width = int(tok.shape[1])
    cfg = CLIPTextConfig(
        vocab_size=int(tok.shape[0]), hidden_size=width, intermediate_size=4 * width,
        num_hidden_layers=_n_layers(sd, TEXT_PREFIX), num_attention_heads=heads or max(1, width // 64),
        max_position_embeddings=int(sd[TEXT_PREFIX + "positional_embedding"].shape[0]), hidden_act="gelu",
        layer_norm_eps=1e-5, projection_dim=width, attention_dropout=0.0,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    )
    with torch.device("meta"):
        model = CLIPTextModel(cfg)
    return _load(model, {k: v.to(dtype) for k, v in text_state_dict(sd).items()}, "cond_stage_model")


def build_vision_encoder(sd: Mapping[str, torch.Tensor], heads: int | None = None, dtype=torch.float32):
    """A ``transformers.CLIPVisionModel`` holding the checkpoint's image tower.

    Default heads ``width // 80`` (16 for ViT-H-14, whose head width is 80).
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    conv = sd[VISION_PREFIX + "conv1.weight"]
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    n_tok = int(sd[VISION_PREFIX + "positional_embedding"].shape[0])
    image_size = int(round(math.sqrt(n_tok - 1))) * patch
    cfg = CLIPVisionConfig(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=_n_layers(sd, VISION_PREFIX),
        num_attention_heads=heads or max(1, width // 80), image_size=image_size, patch_size=patch,
        hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=width, attention_dropout=0.0,
    )
    with torch.device("meta"):
        model = CLIPVisionModel(cfg)
    return _load(model, {k: v.to(dtype) for k, v in vision_state_dict(sd).items()}, "embedder")


@torch.no_grad()
def encode_text(model, token_ids: torch.Tensor) -> torch.Tensor:
    """(b, 77) ids → (b, 77, width): penultimate hidden state, then ``final_layer_norm``; no mask."""
    out = model(input_ids=token_ids, output_hidden_states=True)
    final_ln = model.final_layer_norm if hasattr(model, "final_layer_norm") else model.text_model.final_layer_norm
    return final_ln(out.hidden_states[-2])


@torch.no_grad()
def encode_image(model, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (b, 3, H, W) → (b, 257, width) tokens before ``post_layernorm``."""
    return model(pixel_values=preprocess(images)).last_hidden_state


# ---- `geo4d check-fixture` stages (clip.* cases) ----------------------------------------------------
def _fixture_towers(ctx):
    """CLIP towers for a fixture run: an open_clip JSON config + ``weights.safetensors``, or an
    official-schema yaml + ``model.ckpt`` (ViT-H-14 head counts)."""
    import json
    from pathlib import Path

    cached = getattr(ctx, "_clip_towers", None)
    if cached is not None:
        return cached
    cfg_path = Path(str(ctx.config_path)) if ctx.config_path else None
    text_heads = vision_heads = None
    if cfg_path is not None and cfg_path.suffix == ".json":
        from safetensors.torch import load_file

        cfg = json.loads(cfg_path.read_text()).get("model_cfg", {})
        text_heads = cfg.get("text_cfg", {}).get("heads")
        v = cfg.get("vision_cfg", {})
        vision_heads = v["width"] // v["head_width"] if "head_width" in v else None
        ckpt = str(ctx.checkpoint_path)
        sd = load_file(ckpt) if ckpt.endswith(".safetensors") else torch.load(ckpt, map_location="cpu", mmap=True)["state_dict"]
    else:
        sd = ctx.loaded.clip_state_dict
    towers = (build_text_encoder(sd, heads=text_heads), build_vision_encoder(sd, heads=vision_heads))
    ctx._clip_towers = towers
    return towers


def register_fixture_stages(register_stage) -> None:
    @register_stage("clip.text", ["clip.text.tokens"], doc="open_clip text tower (penultimate + final LN)")
    def _text(ctx, cases):
        return {"clip.text.out": encode_text(_fixture_towers(ctx)[0], cases["clip.text.tokens"])}

    for suffix in ("", "_256x576", "_192x640", "_320x512"):
        def _image(ctx, cases, suffix=suffix):
            x = cases[f"clip.image.in{suffix}"]
            return {f"clip.image.preprocessed{suffix}": preprocess(x),
                    f"clip.image.out{suffix}": encode_image(_fixture_towers(ctx)[1], x)}

        register_stage(f"clip.image{suffix}", [f"clip.image.in{suffix}"], doc="open_clip image tower")(_image)
