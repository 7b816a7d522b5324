"""The predictor interface: one window of frames in, the Geo4D modalities out.

Implementations: :class:`geo4d.synthetic.SyntheticPredictor` (a test instrument built from ground
truth) and :class:`geo4d_model.predictor.Geo4DPredictor` (the network).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import numpy as np

from geo4d.cameras import check_shape

__all__ = ["WindowPrediction", "WindowPredictor", "MODALITIES"]

#: Store names of the per-window modalities, in store order.
MODALITIES = ("pointmap", "pointmap_conf", "ray_dir", "ray_moment", "disparity")


@dataclass
class WindowPrediction:
    """Geo4D modalities of one window of V frames, all in the window's first-camera frame.

    Attributes:
        pointmap: (V, H, W, 3) points, up to an unknown per-window scale.
        pointmap_conf: (V, H, W) >= 0, higher is more reliable, 0 = invalid (sky, far away).
        ray_dir: (V, H, W, 3) unit Plücker directions.
        ray_moment: (V, H, W, 3) Plücker moments ``c × d``, up to their own unknown scale.
        disparity: (V, H, W) up to an unknown per-window affine map; 0 where sky.
    """

    pointmap: np.ndarray
    pointmap_conf: np.ndarray
    ray_dir: np.ndarray
    ray_moment: np.ndarray
    disparity: np.ndarray

    def __post_init__(self) -> None:
        V, H, W = np.shape(self.pointmap_conf)
        check_shape(self.pointmap, (V, H, W, 3), "pointmap")
        check_shape(self.ray_dir, (V, H, W, 3), "ray_dir")
        check_shape(self.ray_moment, (V, H, W, 3), "ray_moment")
        check_shape(self.disparity, (V, H, W), "disparity")

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class WindowPredictor(abc.ABC):
    """Turns windows of RGB frames into :class:`WindowPrediction`.

    Attributes:
        name: shown in the CLI, logs and the store (a synthetic stand-in says so in its name).
        image_size: (H, W) the frames must be resized to before prediction, or None to keep the
            video's decoded size.
    """

    name: str = "predictor"
    image_size: tuple[int, int] | None = None

    @abc.abstractmethod
    def predict_window(self, frames: np.ndarray, start: int) -> WindowPrediction:
        """Predict one window.

        Args:
            frames: (V, H, W, 3) uint8 RGB frames of the window.
            start: index of the window's first frame in the video.
        """

    def predict_windows(self, video: np.ndarray, starts: Sequence[int], size: int) -> Iterator[tuple[int, WindowPrediction]]:
        """Predict several windows of one video, yielding ``(index into starts, prediction)``.

        The default predicts one window at a time; implementations may batch windows or share
        per-frame work (e.g. encode each frame once) as long as they yield every window.
        """
        for g, s in enumerate(starts):
            yield g, self.predict_window(video[s : s + size], s)

    def parameters(self) -> dict:
        """Settings that change the predictions (recorded in the store's stage record)."""
        return {"name": self.name}


def predictor_from_spec(spec: dict, video_path: str | None = None) -> WindowPredictor:
    """Build a predictor from a small JSON-able spec (what flows pass between processes).

    Kinds:
        ``{"kind": "synthetic", "ground_truth": DIR | None, "noise": {...}, "seed": 0}`` — the
        synthetic test instrument; ``ground_truth`` defaults to the ``<video>.gt`` directory beside
        the video.
        ``{"kind": "geo4d", "config": YAML, "checkpoint": CKPT, "pointmap_vae": CKPT, "device": "cpu",
        "dtype": "float32", ...}`` — the Geo4D network (extra keys go to ``Geo4DPredictor.from_official``).
    """
    from geo4d.errors import InputError

    kind = spec.get("kind")
    if kind == "synthetic":
        from geo4d.synthetic_predictor import SyntheticNoise, SyntheticPredictor
        from storage.ground_truth import find_ground_truth, read_ground_truth

        gt_dir = spec.get("ground_truth") or (find_ground_truth(video_path) if video_path else None)
        if gt_dir is None:
            raise InputError(
                f"{video_path}: the synthetic predictor (a test instrument) needs ground truth; "
                "no <video>.gt directory beside it"
            )
        return SyntheticPredictor(
            read_ground_truth(gt_dir), noise=SyntheticNoise.from_dict(spec.get("noise") or {}), seed=int(spec.get("seed", 0))
        )
    if kind == "geo4d":
        from geo4d_model.predictor import Geo4DPredictor

        kwargs = {k: v for k, v in spec.items() if k not in ("kind", "config", "checkpoint", "pointmap_vae")}
        if not kwargs.get("device"):
            import torch

            kwargs["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        return Geo4DPredictor.from_official(spec["config"], spec["checkpoint"], spec.get("pointmap_vae"), **kwargs)
    raise InputError(f"predictor: unknown kind {kind!r} (expected 'synthetic' or 'geo4d')")


def predictor_image_size(spec: dict) -> tuple[int, int] | None:
    """The (H, W) a predictor spec wants frames at, without building the predictor.

    The Geo4D network runs at one of its supported sizes (default 320×512); the synthetic
    instrument works at the ground truth's own size (None: keep the decoded size).
    """
    if spec.get("kind") == "geo4d":
        size = spec.get("image_size") or (320, 512)
        return int(size[0]), int(size[1])
    return None
