"""The constant cross-attention context of a Geo4D checkpoint, computed once and cached.

The released inference conditions every window on ``[text(prompt) ; resampler(CLIP(zero image))]``:
the prompt is fixed and the image branch sees an all-zero image, so the context depends on the
weights only. :func:`constant_context` computes it with the two CLIP towers (~1 B parameters), frees
them, and stores the tensor under the checkpoint's fingerprint (size + first/middle/last MiB hash,
:func:`geo4d_model.loader.file_fingerprint`), so later runs never load CLIP at all.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from pathlib import Path

import torch

from geo4d.errors import InputError

__all__ = ["constant_context", "default_cache_dir", "cache_path"]


def default_cache_dir() -> Path:
    """``$GEO4D_CACHE`` or ``~/.cache/geo4d``."""
    return Path(os.environ.get("GEO4D_CACHE", Path.home() / ".cache" / "geo4d"))


def cache_path(fingerprint: str, cache: str | os.PathLike | None = None) -> Path:
    return Path(cache or default_cache_dir()) / f"context-{fingerprint}.safetensors"


def clip_embeddings(clip_state_dict: dict[str, torch.Tensor], height: int = 320, width: int = 512,
                    text_heads: int | None = None, vision_heads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(text_emb (1, 77, Ct), image_tokens (1, 257, Cv)) of the fixed prompt and an all-zero image."""
    from geo4d_model import clip

    if not any(k.startswith(clip.TEXT_PREFIX) for k in clip_state_dict) or not any(
        k.startswith(clip.VISION_PREFIX) for k in clip_state_dict
    ):
        raise InputError("model.ckpt has no CLIP weights (cond_stage_model.*, embedder.*) and no cached context; "
                         "pass a checkpoint with them once, or a context")
    text = clip.build_text_encoder(clip_state_dict, heads=text_heads)
    text_emb = clip.encode_text(text, torch.tensor([clip.GEO4D_PROMPT_IDS]))
    del text
    vision = clip.build_vision_encoder(clip_state_dict, heads=vision_heads)
    image_tokens = clip.encode_image(vision, torch.zeros(1, 3, height, width))
    del vision
    gc.collect()
    return text_emb, image_tokens


def constant_context(loaded, cache: str | os.PathLike | None = None,
                     compute: Callable[[dict], tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """The (1, 77 + 16·V, C) context of a loaded checkpoint (:class:`geo4d_model.loader.LoadedGeo4D`).

    Looks in the cache first; otherwise computes it from ``loaded.clip_state_dict`` (then dropped from
    memory) and writes the cache (atomically: temporary file, then rename).
    """
    from safetensors.torch import load_file, save_file

    fp = loaded.fingerprint or "unknown"
    path = cache_path(fp, cache)
    if path.is_file():
        return load_file(str(path))["context"]
    text_emb, image_tokens = (compute or clip_embeddings)(loaded.clip_state_dict)
    param = next(loaded.network.parameters())
    with torch.no_grad():
        ctx = loaded.network.context(text_emb.to(param.device, param.dtype), image_tokens.to(param.device, param.dtype))
    ctx = ctx.detach().float().cpu().contiguous()
    loaded.clip_state_dict.clear()  # the towers are not needed again for this checkpoint
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"context": ctx}, str(tmp), metadata={"checkpoint_fingerprint": fp})
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs a recomputation next time
    return ctx
