"""The constant cross-attention context of a Geo4D checkpoint, computed once and cached.

The released inference conditions every window on ``[text(prompt) ; resampler(CLIP(zero image))]``:
the prompt is fixed and the image branch sees an all-zero image, so the context depends on the
weights only. :func:`constant_context` computes it with the two CLIP towers (~1 B parameters), frees
them, and stores the tensor under the checkpoint's fingerprint (size + first/middle/last MiB hash,
:func:`geo4d_model.loader.file_fingerprint`), so later runs never load CLIP at all.

A context file (``geo4d context``, :func:`write_context_file`) is a ``.safetensors`` file with one
float32 tensor ``context`` of shape (1, L, C) (L = 77 text tokens + the resampled image tokens, C the
U-Net's ``context_dim``) and the checkpoint's fingerprint in its metadata; the cache entries use the
same format. It lets a checkpoint without CLIP weights run the network.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from geo4d.errors import InputError

__all__ = ["constant_context", "compute_context", "clip_embeddings", "has_clip_weights", "default_cache_dir",
           "cache_path", "read_context_file", "write_context_file", "CONTEXT_KEY"]

#: The tensor name inside a context file.
CONTEXT_KEY = "context"


def default_cache_dir() -> Path:
    """``$GEO4D_CACHE`` or ``~/.cache/geo4d``."""
    return Path(os.environ.get("GEO4D_CACHE", Path.home() / ".cache" / "geo4d"))


def cache_path(fingerprint: str, cache: str | os.PathLike | None = None) -> Path:
    return Path(cache or default_cache_dir()) / f"context-{fingerprint}.safetensors"


def read_context_file(path: str | os.PathLike, context_dim: int | None = None) -> torch.Tensor:
    """The (1, L, C) float32 context stored under ``context`` in a ``.safetensors`` file.

    Args:
        path: a file written by :func:`write_context_file` / ``geo4d context`` (or a cache entry).
        context_dim: when given, the C the network expects (its U-Net's ``context_dim``).

    Raises:
        InputError: one line naming the file: missing, not a readable safetensors file, no
            ``context`` tensor (the keys it has are listed), not a floating-point (1, L, C) tensor,
            C different from ``context_dim``, or non-finite values.

    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = write_context_file(Path(d) / "ctx.safetensors", torch.ones(1, 81, 64), "abc")
    ...     read_context_file(p, context_dim=64).shape
    torch.Size([1, 81, 64])
    >>> read_context_file("no/such/file.safetensors")
    Traceback (most recent call last):
    ...
    geo4d.errors.InputError: no/such/file.safetensors: context file not found
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: context file {'is a directory' if p.is_dir() else 'not found'}")
    try:
        with safe_open(str(p), framework="pt") as f:
            keys = list(f.keys())
            ctx = f.get_tensor(CONTEXT_KEY) if CONTEXT_KEY in keys else None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{p}: not a readable safetensors file ({first})") from None
    if ctx is None:
        listed = ", ".join(keys[:8]) + (f", … ({len(keys)} in all)" if len(keys) > 8 else "")
        raise InputError(f"{p}: no '{CONTEXT_KEY}' tensor in the file (it has: {listed or 'no tensors'})")
    if not ctx.is_floating_point():
        raise InputError(f"{p}: '{CONTEXT_KEY}' must be a floating-point tensor, got {ctx.dtype}")
    if ctx.ndim != 3 or ctx.shape[0] != 1 or ctx.shape[1] == 0:
        raise InputError(f"{p}: '{CONTEXT_KEY}' must have shape (1, L, C), got {tuple(ctx.shape)}")
    if context_dim is not None and ctx.shape[2] != context_dim:
        raise InputError(f"{p}: context dimension C: expected {context_dim} (the network's context_dim), "
                         f"got {ctx.shape[2]} (shape {tuple(ctx.shape)}; a context of another checkpoint?)")
    ctx = ctx.float().contiguous()
    if not torch.isfinite(ctx).all():
        raise InputError(f"{p}: '{CONTEXT_KEY}' holds NaN or infinite values")
    return ctx


def write_context_file(path: str | os.PathLike, context: torch.Tensor, checkpoint_fingerprint: str = "") -> Path:
    """Write a (1, L, C) context as float32 ``context`` to ``path`` atomically; returns the path.

    Parent directories are created; the tensor goes to a temporary name in the same directory first,
    then :func:`os.replace` puts it in place, so a reader never sees a partial file. The metadata holds
    ``checkpoint_fingerprint`` (:func:`geo4d_model.loader.file_fingerprint` of the checkpoint).

    >>> import tempfile, torch
    >>> from safetensors import safe_open
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = write_context_file(Path(d) / "sub" / "ctx.safetensors", torch.zeros(1, 5, 8), "fp123")
    ...     safe_open(str(p), framework="pt").metadata()["checkpoint_fingerprint"]
    'fp123'
    """
    from safetensors.torch import save_file

    if not isinstance(context, torch.Tensor) or context.ndim != 3 or context.shape[0] != 1:
        shape = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
        raise ValueError(f"context: expected a tensor of shape (1, L, C), got {shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file({CONTEXT_KEY: context.detach().float().cpu().contiguous()}, str(tmp),
                  metadata={"checkpoint_fingerprint": str(checkpoint_fingerprint), "format": "geo4d-context"})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def has_clip_weights(clip_state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict holds both CLIP towers (``cond_stage_model.model.*``, ``embedder.model.visual.*``)."""
    from geo4d_model import clip

    return any(k.startswith(clip.TEXT_PREFIX) for k in clip_state_dict) and any(
        k.startswith(clip.VISION_PREFIX) for k in clip_state_dict)


def clip_embeddings(clip_state_dict: dict[str, torch.Tensor], height: int = 320, width: int = 512,
                    text_heads: int | None = None, vision_heads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(text_emb (1, 77, Ct), image_tokens (1, 257, Cv)) of the fixed prompt and an all-zero image."""
    from geo4d_model import clip

    if not has_clip_weights(clip_state_dict):
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


def compute_context(loaded, compute: Callable[[dict], tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """The (1, 77 + 16·V, C) float32 CPU context computed from ``loaded.clip_state_dict`` (no cache).

    ``compute`` maps the CLIP state dict to ``(text_emb, image_tokens)`` (default :func:`clip_embeddings`).
    The CLIP tensors are dropped from ``loaded`` afterwards (they are not needed again).

    Raises:
        InputError: no CLIP weights, or towers whose widths do not fit the network.
    """
    text_emb, image_tokens = (compute or clip_embeddings)(loaded.clip_state_dict)
    param = next(loaded.network.parameters())
    try:
        with torch.no_grad():
            ctx = loaded.network.context(text_emb.to(param.device, param.dtype),
                                         image_tokens.to(param.device, param.dtype))
    except (RuntimeError, ValueError) as exc:  # towers of another model: the widths do not match the network's
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{loaded.checkpoint or 'model.ckpt'}: the CLIP outputs text {tuple(text_emb.shape)}, image "
                         f"{tuple(image_tokens.shape)} do not fit the network's context ({first})") from None
    loaded.clip_state_dict.clear()
    return ctx.detach().float().cpu().contiguous()


def constant_context(loaded, cache: str | os.PathLike | None = None,
                     compute: Callable[[dict], tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """The (1, 77 + 16·V, C) context of a loaded checkpoint (:class:`geo4d_model.loader.LoadedGeo4D`).

    Looks in the cache first (an unreadable entry counts as absent); otherwise :func:`compute_context`
    and writes the cache with :func:`write_context_file`.
    """
    fp = loaded.fingerprint or "unknown"
    path = cache_path(fp, cache)
    if path.is_file():
        try:
            return read_context_file(path)
        except InputError:
            pass  # a damaged cache entry is recomputed and replaced
    ctx = compute_context(loaded, compute)
    try:
        write_context_file(path, ctx, fp)
    except OSError:
        pass  # a read-only cache only costs a recomputation next time
    return ctx
