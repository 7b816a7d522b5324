"""The Geo4D denoising 3-D U-Net (DynamiCrafter layout), built from :class:`~geo4d_model.config.UNetConfig`.

Layout: the input ``(b, c, t, h, w)`` runs as a batch of ``b·t`` frames (frame index fastest);
residual blocks add a temporal convolution branch, every attention level has a spatial transformer
(self-attention, then cross-attention on text + image tokens) followed by a temporal transformer
(self-attention over the ``t`` frames of each pixel). Timestep and frame-rate (``fs``) embeddings are
cos-first sinusoids (:func:`diffusers.models.embeddings.get_timestep_embedding`) through two MLPs,
summed and repeated per frame.

Parameter names equal the official ``model.diffusion_model.*`` keys, including the misspelt
``temopral_conv``. Written by hand: no maintained library implements this network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from geo4d_model.attention import TEXT_TOKENS, SpatialTransformer, TemporalTransformer
from geo4d_model.config import UNetConfig

__all__ = ["UNet3D", "timestep_embedding", "frame_context"]

#: Image tokens per frame for the per-frame context split (fixed by the model: 16 resampler queries).
IMAGE_TOKENS_PER_FRAME = 16


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f_i), sin(t f_i)]``, ``f_i = exp(−ln(10⁴)·i/(dim/2))``; (N,) → (N, dim) float32."""
    return get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)


def frame_context(context: torch.Tensor, frames: int) -> torch.Tensor:
    """Per-frame cross-attention context, (b, L, C) → (b·t, L', C).

    If ``L == 77 + 16·t`` every frame gets the 77 text tokens and its own 16 image tokens
    (frame f: image tokens [16f, 16f+16)); otherwise the whole context is repeated per frame.
    """
    b, L, C = context.shape
    if L == TEXT_TOKENS + IMAGE_TOKENS_PER_FRAME * frames:
        text = context[:, :TEXT_TOKENS].repeat_interleave(frames, dim=0)
        image = context[:, TEXT_TOKENS:].reshape(b * frames, IMAGE_TOKENS_PER_FRAME, C)
        return torch.cat([text, image], dim=1)
    return context.repeat_interleave(frames, dim=0)


def _gn(channels: int) -> nn.GroupNorm:
    """GroupNorm(32, eps 1e-5) of the residual path."""
    return nn.GroupNorm(32, channels, eps=1e-5)


class TemporalConvBlock(nn.Module):
    """``y = x + C4(C3(C2(C1(x))))`` on (b, c, t, h, w); each C = GN → SiLU → (Dropout) → Conv3d (3,1,1)."""

    def __init__(self, channels: int, dropout: float = 0.0):
        super().__init__()

        def conv() -> nn.Conv3d:
            return nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))

        self.conv1 = nn.Sequential(_gn(channels), nn.SiLU(), conv())
        self.conv2 = nn.Sequential(_gn(channels), nn.SiLU(), nn.Dropout(dropout), conv())
        self.conv3 = nn.Sequential(_gn(channels), nn.SiLU(), nn.Dropout(dropout), conv())
        self.conv4 = nn.Sequential(_gn(channels), nn.SiLU(), nn.Dropout(dropout), conv())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv4(self.conv3(self.conv2(self.conv1(x))))


class ResBlock(nn.Module):
    """Residual block with timestep embedding, then (optionally) the temporal conv branch.

    Shapes: x (b·t, ch, h, w), emb (b·t, E) → (b·t, out, h, w).
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float, temporal_conv: bool):
        super().__init__()
        self.in_layers = nn.Sequential(_gn(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(_gn(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)
        if temporal_conv:
            self.temopral_conv = TemporalConvBlock(out_channels, dropout)  # (sic) official key name
        self.temporal_conv = temporal_conv

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: int) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        h = self.skip_connection(x) + self.out_layers(h)
        if self.temporal_conv:
            bt, c, hh, ww = h.shape
            h5 = h.view(bt // frames, frames, c, hh, ww).transpose(1, 2)
            h = self.temopral_conv(h5).transpose(1, 2).reshape(bt, c, hh, ww)
        return h


class Downsample(nn.Module):
    """Conv2d 3×3, stride 2, symmetric padding 1 (key ``op``)."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest ×2 then Conv2d 3×3 pad 1 (key ``conv``)."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """Runs its layers, giving each what it needs (embedding, context, frame count)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, frames: int) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, frames)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, TemporalTransformer):
                x = layer(x, frames)
            else:
                x = layer(x)
        return x


class UNet3D(nn.Module):
    """The denoising U-Net: ``forward(x (b, in, t, h, w), t (b,), context (b, L, C), fs (b,)) → (b, out, t, h, w)``.

    ``h`` and ``w`` must be divisible by ``2^(levels−1)``. ``t`` are raw DDPM step indices, ``fs`` the
    frame-rate condition (``default_fs`` when None).

    Example:
        >>> from geo4d_model.config import load_config                     # doctest: +SKIP
        >>> unet = UNet3D(load_config("config.yaml").unet)                  # doctest: +SKIP
        >>> unet(x, torch.tensor([999]), context, torch.tensor([24])).shape  # doctest: +SKIP
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        mc, drop = cfg.model_channels, cfg.dropout
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.fs_condition:
            self.fps_embedding = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def attention(ch: int) -> list[nn.Module]:
            heads, dh = cfg.heads_at(ch)
            layers: list[nn.Module] = [SpatialTransformer(ch, heads, dh, cfg.transformer_depth, cfg.context_dim,
                                                          cfg.use_linear, cfg.image_cross_attention, drop)]
            if cfg.temporal_attention:
                layers.append(TemporalTransformer(ch, heads, dh, cfg.transformer_depth, cfg.use_linear, drop))
            return layers

        def res(ch: int, out: int) -> ResBlock:
            return ResBlock(ch, emb_dim, out, drop, cfg.temporal_conv)

        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        if cfg.addition_attention:
            self.init_attn = EmbedSequential(
                TemporalTransformer(mc, 8, cfg.num_head_channels, cfg.transformer_depth, use_linear=False, dropout=drop)
            )
        skip_channels = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers += attention(ch)
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch, ch)))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(res(ch, ch), *attention(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers += attention(ch)
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch, ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(_gn(ch), nn.SiLU(), nn.Conv2d(mc, cfg.out_channels, 3, padding=1))
        #: Training switch: recompute each block's activations in the backward pass instead of storing them.
        self.gradient_checkpointing = False

    def _run_block(self, block: EmbedSequential, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
                   frames: int) -> torch.Tensor:
        """One block, under :func:`torch.utils.checkpoint.checkpoint` when ``gradient_checkpointing`` is on
        and the module trains with gradients enabled."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(block, h, emb, context, frames, use_reentrant=False)
        return block(h, emb, context, frames)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.cfg.channel_mult) - 1)

    def embedding(self, t: torch.Tensor, fs: torch.Tensor | None, frames: int) -> torch.Tensor:
        """Timestep (+ frame-rate) embedding repeated per frame: (b,) → (b·t, 4·mc)."""
        mc = self.cfg.model_channels
        emb = self.time_embed(timestep_embedding(t, mc).to(self.time_embed[0].weight.dtype))
        if self.cfg.fs_condition:
            if fs is None:
                fs = torch.full_like(t, self.cfg.default_fs)
            emb = emb + self.fps_embedding(timestep_embedding(fs, mc).to(emb.dtype))
        return emb.repeat_interleave(frames, dim=0)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                fs: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"UNet3D: x must be (b, {self.cfg.in_channels}, t, h, w), got {tuple(x.shape)}")
        b, _, frames, h, w = x.shape
        f = self.downsample_factor
        if h % f or w % f:
            raise ValueError(f"UNet3D: latent size {h}×{w} must be divisible by {f}")
        if context.ndim != 3 or context.shape[-1] != self.cfg.context_dim or context.shape[0] not in (1, b):
            raise ValueError(f"UNet3D: context must be ({b} or 1, L, {self.cfg.context_dim}), got {tuple(context.shape)}")
        t = t.reshape(-1).expand(b) if t.numel() in (1, b) else t
        if t.shape != (b,):
            raise ValueError(f"UNet3D: t must have 1 or {b} entries, got {tuple(t.shape)}")
        if fs is not None:
            fs = fs.reshape(-1).expand(b) if fs.numel() in (1, b) else fs
            if fs.shape != (b,):
                raise ValueError(f"UNet3D: fs must have 1 or {b} entries, got {tuple(fs.shape)}")
        if context.shape[0] != b:
            context = context.expand(b, -1, -1)
        emb = self.embedding(t, fs, frames)
        context = frame_context(context, frames)
        h_ = x.transpose(1, 2).reshape(b * frames, x.shape[1], h, w)  # (b t) c h w
        skips = []
        for i, block in enumerate(self.input_blocks):
            h_ = self._run_block(block, h_, emb, context, frames)
            if i == 0 and self.cfg.addition_attention:
                h_ = self._run_block(self.init_attn, h_, emb, context, frames)
            skips.append(h_)
        h_ = self._run_block(self.middle_block, h_, emb, context, frames)
        for block in self.output_blocks:
            h_ = self._run_block(block, torch.cat([h_, skips.pop()], dim=1), emb, context, frames)
        y = self.out(h_)
        return y.view(b, frames, -1, h, w).transpose(1, 2)
