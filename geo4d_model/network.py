"""The Geo4D network minus CLIP: U-Net, first-stage VAE, resampler and the stored noise schedule, with
the official key layout, plus the per-window operations the official inference performs (frame encoding,
conditioning, modality decoding).

Submodule names mirror the official checkpoint: ``model.diffusion_model`` (U-Net), ``first_stage_model``,
``image_proj_model`` and 13 top-level schedule buffers. Only the autoencoders are stored in diffusers'
layout internally; :func:`official_key_map` / :func:`to_internal_state_dict` convert explicitly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from geo4d_model.config import DiffusionConfig, Geo4DConfig
from geo4d_model.resampler import Resampler
from geo4d_model.unet import UNet3D
from geo4d_model.vae import LatentVAE, to_official_shape, vae_key_map

__all__ = [
    "Geo4DNetwork",
    "SCHEDULE_BUFFERS",
    "schedule_buffers",
    "official_key_map",
    "official_shapes",
    "to_internal_state_dict",
    "pointmap_vae_key_map",
    "MODALITY_CHANNELS",
]

#: Schedule buffers stored at the top level of ``model.ckpt`` (the sampler uses the stored values).
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "scale_arr",
)

#: Latent channel groups of the 16-channel window latent: point map, ray directions, moments, disparity.
MODALITY_CHANNELS = {"pointmap": slice(0, 4), "ray": slice(4, 8), "moment": slice(8, 12), "disparity": slice(12, 16)}

#: Steps of the dynamic-rescale ramp (``scale_arr`` = linspace(1, base_scale, 400) then base_scale).
DYNAMIC_RESCALE_TURNING_STEP = 400


def schedule_buffers(cfg: DiffusionConfig) -> dict[str, torch.Tensor]:
    """The schedule buffers a config defines (float64 math, stored float32), for random-weight models.

    ``β_i = (√start + (√end − √start)·i/(T−1))²``, rescaled to zero terminal SNR when configured;
    ``ᾱ = cumprod(1 − β)``. In v-mode the two ``sqrt_recip*`` buffers are zeros. Official checkpoints
    carry these values; the loader uses the stored ones.
    """
    T = cfg.timesteps
    betas = np.linspace(cfg.linear_start**0.5, cfg.linear_end**0.5, T, dtype=np.float64) ** 2
    if cfg.rescale_betas_zero_snr:
        s = np.sqrt(np.cumprod(1.0 - betas))
        s0, sT = s[0], s[-1]
        s = (s - sT) * s0 / (s0 - sT)
        ac = s**2
        alphas = np.concatenate([ac[:1], ac[1:] / ac[:-1]])
        betas = 1.0 - alphas
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        out = {
            "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": np.sqrt(ac), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
            "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
            "sqrt_recip_alphas_cumprod": np.zeros(T) if cfg.parameterization == "v" else np.sqrt(1.0 / ac),
            "sqrt_recipm1_alphas_cumprod": np.zeros(T) if cfg.parameterization == "v" else np.sqrt(1.0 / ac - 1),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        }
    n = DYNAMIC_RESCALE_TURNING_STEP
    out["scale_arr"] = np.concatenate([np.linspace(1.0, cfg.base_scale, n), np.full(T, cfg.base_scale)])
    return {k: torch.from_numpy(np.asarray(v)).to(torch.float32) for k, v in out.items()}


class _DiffusionWrapper(nn.Module):
    """Holds the U-Net as ``diffusion_model`` (official key prefix ``model.diffusion_model``)."""

    def __init__(self, unet: UNet3D):
        super().__init__()
        self.diffusion_model = unet


class Geo4DNetwork(nn.Module):
    """U-Net + first-stage VAE + resampler + schedule buffers of one checkpoint.

    Shapes below: V frames of a window, (H, W) frame size, (h, w) = (H, W) / VAE factor.
    """

    def __init__(self, cfg: Geo4DConfig):
        super().__init__()
        self.cfg = cfg
        self.model = _DiffusionWrapper(UNet3D(cfg.unet))
        self.first_stage_model = LatentVAE(cfg.first_stage)
        self.image_proj_model = Resampler(cfg.resampler)
        for name, value in schedule_buffers(cfg.diffusion).items():
            self.register_buffer(name, value)

    @property
    def unet(self) -> UNet3D:
        return self.model.diffusion_model

    @property
    def scale_factor(self) -> float:
        return self.cfg.diffusion.scale_factor

    # --- conditioning -------------------------------------------------------------------------------
    def encode_frames(self, frames: torch.Tensor, noise: torch.Tensor | None = None, batch: int = 0) -> torch.Tensor:
        """First-stage latents of frames, scaled: ``scale · (mean + std·noise)`` (posterior mean when
        ``noise`` is None). (N, 3, H, W) in [−1, 1] → (N, 4, h, w); ``batch`` > 0 encodes that many frames
        per call (0: all at once)."""
        vae = self.first_stage_model
        outs = []
        step = batch if batch > 0 else max(1, frames.shape[0])
        for i in range(0, frames.shape[0], step):
            mean, std = vae.moments(frames[i : i + step])
            z = mean if noise is None else mean + std * noise[i : i + step].to(mean)
            outs.append(self.scale_factor * z)
        return torch.cat(outs)

    def context(self, text_emb: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Cross-attention context ``[text (b, 77, C); Resampler(image_tokens)]`` → (b, 77 + Q·T, C)."""
        image = self.image_proj_model(image_tokens.to(self.image_proj_model.latents.dtype))
        return torch.cat([text_emb.to(image.dtype), image], dim=1)

    def apply_model(self, x_noisy: torch.Tensor, cond_latents: torch.Tensor, t: torch.Tensor,
                    context: torch.Tensor, fs: torch.Tensor | None) -> torch.Tensor:
        """The hybrid wrapper: U-Net on ``[x_noisy (b, 16, V, h, w); cond_latents (b, 4, V, h, w)]``."""
        return self.unet(torch.cat([x_noisy, cond_latents.to(x_noisy.dtype)], dim=1), t, context, fs)

    # --- decoding ----------------------------------------------------------------------------------
    def decode_first_stage(self, z: torch.Tensor, batch: int = 0) -> torch.Tensor:
        """Scaled latents (N, 4, h, w) → first-stage decode (N, 3, H, W), ``batch`` frames per call."""
        return _batched(lambda zz: self.first_stage_model.decode(zz * (1.0 / self.scale_factor)), z, batch)

    def decode_pointmap(self, pointmap_vae: LatentVAE, z: torch.Tensor, batch: int = 0) -> torch.Tensor:
        """Scaled point-map latents (N, 4, h, w) → (N, 4, H, W): xyz and raw confidence (point-map VAE
        with its confidence branch; latents divided by the diffusion model's scale factor)."""
        return _batched(lambda zz: pointmap_vae.decode_with_confidence(zz * (1.0 / self.scale_factor)), z, batch)

    def decode_window(self, latents: torch.Tensor, pointmap_vae: LatentVAE, batch: int = 0) -> torch.Tensor:
        """Window latents (b, 16, V, h, w) → (b, 11, V, H, W) = [xyz, conf_raw, ray(3), moment(3), disparity].

        Each modality's 4 channels are decoded per frame (``batch`` frames per VAE call); disparity is
        the mean of its 3 decoded channels.
        """
        b, c, V, h, w = latents.shape
        if c != 16:
            raise ValueError(f"decode_window: expected 16 latent channels, got {tuple(latents.shape)}")
        frames = latents.transpose(1, 2).reshape(b * V, c, h, w)

        def group(name: str) -> torch.Tensor:
            return frames[:, MODALITY_CHANNELS[name]]

        pm = self.decode_pointmap(pointmap_vae, group("pointmap"), batch)
        ray = self.decode_first_stage(group("ray"), batch)
        moment = self.decode_first_stage(group("moment"), batch)
        disp = self.decode_first_stage(group("disparity"), batch).mean(dim=1, keepdim=True)
        out = torch.cat([pm, ray, moment, disp], dim=1)  # (b·V, 11, H, W)
        return out.view(b, V, 11, *out.shape[-2:]).transpose(1, 2)


def _batched(fn, z: torch.Tensor, batch: int) -> torch.Tensor:
    if batch <= 0 or batch >= z.shape[0]:
        return fn(z)
    return torch.cat([fn(z[i : i + batch]) for i in range(0, z.shape[0], batch)])


# --- official key layout ---------------------------------------------------------------------------
def _vae_prefix_map(cfg, official_prefix: str, internal_prefix: str) -> dict[str, str]:
    return {f"{official_prefix}{k}": f"{internal_prefix}{v}" for k, v in vae_key_map(cfg).items()}


def official_key_map(network: Geo4DNetwork) -> dict[str, str]:
    """Official ``model.ckpt`` key → internal state-dict key, for every tensor of ``network``."""
    fs_map = _vae_prefix_map(network.cfg.first_stage, "first_stage_model.", "first_stage_model.")
    out: dict[str, str] = {}
    for key in network.state_dict(keep_vars=True):
        if not key.startswith("first_stage_model."):
            out[key] = key
    out.update(fs_map)
    return out


def pointmap_vae_key_map(cfg, stored_prefix: str = "model.") -> dict[str, str]:
    """Official ``vae.ckpt`` key (stored with a leading ``model.``) → internal :class:`LatentVAE` key."""
    return _vae_prefix_map(cfg, stored_prefix, "")


def official_shapes(module: nn.Module, key_map: dict[str, str]) -> dict[str, tuple[int, ...]]:
    """Shapes the official checkpoint must have for each key, from the (possibly meta) module."""
    internal = module.state_dict(keep_vars=True)
    missing = sorted(set(key_map.values()) - set(internal))
    if missing:
        raise RuntimeError(f"key map names {len(missing)} tensors the module lacks, e.g. {missing[:3]}")
    unmapped = sorted(set(internal) - set(key_map.values()))
    if unmapped:
        raise RuntimeError(f"module has {len(unmapped)} tensors without an official name, e.g. {unmapped[:3]}")
    return {off: to_official_shape(off, tuple(internal[k].shape)) for off, k in key_map.items()}


def to_internal_state_dict(state_dict: dict[str, torch.Tensor], module: nn.Module, key_map: dict[str, str],
                           dtype: torch.dtype | None = None, keep_float32: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Rename (and reshape where the layouts differ) official tensors to the module's internal names.

    ``dtype`` casts floating tensors except internal keys in ``keep_float32``. Assumes the keys and
    shapes were checked (see :func:`geo4d_model.loader.check_state_dict`).
    """
    internal_shapes = {k: v.shape for k, v in module.state_dict(keep_vars=True).items()}
    out = {}
    for off, key in key_map.items():
        t = state_dict[off]
        if tuple(t.shape) != tuple(internal_shapes[key]):
            t = t.reshape(internal_shapes[key])
        if dtype is not None and t.is_floating_point() and key not in keep_float32:
            t = t.to(dtype)
        out[key] = t
    return out
