"""The two KL autoencoders of Geo4D: the first-stage (image) VAE and the point-map VAE with its confidence
branch, both on diffusers' :class:`~diffusers.AutoencoderKL` (same architecture as the official SD-style
autoencoder: right/bottom-padded stride-2 downsampling, single-head mid-block attention, GroupNorm eps 1e-6).

Official checkpoints name these weights in the LDM layout (``encoder.down.0.block.0.norm1.weight``, …).
:func:`vae_key_map` gives the explicit official → internal mapping; it is derived from diffusers'
own converter :func:`diffusers.loaders.single_file_utils.convert_ldm_vae_checkpoint`, applied to the
official names generated from the config. The confidence adaptors (``encoder_adaptor``,
``decoder_adaptor``) do not exist in diffusers and are kept under their official names (their residual
blocks are diffusers :class:`~diffusers.models.resnet.ResnetBlock2D`, whose parameter names equal the
official ones except ``nin_shortcut`` → ``conv_shortcut``).

Internal layout of :class:`LatentVAE`: ``vae.*`` (the diffusers model), ``encoder_adaptor.*``,
``decoder_adaptor.*`` (only when the config has an ``adaptorconfig``).
"""

from __future__ import annotations

import functools

import torch
from diffusers import AutoencoderKL
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from geo4d.errors import InputError
from geo4d_model.config import AdaptorConfig, AutoencoderConfig

__all__ = ["LatentVAE", "vae_key_map", "official_vae_names", "to_official_shape"]


def _resnet(cin: int, cout: int) -> ResnetBlock2D:
    return ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=None, eps=1e-6, groups=32, dropout=0.0)


class _Level(nn.Module):
    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)


class DecoderAdaptor(nn.Module):
    """Confidence head on the decoder's last feature map F (before its output norm):
    ``num_res_blocks+1`` residual blocks → GN(32, 1e-6) → SiLU → Conv3×3 → ``out_ch`` (raw confidence)."""

    def __init__(self, cfg: AdaptorConfig):
        super().__init__()
        ch = cfg.ch * cfg.ch_mult[0]
        self.up = nn.ModuleList([_Level([_resnet(ch, ch) for _ in range(cfg.num_res_blocks + 1)])])
        self.norm_out = nn.GroupNorm(32, ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, cfg.out_ch, 3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = features
        for block in self.up[0].block:
            h = block(h, None)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


class EncoderAdaptor(nn.Module):
    """Weights of the encoder-side adaptor (``conv_in``, residual blocks, ``norm_out``, ``conv_out``).
    They are part of the official checkpoints but never used at inference, so this module only holds
    them (no forward)."""

    def __init__(self, cfg: AdaptorConfig):
        super().__init__()
        ch = cfg.ch * cfg.ch_mult[0]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList([_Level([_resnet(cfg.ch if i == 0 else ch, ch) for i in range(cfg.num_res_blocks)])])
        self.norm_out = nn.GroupNorm(32, ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)

    def forward(self, *args, **kwargs):  # pragma: no cover - documented as unused
        raise NotImplementedError("the encoder adaptor is not used at inference; it only holds checkpoint weights")


class LatentVAE(nn.Module):
    """An SD-style KL autoencoder (diffusers) plus, optionally, the confidence adaptors.

    Methods take and return per-frame batches ``(N, C, H, W)``; scaling by the diffusion model's
    ``scale_factor`` is the caller's (see :mod:`geo4d_model.network`).
    """

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        if cfg.z_channels != cfg.embed_dim:
            raise InputError(f"VAE: z_channels {cfg.z_channels} != embed_dim {cfg.embed_dim} is not supported")
        n = len(cfg.ch_mult)
        self.cfg = cfg
        self.vae = AutoencoderKL(
            in_channels=cfg.in_channels, out_channels=cfg.out_ch,
            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=cfg.block_out_channels, layers_per_block=cfg.num_res_blocks,
            latent_channels=cfg.z_channels, norm_num_groups=32, force_upcast=False,
        )
        if cfg.adaptor is not None:
            self.encoder_adaptor = EncoderAdaptor(cfg.adaptor)
            self.decoder_adaptor = DecoderAdaptor(cfg.adaptor)

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and std (log-variance clamped to [−30, 20]): (N, in, H, W) → 2 × (N, z, h, w)."""
        dist = self.vae.encode(x).latent_dist
        return dist.mean, dist.std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, z, h, w) unscaled latents → (N, out_ch, H, W)."""
        return self.vae.decode(z).sample

    def decode_with_confidence(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output and the adaptor's raw confidence on the decoder's pre-norm features:
        (N, z, h, w) → (N, out_ch + adaptor out_ch, H, W)."""
        if self.cfg.adaptor is None:
            raise ValueError("this VAE has no confidence adaptor (adaptorconfig)")
        dec = self.vae.decoder
        h = dec.conv_in(self.vae.post_quant_conv(z))
        h = dec.mid_block(h, None)
        for up in dec.up_blocks:
            h = up(h, None)
        out = dec.conv_out(dec.conv_act(dec.conv_norm_out(h)))
        return torch.cat([out, self.decoder_adaptor(h)], dim=1)


def official_vae_names(cfg: AutoencoderConfig) -> list[str]:
    """Official (LDM-layout) parameter names of an autoencoder, without prefix, in checkpoint order."""
    names: list[str] = []

    def wb(prefix: str) -> None:
        names.extend((f"{prefix}.weight", f"{prefix}.bias"))

    def res(prefix: str, cin: int, cout: int) -> None:
        for part in ("norm1", "conv1", "norm2", "conv2"):
            wb(f"{prefix}.{part}")
        if cin != cout:
            wb(f"{prefix}.nin_shortcut")

    def mid(prefix: str, ch: int) -> None:
        res(f"{prefix}.mid.block_1", ch, ch)
        for part in ("norm", "q", "k", "v", "proj_out"):
            wb(f"{prefix}.mid.attn_1.{part}")
        res(f"{prefix}.mid.block_2", ch, ch)

    chans = cfg.block_out_channels
    n = len(chans)
    wb("encoder.conv_in")
    cin = cfg.ch
    for i in range(n):
        for j in range(cfg.num_res_blocks):
            res(f"encoder.down.{i}.block.{j}", cin, chans[i])
            cin = chans[i]
        if i != n - 1:
            wb(f"encoder.down.{i}.downsample.conv")
    mid("encoder", cin)
    wb("encoder.norm_out")
    wb("encoder.conv_out")
    wb("decoder.conv_in")
    mid("decoder", chans[-1])
    cin = chans[-1]
    for i in reversed(range(n)):
        for j in range(cfg.num_res_blocks + 1):
            res(f"decoder.up.{i}.block.{j}", cin, chans[i])
            cin = chans[i]
        if i != 0:
            wb(f"decoder.up.{i}.upsample.conv")
    wb("decoder.norm_out")
    wb("decoder.conv_out")
    wb("quant_conv")
    wb("post_quant_conv")
    return names


_ATTN_CONV = ("attn_1.q.weight", "attn_1.k.weight", "attn_1.v.weight", "attn_1.proj_out.weight")


def to_official_shape(official_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Official shape of an autoencoder tensor given its internal shape (mid-block attention weights are
    1×1 convolutions in the official layout and linear maps in diffusers)."""
    if official_name.endswith(_ATTN_CONV) and len(shape) == 2:
        return (*shape, 1, 1)
    return tuple(shape)


@functools.lru_cache(maxsize=16)
def vae_key_map(cfg: AutoencoderConfig) -> dict[str, str]:
    """Official name (no prefix) → internal name in :class:`LatentVAE`, for every tensor.

    The encoder/decoder part is what diffusers' ``convert_ldm_vae_checkpoint`` does to each official
    name (traced by converting a dictionary of index tensors), adaptors keep their names.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    names = official_vae_names(cfg)
    traced = {name: torch.tensor([i]) for i, name in enumerate(names)}
    n = len(cfg.ch_mult)
    converted = convert_ldm_vae_checkpoint(
        traced, {"down_block_types": ("DownEncoderBlock2D",) * n, "up_block_types": ("UpDecoderBlock2D",) * n}
    )
    mapping: dict[str, str] = {}
    for internal, idx in converted.items():
        mapping[names[int(idx[0])]] = f"vae.{internal}"
    if len(mapping) != len(names):
        lost = sorted(set(names) - set(mapping))
        raise RuntimeError(f"VAE key conversion lost {len(lost)} names, e.g. {lost[:3]}")
    if cfg.adaptor is not None:
        with torch.device("meta"):
            enc, dec = EncoderAdaptor(cfg.adaptor), DecoderAdaptor(cfg.adaptor)
        for prefix, module in (("encoder_adaptor", enc), ("decoder_adaptor", dec)):
            for key in module.state_dict():
                mapping[f"{prefix}.{key}".replace("conv_shortcut", "nin_shortcut")] = f"{prefix}.{key}"
    return mapping
