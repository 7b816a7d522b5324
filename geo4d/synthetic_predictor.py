"""The synthetic predictor: a TEST INSTRUMENT that derives window predictions from ground truth.

It implements :class:`geo4d.predictor.WindowPredictor` without any network. Its outputs carry the
same ambiguities as the Geo4D network's, with known values, so that fusion and evaluation can be
tested against exact answers:

* point map: the ground-truth points of each frame in the window's reference frame (camera of the
  window's first frame), times an unknown per-window scale ``s_pm`` (optionally with an unknown z
  offset, like the network's de-normalised point maps);
* Plücker rays: unit directions ``d`` and moments ``s_ray · (c × d)`` with a *different* unknown
  per-window scale ``s_ray`` (the camera centre scaled by ``s_ray``);
* disparity: ``a / depth + b`` with unknown per-window ``a > 0`` and ``b``; 0 where sky;
* confidence: positive on valid pixels (lower on moving objects and depth edges), 0 where sky (the
  point map is invalid there) and, with ``pointmap_max_depth``, beyond the point map's range (point
  map 0 there too; the disparity stays valid, as the network's "far" pixels).

Noise (:class:`SyntheticNoise`): smooth multiplicative depth noise, pose jitter and whole windows
with a wrong rotation. Everything is deterministic from ``seed`` and the window's start, so a
window predicted twice (or in another order) is the same prediction.

For pixel ``p`` of frame ``i`` in the window starting at ``s`` (``ref = camera s``), with GT depth
``z``, noise factor ``n`` and the (possibly perturbed) pose ``ref_from_cam_i``::

    X_cam     = n z K⁻¹ [u, v, 1]ᵀ
    pointmap  = s_pm (ref_from_cam_i X_cam − [0, 0, z_off])      (z_off = 0 unless pointmap_z_offset)
    ray_dir   = R_i K⁻¹ [u, v, 1]ᵀ / ‖·‖,  ray_moment = (s_ray c_i) × ray_dir
    disparity = a / (n z) + b                                      (0 where sky)

where ``K`` is frame i's ground-truth intrinsics (per frame: a zooming scene's K changes), its focal
length times the window's focal error with ``focal_noise``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from geo4d.cameras import invert_pose, transform_points, unproject_depth
from geo4d.errors import InputError
from geo4d.geometry import Geometry
from geo4d.plucker import plucker_rays
from geo4d.predictor import WindowPrediction, WindowPredictor
from geo4d.spec import Spec
from geo4d.windows import WINDOW_SIZE, WINDOW_STRIDE, window_starts

__all__ = ["SyntheticNoise", "SyntheticPredictor", "SYNTHETIC_NAME"]

SYNTHETIC_NAME = "synthetic (test instrument: predictions derived from ground truth)"

#: Ranges of the per-window gauges (log-uniform scales).
SCALE_RANGE = (0.3, 3.0)


class SyntheticNoise(Spec):
    """Noise settings of the synthetic predictor (all zero/False = clean predictions).

    A :class:`geo4d.spec.Spec`: frozen; build it from a mapping with :meth:`SyntheticNoise.parse`
    (one-line :class:`InputError` naming an unknown key and the allowed ones, or the field out of
    range).

    Attributes:
        depth_noise: relative std of a smooth multiplicative depth field ``n = exp(σ f)`` (``f`` a
            unit-std low-frequency random field per frame, different per window), applied to the
            point map and the disparity of the window consistently. 0.05 ≈ 5 % depth error.
        depth_noise_cells: spatial frequency of that field: random values on a grid of about this
            many cells across the image's longer side, smoothly interpolated.
        pose_jitter_deg: std (degrees) of a random rotation about a random axis applied to the
            camera of every frame after the first of each window (it rotates about its own centre);
            used for both the point map and the rays.
        pose_jitter_trans: std of a random camera-centre offset per axis, as a fraction of the
            median ground-truth depth of the window's first frame.
        rot_jitter_axis_deg: std (degrees) per axis of an independent rotation-vector jitter
            ``R ← R exp([ε]×)``, ``ε ~ N(0, σ² I₃)``, of the camera of every frame of each window (the
            first included), drawn from its own random stream (the other draws are unchanged); used
            for both the point map and the rays.
        corrupt_windows: how many windows (drawn deterministically, with the predictor's seed, from
            the windows that will be predicted: the predictor's ``starts``, by default
            ``window_starts(T, size, stride)``; per shot in a video with cuts) are predicted with a
            wrong rotation.
        corrupt_deg: the wrong rotation's angle, about a random axis through the reference camera,
            applied to the points and rays of every frame after the first of a corrupted window.
        ramp_corruption: False (default): every frame after the first of a corrupted window gets the
            whole wrong rotation (the window stays rigid, only its first frame disagrees); True: frame
            k of the window gets ``k / (V − 1)`` of it (a drift no window rotation can absorb).
        pointmap_z_offset: subtract an unknown z offset from the point map like the network's
            de-normalised maps (``z_off`` = 2nd percentile of the window's valid z − 0.01).
        pointmap_max_depth: the point map's range (scene units) or None (unlimited): pixels whose
            ground-truth depth exceeds it get point-map confidence 0 (and point 0) while their
            disparity stays valid — far regions only the disparity sees (the network marks points
            beyond its normalised range invalid the same way). Sky keeps disparity 0.
        focal_noise: relative std of an error of the focal length (``fx = fy``) each window predicts
            for each of its frames: frame k of the window is predicted through
            ``K' = K`` with ``fx, fy`` times ``exp(σ (e_w + e_k) / √2)`` (``e_w`` per window, ``e_k``
            per frame, standard normal, from their own random stream; the other draws are
            unchanged), for both its point map and its rays — a network's field-of-view error,
            shared by a window's frames in part. The depth (z) is unchanged.

    Example:
        >>> SyntheticNoise.parse({"depth_noise": 0.05}).depth_noise
        0.05
    """

    depth_noise: float = Field(0.0, ge=0, allow_inf_nan=False, description="relative std of the depth noise")
    depth_noise_cells: float = Field(4.0, ge=1, allow_inf_nan=False, description="cells of the noise field")
    pose_jitter_deg: float = Field(0.0, ge=0, allow_inf_nan=False, description="rotation jitter std, degrees")
    pose_jitter_trans: float = Field(0.0, ge=0, allow_inf_nan=False, description="centre jitter std / median depth")
    rot_jitter_axis_deg: float = Field(0.0, ge=0, allow_inf_nan=False, description="per-axis rotation jitter std, degrees")
    corrupt_windows: int = Field(0, ge=0, description="windows predicted with a wrong rotation")
    corrupt_deg: float = Field(15.0, ge=0, allow_inf_nan=False, description="the wrong rotation's angle, degrees")
    ramp_corruption: bool = Field(False, description="the wrong rotation grows over the window (a drift)")
    pointmap_z_offset: bool = Field(False, description="subtract an unknown z offset from the point map")
    pointmap_max_depth: float | None = Field(None, gt=0, allow_inf_nan=False,
                                             description="point map invalid beyond this ground-truth depth")
    focal_noise: float = Field(0.0, ge=0, allow_inf_nan=False, description="relative std of the focal error")

    #: Fields added after windows were first predicted, and the value at which they are left out of
    #: the fingerprint (their default), so those windows keep their fingerprints.
    FINGERPRINT_OMITTED_AT: ClassVar[dict[str, Any]] = {"pointmap_max_depth": None, "focal_noise": 0.0,
                                                        "rot_jitter_axis_deg": 0.0, "ramp_corruption": False}

    def fingerprint_dict(self) -> dict[str, Any]:
        """As :meth:`Spec.fingerprint_dict`, without the fields of :attr:`FINGERPRINT_OMITTED_AT`
        while at their defaults."""
        out = super().fingerprint_dict()
        for name, default in self.FINGERPRINT_OMITTED_AT.items():
            if name in out and out[name] == default:
                out.pop(name)
        return out


@dataclass(frozen=True)
class _Gauges:
    """The unknown per-window gauges: point-map scale, ray-moment scale, and the disparity map's
    factor ``a_factor`` (times 1 / inverse-depth range) and shift ``b_shift``."""

    s_pm: float
    s_ray: float
    a_factor: float
    b_shift: float


class SyntheticPredictor(WindowPredictor):
    """Window predictions made from ground truth — a test instrument, not a model.

    Args:
        ground_truth: the exact :class:`geo4d.geometry.Geometry` of the video (e.g.
            ``render(...).geometry`` or :func:`storage.ground_truth.read_ground_truth`); pixels where
            ``valid`` is False (sky) are predicted invalid. A missing ``dynamic_mask`` means none.
        noise: :class:`SyntheticNoise` (or a mapping of its fields); default clean.
        seed: seeds the gauges, the noise and the choice of corrupted windows.
        window_size, stride: the window layout used to choose the corrupted windows (when
            ``starts`` is not given).
        starts: the starts of the windows that will be predicted — in a video split into shots, the
            windows laid per shot (:func:`geo4d.shots.shot_window_starts`), which the whole-video
            layout does not contain — the corrupted windows are drawn among them (None: the
            whole-video layout ``window_starts(T, window_size, stride)``, the same draw as before).
        source: where the ground truth came from (its directory), for messages and
            :meth:`parameters`; default "in-memory ground truth".

    Attributes:
        gauges: ``{start: {...}}`` for every window predicted so far: ``s_pm``, ``s_ray``,
            ``disp_a``, ``disp_b``, ``pm_z_offset`` (scene units, 0 unless enabled), ``corrupted``,
            ``corrupt_axis``, ``ref_from_cam`` (V,4,4: the poses actually used, after jitter and
            corruption, with unscaled translations) and ``depth_factor`` (V,H,W: the multiplicative
            depth noise, ones when clean).
        corrupted_starts: sorted starts of the windows that get a wrong rotation.

    Example:
        >>> from geo4d.synthetic import make_scene, render
        >>> r = render(make_scene(0, n_frames=16, height=16, width=24))
        >>> p = SyntheticPredictor(r.geometry, seed=1).predict_window(r.frames, 0)
        >>> p.pointmap.shape, float(p.pointmap_conf[~r.geometry.valid].max())
        ((16, 16, 24, 3), 0.0)
    """

    name = SYNTHETIC_NAME
    description = (
        "Synthetic predictor — a TEST INSTRUMENT. Its predictions are computed from the video's "
        "ground truth (not from the pixels) with unknown per-window gauges (point-map scale, "
        "ray-moment scale, disparity affine map) and configurable noise; metrics obtained with it "
        "measure the fusion, not a network."
    )
    image_size = None  # the ground truth's resolution

    def __init__(self, ground_truth: Geometry, noise: SyntheticNoise | Mapping[str, Any] | None = None,
                 seed: int = 0, window_size: int = WINDOW_SIZE, stride: int = WINDOW_STRIDE, *,
                 source: str | os.PathLike | None = None, starts: Sequence[int] | None = None) -> None:
        if not isinstance(ground_truth, Geometry):
            raise InputError(
                f"synthetic predictor: ground truth must be a geo4d.geometry.Geometry, got {type(ground_truth).__name__}"
            )
        T, H, W = ground_truth.depth.shape
        self._valid = np.asarray(ground_truth.valid, dtype=bool)
        # +inf wherever not valid, whatever the producer's marker there
        self._depth = np.where(self._valid, ground_truth.depth, np.inf).astype(np.asarray(ground_truth.depth).dtype)
        self._K = np.asarray(ground_truth.intrinsics, dtype=np.float64)
        self._world_from_cam = np.asarray(ground_truth.world_from_cam, dtype=np.float64)
        dyn = ground_truth.dynamic_mask
        self._dynamic = np.zeros((T, H, W), bool) if dyn is None else np.asarray(dyn, dtype=bool)
        self.noise = SyntheticNoise.parse(noise, what="synthetic noise")
        if int(seed) != seed or seed < 0:
            raise InputError(f"synthetic predictor: seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)
        self.window_size = int(window_size)
        self.stride = int(stride)
        self._source = str(Path(source)) if source is not None else "in-memory ground truth"
        self.n_frames, self.height, self.width = T, H, W
        self.gauges: dict[int, dict] = {}
        self._layout = None if starts is None else self._checked_layout(starts)
        self.corrupted_starts = self._choose_corrupted()

    # -- set-up ----------------------------------------------------------------------------
    def _checked_layout(self, starts: Sequence[int]) -> list[int]:
        """The given window starts, sorted and unique; InputError for one whose window leaves the video."""
        out = sorted({int(s) for s in starts})
        bad = [s for s in out if s < 0 or s + self.window_size > self.n_frames]
        if bad:
            raise InputError(f"synthetic predictor: starts: window at {bad[0]} ({self.window_size} frames) is outside "
                             f"the video's {self.n_frames} frames")
        return out

    def _choose_corrupted(self) -> list[int]:
        """Sorted starts of the ``noise.corrupt_windows`` windows that get a wrong rotation, drawn
        among the windows to be predicted (``starts``, or the whole-video layout)."""
        n = int(self.noise.corrupt_windows)
        if n == 0:
            return []
        try:
            starts = self._layout if self._layout is not None else window_starts(self.n_frames, self.window_size,
                                                                                   self.stride)
        except ValueError as exc:
            raise InputError(f"synthetic predictor: cannot corrupt windows: {exc}") from exc
        if n > len(starts):
            raise InputError(
                f"synthetic noise: corrupt_windows={n} but the video has only {len(starts)} windows"
            )
        rng = np.random.default_rng([self.seed, 0xC0, self.n_frames])
        return sorted(int(s) for s in rng.choice(starts, size=n, replace=False))

    def parameters(self) -> dict:
        """What determines the predictions (JSON-able; enters the windows fingerprint)."""
        return {
            "name": self.name,
            "kind": "synthetic",
            "test_instrument": True,
            "seed": self.seed,
            "noise": self.noise.fingerprint_dict(),
            "window_size": self.window_size,
            "stride": self.stride,
            "corrupted_starts": list(self.corrupted_starts),
            "ground_truth": self._source,
        }

    @property
    def pointmap_z_offset(self) -> bool:
        """Whether its point maps carry the unknown z offset (``noise.pointmap_z_offset``)."""
        return bool(self.noise.pointmap_z_offset)

    # -- prediction ------------------------------------------------------------------------
    def predict_window(self, frames: np.ndarray, start: int) -> WindowPrediction:
        """Predict the window of frames ``start … start+V−1`` (the pixels are not looked at).

        Args:
            frames: (V, H, W, 3) frames at the ground truth's resolution.
            start: index of the window's first frame.

        Returns:
            float32 point map (V,H,W,3), confidence (V,H,W), ray directions and moments (V,H,W,3)
            and disparity (V,H,W); the gauges used are recorded in ``self.gauges[start]``.

        Raises:
            InputError: frames of another size than the ground truth, or a window past its end.
        """
        V, start = self._check_window(frames, start)
        idx = slice(start, start + V)
        depth = self._depth[idx].astype(np.float64)
        valid = self._valid[idx]
        K = self._predicted_intrinsics(start, V)
        gauges = self._draw_gauges(start)
        # Noise: its own stream, drawn in this order (depth field, then pose jitter).
        rng = np.random.default_rng([self.seed, start, 1])
        factor = self._depth_factor(rng, V)
        depth_n = np.where(valid, depth * factor, np.inf)
        ref_from_cam = self._jittered_poses(rng, start, V, depth, valid)
        corrupted, axis = self._corrupt(start, ref_from_cam)
        pm_valid = valid if self.noise.pointmap_max_depth is None else valid & (depth <= self.noise.pointmap_max_depth)
        pointmap, z_off = _pointmap(depth_n, pm_valid, K, ref_from_cam, gauges.s_pm, self.noise.pointmap_z_offset)
        conf = np.where(pm_valid, _confidence(depth, depth_n, valid, self._dynamic[idx]), 0.0)
        ray_dir, ray_moment = plucker_rays(ref_from_cam, K, self.height, self.width)
        ray_moment = gauges.s_ray * ray_moment  # moment scaled by its own gauge
        disparity, disp_a, disp_b = _disparity(depth_n, valid, gauges.a_factor, gauges.b_shift)
        self.gauges[start] = {
            "s_pm": gauges.s_pm,
            "s_ray": gauges.s_ray,
            "disp_a": float(disp_a),
            "disp_b": float(disp_b),
            "pm_z_offset": z_off,
            "corrupted": corrupted,
            "corrupt_axis": axis,
            "ref_from_cam": ref_from_cam.copy(),
            "depth_factor": factor,
        }
        f32 = np.float32
        return WindowPrediction(
            pointmap=pointmap.astype(f32),
            pointmap_conf=conf.astype(f32),
            ray_dir=ray_dir.astype(f32),
            ray_moment=ray_moment.astype(f32),
            disparity=disparity.astype(f32),
        )

    def _check_window(self, frames: np.ndarray, start: int) -> tuple[int, int]:
        """``(V, start)`` of a window of frames (V, H, W, 3); InputError unless they have the ground
        truth's size and ``start … start+V−1`` lies inside it."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise InputError(f"synthetic predictor: frames must be (V, H, W, 3), got {frames.shape}")
        V, H, W = frames.shape[:3]
        if (H, W) != (self.height, self.width):
            raise InputError(
                f"synthetic predictor: frames are {W}×{H} (W×H) but its ground truth ({self._source}) is "
                f"{self.width}×{self.height}; decode the video at the ground truth's size"
            )
        start = int(start)
        if V < 1 or start < 0 or start + V > self.n_frames:
            raise InputError(
                f"synthetic predictor: window {start}…{start + V - 1} lies outside the ground truth's "
                f"{self.n_frames} frames ({self._source})"
            )
        return V, start

    def _predicted_intrinsics(self, start: int, V: int) -> np.ndarray:
        """(V, 3, 3) the K the window predicts its frames with: the ground truth's, its focal length
        times ``exp(σ (e_w + e_k)/√2)`` with ``focal_noise`` σ > 0 (see :class:`SyntheticNoise`)."""
        K = self._K[start : start + V].copy()
        if self.noise.focal_noise > 0:
            e = np.random.default_rng([self.seed, start, 4]).normal(size=V + 1)
            factor = np.exp(self.noise.focal_noise * (e[0] + e[1:]) / np.sqrt(2.0))
            K[:, 0, 0] *= factor
            K[:, 1, 1] *= factor
        return K

    def _draw_gauges(self, start: int) -> _Gauges:
        """The window's gauges, from their own random stream so that noise settings never change them."""
        g = np.random.default_rng([self.seed, start, 0])
        log_lo, log_hi = np.log(SCALE_RANGE[0]), np.log(SCALE_RANGE[1])
        s_pm = float(np.exp(g.uniform(log_lo, log_hi)))
        s_ray = float(np.exp(g.uniform(log_lo, log_hi)))
        a_factor = float(np.exp(g.uniform(-0.3, 0.3)))
        b_shift = float(g.uniform(-0.1, 0.1))
        return _Gauges(s_pm, s_ray, a_factor, b_shift)

    def _depth_factor(self, rng: np.random.Generator, V: int) -> np.ndarray:
        """(V, H, W) float64 smooth multiplicative depth noise, one field per frame (ones when clean)."""
        nz = self.noise
        if nz.depth_noise > 0:
            return np.exp(nz.depth_noise * _smooth_fields(rng, V, self.height, self.width, nz.depth_noise_cells))
        return np.ones((V, self.height, self.width))

    def _jittered_poses(self, rng: np.random.Generator, start: int, V: int, depth: np.ndarray,
                        valid: np.ndarray) -> np.ndarray:
        """(V, 4, 4) poses of the window's cameras in its reference frame (camera ``start``), with
        the pose jitter applied to every frame after the first and the per-axis rotation jitter to
        every frame (``depth``, ``valid``: (V, H, W))."""
        nz = self.noise
        ref_from_cam = invert_pose(self._world_from_cam[start])[None] @ self._world_from_cam[start:start + V]
        ref_from_cam[0] = np.eye(4)
        if nz.pose_jitter_deg > 0 or nz.pose_jitter_trans > 0:
            med = float(np.median(depth[0][valid[0]])) if valid[0].any() else 1.0
            for i in range(1, V):
                Rj = _random_rotation(rng, nz.pose_jitter_deg)
                ref_from_cam[i, :3, :3] = ref_from_cam[i, :3, :3] @ Rj
                ref_from_cam[i, :3, 3] += rng.normal(0.0, nz.pose_jitter_trans * med, size=3)
        if nz.rot_jitter_axis_deg > 0:
            from scipy.spatial.transform import Rotation

            eps = np.random.default_rng([self.seed, start, 3]).normal(0.0, np.radians(nz.rot_jitter_axis_deg), size=(V, 3))
            ref_from_cam[:, :3, :3] = ref_from_cam[:, :3, :3] @ Rotation.from_rotvec(eps).as_matrix()
        return ref_from_cam

    def _corrupt(self, start: int, ref_from_cam: np.ndarray) -> tuple[bool, np.ndarray | None]:
        """Rotate frames 1… of ``ref_from_cam`` (V, 4, 4) in place by ``corrupt_deg`` about a random
        axis through the reference camera when the window is corrupted; ``(corrupted, axis (3,) or None)``."""
        if start not in self.corrupted_starts:
            return False, None
        c = np.random.default_rng([self.seed, start, 2])
        axis = c.normal(size=3)
        axis /= np.linalg.norm(axis)
        V = len(ref_from_cam)
        frac = np.arange(V) / max(V - 1, 1) if self.noise.ramp_corruption else np.ones(V)
        Rc = np.tile(np.eye(4), (V, 1, 1))
        for k in range(1, V):
            Rc[k, :3, :3] = _rotation(axis, np.radians(self.noise.corrupt_deg) * frac[k])
        ref_from_cam[1:] = Rc[1:] @ ref_from_cam[1:]
        return True, axis


def _pointmap(depth_n: np.ndarray, valid: np.ndarray, K: np.ndarray, ref_from_cam: np.ndarray, s_pm: float,
              z_offset: bool) -> tuple[np.ndarray, float]:
    """Point map (V, H, W, 3) float64 in the reference frame, times ``s_pm``, 0 where not valid, and
    the z offset subtracted (0.0 unless ``z_offset``), from noisy depth (V, H, W), K (V, 3, 3) and
    ``ref_from_cam`` (V, 4, 4)."""
    pts_cam = unproject_depth(np.where(valid, depth_n, 0.0), K)
    pts = transform_points(ref_from_cam, pts_cam)
    z_off = 0.0
    if z_offset and valid.any():
        z_off = float(np.percentile(pts[..., 2][valid], 2.0) - 0.01)
        pts[..., 2] -= z_off
    return np.where(valid[..., None], s_pm * pts, 0.0), z_off


def _confidence(depth: np.ndarray, depth_n: np.ndarray, valid: np.ndarray, dynamic: np.ndarray) -> np.ndarray:
    """(V, H, W) confidence ~1–8: lower far away (noisy depth ``depth_n``), ×0.35 on moving objects
    (``dynamic``) and at edges of the clean ``depth``; 0 where not valid (sky)."""
    conf = 8.0 / (1.0 + depth_n / 20.0)
    conf = np.where(dynamic, 0.35 * conf, conf)
    conf = np.where(_depth_edges(depth), 0.35 * conf, conf)
    return np.where(valid, conf, 0.0)


def _disparity(depth_n: np.ndarray, valid: np.ndarray, a_factor: float, b_shift: float) -> tuple[np.ndarray, float, float]:
    """Disparity (V, H, W) ``a / depth_n + b`` normalised roughly to [0, 1] like the network's (0
    where not valid), with ``a = a_factor / (q98 − q2)`` and ``b = −a q2 + b_shift`` of the valid
    inverse depth; returns ``(disparity, a, b)``."""
    inv = np.where(valid, 1.0 / depth_n, 0.0)
    if valid.any():
        lo, hi = np.percentile(inv[valid], [2.0, 98.0])
    else:
        lo, hi = 0.0, 1.0
    disp_a = a_factor / max(hi - lo, 1e-6)
    disp_b = -disp_a * lo + b_shift
    return np.where(valid, disp_a * inv + disp_b, 0.0), disp_a, disp_b


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """(3, 3) rotation about unit ``axis`` (3,) by ``angle`` radians."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.asarray(axis, float) * angle).as_matrix()


def _random_rotation(rng: np.random.Generator, std_deg: float) -> np.ndarray:
    """A rotation about a uniformly random axis by an angle ~ N(0, std_deg)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    return _rotation(axis, np.radians(rng.normal(0.0, std_deg)))


def _smooth_fields(rng: np.random.Generator, n: int, H: int, W: int, cells: float) -> np.ndarray:
    """``n`` smooth random fields (n,H,W), each with zero mean and unit std over its pixels.

    Gaussian values on a coarse grid (about ``cells`` cells across the longer side) upsampled with
    cubic splines (scipy.ndimage.zoom).
    """
    from scipy.ndimage import zoom

    step = max(H, W) / float(cells)
    gh = max(2, int(np.ceil(H / step)) + 2)
    gw = max(2, int(np.ceil(W / step)) + 2)
    coarse = rng.normal(size=(n, gh, gw))
    out = np.empty((n, H, W))
    for i in range(n):
        f = zoom(coarse[i], (H / gh, W / gw), order=3, mode="nearest", grid_mode=True)[:H, :W]
        if f.shape != (H, W):  # zoom rounds sizes; pad the rare off-by-one
            f = np.pad(f, ((0, H - f.shape[0]), (0, W - f.shape[1])), mode="edge")
        f = f - f.mean()
        sd = f.std()
        out[i] = f / sd if sd > 0 else f
    return out


def _depth_edges(depth: np.ndarray, rel: float = 0.1) -> np.ndarray:
    """(V,H,W) True where a 4-neighbour's depth differs by more than ``rel`` (relative) or is sky."""
    inv = np.where(np.isfinite(depth), 1.0 / depth, 0.0)
    edge = np.zeros(depth.shape, bool)
    for axis in (1, 2):
        diff = np.abs(np.diff(inv, axis=axis))
        ref = np.maximum(np.take(inv, range(inv.shape[axis] - 1), axis=axis),
                         np.take(inv, range(1, inv.shape[axis]), axis=axis))
        jump = diff > rel * np.maximum(ref, 1e-12)
        sl_a = [slice(None)] * 3
        sl_b = [slice(None)] * 3
        sl_a[axis] = slice(0, -1)
        sl_b[axis] = slice(1, None)
        edge[tuple(sl_a)] |= jump
        edge[tuple(sl_b)] |= jump
    return edge
