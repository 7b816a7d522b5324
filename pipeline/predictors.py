"""Predictor specs and the factory that builds a :class:`geo4d.predictor.WindowPredictor` from one.

A spec is what flows and tasks pass between processes: a typed, validated, JSON-able description of
a predictor. Two kinds:

* :class:`SyntheticPredictorSpec` (``kind="synthetic"``) — the synthetic test instrument built from
  ground truth (``ground_truth`` defaults to the ``<video>.gt`` directory beside the video);
* :class:`Geo4DPredictorSpec` (``kind="geo4d"``) — the Geo4D network from the official files.

Example:
    >>> spec = parse_predictor_spec({"kind": "synthetic", "noise": {"depth_noise": 0.01}})
    >>> spec.noise.depth_noise, spec.seed
    (0.01, 0)
    >>> parse_predictor_spec({"kind": "magic"})
    Traceback (most recent call last):
    ...
    geo4d.errors.InputError: predictor: kind 'magic' is unknown (expected 'synthetic' or 'geo4d')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import Field

from geo4d.errors import InputError
from geo4d.predictor import WindowPredictor
from geo4d.spec import Spec
from geo4d.synthetic_predictor import SyntheticNoise
from geo4d_model.settings import SamplerSettings

__all__ = ["SyntheticPredictorSpec", "Geo4DPredictorSpec", "PredictorSpec", "parse_predictor_spec",
           "predictor_from_spec", "predictor_image_size", "spec_fingerprint", "prediction_parameters",
           "frame_rate_condition", "resolved_device", "DEFAULT_FS"]

#: The network's default frame size (H, W).
DEFAULT_IMAGE_SIZE = (320, 512)


class SyntheticPredictorSpec(Spec):
    """The synthetic test instrument: ground truth + unknown gauges + noise (docs/synthetic.md)."""

    kind: Literal["synthetic"] = "synthetic"
    ground_truth: str | None = Field(None, description="ground-truth directory (default: <video>.gt)")
    noise: SyntheticNoise = SyntheticNoise()
    seed: int = Field(0, description="seed of the gauges and noise")


class Geo4DPredictorSpec(Spec):
    """The Geo4D network loaded from the official ``model.ckpt``, ``vae.ckpt`` and config."""

    kind: Literal["geo4d"] = "geo4d"
    config: str = Field(description="official configs/inference_geo4d.yaml")
    checkpoint: str = Field(description="official model.ckpt")
    pointmap_vae: str = Field(description="official point-map vae.ckpt")
    device: str | None = Field(None, description="torch device (None: cuda when available, else cpu)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    image_size: tuple[int, int] | None = Field(None, description="(H, W) the frames are run at (None: 320×512)")
    fs: int | None = Field(None, ge=1, description="frame-rate condition (None: the official demo's rule, "
                           "int(video fps / frame stride); 24 when the fps is unknown)")
    seed: int = Field(123, description="base of the per-window noise seeds")
    sampler: SamplerSettings = SamplerSettings()
    window_batch: int = Field(4, ge=1, description="windows per U-Net call on the fast path")
    vae_batch: int = Field(16, ge=1, description="frames per VAE call")
    autocast: Literal["auto", "off", "bfloat16", "float16"] = "auto"
    compile: bool = False
    fast: bool = True
    overlap: Literal["auto", "on", "off"] = Field("auto", description="overlap device work with post-processing "
                                                  "and writes (auto: on CUDA only)")
    sky_eps: float = Field(0.35, ge=0.0, description="sky-mask half-width of the post-processing")
    clip_context_cache: str | None = Field(None, description="directory caching the constant CLIP context")
    context: str | None = Field(None, description="constant context file (.safetensors, key 'context', (1, L, C)) "
                                "for checkpoints without CLIP weights (`geo4d context` writes one)")


#: Either spec, told apart by ``kind`` (what flows declare as their parameter type).
PredictorSpec = Annotated[SyntheticPredictorSpec | Geo4DPredictorSpec, Field(discriminator="kind")]
_KINDS: dict[str, type[Spec]] = {"synthetic": SyntheticPredictorSpec, "geo4d": Geo4DPredictorSpec}
#: Spec fields that locate files or caches: they do not change predictions (file contents enter
#: the fingerprint through fingerprints of the files, e.g. the checkpoint's).
_LOCATIONS = ("config", "checkpoint", "pointmap_vae", "clip_context_cache", "ground_truth", "context")
#: Spec fields that choose where and in what batches the same computation runs: they change only
#: floating-point rounding, so a video started on one GPU may be resumed on another.
_EXECUTION = ("device", "window_batch", "vae_batch", "overlap")
#: The frame-rate condition when a video's fps is unknown (the official config's ``default_fs``).
DEFAULT_FS = 24


def parse_predictor_spec(spec: PredictorSpec | Mapping[str, Any] | None) -> PredictorSpec:
    """Validate a spec given as a mapping (None: the synthetic instrument with its defaults)."""
    if isinstance(spec, (SyntheticPredictorSpec, Geo4DPredictorSpec)):
        return spec
    data = dict(spec or {"kind": "synthetic"})
    kind = data.get("kind")
    if kind not in _KINDS:
        raise InputError(f"predictor: kind {kind!r} is unknown (expected 'synthetic' or 'geo4d')")
    return _KINDS[kind].parse(data, what=f"predictor ({kind})")


def spec_fingerprint(spec: PredictorSpec) -> dict[str, Any]:
    """The validated spec without file locations and execution choices (part of the windows fingerprint)."""
    return {k: v for k, v in spec.fingerprint_dict().items() if k not in _LOCATIONS + _EXECUTION}


def frame_rate_condition(spec: Geo4DPredictorSpec, fps: float) -> int:
    """The ``fs`` a video is conditioned on: the spec's, else the official demo's ``int(fps / stride)``
    (``fps`` here is the decoded fps, already divided by the frame stride), else :data:`DEFAULT_FS`.

    Example:
        >>> spec = Geo4DPredictorSpec(config="c.yaml", checkpoint="m.ckpt", pointmap_vae="v.ckpt")
        >>> frame_rate_condition(spec, 29.97), frame_rate_condition(spec, 0.0)
        (29, 24)
        >>> frame_rate_condition(spec.model_copy(update={"fs": 10}), 29.97)
        10
    """
    if spec.fs is not None:
        return int(spec.fs)
    return int(fps) if fps and fps > 0 else DEFAULT_FS


def resolved_device(spec: Geo4DPredictorSpec) -> str:
    """The spec's device, else ``cuda`` when available, else ``cpu``."""
    import torch

    return spec.device or ("cuda" if torch.cuda.is_available() else "cpu")


def prediction_parameters(spec: PredictorSpec, *, fps: float = 0.0, device: str | None = None) -> dict[str, Any]:
    """Everything that changes a geo4d spec's predictions, without loading the network: the spec
    (:func:`spec_fingerprint`), the resolved ``fs`` and autocast, and fingerprints of the checkpoint,
    the point-map VAE and the context file. The synthetic instrument's are its spec's."""
    if isinstance(spec, SyntheticPredictorSpec):
        return spec_fingerprint(spec)
    from geo4d_model.loader import file_fingerprint

    device = device or resolved_device(spec)
    autocast = spec.autocast
    if autocast == "auto":
        autocast = "bfloat16" if device.startswith("cuda") else "off"
    files = {"checkpoint_fingerprint": file_fingerprint(spec.checkpoint),
             "pointmap_vae_fingerprint": file_fingerprint(spec.pointmap_vae),
             "context_fingerprint": file_fingerprint(spec.context) if spec.context else None}
    return {**spec_fingerprint(spec), "fs": frame_rate_condition(spec, fps), "autocast": autocast,
            "image_size": list(spec.image_size or DEFAULT_IMAGE_SIZE), "video_latents": "posterior mean", **files}


def predictor_from_spec(spec: PredictorSpec | Mapping[str, Any], video_path: str | None = None,
                        starts: Sequence[int] | None = None) -> WindowPredictor:
    """Build the predictor a spec describes (``video_path`` locates the synthetic ground truth;
    ``starts``: the windows the video will be predicted at — the synthetic instrument draws its
    corrupted windows among them, e.g. the per-shot windows of a video with cuts)."""
    spec = parse_predictor_spec(spec)
    if isinstance(spec, SyntheticPredictorSpec):
        return _synthetic(spec, video_path, starts)
    return _geo4d(spec)


def _synthetic(spec: SyntheticPredictorSpec, video_path: str | None,
               starts: Sequence[int] | None = None) -> WindowPredictor:
    from geo4d.synthetic_predictor import SyntheticPredictor
    from storage.ground_truth import find_ground_truth, read_ground_truth

    gt_dir = spec.ground_truth or (find_ground_truth(video_path) if video_path else None)
    if gt_dir is None:
        raise InputError(
            f"{video_path}: the synthetic predictor (a test instrument) needs ground truth; "
            "no <video>.gt directory beside it"
        )
    return SyntheticPredictor(read_ground_truth(gt_dir), noise=spec.noise, seed=spec.seed, source=gt_dir, starts=starts)


def _geo4d(spec: Geo4DPredictorSpec) -> WindowPredictor:
    import torch

    from geo4d_model.predictor import Geo4DPredictor

    device = resolved_device(spec)
    autocast = spec.autocast if spec.autocast in ("auto", "off") else getattr(torch, spec.autocast)
    context = None
    if spec.context:
        from geo4d_model.context import read_context_file

        context = read_context_file(spec.context)
    return Geo4DPredictor.from_official(
        spec.config, spec.checkpoint, spec.pointmap_vae, device=device, dtype=spec.dtype,
        clip_context_cache=spec.clip_context_cache, context=context,
        image_size=spec.image_size or DEFAULT_IMAGE_SIZE, fs=spec.fs or DEFAULT_FS, seed=spec.seed,
        sampler=spec.sampler, window_batch=spec.window_batch, vae_batch=spec.vae_batch,
        autocast=autocast, compile=spec.compile, fast=spec.fast, sky_eps=spec.sky_eps,
        overlap={"auto": "auto", "on": True, "off": False}[spec.overlap],
    )


def predictor_image_size(spec: PredictorSpec | Mapping[str, Any] | None) -> tuple[int, int] | None:
    """The (H, W) a predictor spec wants frames at, without building the predictor.

    The Geo4D network runs at one of its supported sizes (default 320×512); the synthetic
    instrument works at the ground truth's own size (None: keep the decoded size).
    """
    spec = parse_predictor_spec(spec)
    if isinstance(spec, Geo4DPredictorSpec):
        return tuple(spec.image_size or DEFAULT_IMAGE_SIZE)
    return None
