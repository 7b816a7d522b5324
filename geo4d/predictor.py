"""The predictor interface: one window of frames in, the Geo4D modalities out.

Implementations: :class:`geo4d.synthetic_predictor.SyntheticPredictor` (a test instrument built
from ground truth) and :class:`geo4d_model.predictor.Geo4DPredictor` (the network); the factory that
builds one from a spec is :func:`pipeline.predictors.predictor_from_spec`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import numpy as np

from geo4d.cameras import check_shape

__all__ = ["WindowPrediction", "WindowPredictor", "MODALITIES", "stacked_windows"]

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
        pointmap_z_offset: whether its point maps carry an unknown per-window offset along z, as
            the Geo4D network's de-normalised maps do (``z − lower`` with ``lower`` ≈ the window's
            nearest depth): the fusion must then estimate it (:class:`geo4d.fusion.FusionConfig`).
    """

    name: str = "predictor"
    image_size: tuple[int, int] | None = None
    pointmap_z_offset: bool = False

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


def stacked_windows(predictor: WindowPredictor, video: np.ndarray, starts: Sequence[int],
                    size: int = 16) -> dict[str, np.ndarray]:
    """Every window's prediction, modality by modality: ``{name: (G, V, H, W[, 3])}`` — the layout
    :func:`geo4d.fusion.fuse` reads (for notebooks, tests and benchmarks; the pipeline streams
    windows through the store instead).

    Args:
        video: (T, H, W, 3) uint8 frames; starts: the G window starts; size: frames per window (V).
    """
    out: dict[str, list[np.ndarray]] = {k: [None] * len(starts) for k in MODALITIES}
    for g, pred in predictor.predict_windows(video, starts, size):
        for k in MODALITIES:
            out[k][g] = getattr(pred, k)
    return {k: np.stack(v) for k, v in out.items()}
