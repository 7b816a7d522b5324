"""Typed view of the official inference yaml (``configs/inference_geo4d.yaml``) and of fixture configs
of the same schema.

Only the blocks the network needs are read: ``model.params`` (diffusion settings, ``unet_config``,
``first_stage_config``, ``image_proj_stage_config``) and the top-level ``pointmap_vae_config``.
Every dimension comes from the file; nothing is hard-coded to the full-size or tiny model. Each
block is a pydantic model read straight from its yaml mapping (keys the network does not need are
ignored; a missing or mistyped key, or a setting the network does not support, is one
:class:`InputError` naming the file and the key).

Example:
    >>> cfg = load_config("inference_geo4d.yaml")          # doctest: +SKIP
    >>> cfg.unet.model_channels, cfg.resampler.num_queries   # doctest: +SKIP
    (320, 16)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


class _Block(BaseModel):
    """A yaml block of the official schema: frozen; keys the network does not read are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    @classmethod
    def read(cls, block: Any, where: str, source: str, **extra: Any) -> Self:
        """Validate ``block`` (plus ``extra`` keys); errors name ``source`` and the dotted key."""
        if not isinstance(block, dict):
            raise InputError(f"{source}: {where} is missing or not a mapping")
        data = {k: v for k, v in {**block, **extra}.items() if v is not None}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InputError(_error_line(exc, where, source)) from None


def _error_line(exc: ValidationError, where: str, source: str) -> str:
    err = exc.errors()[0]
    key = ".".join([where] + [str(p) for p in err["loc"]])
    if err["type"] == "missing":
        return f"{source}: missing {key}"
    if err["type"] == "value_error":  # a model check below: its message says what is unsupported
        return f"{source}: {key}: {str(err['ctx']['error'])}"
    return f"{source}: {key} = {err.get('input')!r} is not valid ({err['msg']})"


class UNetConfig(_Block):
    """``model.params.unet_config.params``: the 3-D denoising U-Net."""

    in_channels: int
    out_channels: int
    model_channels: int
    attention_resolutions: tuple[int, ...]
    num_res_blocks: int
    channel_mult: tuple[int, ...]
    num_head_channels: int = -1
    num_heads: int = -1
    transformer_depth: int = 1
    context_dim: int
    use_linear: bool = False
    temporal_conv: bool = False
    temporal_attention: bool = True
    temporal_selfatt_only: bool = True
    temporal_length: int = 16
    addition_attention: bool = False
    image_cross_attention: bool = False
    default_fs: int = 4
    fs_condition: bool = False
    dropout: float = 0.0
    # Settings of the DynamiCrafter code base the released Geo4D model leaves at these values.
    use_relative_position: bool = Field(False, exclude=True)
    use_causal_attention: bool = Field(False, exclude=True)
    use_scale_shift_norm: bool = Field(False, exclude=True)
    resblock_updown: bool = Field(False, exclude=True)
    image_cross_attention_scale_learnable: bool = Field(False, exclude=True)
    conv_resample: bool = Field(True, exclude=True)

    @model_validator(mode="after")
    def _supported(self) -> Self:
        for flag in ("use_relative_position", "use_causal_attention", "use_scale_shift_norm", "resblock_updown",
                     "image_cross_attention_scale_learnable"):
            if getattr(self, flag):
                raise ValueError(f"{flag} = true is not supported (the released Geo4D model has it off)")
        if not self.conv_resample:
            raise ValueError("conv_resample = false is not supported")
        if self.num_head_channels <= 0 and self.num_heads <= 0:
            raise ValueError("set num_head_channels or num_heads")
        if self.addition_attention and self.num_head_channels <= 0:
            raise ValueError("addition_attention needs num_head_channels > 0 (init_attn uses 8 heads of that width)")
        if not self.temporal_selfatt_only:
            raise ValueError("temporal_selfatt_only = false is not supported")
        return self

    def heads_at(self, channels: int) -> tuple[int, int]:
        """(heads, head width) of the level transformers at ``channels`` channels."""
        if self.num_head_channels > 0:
            return channels // self.num_head_channels, self.num_head_channels
        return self.num_heads, channels // self.num_heads


class AdaptorConfig(_Block):
    """``adaptorconfig``: the point-map VAE's confidence branch (also present, unused, in the first stage)."""

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    in_channels: int = 3
    out_ch: int

    @model_validator(mode="after")
    def _one_level(self) -> Self:
        if len(self.ch_mult) != 1:
            raise ValueError(f"ch_mult = {list(self.ch_mult)}: only one-level adaptors are supported")
        return self


class AutoencoderConfig(_Block):
    """``ddconfig`` (+ ``embed_dim``, ``adaptorconfig``) of an SD-style KL autoencoder."""

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int
    embed_dim: int
    double_z: bool = True
    adaptor: AdaptorConfig | None = None
    attn_resolutions: tuple[int, ...] = Field((), exclude=True)

    @model_validator(mode="after")
    def _supported(self) -> Self:
        if self.attn_resolutions:
            raise ValueError(f"attn_resolutions = {list(self.attn_resolutions)}: attention inside VAE levels is not supported")
        if not self.double_z:
            raise ValueError("double_z = false is not supported (a KL autoencoder has double_z)")
        a = self.adaptor
        if a is not None and a.ch * a.ch_mult[0] != self.ch * self.ch_mult[0]:
            raise ValueError(f"adaptor width {a.ch * a.ch_mult[0]} must equal the decoder's last feature width "
                             f"ch·ch_mult[0] = {self.ch * self.ch_mult[0]}")
        return self

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.ch * m for m in self.ch_mult)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


class ResamplerConfig(_Block):
    """``model.params.image_proj_stage_config.params``: the Perceiver resampler of image tokens."""

    dim: int
    depth: int
    dim_head: int
    heads: int
    num_queries: int
    embedding_dim: int
    output_dim: int
    ff_mult: int = 4
    video_length: int | None = None


class DiffusionConfig(_Block):
    """Diffusion settings of ``model.params``."""

    timesteps: int = 1000
    linear_start: float
    linear_end: float
    rescale_betas_zero_snr: bool = False
    parameterization: str = "eps"
    scale_factor: float
    use_dynamic_rescale: bool = False
    base_scale: float = 0.7
    channels: int
    perframe_ae: bool = False
    scale_by_std: bool = Field(False, exclude=True)

    @model_validator(mode="after")
    def _supported(self) -> Self:
        if self.parameterization != "v":
            raise ValueError(f"parameterization = {self.parameterization!r}: only 'v' is supported")
        if self.scale_by_std:
            raise ValueError("scale_by_std = true is not supported")
        return self


class Geo4DConfig(BaseModel):
    """Everything :func:`geo4d_model.loader.load_official` needs to build the network."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    unet: UNetConfig
    first_stage: AutoencoderConfig
    pointmap_vae: AutoencoderConfig | None
    resampler: ResamplerConfig
    diffusion: DiffusionConfig
    source: str = "<dict>"
    raw: Any = None


def _sub(block: Any, key: str, where: str, source: str) -> dict:
    inner = block.get(key) if isinstance(block, dict) else None
    if not isinstance(inner, dict):
        raise InputError(f"{source}: {where}.{key} is missing or not a mapping" if where else
                         f"{source}: {key} is missing or not a mapping")
    return inner


def _autoencoder(params: dict, where: str, source: str) -> AutoencoderConfig:
    """``<where>.params``: ``ddconfig`` + ``embed_dim`` (+ ``adaptorconfig``)."""
    adaptor = None
    if params.get("adaptorconfig") is not None:
        adaptor = AdaptorConfig.read(params["adaptorconfig"], f"{where}.adaptorconfig", source)
    dd = _sub(params, "ddconfig", where, source)
    if params.get("embed_dim") is None:
        raise InputError(f"{source}: missing {where}.embed_dim")
    return AutoencoderConfig.read(dd, f"{where}.ddconfig", source, embed_dim=params["embed_dim"], adaptor=adaptor)


def config_from_dict(raw: dict, source: str = "<dict>") -> Geo4DConfig:
    """Parse an already-loaded yaml mapping (see :func:`load_config`)."""
    if not isinstance(raw, dict):
        raise InputError(f"{source}: expected a yaml mapping at the top level")
    mp = _sub(_sub(raw, "model", "", source), "params", "model", source)
    unet_params = _sub(_sub(mp, "unet_config", "model.params", source), "params", "model.params.unet_config", source)
    unet = UNetConfig.read(unet_params, "model.params.unet_config.params", source)
    rp = _sub(_sub(mp, "image_proj_stage_config", "model.params", source), "params",
              "model.params.image_proj_stage_config", source)
    resampler = ResamplerConfig.read(rp, "model.params.image_proj_stage_config.params", source)
    diffusion = DiffusionConfig.read(mp, "model.params", source)
    fs_params = _sub(_sub(mp, "first_stage_config", "model.params", source), "params",
                     "model.params.first_stage_config", source)
    first_stage = _autoencoder(fs_params, "model.params.first_stage_config.params", source)
    pointmap = None
    if raw.get("pointmap_vae_config") is not None:
        pv = _sub(_sub(raw, "pointmap_vae_config", "", source), "params", "pointmap_vae_config", source)
        pointmap = _autoencoder(pv, "pointmap_vae_config.params", source)
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
    path = Path(config)
    raw = read_yaml(path, "config")
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a yaml mapping at the top level")
    return config_from_dict(raw, str(path))


def read_yaml(path: str | os.PathLike, what: str = "yaml") -> Any:
    """The parsed content of a YAML file.

    Raises:
        InputError: ``<path>: <what> file not found`` or ``<path>: not a readable yaml file``.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: {what} file not found")
    try:
        return yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: not a readable yaml file ({type(exc).__name__})") from None
