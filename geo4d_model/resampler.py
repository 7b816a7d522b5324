"""The image-token resampler (``image_proj_model``): a Perceiver resampler that turns CLIP image tokens
into ``num_queries · video_length`` cross-attention tokens.

Written by hand (keys must equal the official checkpoint's; no maintained library ships this variant
with per-frame query groups).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from geo4d_model.config import ResamplerConfig

__all__ = ["Resampler"]


class PerceiverAttention(nn.Module):
    """Queries from the latents, keys/values from ``[LN1(x); LN2(latents)]``; scores use ``d^-¼`` on both
    sides and a float32 softmax. Shapes: x (B, N, dim), latents (B, Q, dim) → (B, Q, dim)."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.dim_head, self.heads = dim_head, heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        b, q_len, _ = latents.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], self.heads, -1).transpose(1, 2)

        q = split(self.to_q(latents))
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        k, v = split(k), split(v)
        scale = 1.0 / math.sqrt(math.sqrt(self.dim_head))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        out = (weight @ v).transpose(1, 2).reshape(b, q_len, -1)
        return self.to_out(out)


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    """LN → Linear(no bias) → GELU(erf) → Linear(no bias); keys ``0``, ``1``, ``3``."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class Resampler(nn.Module):
    """``forward(x)``: x (B, N, embedding_dim) → (B, Q·T, output_dim) with all Q·T queries attending
    to all tokens (the inference path); x (B, T, N, embedding_dim) → (B, T·Q, dim) where frame f uses
    only queries [f·Q, (f+1)·Q) and its own tokens (needs ``output_dim == dim``).
    Q = ``num_queries``, T = ``video_length``.
    """

    def __init__(self, cfg: ResamplerConfig):
        super().__init__()
        self.cfg = cfg
        queries = cfg.num_queries * (cfg.video_length or 1)
        self.latents = nn.Parameter(torch.randn(1, queries, cfg.dim) / cfg.dim**0.5)
        self.proj_in = nn.Linear(cfg.embedding_dim, cfg.dim)
        self.proj_out = nn.Linear(cfg.dim, cfg.output_dim)
        self.norm_out = nn.LayerNorm(cfg.output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(cfg.dim, cfg.dim_head, cfg.heads), _feed_forward(cfg.dim, cfg.ff_mult)])
            for _ in range(cfg.depth)
        )

    def _run(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if x.ndim == 3:
            if x.shape[-1] != cfg.embedding_dim:
                raise ValueError(f"Resampler: expected (B, N, {cfg.embedding_dim}), got {tuple(x.shape)}")
            return self._run(x, self.latents.expand(x.shape[0], -1, -1))
        if x.ndim == 4:
            B, T, N, C = x.shape
            if C != cfg.embedding_dim or T * cfg.num_queries != self.latents.shape[1]:
                raise ValueError(
                    f"Resampler: expected (B, {self.latents.shape[1] // cfg.num_queries}, N, {cfg.embedding_dim}), "
                    f"got {tuple(x.shape)}"
                )
            if cfg.output_dim != cfg.dim:
                raise ValueError(f"Resampler: the per-frame (4-D) branch needs output_dim == dim, got {cfg.output_dim} != {cfg.dim}")
            latents = self.latents.expand(B, -1, -1).reshape(B * T, cfg.num_queries, cfg.dim)
            out = self._run(x.reshape(B * T, N, C), latents)
            return out.reshape(B, T * cfg.num_queries, cfg.dim)
        raise ValueError(f"Resampler: expected a 3-D or 4-D input, got {tuple(x.shape)}")
