"""Attention blocks of the Geo4D (DynamiCrafter) U-Net: spatial and temporal transformers.

Parameter names follow the official checkpoint (``attn1``, ``attn2.to_k_ip``, ``ff.net.0.proj``, …) so
``model.diffusion_model.*`` loads without renaming. Attention uses
:func:`torch.nn.functional.scaled_dot_product_attention` (the math of ``softmax(q kᵀ/√d) v``).

These blocks are written by hand because no maintained library has DynamiCrafter's variant: image
tokens with their own key/value projections and a separate softmax, temporal attention over
``(b·h·w, t, c)`` sequences with GroupNorm statistics pooled over time, and ``init_attn``'s 1×1
Conv1d projections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CrossAttention", "BasicTransformerBlock", "SpatialTransformer", "TemporalTransformer", "TEXT_TOKENS"]

#: Number of leading context tokens that are text (the rest are image tokens); fixed by the model.
TEXT_TOKENS = 77


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads·d) → (B, heads, L, d); heads are contiguous channel chunks."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, d) → (B, L, heads·d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class CrossAttention(nn.Module):
    """Multi-head attention; with ``image_cross_attention`` the context is split into
    ``TEXT_TOKENS`` text tokens (keys/values ``to_k``/``to_v``) and image tokens (``to_k_ip``/``to_v_ip``),
    each attended with its own softmax, and the two outputs are summed (image weight 1.0).

    Shapes: x (B, N, query_dim), context (B, L, context_dim) or None (self-attention) → (B, N, query_dim).
    """

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int,
                 image_cross_attention: bool = False, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))
        self.image_cross_attention = image_cross_attention
        if image_cross_attention:
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.heads
        q = _heads(self.to_q(x), h)
        if context is None:
            k, v = _heads(self.to_k(x), h), _heads(self.to_v(x), h)
            return self.to_out(_merge(F.scaled_dot_product_attention(q, k, v)))
        if self.image_cross_attention:
            text, image = context[:, :TEXT_TOKENS], context[:, TEXT_TOKENS:]
            out = F.scaled_dot_product_attention(q, _heads(self.to_k(text), h), _heads(self.to_v(text), h))
            out_ip = F.scaled_dot_product_attention(q, _heads(self.to_k_ip(image), h), _heads(self.to_v_ip(image), h))
            return self.to_out(_merge(out + out_ip))
        k, v = _heads(self.to_k(context), h), _heads(self.to_v(context), h)
        return self.to_out(_merge(F.scaled_dot_product_attention(q, k, v)))


class GEGLU(nn.Module):
    """``Linear(d → 2·inner)``, first half value, second half gate: ``a · GELU(g)`` (erf GELU)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(g)


class FeedForward(nn.Module):
    """GEGLU feed-forward, 4× inner width; keys ``net.0.proj``, ``net.2``."""

    def __init__(self, dim: int, dropout: float = 0.0, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """``x += attn1(LN1 x)``; ``x += attn2(LN2 x, context)``; ``x += FF(LN3 x)`` (LayerNorm eps 1e-5).

    ``attn2`` is cross-attention when ``context_dim`` is given, else a second self-attention
    (temporal transformers).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None,
                 image_cross_attention: bool = False, dropout: float = 0.0):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head,
                                    image_cross_attention=image_cross_attention and context_dim is not None,
                                    dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.has_context = context_dim is not None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context if self.has_context else None) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Per-frame transformer: GN(32, 1e-6) → tokens (h·w) → proj_in → blocks(context) → proj_out → + x.

    Shapes: x (N, c, h, w) with N = b·t frames, context (N, L, context_dim) → (N, c, h, w).
    """

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int,
                 use_linear: bool, image_cross_attention: bool, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.use_linear = use_linear
        if use_linear:
            self.proj_in = nn.Linear(channels, inner)
            self.proj_out = nn.Linear(inner, channels)
        else:
            self.proj_in = nn.Conv2d(channels, inner, 1)
            self.proj_out = nn.Conv2d(inner, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim, image_cross_attention, dropout)
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.norm(x)
        if not self.use_linear:
            y = self.proj_in(y)
        y = y.flatten(2).transpose(1, 2)  # (N, h·w, c)
        if self.use_linear:
            y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context)
        if self.use_linear:
            y = self.proj_out(y)
        y = y.transpose(1, 2).reshape(n, -1, h, w)
        if not self.use_linear:
            y = self.proj_out(y)
        return y + x


class TemporalTransformer(nn.Module):
    """Self-attention over the frames of each pixel.

    GN(32, 1e-6) on the (b, c, t, h, w) view (statistics pooled over time) → sequences (b·h·w, t, c)
    → proj_in → blocks (both attentions self-attention) → proj_out → + x. With ``use_linear=False``
    (``init_attn``) the projections are 1×1 Conv1d weights, applied here as the equivalent per-token
    linear maps.

    Shapes: x (b·t, c, h, w), ``frames`` = t → (b·t, c, h, w).
    """

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, use_linear: bool, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.use_linear = use_linear
        if use_linear:
            self.proj_in = nn.Linear(channels, inner)
            self.proj_out = nn.Linear(inner, channels)
        else:
            self.proj_in = nn.Conv1d(channels, inner, 1)
            self.proj_out = nn.Conv1d(inner, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, None, False, dropout) for _ in range(depth)
        )

    def _project(self, layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
        if self.use_linear:
            return layer(y)
        return F.linear(y, layer.weight[..., 0], layer.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        bt, c, h, w = x.shape
        b = bt // frames
        x5 = x.view(b, frames, c, h, w).transpose(1, 2)  # (b, c, t, h, w)
        y = self.norm(x5)
        y = y.permute(0, 3, 4, 2, 1).reshape(b * h * w, frames, c)  # (b h w, t, c)
        y = self._project(self.proj_in, y)
        for block in self.transformer_blocks:
            y = block(y)
        y = self._project(self.proj_out, y)
        y = y.view(b, h, w, frames, c).permute(0, 3, 4, 1, 2)  # (b, t, c, h, w)
        return y.reshape(bt, c, h, w) + x
