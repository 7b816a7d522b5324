"""The two training losses of Geo4D and the diffusion targets they need.

* Point-map VAE (decoder fine-tuning): the uncertainty-weighted reconstruction loss of the paper,
  the negative log-likelihood of a Laplace distribution with scale σ/√2 per pixel,
  ``L = mean_uv [ ln(√2 σ_uv) + √2 ℓ1_uv / σ_uv ]`` (:func:`pointmap_vae_loss`).
* U-Net: v-prediction on the zero-terminal-SNR schedule the checkpoint stores,
  ``x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε``, ``v = √ᾱ_t ε − √(1−ᾱ_t) x₀``, per-modality MSE over each 4-channel
  group of the 16-channel latent, weighted (:func:`v_prediction_loss`).

Shapes: B clips of V frames, (H, W) frame size, (h, w) latent size; batch tensors in the U-Net's
layout (B, C, V, H, W) (:func:`geo4d_model.train.data.collate`).

Example:
    >>> x0, noise = torch.ones(1, 16, 2, 2, 2), torch.zeros(1, 16, 2, 2, 2)
    >>> x_t, v = noisy_and_velocity(torch.tensor([1.0, 0.0]), x0, noise, torch.tensor([1]))
    >>> float(x_t.abs().max()), float(v.mean())    # ᾱ = 0 (zero terminal SNR): x_t = ε, v = −x₀
    (0.0, -1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from geo4d_model.network import MODALITY_CHANNELS

__all__ = ["image_vae_loss", "image_vae_maps", "IMAGE_VAE_MODALITIES", "image_autoencoder_loss", "AUTOENCODED",
           "pointmap_vae_loss", "pointmap_errors", "diffusion_targets", "noisy_and_velocity", "v_prediction_loss",
           "to_frames", "to_window", "SIGMA_EPS"]

#: Added to softplus(raw confidence): σ = softplus(c) + 1e-6 (inference reads σ = softplus(c)).
SIGMA_EPS = 1e-6
_SQRT2 = math.sqrt(2.0)

#: ``apply(x_t, cond, t, context, fs) → v̂`` (b, 16, V, h, w): the network's ``apply_model`` or a wrapper.
ApplyFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def to_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, V, H, W) → (B·V, C, H, W), clip-major (frame index fastest)."""
    if x.ndim != 5:
        raise ValueError(f"expected (B, C, V, H, W), got {tuple(x.shape)}")
    B, C, V, H, W = x.shape
    return x.transpose(1, 2).reshape(B * V, C, H, W)


def to_window(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B·V, C, h, w) → (B, C, V, h, w), the inverse of :func:`to_frames`."""
    BV, C, h, w = x.shape
    return x.view(batch, BV // batch, C, h, w).transpose(1, 2)


def pointmap_errors(decoded: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ℓ1, σ) per pixel, both (N, H, W) float32: ``ℓ1_uv = Σ_c |D_cuv − X_cuv|`` over xyz and
    ``σ_uv = softplus(D_3uv) + 1e-6`` (softplus β = 1, linear above 20, as inference reads it).

    Args:
        decoded: (N, 4, H, W) decoder output: xyz and the raw confidence.
        target: (N, 3, H, W) the normalised point map.
    """
    if decoded.ndim != 4 or decoded.shape[1] != 4:
        raise ValueError(f"decoded: expected (N, 4, H, W), got {tuple(decoded.shape)}")
    N, _, H, W = decoded.shape
    if tuple(target.shape) != (N, 3, H, W):
        raise ValueError(f"target: expected {(N, 3, H, W)}, got {tuple(target.shape)}")
    decoded = decoded.float()
    l1 = (decoded[:, :3] - target.float()).abs().sum(dim=1)
    sigma = F.softplus(decoded[:, 3]) + SIGMA_EPS
    return l1, sigma


def pointmap_vae_loss(decoded: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Uncertainty-weighted point-map loss over all pixels (sky targets 1.05 included: the decoder must
    produce them so that inference masks the sky).

    ``L = mean_uv [ ln(√2 σ_uv) + √2 ℓ1_uv / σ_uv ]`` = ``−mean ln p`` of the Laplace likelihood
    ``p = (1/(√2 σ)) · exp(−√2 ℓ1/σ)`` (ℓ1, σ: :func:`pointmap_errors`).

    Returns:
        (loss (scalar, float32), stats ``{"l1": mean ℓ1, "sigma": mean σ}`` detached).
    """
    l1, sigma = pointmap_errors(decoded, target)
    loss = (torch.log(_SQRT2 * sigma) + _SQRT2 * l1 / sigma).mean()
    return loss, {"l1": l1.mean().detach(), "sigma": sigma.mean().detach()}


def _encode_mean(vae, x: torch.Tensor) -> torch.Tensor:
    """Posterior mean of a :class:`~geo4d_model.vae.LatentVAE`: (N, 3, H, W) → (N, 4, h, w)."""
    return vae.moments(x)[0]


@torch.no_grad()
def diffusion_targets(network, pointmap_vae, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean window latents and the frame condition of a batch (frozen encoders, no gradients).

    ``x₀ = scale_factor · [E_pm(pointmap); E(ray); E(moment); E(disparity ×3)]`` (posterior means; the
    groups in :data:`~geo4d_model.network.MODALITY_CHANNELS` order), ``cond = network.encode_frames(frames)``
    (posterior mean, as inference).

    Args:
        network: :class:`~geo4d_model.network.Geo4DNetwork`; pointmap_vae: the point-map
            :class:`~geo4d_model.vae.LatentVAE`.
        batch: ``frames``, ``pointmap``, ``ray``, ``moment`` (B, 3, V, H, W), ``disparity`` (B, 1, V, H, W).

    Returns:
        x0 (B, 16, V, h, w) float32, cond (B, 4, V, h, w) float32, on the network's device.
    """
    param = next(network.parameters())
    B = batch["frames"].shape[0]

    def frames_of(name: str) -> torch.Tensor:
        return to_frames(batch[name].to(param.device, param.dtype))

    groups = {
        "pointmap": _encode_mean(pointmap_vae, frames_of("pointmap")),
        "ray": _encode_mean(network.first_stage_model, frames_of("ray")),
        "moment": _encode_mean(network.first_stage_model, frames_of("moment")),
        "disparity": _encode_mean(network.first_stage_model, frames_of("disparity").repeat(1, 3, 1, 1)),
    }
    order = sorted(MODALITY_CHANNELS, key=lambda m: MODALITY_CHANNELS[m].start)
    x0 = network.scale_factor * torch.cat([groups[m].float() for m in order], dim=1)
    cond = network.encode_frames(frames_of("frames")).float()
    return to_window(x0, B), to_window(cond, B)


def noisy_and_velocity(alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                       t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε`` and ``v = √ᾱ_t ε − √(1−ᾱ_t) x₀`` for timesteps ``t`` (B,) (the
    quantities of diffusers' ``DDIMScheduler.add_noise`` / ``get_velocity``), float32.

    Args:
        alphas_cumprod: (T,) ᾱ; x0, noise: (B, …); t: (B,) integer timesteps.
    """
    if x0.shape != noise.shape:
        raise ValueError(f"noise: expected {tuple(x0.shape)}, got {tuple(noise.shape)}")
    ac = alphas_cumprod.to(x0.device, torch.float32)[t.to(x0.device).long()]
    ac = ac.view(-1, *([1] * (x0.ndim - 1)))
    a, s = ac.sqrt(), (1.0 - ac).sqrt()
    x0, noise = x0.float(), noise.float()
    return a * x0 + s * noise, a * noise - s * x0


def v_prediction_loss(network, x0: torch.Tensor, cond: torch.Tensor, context: torch.Tensor, fs: torch.Tensor | None,
                      t: torch.Tensor, noise: torch.Tensor, weights: dict[str, float],
                      apply: ApplyFn | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted per-modality v-prediction MSE.

    ``v̂ = apply(x_t, cond, t, context, fs)`` (default ``network.apply_model``) with x_t, v from
    :func:`noisy_and_velocity` on the network's stored ``alphas_cumprod``;
    ``mse_m = mean over (B, 4, V, h, w) of (v̂ − v)²`` on modality m's channels;
    ``loss = Σ_m w_m mse_m / Σ_m w_m`` over the modalities with ``w_m > 0``.

    Args:
        x0: (B, 16, V, h, w); cond: (B, 4, V, h, w); context: (1 or B, L, C); fs: (B,) or None;
        t: (B,) long; noise: like x0; weights: modality → weight (missing: 0).
        apply: replaces ``network.apply_model`` (e.g. a DistributedDataParallel U-Net).

    Returns:
        (loss, ``{modality: mse_m}`` detached, for every modality).

    Raises:
        ValueError: an unknown modality, or no positive weight.
    """
    unknown = sorted(set(weights) - set(MODALITY_CHANNELS))
    if unknown:
        raise ValueError(f"weights: unknown modality {unknown[0]!r} (one of {', '.join(MODALITY_CHANNELS)})")
    used = {m: float(w) for m, w in weights.items() if w > 0}
    if not used:
        raise ValueError(f"weights: no modality has a positive weight ({weights})")
    B = x0.shape[0]
    x_t, v = noisy_and_velocity(network.alphas_cumprod, x0, noise, t)
    param = next(network.parameters())
    pred = (apply or network.apply_model)(x_t.to(param.dtype), cond.to(param.dtype), t.to(x0.device),
                                          context.to(x0.device, param.dtype).expand(B, -1, -1),
                                          None if fs is None else fs.to(x0.device))
    err = (pred.float() - v) ** 2
    per = {m: err[:, sl].mean() for m, sl in MODALITY_CHANNELS.items()}
    loss = sum(w * per[m] for m, w in used.items()) / sum(used.values())
    return loss, {m: value.detach() for m, value in per.items()}


#: The modalities the first-stage (image) VAE carries, and their channels in the window latent's
#: decoding (disparity is repeated ×3 like an RGB image, as in :func:`diffusion_targets`).
IMAGE_VAE_MODALITIES = ("ray", "moment", "disparity")


def image_vae_maps(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The 3-channel maps the image VAE encodes per frame: ray, moment, disparity ×3 → (B·V, 3, H, W) each."""
    out = {m: to_frames(batch[m]) for m in IMAGE_VAE_MODALITIES}
    out["disparity"] = out["disparity"].repeat(1, 3, 1, 1)
    return out


def image_vae_loss(decode, vae, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reconstruction of the ray, moment and disparity maps by the first-stage VAE through its frozen
    encoder: L = mean_m mean |decode(E(x_m)) − x_m| (E: posterior mean, no gradient).

    Args:
        decode: ``z → x`` (the decoder being trained, possibly DDP-wrapped); vae: the
            :class:`~geo4d_model.vae.LatentVAE` whose encoder gives ``z``.

    Returns:
        (loss, {``l1_<modality>``}).
    """
    terms = {}
    for m, x in image_vae_maps(batch).items():
        with torch.no_grad():
            z = vae.moments(x)[0]
        terms[f"l1_{m}"] = (decode(z) - x).abs().mean()
    return torch.stack(list(terms.values())).mean(), terms


#: What the stand-in pretraining autoencodes: the frames and every map the first stage (or, once the
#: point-map VAE restarts from it, the point-map VAE's copy of its encoder) will encode.
AUTOENCODED = ("frames", "pointmap", "ray", "moment", "disparity")
#: Weight of the stand-in pretraining's latent-scale term.
LATENT_SCALE_WEIGHT = 0.1


def image_autoencoder_loss(autoencode, batch: dict[str, torch.Tensor],
                           scale_factor: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The stand-in pretraining of a random-initialised first-stage VAE, encoder included:

    ``L = mean_m mean |D(μ(x_m)) − x_m| + λ (mean_m mean((s·μ(x_m))²) − 1)²`` over the maps of
    :data:`AUTOENCODED` (disparity ×3, like an RGB image), μ the posterior mean, ``s`` = ``scale_factor``,
    λ = :data:`LATENT_SCALE_WEIGHT`. The second term gives the latents the U-Net sees unit RMS — what the
    real VAE's scale factor (0.18215) was chosen to give its latents — so that the diffusion schedule's
    signal-to-noise ratios mean what they mean for the real model.

    Args:
        autoencode: ``x → (D(μ(x)), μ(x))`` (e.g. :class:`~geo4d_model.train.trainer.ImageAutoencoder`,
            possibly DDP-wrapped).
        batch: the batch (B, C, V, H, W) fields of :data:`AUTOENCODED`.

    Returns:
        (loss, ``{l1_<map>, latent_rms}`` detached).
    """
    terms: dict[str, torch.Tensor] = {}
    square = []
    for m in AUTOENCODED:
        x = to_frames(batch[m])
        if m == "disparity":
            x = x.repeat(1, 3, 1, 1)
        decoded, mean = autoencode(x)
        terms[f"l1_{m}"] = (decoded.float() - x.float()).abs().mean()
        square.append((scale_factor * mean.float()).pow(2).mean())
    ms = torch.stack(square).mean()
    loss = torch.stack([terms[f"l1_{m}"] for m in AUTOENCODED]).mean() + LATENT_SCALE_WEIGHT * (ms - 1.0) ** 2
    terms["latent_rms"] = ms.sqrt()
    return loss, {k: v.detach() for k, v in terms.items()}
