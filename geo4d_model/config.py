"""Typed view of the official inference yaml (``configs/inference_geo4d.yaml``) and of fixture configs
of the same schema.

Only the blocks the network needs are read: ``model.params`` (diffusion settings, ``unet_config``,
``first_stage_config``, ``image_proj_stage_config``) and the top-level ``pointmap_vae_config``.
Every dimension comes from the file; nothing is hard-coded to the full-size or tiny model.

Example:
    >>> cfg = load_config("inference_geo4d.yaml")          # doctest: +SKIP
    >>> cfg.unet.model_channels, cfg.resampler.num_queries   # doctest: +SKIP
    (320, 16)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geo4d.errors import InputError

__all__ = [
    "UNetConfig",
    "AutoencoderConfig",
    "AdaptorConfig",
    "ResamplerConfig",
    "DiffusionConfig",
    "Geo4DConfig",
    "load_config",
]


@dataclass(frozen=True)
class UNetConfig:
    """``model.params.unet_config.params``: the 3-D denoising U-Net."""

    in_channels: int
    out_channels: int
    model_channels: int
    attention_resolutions: tuple[int, ...]
    num_res_blocks: int
    channel_mult: tuple[int, ...]
    num_head_channels: int
    num_heads: int
    transformer_depth: int
    context_dim: int
    use_linear: bool
    temporal_conv: bool
    temporal_attention: bool
    temporal_selfatt_only: bool
    temporal_length: int
    addition_attention: bool
    image_cross_attention: bool
    default_fs: int
    fs_condition: bool
    dropout: float = 0.0

    def heads_at(self, channels: int) -> tuple[int, int]:
        """(heads, head width) of the level transformers at ``channels`` channels."""
        if self.num_head_channels > 0:
            return channels // self.num_head_channels, self.num_head_channels
        return self.num_heads, channels // self.num_heads


@dataclass(frozen=True)
class AdaptorConfig:
    """``adaptorconfig``: the point-map VAE's confidence branch (also present, unused, in the first stage)."""

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    in_channels: int
    out_ch: int


@dataclass(frozen=True)
class AutoencoderConfig:
    """``ddconfig`` (+ ``embed_dim``, ``adaptorconfig``) of an SD-style KL autoencoder."""

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    in_channels: int
    out_ch: int
    z_channels: int
    embed_dim: int
    double_z: bool
    adaptor: AdaptorConfig | None

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.ch * m for m in self.ch_mult)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class ResamplerConfig:
    """``model.params.image_proj_stage_config.params``: the Perceiver resampler of image tokens."""

    dim: int
    depth: int
    dim_head: int
    heads: int
    num_queries: int
    embedding_dim: int
    output_dim: int
    ff_mult: int
    video_length: int | None


@dataclass(frozen=True)
class DiffusionConfig:
    """Diffusion settings of ``model.params``."""

    timesteps: int
    linear_start: float
    linear_end: float
    rescale_betas_zero_snr: bool
    parameterization: str
    scale_factor: float
    use_dynamic_rescale: bool
    base_scale: float
    channels: int
    perframe_ae: bool


@dataclass(frozen=True)
class Geo4DConfig:
    """Everything :func:`geo4d_model.loader.load_official` needs to build the network."""

    unet: UNetConfig
    first_stage: AutoencoderConfig
    pointmap_vae: AutoencoderConfig | None
    resampler: ResamplerConfig
    diffusion: DiffusionConfig
    source: str = "<dict>"
    raw: Any = None


class _Reader:
    """Reads keys of one yaml block, raising an :class:`InputError` naming the file and the key."""

    def __init__(self, block: Any, where: str, source: str):
        if not isinstance(block, dict):
            raise InputError(f"{source}: {where} is missing or not a mapping")
        self.block, self.where, self.source = block, where, source

    def get(self, key: str, kind: type, default: Any = ...) -> Any:
        if key not in self.block or self.block[key] is None:
            if default is ...:
                raise InputError(f"{self.source}: missing {self.where}.{key}")
            return default
        value = self.block[key]
        try:
            if kind is bool:
                if isinstance(value, str):
                    if value.lower() not in ("true", "false"):
                        raise ValueError(value)
                    return value.lower() == "true"
                return bool(value)
            if kind is tuple:
                if not isinstance(value, (list, tuple)):
                    raise ValueError(value)
                return tuple(int(v) for v in value)
            return kind(value)
        except (TypeError, ValueError):
            raise InputError(f"{self.source}: {self.where}.{key} = {value!r} is not a valid {kind.__name__}") from None

    def sub(self, key: str) -> _Reader:
        where = key if self.where == "<root>" else f"{self.where}.{key}"
        return _Reader(self.block.get(key), where, self.source)


def _autoencoder(r: _Reader) -> AutoencoderConfig:
    dd = r.sub("ddconfig")
    attn = dd.get("attn_resolutions", list, [])
    if attn:
        raise InputError(f"{r.source}: {dd.where}.attn_resolutions = {attn}: attention inside VAE levels is not supported")
    adaptor = None
    if r.block.get("adaptorconfig") is not None:
        ad = r.sub("adaptorconfig")
        adaptor = AdaptorConfig(
            ch=ad.get("ch", int), ch_mult=ad.get("ch_mult", tuple), num_res_blocks=ad.get("num_res_blocks", int),
            in_channels=ad.get("in_channels", int, 3), out_ch=ad.get("out_ch", int),
        )
        if len(adaptor.ch_mult) != 1:
            raise InputError(f"{r.source}: {ad.where}.ch_mult = {list(adaptor.ch_mult)}: only one-level adaptors are supported")
    cfg = AutoencoderConfig(
        ch=dd.get("ch", int), ch_mult=dd.get("ch_mult", tuple), num_res_blocks=dd.get("num_res_blocks", int),
        in_channels=dd.get("in_channels", int, 3), out_ch=dd.get("out_ch", int, 3), z_channels=dd.get("z_channels", int),
        embed_dim=r.get("embed_dim", int), double_z=dd.get("double_z", bool, True), adaptor=adaptor,
    )
    if not cfg.double_z:
        raise InputError(f"{r.source}: {dd.where}.double_z = false is not supported (a KL autoencoder has double_z)")
    if adaptor is not None and adaptor.ch * adaptor.ch_mult[0] != cfg.ch * cfg.ch_mult[0]:
        raise InputError(
            f"{r.source}: adaptor width {adaptor.ch * adaptor.ch_mult[0]} must equal the decoder's last feature width "
            f"ch·ch_mult[0] = {cfg.ch * cfg.ch_mult[0]}"
        )
    return cfg


def config_from_dict(raw: dict, source: str = "<dict>") -> Geo4DConfig:
    """Parse an already-loaded yaml mapping (see :func:`load_config`)."""
    root = _Reader(raw, "<root>", source)
    mp = root.sub("model").sub("params")
    u = mp.sub("unet_config").sub("params")
    for flag in ("use_relative_position", "use_causal_attention", "use_scale_shift_norm", "resblock_updown",
                 "image_cross_attention_scale_learnable"):
        if u.get(flag, bool, False):
            raise InputError(f"{source}: {u.where}.{flag} = true is not supported (the released Geo4D model has it off)")
    if not u.get("conv_resample", bool, True):
        raise InputError(f"{source}: {u.where}.conv_resample = false is not supported")
    unet = UNetConfig(
        in_channels=u.get("in_channels", int), out_channels=u.get("out_channels", int),
        model_channels=u.get("model_channels", int), attention_resolutions=u.get("attention_resolutions", tuple),
        num_res_blocks=u.get("num_res_blocks", int), channel_mult=u.get("channel_mult", tuple),
        num_head_channels=u.get("num_head_channels", int, -1), num_heads=u.get("num_heads", int, -1),
        transformer_depth=u.get("transformer_depth", int, 1), context_dim=u.get("context_dim", int),
        use_linear=u.get("use_linear", bool, False), temporal_conv=u.get("temporal_conv", bool, False),
        temporal_attention=u.get("temporal_attention", bool, True),
        temporal_selfatt_only=u.get("temporal_selfatt_only", bool, True),
        temporal_length=u.get("temporal_length", int, 16), addition_attention=u.get("addition_attention", bool, False),
        image_cross_attention=u.get("image_cross_attention", bool, False), default_fs=u.get("default_fs", int, 4),
        fs_condition=u.get("fs_condition", bool, False), dropout=u.get("dropout", float, 0.0),
    )
    if unet.num_head_channels <= 0 and unet.num_heads <= 0:
        raise InputError(f"{source}: {u.where}: set num_head_channels or num_heads")
    if unet.addition_attention and unet.num_head_channels <= 0:
        raise InputError(f"{source}: {u.where}: addition_attention needs num_head_channels > 0 (init_attn uses 8 heads of that width)")
    if not unet.temporal_selfatt_only:
        raise InputError(f"{source}: {u.where}.temporal_selfatt_only = false is not supported")
    rp = mp.sub("image_proj_stage_config").sub("params")
    resampler = ResamplerConfig(
        dim=rp.get("dim", int), depth=rp.get("depth", int), dim_head=rp.get("dim_head", int), heads=rp.get("heads", int),
        num_queries=rp.get("num_queries", int), embedding_dim=rp.get("embedding_dim", int),
        output_dim=rp.get("output_dim", int), ff_mult=rp.get("ff_mult", int, 4),
        video_length=rp.get("video_length", int, None),
    )
    diffusion = DiffusionConfig(
        timesteps=mp.get("timesteps", int, 1000), linear_start=mp.get("linear_start", float),
        linear_end=mp.get("linear_end", float), rescale_betas_zero_snr=mp.get("rescale_betas_zero_snr", bool, False),
        parameterization=mp.get("parameterization", str, "eps"), scale_factor=mp.get("scale_factor", float),
        use_dynamic_rescale=mp.get("use_dynamic_rescale", bool, False), base_scale=mp.get("base_scale", float, 0.7),
        channels=mp.get("channels", int), perframe_ae=mp.get("perframe_ae", bool, False),
    )
    if diffusion.parameterization != "v":
        raise InputError(f"{source}: {mp.where}.parameterization = {diffusion.parameterization!r}: only 'v' is supported")
    if mp.get("scale_by_std", bool, False):
        raise InputError(f"{source}: {mp.where}.scale_by_std = true is not supported")
    first_stage = _autoencoder(mp.sub("first_stage_config").sub("params"))
    pointmap = None
    if raw.get("pointmap_vae_config") is not None:
        pointmap = _autoencoder(root.sub("pointmap_vae_config").sub("params"))
        if pointmap.adaptor is None:
            raise InputError(f"{source}: pointmap_vae_config.params.adaptorconfig is missing (the confidence branch)")
    if unet.in_channels != diffusion.channels + first_stage.embed_dim:
        raise InputError(
            f"{source}: unet in_channels {unet.in_channels} != channels {diffusion.channels} + "
            f"first-stage embed_dim {first_stage.embed_dim} (noisy latents + video latents)"
        )
    return Geo4DConfig(unet=unet, first_stage=first_stage, pointmap_vae=pointmap, resampler=resampler,
                       diffusion=diffusion, source=source, raw=raw)


def load_config(config: str | Path | dict | Geo4DConfig) -> Geo4DConfig:
    """Read an official-schema yaml (path), a loaded mapping, or pass a :class:`Geo4DConfig` through."""
    if isinstance(config, Geo4DConfig):
        return config
    if isinstance(config, dict):
        return config_from_dict(config)
    import yaml

    path = Path(config)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable yaml file ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a yaml mapping at the top level")
    return config_from_dict(raw, str(path))
