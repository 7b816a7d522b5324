"""The training loop: models, context, phases, optimisers, EMA, logging, validation, checkpoints and the
final official-format files of a fine-tuning run.

What a step k does (B clips per rank, W ranks, rank r): clip j is ``source.clip((k·W + r)·B + j, size_k, V)``
with ``size_k`` drawn from the phase's sizes by a generator seeded by (seed, k) (the same on every
rank); timesteps and noise come from a generator seeded by (seed, k, r). So the data position is just
the step, and a resumed run repeats the uninterrupted one bit for bit (CPU, deterministic algorithms).

* ``train: image_vae`` — the whole first-stage VAE (encoder, decoder, quant convs) learns to
  autoencode the frames and every map it will encode
  (:func:`~geo4d_model.train.losses.image_autoencoder_loss`): a stand-in for the pretraining the real
  video model's VAE has, for a random-initialised network only, and only at the start of a recipe. Its
  last weights are the "pretrained" VAE (no EMA); when the phase ends the point-map VAE restarts from
  them (:func:`restart_pointmap_vae`), as the paper's is initialised from the video model's VAE.
* ``train: pointmap_vae`` — the point-map VAE's decoder, ``post_quant_conv`` and confidence
  ``decoder_adaptor`` learn :func:`~geo4d_model.train.losses.pointmap_vae_loss` on
  ``D(E(X))`` (E: the frozen encoder's posterior mean).
* ``train: image_vae_decoder`` — the first-stage VAE's decoder and ``post_quant_conv`` learn to
  reconstruct the ray, moment and disparity maps (:func:`~geo4d_model.train.losses.image_vae_loss`) from
  its frozen encoder's latents: a stand-in for the pretrained image VAE of the real model, for a
  random-initialised network (Geo4D itself keeps that VAE unchanged).
* ``train: unet`` — the U-Net learns :func:`~geo4d_model.train.losses.v_prediction_loss` with the
  phase's (ramped) modality weights; everything else frozen.

Each trained module has its own AdamW (a new one when the trained module changes), a
:func:`diffusers.optimization.get_scheduler` schedule per phase (warmup only in the first phase of a
run of phases training the same module), gradient clipping, and an
:class:`diffusers.training_utils.EMAModel` of its trained parameters (kept for the whole run).

Outputs under ``out_dir``: ``metrics.jsonl`` (one JSON line per log interval, ``kind`` "train", and per
validation, ``kind`` "validation"), ``run.json``, ``checkpoints/`` (:mod:`.checkpoint`) and
``final/`` (``model.ckpt`` + ``vae.ckpt`` in the official layout, ``config.yaml``, ``README.txt``,
``context-cache/`` for ``geo4d reconstruct --clip-cache``).

Example:
    >>> result = run_training("configs/train/tiny-cpu.yaml", [], "runs/tiny", max_steps=20)   # doctest: +SKIP
    >>> result.final_dir                                                                     # doctest: +SKIP
    PosixPath('runs/tiny/final')
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from geo4d.errors import Geo4DError, InputError
from geo4d_model.context import (
    cache_path,
    compute_context,
    has_clip_weights,
    read_context_file,
    write_context_file,
)
from geo4d_model.loader import build_random, file_fingerprint, load_official, save_official
from geo4d_model.network import Geo4DNetwork
from geo4d_model.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_meta,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from geo4d_model.train.distributed import DistInfo, all_reduce_mean, barrier, init_distributed, is_main, shutdown, wrap_ddp
from geo4d_model.train.losses import (diffusion_targets, image_autoencoder_loss, image_vae_loss, pointmap_errors,
                                     pointmap_vae_loss, to_frames, v_prediction_loss)
from geo4d_model.train.recipe import (
    MODALITIES,
    Phase,
    TrainRecipe,
    load_recipe,
    phase_weights,
    recipe_difference,
    recipe_fingerprint,
    recipe_settings,
)
from geo4d_model.vae import LatentVAE

__all__ = ["Models", "TrainResult", "Trainer", "build_models", "resolve_context", "validation_losses",
           "run_training", "training_source", "trained_parameters", "PointmapDecoder", "autocast_dtype",
           "RANDOM_INIT", "SYNTHETIC_CONTEXT", "IMAGE_TOKENS", "restart_pointmap_vae"]

log = logging.getLogger(__name__)

RANDOM_INIT = "random-initialised (synthetic stand-in, not a trained model)"
SYNTHETIC_CONTEXT = "synthetic context (fixed random tokens; no CLIP weights)"
#: Image tokens the CLIP vision tower gives the resampler (ViT-H/14 at 224²: 16×16 patches + class token).
IMAGE_TOKENS = 257
_TEXT_TOKENS = 77
_SIZE_STREAM = 1  # generator streams of a step: the clip size (rank-independent) ...
_NOISE_STREAM = 2  # ... and the timesteps and noise (per rank)
_SPEARMAN_MAX = 1_000_000  # pixels entering the σ-vs-ℓ1 rank correlation (a fixed stride beyond)


@dataclass
class Models:
    """The modules a run trains (float32, on one device) and where they came from."""

    network: Geo4DNetwork
    pointmap_vae: LatentVAE
    clip_state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    description: str = ""
    random_init: bool = False


@dataclass
class TrainResult:
    """What :meth:`Trainer.run` did: ``step`` steps of ``total_steps`` (``finished`` when all), the last
    log and validation records, the final folder and the (non-EMA) models as they are now."""

    out_dir: Path
    step: int
    total_steps: int
    finished: bool
    final_dir: Path | None
    last_log: dict[str, Any]
    validation: dict[str, Any]
    models: Models
    resumed_from: int | None = None


# --- models and context ----------------------------------------------------------------------------
@torch.no_grad()
def _from_first_stage(pm: LatentVAE, network: Geo4DNetwork) -> None:
    """The first-stage VAE's weights into ``pm``'s autoencoder, and its confidence adaptor's output conv
    zeroed (σ = softplus(0) = ln 2 everywhere; the decoder output is the first stage's).

    Raises:
        InputError: the two architectures differ.
    """
    first = {k: v for k, v in network.first_stage_model.state_dict().items() if k.startswith("vae.")}
    try:
        missing, _ = pm.load_state_dict(first, strict=False)
    except RuntimeError:
        missing = ["<shapes differ>"]
    if [k for k in missing if k.startswith("vae.")]:
        raise InputError(f"{network.cfg.source}: the point-map VAE's architecture differs from the first stage's; "
                         "give the point-map VAE checkpoint (--init-pointmap-vae)")
    pm.decoder_adaptor.conv_out.weight.zero_()
    pm.decoder_adaptor.conv_out.bias.zero_()


def restart_pointmap_vae(models: Models) -> None:
    """After the stand-in pretraining (``image_vae``): the point-map VAE's autoencoder becomes the
    first stage's (so its frozen encoder is the one the frames are encoded with) and its confidence
    adaptor's output conv is zeroed again, as in :func:`pointmap_vae_from_first_stage`."""
    _from_first_stage(models.pointmap_vae, models.network)


def pointmap_vae_from_first_stage(network: Geo4DNetwork, seed: int = 0) -> LatentVAE:
    """A point-map VAE initialised as the paper does: the first-stage VAE's weights plus a freshly
    initialised confidence adaptor (PyTorch's default init from ``seed``; the adaptor's output conv
    zeroed, so σ starts at softplus(0) = ln 2 everywhere and the decoder output is the first stage's).

    Raises:
        InputError: the config has no point-map VAE, or its architecture differs from the first stage's.
    """
    cfg = network.cfg.pointmap_vae
    if cfg is None:
        raise InputError(f"{network.cfg.source}: has no pointmap_vae_config")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pm = LatentVAE(cfg)
    _from_first_stage(pm, network)
    param = next(network.parameters())
    return pm.to(param.device, param.dtype).eval()


def build_models(recipe: TrainRecipe, init_checkpoint: str | os.PathLike | None = None,
                 init_pointmap_vae: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Models:
    """The network and point-map VAE a run starts from (float32 on ``device``).

    From ``init_checkpoint`` (official ``model.ckpt``; with ``init_pointmap_vae`` its ``vae.ckpt``, else
    :func:`pointmap_vae_from_first_stage`), or random weights from ``recipe.seed``
    (:func:`geo4d_model.loader.build_random`: a synthetic stand-in, not a trained model).
    """
    if init_checkpoint is None:
        if init_pointmap_vae is not None:
            raise InputError(f"--init-pointmap-vae {init_pointmap_vae}: needs --init-checkpoint (model.ckpt) too")
        net, pm = build_random(recipe.network, device=device, seed=recipe.seed)
        return Models(net, pm, {}, RANDOM_INIT, random_init=True)
    loaded = load_official(recipe.network, init_checkpoint, init_pointmap_vae, device=device, dtype=torch.float32)
    desc = f"{init_checkpoint}"
    pm = loaded.pointmap_vae
    if pm is None:
        pm = pointmap_vae_from_first_stage(loaded.network, recipe.seed)
        desc += " (point-map VAE: the first stage's weights + a freshly initialised confidence adaptor)"
    else:
        desc += f" + {init_pointmap_vae}"
    return Models(loaded.network, pm, loaded.clip_state_dict, desc)


def synthetic_context(network: Geo4DNetwork, seed: int = 0) -> torch.Tensor:
    """(1, 77 + Q·T, C): fixed random text (1, 77, C) and image (1, 257, embedding_dim) tokens drawn from
    ``seed`` (CPU generator) through the network's resampler — a SYNTHETIC stand-in for the CLIP context."""
    gen = torch.Generator().manual_seed(int(seed))
    text = torch.randn(1, _TEXT_TOKENS, network.cfg.unet.context_dim, generator=gen)
    image = torch.randn(1, IMAGE_TOKENS, network.cfg.resampler.embedding_dim, generator=gen)
    param = next(network.parameters())
    with torch.no_grad():
        ctx = network.context(text.to(param.device, param.dtype), image.to(param.device, param.dtype))
    return ctx.detach().float().cpu().contiguous()


def resolve_context(network: Geo4DNetwork, clip_state_dict: dict[str, torch.Tensor] | None,
                    context_file: str | os.PathLike | None = None, seed: int = 0) -> tuple[torch.Tensor, str]:
    """The constant (1, L, C) float32 CPU context of a run and where it came from.

    ``context_file`` (:func:`geo4d_model.context.read_context_file`), else the checkpoint's CLIP towers
    (:func:`geo4d_model.context.compute_context`; the CLIP tensors are dropped afterwards), else
    :func:`synthetic_context`. The resampler stays frozen, so the context is computed once.
    """
    if context_file is not None:
        return read_context_file(context_file, context_dim=network.cfg.unet.context_dim), f"context file {context_file}"
    if clip_state_dict and has_clip_weights(clip_state_dict):
        loaded = SimpleNamespace(network=network, clip_state_dict=clip_state_dict, checkpoint="model.ckpt")
        return compute_context(loaded), "CLIP context of the initial checkpoint"
    return synthetic_context(network, seed), SYNTHETIC_CONTEXT


def training_source(recipe: TrainRecipe, data_sources: Sequence = (), world_size: int = 1):
    """The clip source of a run: ``SyntheticClips(**recipe.synthetic)`` without data (its scenes must not
    overlap the validation scenes), the source itself for one, a seeded mix for several."""
    from geo4d_model.train.data import MixedSource, SyntheticClips

    sources = list(data_sources)
    if len(sources) > 1:
        return MixedSource(sources, seed=recipe.seed)
    if sources:
        return sources[0]
    s, v = recipe.synthetic, recipe.validation
    used = (s.seed, s.seed + recipe.total_steps * recipe.batch_size * world_size)
    if v.seed < used[1] and used[0] < v.seed + v.clips:
        raise InputError(f"{recipe.source}: validation.seed {v.seed}: the held-back scenes (seeds {v.seed}…"
                         f"{v.seed + v.clips - 1}) overlap the training scenes (seeds {used[0]}…{used[1] - 1})")
    return SyntheticClips(seed=s.seed, scene_frames=s.scene_frames, fs=s.fs)


# --- trained parameters, precision --------------------------------------------------------------------
def trained_parameters(models: Models, module: str) -> list[nn.Parameter]:
    """The parameters a phase trains: ``image_vae`` → the whole first-stage VAE; ``pointmap_vae`` → decoder, ``post_quant_conv``, ``decoder_adaptor``
    (encoder, ``quant_conv`` and the unused encoder adaptor frozen); ``image_vae_decoder`` → the
    first-stage VAE's decoder and ``post_quant_conv`` (its encoder, which makes the frames' latents,
    frozen); ``unet`` → the U-Net's."""
    if module == "pointmap_vae":
        vae = models.pointmap_vae
        return [*vae.vae.decoder.parameters(), *vae.vae.post_quant_conv.parameters(),
                *vae.decoder_adaptor.parameters()]
    if module == "image_vae_decoder":
        vae = models.network.first_stage_model.vae
        return [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    if module == "image_vae":
        return list(models.network.first_stage_model.vae.parameters())
    if module == "unet":
        return list(models.network.unet.parameters())
    raise ValueError(f"unknown trained module {module!r}")


def _set_trainable(models: Models, module: str) -> list[nn.Parameter]:
    """requires_grad only on ``module``'s trained parameters; the trained module in train mode."""
    for m in (models.network, models.pointmap_vae):
        m.requires_grad_(False)
    params = trained_parameters(models, module)
    for p in params:
        p.requires_grad_(True)
    _set_modes(models, module)
    return params


def _set_modes(models: Models, module: str | None) -> None:
    models.network.eval()
    models.pointmap_vae.eval()
    if module == "unet":
        models.network.unet.train()
    elif module == "pointmap_vae":
        models.pointmap_vae.train()
    elif module in ("image_vae_decoder", "image_vae"):
        models.network.first_stage_model.train()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast for ``bf16``, and for ``auto`` on CUDA; None (fp32) otherwise."""
    if precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda"):
        return torch.bfloat16
    return None


def _autocast(recipe: TrainRecipe, device: torch.device):
    dtype = autocast_dtype(recipe.precision, device)
    return torch.autocast(torch.device(device).type, dtype=dtype) if dtype is not None else nullcontext()


def _checkpointed_decode(vae: LatentVAE, z: torch.Tensor) -> torch.Tensor:
    """:meth:`LatentVAE.decode_with_confidence` with the mid block and each up block under
    :func:`torch.utils.checkpoint.checkpoint` (diffusers' own switch only acts inside ``Decoder.forward``,
    which this path does not call). Mirrors that method step for step; a test checks they agree."""
    from torch.utils.checkpoint import checkpoint

    dec = vae.vae.decoder
    h = dec.conv_in(vae.vae.post_quant_conv(z))
    h = checkpoint(dec.mid_block, h, None, use_reentrant=False)
    for up in dec.up_blocks:
        h = checkpoint(up, h, None, use_reentrant=False)
    out = dec.conv_out(dec.conv_act(dec.conv_norm_out(h)))
    return torch.cat([out, vae.decoder_adaptor(h)], dim=1)


class PointmapDecoder(nn.Module):
    """``forward(z)`` = the point-map VAE's decode with confidence, (N, 4, h, w) → (N, 4, H, W): the
    module a ``pointmap_vae`` phase trains (and DistributedDataParallel wraps)."""

    def __init__(self, vae: LatentVAE, gradient_checkpointing: bool = False):
        super().__init__()
        self.vae = vae
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.vae.training and torch.is_grad_enabled():
            return _checkpointed_decode(self.vae, z)
        return self.vae.decode_with_confidence(z)


def _timesteps(recipe: TrainRecipe, network: Geo4DNetwork, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` training timesteps: uniform over the schedule, or drawn among the inference sampler's."""
    if recipe.timesteps == "uniform":
        return torch.randint(0, network.alphas_cumprod.shape[0], (n,), generator=gen)
    from geo4d_model.sampler import DDIMSampler

    visited = torch.tensor(DDIMSampler.from_network(network).timesteps, dtype=torch.long)
    return visited[torch.randint(0, len(visited), (n,), generator=gen)]


class ImageDecoder(nn.Module):
    """``forward(z)`` = the first-stage VAE's decode (N, 4, h, w) → (N, 3, H, W): the module an
    ``image_vae_decoder`` phase trains."""

    def __init__(self, vae: LatentVAE):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)


class ImageAutoencoder(nn.Module):
    """``forward(x)`` = (the first-stage VAE's decode of its posterior mean, that mean): the module an
    ``image_vae`` phase trains, (N, 3, H, W) → ((N, 3, H, W), (N, 4, h, w))."""

    def __init__(self, vae: LatentVAE):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.vae.moments(x)[0]
        return self.vae.decode(mean), mean


# --- seeded draws ------------------------------------------------------------------------------------
def _seed(*entropy: int) -> int:
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])


def _generator(*entropy: int) -> torch.Generator:
    """A CPU generator seeded by ``entropy`` (draws are moved to the device: the same on every device)."""
    return torch.Generator().manual_seed(_seed(*entropy))


def _step_size(recipe: TrainRecipe, phase: Phase, step: int) -> tuple[int, int]:
    """The clip size of ``step`` (the same on every rank)."""
    i = int(np.random.default_rng(_seed(recipe.seed, step, _SIZE_STREAM)).integers(len(phase.sizes)))
    return tuple(phase.sizes[i])


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


# --- validation losses --------------------------------------------------------------------------------
def _vae_validation(models: Models, batch: dict, sums: dict, pairs: list) -> None:
    """Adds the clip's ``vae_loss``, ℓ1 over valid pixels (sum and count) and (σ, ℓ1) of valid pixels."""
    pm = to_frames(batch["pointmap"])
    z = models.pointmap_vae.moments(pm)[0]
    decoded = models.pointmap_vae.decode_with_confidence(z)
    loss, _ = pointmap_vae_loss(decoded, pm)
    l1, sigma = pointmap_errors(decoded, pm)
    valid = batch["valid"].reshape(l1.shape).bool()
    sums["vae_loss"] = sums.get("vae_loss", 0.0) + float(loss)
    sums["_l1"] = sums.get("_l1", 0.0) + float(l1[valid].sum())
    sums["_valid"] = sums.get("_valid", 0.0) + float(valid.sum())
    pairs.append((sigma[valid].cpu().numpy(), l1[valid].cpu().numpy()))


def _denoise_validation(models: Models, context: torch.Tensor, batch: dict, recipe: TrainRecipe, clip: int,
                        sums: dict) -> None:
    """Adds the clip's v-losses (all modalities weight 1) averaged over the fixed timesteps, fixed noise."""
    x0, cond = diffusion_targets(models.network, models.pointmap_vae, batch)
    ts = recipe.validation.timesteps
    for j, t in enumerate(ts):
        noise = torch.randn(x0.shape, generator=_generator(recipe.validation.seed, clip, j)).to(x0.device)
        tt = torch.full((x0.shape[0],), int(t), dtype=torch.long, device=x0.device)
        loss, per = v_prediction_loss(models.network, x0, cond, context, batch.get("fs"), tt, noise,
                                      dict.fromkeys(MODALITIES, 1.0))
        sums["denoise_loss"] = sums.get("denoise_loss", 0.0) + float(loss) / len(ts)
        for m, v in per.items():
            sums[f"denoise_{m}"] = sums.get(f"denoise_{m}", 0.0) + float(v) / len(ts)


def _spearman(pairs: list) -> float:
    from scipy.stats import spearmanr

    sigma = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0)
    l1 = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0)
    stride = max(1, len(sigma) // _SPEARMAN_MAX)
    sigma, l1 = sigma[::stride], l1[::stride]
    if len(sigma) < 2 or np.ptp(sigma) == 0 or np.ptp(l1) == 0:
        return float("nan")
    return float(spearmanr(sigma, l1).statistic)


@torch.no_grad()
def validation_losses(models: Models, context: torch.Tensor, recipe: TrainRecipe, source=None) -> dict[str, float]:
    """Held-back losses on ``recipe.validation.clips`` synthetic clips (scene seeds ``validation.seed + i``,
    disjoint from training), the models as given (the trainer swaps the EMA weights in):

    ``vae_loss`` (:func:`pointmap_vae_loss` of ``D(E(X))``), ``vae_l1`` (mean ℓ1 on valid pixels,
    normalised space), ``vae_sigma_spearman`` (rank correlation of σ and ℓ1 over valid pixels: does the
    confidence know where the decoder errs), ``image_vae_l1_<ray|moment|disparity>`` (the first-stage
    VAE's reconstruction of those maps), ``denoise_loss`` and ``denoise_<modality>`` (v-loss with
    all weights 1 at the fixed ``validation.timesteps``, noise seeded by (seed, clip, timestep index)).
    """
    from geo4d_model.train.data import SyntheticClips, collate

    v = recipe.validation
    source = source or SyntheticClips(seed=v.seed, scene_frames=recipe.synthetic.scene_frames, fs=recipe.synthetic.fs)
    device = next(models.network.parameters()).device
    modes = (models.network.training, models.pointmap_vae.training)
    models.network.eval()
    models.pointmap_vae.eval()
    sums: dict[str, float] = {}
    pairs: list = []
    try:
        for i in range(v.clips):
            size = tuple(v.sizes[i % len(v.sizes)])
            batch = _to_device(collate([source.clip(i, size, recipe.clip_frames)]), device)
            with _autocast(recipe, device):
                _vae_validation(models, batch, sums, pairs)
                _, image = image_vae_loss(models.network.first_stage_model.decode, models.network.first_stage_model,
                                          batch)
                for k, value in image.items():
                    sums[f"image_vae_{k}"] = sums.get(f"image_vae_{k}", 0.0) + float(value)
                _denoise_validation(models, context.to(device), batch, recipe, i, sums)
    finally:
        models.network.train(modes[0])
        models.pointmap_vae.train(modes[1])
    out = {k: s / v.clips for k, s in sums.items() if not k.startswith("_")}
    out["vae_l1"] = sums["_l1"] / max(sums["_valid"], 1.0)
    out["vae_sigma_spearman"] = _spearman(pairs)
    return out


@contextmanager
def _preserved_rng() -> Iterator[None]:
    """Global RNG states (torch, CUDA, NumPy, Python) restored afterwards: validation never shifts training."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


@contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` on CPU for the duration."""
    if device.type != "cpu":
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


# --- files of a run -----------------------------------------------------------------------------------
def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True, allow_nan=True) + "\n")
        f.flush()


def _trim_metrics(path: Path, step: int) -> None:
    """Keep the metrics lines of steps ≤ ``step`` (a resumed run rewrites the later ones; a line torn by a
    kill is dropped), atomically."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and int(rec.get("step", 0)) <= step:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place; an earlier one is removed only after the new one is in place."""
    old = final.with_name(f".{final.name}-old-{os.getpid()}")
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# --- the trainer -------------------------------------------------------------------------------------
class Trainer:
    """Runs a recipe on ``models`` with clips from ``source`` into ``out_dir`` (see the module docstring).

    Args:
        recipe: the :class:`~geo4d_model.train.recipe.TrainRecipe`.
        source: a :class:`~geo4d_model.train.data.ClipSource`.
        models: :class:`Models` (trained in place).
        context: (1, L, C) the constant cross-attention context (:func:`resolve_context`).
        dist: this process's :class:`~geo4d_model.train.distributed.DistInfo` (default: one process).
        context_description: where the context came from (README, run.json).
    """

    def __init__(self, recipe: TrainRecipe, source, out_dir: str | os.PathLike, models: Models,
                 context: torch.Tensor, dist: DistInfo | None = None, context_description: str = ""):
        self.recipe, self.source, self.models = recipe, source, models
        self.out_dir = Path(out_dir)
        self.device = next(models.network.parameters()).device
        self.dist = dist or DistInfo(device=self.device)
        self.context = context.detach().to(self.device, torch.float32)
        self.context_description = context_description
        if not models.random_init and any(p.train == "image_vae" for p in recipe.phases):
            raise InputError(f"{recipe.source}: an 'image_vae' phase (the stand-in pretraining of a random-initialised "
                             f"network's VAE) cannot train {models.description}: its VAE is the pretrained one")
        self.fingerprint = recipe_fingerprint(recipe)
        ckpt = recipe.gradient_checkpointing
        self.gradient_checkpointing = self.device.type == "cuda" if ckpt == "auto" else bool(ckpt)
        self.emas: dict[str, Any] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.step = 0
        self.last_log: dict[str, Any] = {}
        self.last_validation: dict[str, Any] = {}
        self._module: str | None = None
        self._phase_index: int | None = None
        self._params: list[nn.Parameter] = []
        self._forward: nn.Module | None = None
        self._acc: dict[str, Any] = {"n": 0, "sums": {}, "lr": 0.0}
        self._t0 = time.perf_counter()

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    # --- phases ---------------------------------------------------------------------------------------
    def _trained_module(self, module: str) -> nn.Module:
        if module == "unet":
            self.models.network.unet.gradient_checkpointing = self.gradient_checkpointing
            return self.models.network.unet
        if module == "image_vae_decoder":
            return ImageDecoder(self.models.network.first_stage_model)
        if module == "image_vae":
            return ImageAutoencoder(self.models.network.first_stage_model)
        return PointmapDecoder(self.models.pointmap_vae, self.gradient_checkpointing)

    def _new_optimizer(self, module: str, lr: float) -> None:
        """AdamW over ``module``'s trained parameters, its EMA (first time only) and DDP wrapper."""
        o = self.recipe.optimizer
        self._params = _set_trainable(self.models, module)
        self.optimizer = torch.optim.AdamW(self._params, lr=lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        if self.recipe.ema is not None and module not in self.emas and module != "image_vae":
            from diffusers.training_utils import EMAModel

            self.emas[module] = EMAModel(self._params, decay=self.recipe.ema.decay)
        self._forward = wrap_ddp(self._trained_module(module), self.dist)
        self._module = module

    def _enter_phase(self, index: int, local: int | None = None) -> None:
        """Optimiser (new when the trained module changes), phase LR and a fresh schedule over its steps;
        at local step 0 of the phase after the stand-in pretraining, :func:`restart_pointmap_vae`
        (``local`` None: restoring a checkpoint, whose weights are already those of the run)."""
        from diffusers.optimization import get_scheduler

        phase = self.recipe.phases[index]
        after_pretraining = index > 0 and self.recipe.phases[index - 1].train == "image_vae"
        if local == 0 and after_pretraining and phase.train != "image_vae":
            restart_pointmap_vae(self.models)
        lr = phase.lr or self.recipe.optimizer.lr
        if phase.train != self._module:
            self._new_optimizer(phase.train, lr)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] = lr
        first = index == 0 or self.recipe.phases[index - 1].train != phase.train
        self.scheduler = get_scheduler(self.recipe.lr_schedule.name, self.optimizer,
                                       num_warmup_steps=self.recipe.lr_schedule.warmup_steps if first else 0,
                                       num_training_steps=phase.steps)
        self._phase_index = index

    # --- one step -------------------------------------------------------------------------------------
    def _batch(self, step: int, phase: Phase) -> dict[str, torch.Tensor]:
        """The B clips of this rank at ``step``: indices ``(k·W + r)·B + j``, one drawn size."""
        from geo4d_model.train.data import collate

        B, W, r = self.recipe.batch_size, self.dist.world_size, self.dist.rank
        size = _step_size(self.recipe, phase, step)
        samples = [self.source.clip((step * W + r) * B + j, size, self.recipe.clip_frames) for j in range(B)]
        batch = collate(samples)
        if "fs" not in batch:
            batch["fs"] = torch.full((B,), int(self.source.fs), dtype=torch.long)
        return _to_device(batch, self.device)

    def _vae_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pm = to_frames(batch["pointmap"])
        with torch.no_grad():
            z = self.models.pointmap_vae.moments(pm)[0]
        with _autocast(self.recipe, self.device):
            decoded = self._forward(z)
        loss, stats = pointmap_vae_loss(decoded, pm)
        return loss, stats

    def _unet_loss(self, batch: dict, step: int, index: int, local: int) -> tuple[torch.Tensor, dict]:
        net = self.models.network
        with _autocast(self.recipe, self.device):
            x0, cond = diffusion_targets(net, self.models.pointmap_vae, batch)
        gen = _generator(self.recipe.seed, step, self.dist.rank, _NOISE_STREAM)
        t = _timesteps(self.recipe, net, x0.shape[0], gen).to(self.device)
        noise = torch.randn(x0.shape, generator=gen).to(self.device)
        apply = None
        if self.dist.distributed:  # the U-Net call must go through the DDP wrapper (gradient averaging)
            apply = lambda x, c, tt, ctx, fs: self._forward(torch.cat([x, c.to(x.dtype)], dim=1), tt, ctx, fs)  # noqa: E731
        with _autocast(self.recipe, self.device):
            loss, per = v_prediction_loss(net, x0, cond, self.context, batch["fs"], t, noise,
                                          phase_weights(self.recipe, index, local), apply=apply)
        return loss, {f"mse_{m}": v for m, v in per.items()}

    def _train_step(self, step: int) -> tuple[int, dict[str, float]]:
        index, phase, local = self.recipe.phase_at(step)
        if index != self._phase_index:
            self._enter_phase(index, local)
        batch = self._batch(step, phase)
        if phase.train == "pointmap_vae":
            loss, terms = self._vae_loss(batch)
        elif phase.train == "image_vae":
            with _autocast(self.recipe, self.device):
                loss, terms = image_autoencoder_loss(self._forward, batch, self.models.network.scale_factor)
        elif phase.train == "image_vae_decoder":
            with _autocast(self.recipe, self.device):
                loss, terms = image_vae_loss(self._forward, self.models.network.first_stage_model, batch)
        else:
            loss, terms = self._unet_loss(batch, step, index, local)
        value = float(loss.detach())
        if not np.isfinite(value):
            raise Geo4DError(f"training diverged at step {step + 1} (phase {phase.name}): the loss is {value}")
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.recipe.optimizer.grad_clip or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self._params, clip)
        self.optimizer.step()
        self.scheduler.step()
        ema = self.emas.get(phase.train)
        if ema is not None and (step + 1) % self.recipe.ema.every == 0:
            ema.step(self._params)
        self.step = step + 1
        return index, {"loss": value, "grad_norm": float(norm), **{k: float(v) for k, v in terms.items()}} | {"lr": lr}

    # --- logging, validation, checkpoints ---------------------------------------------------------------
    def _log(self, step: int, index: int, values: dict[str, float], end: int, on_log) -> None:
        """Accumulate; every ``log_every`` steps, at a phase's last step and at ``end`` write the interval's
        means (over steps and ranks) as one ``kind: train`` line."""
        acc = self._acc
        acc["n"] += 1
        acc["lr"] = values.pop("lr")
        for k, v in values.items():
            acc["sums"][k] = acc["sums"].get(k, 0.0) + v
        phase = self.recipe.phases[index]
        phase_end = self.recipe.phase_start(index) + phase.steps
        if step % self.recipe.log_every and step not in (phase_end, end):
            return
        keys = sorted(acc["sums"])
        means = torch.tensor([acc["sums"][k] / acc["n"] for k in keys], dtype=torch.float64)
        means = all_reduce_mean(means, self.dist).tolist()
        now = time.perf_counter()
        record = {"kind": "train", "step": step, "phase": phase.name, "lr": acc["lr"], "steps": acc["n"],
                  **dict(zip(keys, means)), "seconds": now - self._t0}
        self._t0 = now
        self._acc = {"n": 0, "sums": {}, "lr": acc["lr"]}
        self.last_log = record
        if is_main(self.dist):
            _append_jsonl(self.metrics_path, record)
            if on_log is not None:
                on_log(step, dict(record))

    @contextmanager
    def ema_weights(self) -> Iterator[Models]:
        """The models with each trained module's EMA weights swapped in (restored exactly afterwards)."""
        swapped = []
        try:
            for name, ema in self.emas.items():
                params = trained_parameters(self.models, name)
                ema.store(params)
                ema.copy_to(params)
                swapped.append((ema, params))
            yield self.models
        finally:
            for ema, params in swapped:
                ema.restore(params)

    def _validate(self, step: int, validators: Sequence[Callable]) -> None:
        """Rank 0: :func:`validation_losses` and each validator on the EMA weights → a ``kind: validation`` line."""
        if is_main(self.dist):
            with self.ema_weights() as models, _preserved_rng():
                out = validation_losses(models, self.context, self.recipe)
                for fn in validators:
                    out.update(fn(models, self.context, step))
            _set_modes(self.models, self._module)
            record = {"kind": "validation", "step": step, **out}
            self.last_validation = record
            _append_jsonl(self.metrics_path, record)
            log.info("validation at step %d: %s", step, record)
        barrier(self.dist)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit for bit."""
        return {
            "step": self.step, "phase": self._phase_index, "module": self._module,
            "network": self.models.network.state_dict(), "pointmap_vae": self.models.pointmap_vae.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "ema": {name: ema.state_dict() for name, ema in self.emas.items()},
            "recipe_fingerprint": self.fingerprint, "recipe_settings": recipe_settings(self.recipe),
            "context": self.context.cpu(), "world_size": self.dist.world_size,
            "log": {"n": self._acc["n"], "sums": dict(self._acc["sums"]), "lr": self._acc["lr"]},
            "rng": rng_state(),
        }

    def _checkpoint(self, step: int, on_checkpoint) -> None:
        if is_main(self.dist):
            meta = {"phase": self.recipe.phases[self._phase_index].name, "recipe_fingerprint": self.fingerprint,
                    "recipe_settings": recipe_settings(self.recipe), "rank": self.dist.rank,
                    "world_size": self.dist.world_size}
            path = save_checkpoint(self.out_dir, step, self.state_dict(), keep=self.recipe.keep_checkpoints, meta=meta)
            if on_checkpoint is not None:
                on_checkpoint(step, path)
        barrier(self.dist)

    # --- resume ---------------------------------------------------------------------------------------
    def _check_resumable(self, path: Path) -> None:
        meta = read_meta(path)
        if meta.get("recipe_fingerprint") != self.fingerprint:
            diff = recipe_difference(meta.get("recipe_settings", {}), recipe_settings(self.recipe))
            raise InputError(f"{self.out_dir}: cannot resume {path.name} with recipe {self.recipe.source}: "
                             f"{diff or 'the recipe fingerprint differs'}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (weights, optimiser, schedule, EMA, log interval, RNG states)."""
        if not torch.equal(state["context"].float(), self.context.cpu()):
            log.warning("%s: the context differs from the one the run was trained with (now: %s); continuing with "
                        "the checkpoint's", self.out_dir, self.context_description or "another context")
            self.context = state["context"].float().to(self.device)
        self.models.network.load_state_dict(state["network"])
        self.models.pointmap_vae.load_state_dict(state["pointmap_vae"])
        self._module = self._phase_index = None
        if state["phase"] is not None:
            self._enter_phase(int(state["phase"]))
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        for name, ema_state in state["ema"].items():
            if name not in self.emas:
                from diffusers.training_utils import EMAModel

                self.emas[name] = EMAModel(trained_parameters(self.models, name), decay=self.recipe.ema.decay)
            self.emas[name].load_state_dict(ema_state)
            self.emas[name].to(self.device)
        if state.get("world_size", 1) != self.dist.world_size:
            log.warning("resuming a %d-process run with %d processes: the data order changes from here on",
                        state.get("world_size", 1), self.dist.world_size)
        self.step = int(state["step"])
        self._acc = {"n": int(state["log"]["n"]), "sums": dict(state["log"]["sums"]), "lr": state["log"]["lr"]}
        set_rng_state(state["rng"])

    def _start(self, resume: bool) -> int:
        """The step to start from: the newest complete checkpoint's when resuming, else 0."""
        if not resume:
            found = list_checkpoints(self.out_dir)
            if found:
                raise InputError(f"{self.out_dir}: holds checkpoints of an earlier run (up to step {found[-1][0]}); "
                                 "resume it (--resume) or choose another output folder")
            torch.manual_seed(_seed(self.recipe.seed, self.dist.rank))
            return 0
        path = latest_checkpoint(self.out_dir)
        if path is None:
            raise InputError(f"{self.out_dir}: nothing to resume (no complete checkpoint under "
                             f"{self.out_dir / 'checkpoints'})")
        self._check_resumable(path)
        self.load_state_dict(load_checkpoint(path, map_location="cpu"))
        log.info("resumed from %s (step %d)", path, self.step)
        return self.step

    def _prepare_out_dir(self, start: int, resumed: bool) -> None:
        if is_main(self.dist):
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if not resumed and self.metrics_path.exists():  # a run killed before its first checkpoint
                os.replace(self.metrics_path, self.metrics_path.with_suffix(".jsonl.prev"))
            _trim_metrics(self.metrics_path, start)
            info = {"recipe": self.recipe.source, "recipe_fingerprint": self.fingerprint,
                    "init": self.models.description, "context": self.context_description,
                    "data": getattr(self.source, "name", type(self.source).__name__),
                    "world_size": self.dist.world_size, "device": str(self.device), "start_step": start}
            tmp = self.out_dir / f".run.json.tmp-{os.getpid()}"
            tmp.write_text(json.dumps(info, indent=1, sort_keys=True))
            os.replace(tmp, self.out_dir / "run.json")
        barrier(self.dist)

    # --- final files ----------------------------------------------------------------------------------
    def _readme(self, step: int, fingerprint: str) -> str:
        r = self.recipe
        here = (self.out_dir / "final").resolve()
        h, w = r.phases[-1].sizes[0]
        done = "the recipe finished" if step >= r.total_steps else "stopped early by --max-steps"
        weights = (f"EMA weights (decay {r.ema.decay}) of the trained parameters" if self.emas
                   else "the trained weights (no EMA)")
        lines = [
            "Geo4D checkpoint fine-tuned by `geo4d train` (official file layout).",
            "",
            f"recipe:        {r.source} (fingerprint {self.fingerprint})",
            f"steps:         {step} of {r.total_steps} ({done})",
            f"phases:        {', '.join(f'{p.name} ({p.train}, {p.steps} steps)' for p in r.phases)}",
            f"initialised:   {self.models.description}",
            f"training data: {getattr(self.source, 'name', type(self.source).__name__)}",
            f"weights:       {weights}",
            f"context:       {self.context_description} (cached in context-cache/ for model.ckpt {fingerprint})",
            "",
            "Run it (the context cache replaces CLIP, which the file does not hold):",
            f"  geo4d reconstruct VIDEO --store STORE --predictor geo4d --config {here}/config.yaml "
            f"--checkpoint {here}/model.ckpt --pointmap-vae {here}/vae.ckpt --clip-cache {here}/context-cache "
            f"--image-size {h}x{w}",
        ]
        if self.models.random_init or "synthetic" in self.context_description:
            lines += ["", "NOTE: this run started from random weights and/or a synthetic context: it is a SYNTHETIC "
                      "STAND-IN for exercising the pipeline, not a trained Geo4D model."]
        return "\n".join(lines) + "\n"

    def _write_final(self, step: int) -> Path:
        """``final/``: model.ckpt + vae.ckpt (EMA weights when on), config.yaml, README.txt and the context
        cache entry for model.ckpt's fingerprint; written beside and moved into place (rank 0)."""
        final = self.out_dir / "final"
        if is_main(self.dist):
            tmp = self.out_dir / f".final-tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            with self.ema_weights() as models:
                save_official(models.network, tmp / "model.ckpt", models.pointmap_vae, tmp / "vae.ckpt")
            fp = file_fingerprint(tmp / "model.ckpt")
            write_context_file(cache_path(fp, tmp / "context-cache"), self.context, fp)
            shutil.copyfile(self.recipe.network, tmp / "config.yaml")
            (tmp / "README.txt").write_text(self._readme(step, fp))
            _replace_dir(tmp, final)
        barrier(self.dist)
        return final

    # --- the loop -------------------------------------------------------------------------------------
    def _end_step(self, max_steps: int | None) -> int:
        if max_steps is not None and max_steps < 1:
            raise InputError(f"--max-steps {max_steps}: must be ≥ 1")
        return self.recipe.total_steps if max_steps is None else min(self.recipe.total_steps, int(max_steps))

    def _loop(self, start: int, end: int, on_log, on_checkpoint, validators) -> None:
        every = self.recipe.validation.every
        for step in range(start, end):
            index, values = self._train_step(step)
            done = step + 1
            self._log(done, index, values, end, on_log)
            if every and done % every == 0 and done != end:
                self._validate(done, validators)
            if done % self.recipe.checkpoint_every == 0 or done == end:
                self._checkpoint(done, on_checkpoint)

    def run(self, max_steps: int | None = None, resume: bool = False, on_log: Callable | None = None,
            on_checkpoint: Callable | None = None, validators: Sequence[Callable] = ()) -> TrainResult:
        """Train up to global step ``max_steps`` (default: the recipe's end), validate, write ``final/``.

        Args:
            resume: continue from the newest complete checkpoint (the recipe's fingerprint must match).
            on_log: ``fn(step, record)`` per train log line (rank 0).
            on_checkpoint: ``fn(step, folder)`` after each checkpoint (rank 0).
            validators: ``fn(models_with_ema_weights, context, step) -> dict`` run with each validation.

        Raises:
            InputError: resume with nothing to resume or another recipe, checkpoints in ``out_dir``
                without resume, a checkpoint beyond ``max_steps``.
        """
        end = self._end_step(max_steps)
        start = self._start(resume)
        if start > end:
            raise InputError(f"{self.out_dir}: the checkpoint is at step {start}, beyond --max-steps {end}")
        self._prepare_out_dir(start, resume)
        with _deterministic(self.device):
            if start == 0 and self.recipe.validation.every:
                self._validate(0, validators)  # the baseline the later validations are compared with
            self._t0 = time.perf_counter()
            self._loop(start, end, on_log, on_checkpoint, validators)
            if start < end or not (self.out_dir / "final").is_dir():
                self._validate(end, validators)
                self._write_final(end)
        return TrainResult(out_dir=self.out_dir, step=end, total_steps=self.recipe.total_steps,
                           finished=end >= self.recipe.total_steps, final_dir=self.out_dir / "final",
                           last_log=self.last_log, validation=self.last_validation, models=self.models,
                           resumed_from=start if resume else None)


def run_training(recipe_path: str | os.PathLike | TrainRecipe, data_sources: Sequence = (),
                 out_dir: str | os.PathLike = "train-run", init_checkpoint: str | os.PathLike | None = None,
                 init_pointmap_vae: str | os.PathLike | None = None, context_file: str | os.PathLike | None = None,
                 max_steps: int | None = None, resume: bool = False, device: str | torch.device = "auto",
                 on_log: Callable | None = None, validators: Sequence[Callable] = (),
                 on_checkpoint: Callable | None = None) -> TrainResult:
    """A whole training run, in one process or as one rank of ``torchrun`` (what the CLI and the flow call).

    Args:
        recipe_path: the recipe YAML (or a loaded :class:`TrainRecipe`).
        data_sources: clip sources (empty: ``SyntheticClips(**recipe.synthetic)``, synthetic scenes).
        out_dir: the run folder (checkpoints, metrics, final files).
        init_checkpoint, init_pointmap_vae: official ``model.ckpt`` / ``vae.ckpt`` to start from (none:
            random weights, a synthetic stand-in).
        context_file: a context ``.safetensors`` (else the checkpoint's CLIP, else a synthetic context).
        max_steps: stop after this global step (the recipe continues on a later ``resume``).
        device: ``auto`` (CUDA when available, rank ``LOCAL_RANK``'s GPU), ``cpu``, ``cuda``, …
    """
    recipe = recipe_path if isinstance(recipe_path, TrainRecipe) else load_recipe(recipe_path)
    info = init_distributed(device)
    try:
        models = build_models(recipe, init_checkpoint, init_pointmap_vae, info.device)
        context, described = resolve_context(models.network, models.clip_state_dict, context_file, seed=recipe.seed)
        source = training_source(recipe, data_sources, info.world_size)
        trainer = Trainer(recipe, source, out_dir, models, context, dist=info, context_description=described)
        return trainer.run(max_steps=max_steps, resume=resume, on_log=on_log, on_checkpoint=on_checkpoint,
                           validators=validators)
    finally:
        shutdown(info)
