"""The training recipe: one YAML file that says what a fine-tuning run does (network, phases, optimiser,
schedule, EMA, checkpoints, validation), read into the pydantic model :class:`TrainRecipe`.

Phases run in order over one global step counter. An ``image_vae`` phase (only at the start, and only
for a random-initialised network: a stand-in for the pretraining the real video model's VAE has, which
Geo4D keeps unchanged) trains the whole first-stage VAE, encoder included, as an autoencoder of the
frames and of every map it will encode; when it ends the point-map VAE starts again from the first
stage's weights, as the paper's does. A ``pointmap_vae`` phase trains the point-map VAE's
decoder side; an ``image_vae_decoder`` phase the first-stage VAE's decoder alone on the ray, moment and
disparity maps (its encoder frozen); a ``unet`` phase trains the U-Net on the v-prediction loss with per-modality weights
``w_m`` (modalities not listed weigh 0). ``ramp_steps`` R lets modalities that weighed 0 in the
previous phase rise linearly: at the phase's local step i their weight is ``w_m · min(1, (i + 1)/R)``.

:func:`recipe_fingerprint` hashes the settings that change the trained weights (everything except
``log_every``, ``checkpoint_every``, ``keep_checkpoints`` and ``validation``; the network enters by its
parsed architecture, not its path); a run refuses to resume under another fingerprint and
:func:`recipe_difference` names the first differing setting. ``max_steps`` is a command-line flag, not
part of the recipe.

Example:
    >>> r = recipe_from_dict({"network": "configs/train/tiny-network.yaml", "clip_frames": 8,
    ...     "phases": [{"name": "vae", "train": "pointmap_vae", "steps": 3, "sizes": [[32, 48]]},
    ...                {"name": "unet", "train": "unet", "steps": 2, "sizes": [[32, 48]],
    ...                 "modalities": {"pointmap": 1.0, "ray": 0.5}, "ramp_steps": 4}]}, check_network=False)
    >>> r.total_steps, r.phase_at(3)[0], phase_weights(r, 1, 0)
    (5, 1, {'pointmap': 0.25, 'ray': 0.125, 'moment': 0.0, 'disparity': 0.0})
    >>> recipe_from_dict({"network": "x.yaml", "phases": [], "colour": 1}, source="r.yaml", check_network=False)
    Traceback (most recent call last):
    ...
    geo4d.errors.InputError: r.yaml: unknown key colour
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from geo4d.errors import InputError

__all__ = [
    "TrainRecipe", "Phase", "OptimizerSettings", "LRSchedule", "EMASettings", "ValidationSettings",
    "SyntheticSettings", "load_recipe", "recipe_from_dict", "recipe_fingerprint", "recipe_settings",
    "recipe_difference", "phase_weights", "network_size_factor", "MODALITIES", "UNFINGERPRINTED",
]

#: Modality names of the 16-channel window latent, in latent order (geo4d_model.network.MODALITY_CHANNELS).
MODALITIES = ("pointmap", "ray", "moment", "disparity")
#: Recipe settings that do not change the trained weights (left out of the fingerprint).
UNFINGERPRINTED = ("log_every", "checkpoint_every", "keep_checkpoints", "validation")
#: diffusers.optimization.get_scheduler names a recipe may use (piecewise_constant needs rules we do not read).
SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Size = tuple[PositiveInt, PositiveInt]


class _Strict(BaseModel):
    """A recipe block: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimizerSettings(_Strict):
    """AdamW (torch) settings; ``grad_clip`` is the max global gradient norm (0 or null: no clipping)."""

    lr: float = Field(1.0e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1.0e-8, gt=0)
    grad_clip: float | None = Field(1.0, ge=0)


class LRSchedule(_Strict):
    """A :func:`diffusers.optimization.get_scheduler` schedule, run over each phase's steps; the warmup
    applies when a phase starts a new optimiser (the first phase of each trained module)."""

    name: str = "constant_with_warmup"
    warmup_steps: NonNegativeInt = 0

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r} (one of {', '.join(SCHEDULES)})")
        return name


class EMASettings(_Strict):
    """:class:`diffusers.training_utils.EMAModel` of the trained parameters, updated every ``every`` steps."""

    decay: float = Field(0.999, gt=0, lt=1)
    every: PositiveInt = 1


class ValidationSettings(_Strict):
    """Held-back synthetic clips (scene seeds ``seed + i``) evaluated every ``every`` steps (0: only at
    the end) at fixed timesteps with fixed noise; clip i is rendered at ``sizes[i % len(sizes)]``."""

    every: NonNegativeInt = 100
    clips: PositiveInt = 4
    seed: NonNegativeInt = 1_000_000
    sizes: list[Size] = Field(default_factory=lambda: [(32, 48)], min_length=1)
    timesteps: tuple[NonNegativeInt, ...] = (99, 299, 499, 699, 899)


class SyntheticSettings(_Strict):
    """The synthetic clip source used when no data is given (``SyntheticClips(**synthetic)``)."""

    seed: NonNegativeInt = 0
    scene_frames: PositiveInt = 24
    fs: PositiveInt = 24


class Phase(_Strict):
    """One training phase: ``train`` names the module, ``sizes`` the (H, W) clip sizes drawn per step."""

    name: str = Field(min_length=1)
    train: Literal["image_vae", "pointmap_vae", "image_vae_decoder", "unet"]
    steps: PositiveInt
    lr: float | None = Field(None, gt=0)
    sizes: list[Size] = Field(min_length=1)
    modalities: dict[str, float] = Field(default_factory=dict)
    ramp_steps: NonNegativeInt = 0

    @model_validator(mode="after")
    def _modalities(self) -> Self:
        unknown = sorted(set(self.modalities) - set(MODALITIES))
        if unknown:
            raise ValueError(f"unknown modality {unknown[0]!r} (one of {', '.join(MODALITIES)})")
        if any(w < 0 for w in self.modalities.values()):
            raise ValueError("modality weights must be ≥ 0")
        if self.train != "unet" and (self.modalities or self.ramp_steps):
            raise ValueError("modalities and ramp_steps only apply to 'unet' phases")
        if self.train == "unet" and not any(w > 0 for w in self.modalities.values()):
            raise ValueError("a 'unet' phase needs at least one modality with a positive weight")
        return self

    def weights(self) -> dict[str, float]:
        """The full weight table (modalities not listed: 0), in latent order."""
        return {m: float(self.modalities.get(m, 0.0)) for m in MODALITIES}


class TrainRecipe(_Strict):
    """The whole recipe (see the module docstring and docs for each block)."""

    network: Path
    seed: NonNegativeInt = 0
    clip_frames: PositiveInt = 16
    batch_size: PositiveInt = 1
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    gradient_checkpointing: Literal["auto"] | bool = "auto"
    optimizer: OptimizerSettings = OptimizerSettings()
    lr_schedule: LRSchedule = LRSchedule()
    ema: EMASettings | None = EMASettings()
    #: Timesteps of the U-Net's loss: ``uniform`` over the schedule's 1000, or ``sampler``: only those the
    #: inference sampler visits (5-step DDIM: 999, 799, 599, 399, 199) — for short runs that must sample well.
    timesteps: Literal["uniform", "sampler"] = "uniform"
    checkpoint_every: PositiveInt = 50
    keep_checkpoints: PositiveInt = 3
    log_every: PositiveInt = 10
    validation: ValidationSettings = ValidationSettings()
    synthetic: SyntheticSettings = SyntheticSettings()
    phases: list[Phase] = Field(min_length=1)
    _source: str = PrivateAttr("<dict>")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [p.name for p in self.phases]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"phase name {dup[0]!r} is used twice")
        kinds = [p.train for p in self.phases]
        late = [i for i in range(1, len(kinds)) if kinds[i] == "image_vae" and kinds[i - 1] != "image_vae"]
        if late:
            raise ValueError(f"phases[{late[0]}]: an 'image_vae' phase (the stand-in pretraining) must come before "
                             "every other phase")
        if self.synthetic.scene_frames < self.clip_frames:  # the validation clips are synthetic too
            raise ValueError(f"synthetic.scene_frames {self.synthetic.scene_frames} is shorter than clip_frames "
                             f"{self.clip_frames}")
        return self

    @property
    def source(self) -> str:
        """The YAML file the recipe came from (``<dict>`` when built in code)."""
        return self._source

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    def phase_at(self, step: int) -> tuple[int, Phase, int]:
        """(phase index, phase, local step) of global step ``step`` (0-based; the last phase past the end)."""
        if step < 0:
            raise ValueError(f"step must be ≥ 0, got {step}")
        start = 0
        for i, p in enumerate(self.phases):
            if step < start + p.steps:
                return i, p, step - start
            start += p.steps
        last = len(self.phases) - 1
        return last, self.phases[last], step - (start - self.phases[last].steps)

    def phase_start(self, index: int) -> int:
        """Global step at which phase ``index`` begins."""
        return sum(p.steps for p in self.phases[:index])


def phase_weights(recipe: TrainRecipe, index: int, local_step: int) -> dict[str, float]:
    """Modality weights of phase ``index`` at its local step i: ``w_m · min(1, (i + 1)/R)`` for modalities
    whose weight was 0 in the previous phase (every modality when it is not a U-Net phase) when
    ``ramp_steps`` R > 0, else ``w_m``."""
    phase = recipe.phases[index]
    weights = phase.weights()
    if phase.ramp_steps <= 0:
        return weights
    prev = recipe.phases[index - 1] if index > 0 else None
    before = prev.weights() if prev is not None and prev.train == "unet" else dict.fromkeys(MODALITIES, 0.0)
    ramp = min(1.0, (local_step + 1) / phase.ramp_steps)
    return {m: w * ramp if before[m] == 0 else w for m, w in weights.items()}


# --- loading ---------------------------------------------------------------------------------------
def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _error_line(exc: ValidationError, source: str) -> str:
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a misspelt key first
    key = _loc(err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key {key}"
    if err["type"] == "missing":
        return f"{source}: missing {key}"
    msg = str(err.get("ctx", {}).get("error", err["msg"])) if err["type"] == "value_error" else err["msg"]
    where = f"{key}: " if key else ""
    value = f" (got {err.get('input')!r})" if key and err["type"] != "value_error" else ""
    return f"{source}: {where}{msg}{value}"


def network_size_factor(config) -> int:
    """The factor (H, W) must be multiples of: VAE downsampling × U-Net downsampling."""
    from geo4d_model.config import load_config

    cfg = load_config(config)
    return cfg.first_stage.downsample_factor * 2 ** (len(cfg.unet.channel_mult) - 1)


def _check_network(recipe: TrainRecipe, source: str) -> None:
    """Sizes are multiples of the network's downsampling factor; validation timesteps exist."""
    from geo4d_model.config import load_config

    T = load_config(recipe.network).diffusion.timesteps
    bad = [t for t in recipe.validation.timesteps if t >= T]
    if bad:
        raise InputError(f"{source}: validation.timesteps: {bad[0]} is not a timestep of the network (0 … {T - 1})")
    factor = network_size_factor(recipe.network)
    groups = [(f"phases[{i}].sizes", p.sizes) for i, p in enumerate(recipe.phases)]
    for key, sizes in groups + [("validation.sizes", recipe.validation.sizes)]:
        for h, w in sizes:
            if h % factor or w % factor:
                raise InputError(f"{source}: {key}: {h}×{w} is not a multiple of the network's downsampling "
                                 f"factor {factor} ({recipe.network.name})")


def recipe_from_dict(data: Any, source: str = "<dict>", base: str | os.PathLike | None = None,
                     check_network: bool = True) -> TrainRecipe:
    """Validate a recipe mapping; ``network`` relative to ``base`` (default: the working directory).

    Raises:
        InputError: one line naming ``source`` and the key (unknown, missing or invalid), a missing
            network config, or a size that is not a multiple of the network's downsampling factor.
    """
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping of recipe settings at the top level")
    data = dict(data)
    if isinstance(data.get("network"), str | os.PathLike):
        data["network"] = Path(base or ".") / Path(data["network"]).expanduser()
    try:
        recipe = TrainRecipe.model_validate(data)
    except ValidationError as exc:
        raise InputError(_error_line(exc, source)) from None
    recipe._source = source
    if check_network:
        if not recipe.network.is_file():
            raise InputError(f"{source}: network: {recipe.network}: no such network config")
        _check_network(recipe, source)
    return recipe


def load_recipe(path: str | os.PathLike) -> TrainRecipe:
    """Read a recipe YAML (relative paths resolved against its folder); see :func:`recipe_from_dict`."""
    from geo4d_model.config import read_yaml

    p = Path(path)
    return recipe_from_dict(read_yaml(p, "recipe"), source=str(p), base=p.parent)


# --- fingerprint -------------------------------------------------------------------------------------
def _network_digest(path: Path) -> str:
    """sha256 of the parsed architecture and schedule blocks of the network config (not its path)."""
    from geo4d_model.config import load_config

    if not path.is_file():
        return f"missing:{path}"
    cfg = load_config(path)
    blocks = {k: getattr(cfg, k).model_dump(mode="json") if getattr(cfg, k) is not None else None
              for k in ("unet", "first_stage", "pointmap_vae", "resampler", "diffusion")}
    return hashlib.sha256(json.dumps(blocks, sort_keys=True).encode()).hexdigest()[:16]


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k in sorted(value):
            _flatten(value[k], f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}[{i}]", out)
        out[f"{prefix}.count"] = len(value)
    else:
        out[prefix] = value


def recipe_settings(recipe: TrainRecipe) -> dict[str, Any]:
    """The fingerprinted settings, flattened to dotted keys (``phases[1].lr``) with JSON values."""
    data = recipe.model_dump(mode="json", exclude=set(UNFINGERPRINTED))
    data["network"] = _network_digest(recipe.network)
    out: dict[str, Any] = {}
    _flatten(data, "", out)
    return out


def recipe_fingerprint(recipe: TrainRecipe) -> str:
    """sha256 (16 hex digits) of :func:`recipe_settings`."""
    return hashlib.sha256(json.dumps(recipe_settings(recipe), sort_keys=True).encode()).hexdigest()[:16]


def recipe_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first setting that differs between two :func:`recipe_settings` tables, as
    ``"key (checkpoint: a, now: b)"``; None when equal."""
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            what = "the network config's architecture" if key == "network" else key
            return f"{what} (checkpoint: {old.get(key, '<absent>')!r}, now: {new.get(key, '<absent>')!r})"
    return None
