"""Synthetic dynamic scenes with exact ground truth — the project's own test data.

A scene is a small analytic world: a textured ground plane enclosed by a skyline of box
"buildings", a few static boxes, independently moving textured spheres and boxes, and an open sky
(infinite depth) above. A smooth camera path rotates (tens of degrees in total) and translates
through it; the intrinsics are a known pinhole. :func:`render` ray-casts every pixel against the
primitives in NumPy (no renderer library does analytic primitives with exact depth and motion masks
this simply, so it is written here by hand) and returns frames with their exact geometry (a
:class:`geo4d.geometry.Geometry`: depth, valid mask, intrinsics, poses, dynamic masks).

Conventions are those of :mod:`geo4d.cameras`: OpenCV axes, pixel centres at integer ``(u, v)``,
``world_from_cam`` maps camera points to the world, and the world frame is the camera frame of frame
0 (``world_from_cam[0] = I``). Depth is z-depth (distance along the optical axis), ``+inf`` where
the pixel sees sky.

Everything is deterministic per seed. Example::

    >>> from geo4d.synthetic import make_scene, render
    >>> r = render(make_scene(seed=0, n_frames=4, height=32, width=48))
    >>> g = r.geometry
    >>> r.frames.shape, g.depth.dtype, bool((g.world_from_cam[0] == np.eye(4)).all())
    ((4, 32, 48, 3), dtype('float32'), True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from geo4d.cameras import check_shape, intrinsics_matrix, invert_pose, pixel_grid
from geo4d.errors import InputError
from geo4d.geometry import Geometry

__all__ = [
    "GENERATOR_VERSION",
    "Material",
    "Primitive",
    "SyntheticScene",
    "RenderedVideo",
    "make_scene",
    "render",
    "write_video",
]

#: Bumped whenever the same seed would render a different scene.
GENERATOR_VERSION = "geo4d.synthetic/1"

_NOISE_LATTICE = 64  # side of the periodic value-noise lattice used by every texture


# ---------------------------------------------------------------------------------------------
# Scene description
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Material:
    """A procedural texture: two colours mixed by a checker/stripe pattern and fractal value noise.

    ``period`` is the pattern period in scene units; ``noise_freq`` the base noise frequency (cycles
    per unit); ``offset`` decorrelates the noise of different materials.
    """

    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]
    pattern: str  # "checker" | "stripes" | "noise"
    period: float
    noise_freq: float
    noise_amp: float
    offset: tuple[float, float]


@dataclass(frozen=True)
class Primitive:
    """A box or sphere with a per-frame pose.

    Attributes:
        kind: ``"box"`` (half extents ``size``, in its own frame) or ``"sphere"`` (radius ``size[0]``).
        size: (3,) half extents, or (radius, radius, radius).
        scene_from_obj: (T, 4, 4) pose of the object in the scene frame at every frame (constant for
            static primitives).
        material: its texture.
        dynamic: True for independently moving objects (they make the dynamic mask).
        name: for humans.
    """

    kind: str
    size: np.ndarray
    scene_from_obj: np.ndarray
    material: Material
    dynamic: bool
    name: str


@dataclass(frozen=True)
class SyntheticScene:
    """Everything :func:`render` needs; built by :func:`make_scene`.

    The *scene frame* is gravity-aligned (y down, the ground is the plane ``y = ground_y``); the
    camera of frame 0 sits at its origin, slightly pitched. The *world frame* of the outputs is the
    camera frame of frame 0: ``world_from_cam = inv(scene_from_cam[0]) @ scene_from_cam``.

    Attributes:
        seed, n_frames, height, width, fps: as given to :func:`make_scene`.
        K: (3, 3) pinhole intrinsics of frame 0 (of every frame unless ``focal_scale`` is set).
        scene_from_cam: (T, 4, 4) camera poses in the scene frame.
        ground_y: height of the ground plane (scene y, down positive).
        ground_extent: (x_min, x_max, z_min, z_max) of the ground rectangle.
        ground: the ground's material.
        primitives: static and dynamic boxes/spheres.
        noise_lattice: (64, 64) random values behind every texture.
        sun: (3,) unit direction towards the light, in the scene frame.
        params: the random draws that define the scene (JSON-able, for the record).
        focal_scale: (T,) factor of frame i's focal length ``fx = fy`` relative to ``K``'s (a zoom),
            or None (a fixed focal length).
    """

    seed: int
    n_frames: int
    height: int
    width: int
    fps: float
    K: np.ndarray
    scene_from_cam: np.ndarray
    ground_y: float
    ground_extent: tuple[float, float, float, float]
    ground: Material
    primitives: tuple[Primitive, ...]
    noise_lattice: np.ndarray
    sun: np.ndarray
    params: dict = field(default_factory=dict)
    focal_scale: np.ndarray | None = None

    @property
    def intrinsics(self) -> np.ndarray:
        """(T, 3, 3) pinhole ``K`` of every frame (``K`` with ``fx = fy`` times ``focal_scale``)."""
        Ks = np.repeat(self.K[None], self.n_frames, axis=0)
        if self.focal_scale is not None:
            Ks[:, 0, 0] *= self.focal_scale
            Ks[:, 1, 1] *= self.focal_scale
        return Ks

    @property
    def world_from_cam(self) -> np.ndarray:
        """(T, 4, 4) camera-to-world poses with world = camera 0 (so ``[0]`` is the identity)."""
        out = invert_pose(self.scene_from_cam[0]) @ self.scene_from_cam
        out[0] = np.eye(4)  # exact, not merely to rounding
        return out


@dataclass
class RenderedVideo:
    """A rendered synthetic video and its exact ground truth.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB.
        geometry: the exact geometry: ``depth`` (T, H, W) float32 z-depth with ``+inf`` where sky,
            ``valid`` = finite depth, ``intrinsics`` (T, 3, 3), ``world_from_cam`` (T, 4, 4) with
            ``[0] = I``, ``dynamic_mask`` (T, H, W) bool (True on independently moving objects),
            ``fps``, and ``meta`` (generator version, ``synthetic: True``, ``seed`` and the scene's
            parameters under ``scene``; JSON-able). Sizes: ``geometry.n_frames/height/width``.
        seed: the scene seed.
    """

    frames: np.ndarray
    geometry: Geometry
    seed: int


# ---------------------------------------------------------------------------------------------
# Random scene construction
# ---------------------------------------------------------------------------------------------
# The rotations are written out by hand: scipy's Rotation (via quaternions) differs from these in
# the last bit of about a quarter of the entries, which would change every rendered scene.
def _rot_x(a: np.ndarray | float) -> np.ndarray:
    """Rotations (…, 3, 3) about the x axis by angles ``a`` (…) radians."""
    a = np.asarray(a, dtype=np.float64)
    c, s = np.cos(a), np.sin(a)
    R = np.zeros(a.shape + (3, 3))
    R[..., 0, 0] = 1
    R[..., 1, 1], R[..., 1, 2], R[..., 2, 1], R[..., 2, 2] = c, -s, s, c
    return R


def _rot_y(a: np.ndarray | float) -> np.ndarray:
    """Rotations (…, 3, 3) about the y axis by angles ``a`` (…) radians."""
    a = np.asarray(a, dtype=np.float64)
    c, s = np.cos(a), np.sin(a)
    R = np.zeros(a.shape + (3, 3))
    R[..., 1, 1] = 1
    R[..., 0, 0], R[..., 0, 2], R[..., 2, 0], R[..., 2, 2] = c, s, -s, c
    return R


def _rot_z(a: np.ndarray | float) -> np.ndarray:
    """Rotations (…, 3, 3) about the z axis by angles ``a`` (…) radians."""
    a = np.asarray(a, dtype=np.float64)
    c, s = np.cos(a), np.sin(a)
    R = np.zeros(a.shape + (3, 3))
    R[..., 2, 2] = 1
    R[..., 0, 0], R[..., 0, 1], R[..., 1, 0], R[..., 1, 1] = c, -s, s, c
    return R


def _axis_angle(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotations (…,3,3) about a fixed unit ``axis`` by ``angle`` (…) radians (Rodrigues)."""
    from scipy.spatial.transform import Rotation

    angle = np.asarray(angle, dtype=np.float64)
    rv = angle[..., None] * np.asarray(axis, dtype=np.float64)
    return Rotation.from_rotvec(rv.reshape(-1, 3)).as_matrix().reshape(angle.shape + (3, 3))


def _pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Rigid transforms (…, 4, 4) from rotations ``R`` (…, 3, 3) and translations ``t`` (…, 3)."""
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    T = np.zeros(R.shape[:-2] + (4, 4))
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def _material(rng: np.random.Generator, period: tuple[float, float], pattern: str | None = None,
              palette: str = "any") -> Material:
    """A random :class:`Material` with a pattern period in ``period`` (``palette="earth"``: earthy hues)."""
    hue = rng.uniform(0, 1)
    if palette == "earth":
        hue = rng.uniform(0.05, 0.35)
    sat = rng.uniform(0.25, 0.75)
    val = rng.uniform(0.55, 0.95)
    a = _hsv_to_rgb(hue, sat, val)
    b = _hsv_to_rgb((hue + rng.uniform(0.05, 0.5)) % 1.0, rng.uniform(0.1, 0.6), val * rng.uniform(0.35, 0.7))
    return Material(
        color_a=tuple(float(x) for x in a),
        color_b=tuple(float(x) for x in b),
        pattern=pattern or str(rng.choice(["checker", "stripes", "noise"])),
        period=float(rng.uniform(*period)),
        noise_freq=float(rng.uniform(0.6, 2.0)),
        noise_amp=float(rng.uniform(0.25, 0.5)),
        offset=(float(rng.uniform(0, _NOISE_LATTICE)), float(rng.uniform(0, _NOISE_LATTICE))),
    )


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """(3,) RGB in [0, 1] of the colour with hue ``h``, saturation ``s`` and value ``v`` (all in [0, 1])."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def make_scene(
    seed: int,
    n_frames: int = 48,
    height: int = 160,
    width: int = 256,
    *,
    fps: float = 10.0,
    n_static: int = 4,
    n_dynamic: int = 3,
    turn_accel_deg: float = 0.0,
    zoom: float = 0.0,
) -> SyntheticScene:
    """Draw a random dynamic scene and camera path (deterministic per ``seed``).

    Content: a ground plane (camera 1.4–1.8 units above it) enclosed by box buildings 12–22 units
    away whose tops stay below the top of the image (so the upper part of every frame shows sky),
    ``n_static`` boxes 8–16 units ahead, and ``n_dynamic`` independently moving objects (alternately
    rolling/bouncing spheres and spinning boxes) 8–13 units ahead that travel 2–5 units during the
    video. The camera yaws 15–35° in total (with a small pitch/roll wobble) and moves 1.5–3.5 units
    forward and up to ±1.2 sideways, along smooth curves over the whole video.

    Intrinsics: ``fx = fy`` drawn in [0.8, 1.2]·W, principal point within 2 % of the image centre.

    Args:
        seed: non-negative integer; the same seed gives the same scene.
        n_frames, height, width: video size (T, H, W).
        fps: frame rate recorded with the video.
        n_static, n_dynamic: numbers of static boxes and moving objects.
        turn_accel_deg: 0 (default) or the peak angular acceleration (degrees/frame²) of an extra fast
            yaw turn added to the drawn path (see :func:`_add_fast_turn`); it draws nothing from the
            random stream, so the rest of the scene is the one the seed gives without it.
        zoom: relative change of the focal length over the video (0: fixed, default; 0.3: the last
            frame's ``fx = fy`` is 1.3× the first's), along the smooth ease ``(1 − cos(π s))/2`` of
            the time ``s`` ∈ [0, 1]: ``f_i = f (1 + zoom (1 − cos(π s_i))/2)``. It draws nothing from
            the random stream (the scene is the one the seed gives without it; the content is
            placed for frame 0's field of view).

    Returns:
        A :class:`SyntheticScene` for :func:`render`.

    Example:
        >>> s = make_scene(3, n_frames=8, height=16, width=24)
        >>> s.scene_from_cam.shape, len([p for p in s.primitives if p.dynamic])
        ((8, 4, 4), 3)
    """
    _check_scene_args(seed=seed, n_frames=n_frames, height=height, width=width, fps=fps,
                      n_static=n_static, n_dynamic=n_dynamic)
    T, H, W = int(n_frames), int(height), int(width)
    # The steps below draw from one stream in a fixed order: reordering them changes every scene.
    rng = np.random.default_rng(int(seed))
    params: dict = {"seed": int(seed), "n_frames": T, "height": H, "width": W, "fps": float(fps)}
    K, params["intrinsics"] = _draw_intrinsics(rng, H, W)
    f = params["intrinsics"]["fx"]
    path = _draw_camera_path(rng, T, H, f)
    if turn_accel_deg:
        path = _add_fast_turn(path, float(turn_accel_deg))
    params["camera"] = path.params
    ground_y = float(rng.uniform(1.4, 1.8))
    back_z = float(rng.uniform(18, 22))
    side_x = float(rng.uniform(11, 14))
    ground = _material(rng, (0.6, 1.4), pattern="checker", palette="earth")
    prims = _draw_skyline(rng, T, ground_y, back_z, side_x)
    prims += _draw_static_boxes(rng, T, ground_y, n_static)
    prims += _draw_moving_objects(rng, path, float(np.arctan2(W / 2, f)), ground_y, n_dynamic)
    lattice = rng.uniform(0.0, 1.0, size=(_NOISE_LATTICE, _NOISE_LATTICE))
    sun = np.array([0.45, -1.0, -0.35])
    sun /= np.linalg.norm(sun)
    params.update({"ground_y": ground_y, "back_z": back_z, "side_x": side_x,
                   "n_static": int(n_static), "n_dynamic": int(n_dynamic)})
    if zoom:
        params["zoom"] = float(zoom)
    return SyntheticScene(
        seed=int(seed), n_frames=T, height=H, width=W, fps=float(fps), K=K, scene_from_cam=path.scene_from_cam,
        ground_y=ground_y, ground_extent=(-side_x, side_x, -8.0, back_z), ground=ground,
        primitives=tuple(prims), noise_lattice=lattice, sun=sun, params=params,
        focal_scale=_zoom_profile(path.s, zoom),
    )


def _zoom_profile(s: np.ndarray, zoom: float) -> np.ndarray | None:
    """(T,) focal factors ``1 + zoom (1 − cos(π s))/2`` over the times ``s`` (None when ``zoom`` is 0)."""
    if not (np.isfinite(zoom) and zoom > -1):
        raise InputError(f"synthetic scene: zoom must be a finite number > -1, got {zoom!r}")
    if zoom == 0:
        return None
    return 1.0 + float(zoom) * 0.5 * (1.0 - np.cos(np.pi * s))


def _check_scene_args(*, seed, n_frames, height, width, fps, n_static, n_dynamic) -> None:
    """Raise :class:`InputError` (one line naming the argument) unless the sizes/counts/seed are
    integers in range and ``fps > 0``."""
    for name, v, lo in (("n_frames", n_frames, 1), ("height", height, 2), ("width", width, 2),
                        ("n_static", n_static, 0), ("n_dynamic", n_dynamic, 0), ("seed", seed, 0)):
        if int(v) != v or v < lo:
            raise InputError(f"synthetic scene: {name} must be an integer >= {lo}, got {v!r}")
    if not fps > 0:
        raise InputError(f"synthetic scene: fps must be > 0, got {fps!r}")


def _draw_intrinsics(rng: np.random.Generator, H: int, W: int) -> tuple[np.ndarray, dict]:
    """(3, 3) pinhole ``K`` (``fx = fy`` in [0.8, 1.2]·W, principal point within 2 % of the centre)
    and its values ``{"fx", "fy", "cx", "cy"}`` for the record."""
    f = rng.uniform(0.8, 1.2) * W
    cx = (W - 1) / 2 + rng.uniform(-0.02, 0.02) * W
    cy = (H - 1) / 2 + rng.uniform(-0.02, 0.02) * H
    return intrinsics_matrix(f, f, cx, cy), {"fx": f, "fy": f, "cx": cx, "cy": cy}


@dataclass(frozen=True)
class _CameraPath:
    """A drawn camera path: ``s`` (T,) time 0 → 1, ``yaw`` (T,) radians, ``centre`` (T, 3) and
    ``scene_from_cam`` (T, 4, 4) in the scene frame, ``params`` its amplitudes (JSON-able)."""

    s: np.ndarray
    yaw: np.ndarray
    centre: np.ndarray
    scene_from_cam: np.ndarray
    params: dict


def _draw_camera_path(rng: np.random.Generator, T: int, H: int, f: float) -> _CameraPath:
    """The camera path over ``T`` frames (focal length ``f`` px, image height ``H``): yaw about the
    vertical, small pitch/roll wobble, smooth forward/sideways translation."""
    s = np.linspace(0.0, 1.0, T) if T > 1 else np.zeros(1)
    ease = 0.5 - 0.5 * np.cos(np.pi * s)
    yaw_total = np.radians(rng.uniform(15, 35)) * rng.choice([-1, 1])
    ph = rng.uniform(0, 2 * np.pi, size=4)
    yaw = yaw_total * ease + np.radians(1.5) * (np.sin(2 * np.pi * 1.3 * s + ph[0]) - np.sin(ph[0]))
    half_vfov = np.arctan2(H / 2, f)
    tilt0 = rng.uniform(0.15, 0.35) * half_vfov  # looking slightly down, scaled to the field of view
    tilt = tilt0 + np.radians(1.5) * np.sin(2 * np.pi * 0.9 * s + ph[1])
    roll = np.radians(1.5) * np.sin(2 * np.pi * 0.7 * s + ph[2])
    fwd = rng.uniform(1.5, 3.5)
    lat = rng.uniform(0.3, 1.2) * rng.choice([-1, 1])
    centre = np.stack([
        lat * (np.sin(np.pi * s + ph[3]) - np.sin(ph[3])),
        0.15 * np.sin(2 * np.pi * s),
        fwd * (0.7 * s + 0.3 * ease),
    ], axis=-1)
    # scene_from_cam rotation = yaw about the scene's vertical (positive turns right, towards +x),
    # then tilt about the camera's x axis (R_x(-tilt) moves the optical axis towards +y: down),
    # then roll about the optical axis.
    R = _rot_y(yaw) @ _rot_x(-tilt) @ _rot_z(roll)
    params = {"yaw_total_deg": float(np.degrees(yaw_total)), "tilt_down_deg": float(np.degrees(tilt0)),
              "forward": fwd, "lateral": lat}
    return _CameraPath(s=s, yaw=yaw, centre=centre, scene_from_cam=_pose(R, centre), params=params)


def _add_fast_turn(path: _CameraPath, accel_deg: float) -> _CameraPath:
    """``path`` with an extra yaw turn about the scene's vertical: ``A (1 − cos(π τ)) / 2`` over the
    ``N = clip(T // 4, 3, 12)`` frames centred on mid-video (``τ = (i − i₀)/N`` clipped to [0, 1]),
    with ``A = accel_deg / ((1 − cos(π/N)) cos(π/N))`` so that the largest second difference of the
    yaw, frame to frame, is ``accel_deg`` degrees/frame² (near the start and the end of the turn)."""
    if not (np.isfinite(accel_deg) and accel_deg > 0):
        raise InputError(f"synthetic scene: turn_accel_deg must be a finite number >= 0, got {accel_deg!r}")
    T = len(path.s)
    N = int(np.clip(T // 4, 3, 12))
    tau = np.clip((np.arange(T) - (T - N) // 2) / N, 0.0, 1.0)
    amp = np.radians(accel_deg / ((1.0 - np.cos(np.pi / N)) * np.cos(np.pi / N)))
    extra = amp * 0.5 * (1.0 - np.cos(np.pi * tau))
    scene_from_cam = path.scene_from_cam.copy()
    scene_from_cam[:, :3, :3] = _rot_y(extra) @ scene_from_cam[:, :3, :3]
    params = {**path.params, "fast_turn_deg": float(np.degrees(amp)), "fast_turn_frames": N,
              "fast_turn_accel_deg": float(accel_deg)}
    return _CameraPath(s=path.s, yaw=path.yaw + extra, centre=path.centre, scene_from_cam=scene_from_cam, params=params)


def _static(T: int, kind: str, size, centre_xyz, yaw_rad: float, mat: Material, name: str) -> Primitive:
    """A static primitive yawed by ``yaw_rad`` about the vertical at ``centre_xyz`` (its pose
    broadcast to (T, 4, 4))."""
    P = _pose(_rot_y(yaw_rad), centre_xyz)
    return Primitive(kind, np.asarray(size, float), np.broadcast_to(P, (T, 4, 4)), mat, False, name)


def _draw_skyline(rng: np.random.Generator, T: int, ground_y: float, back_z: float, side_x: float) -> list[Primitive]:
    """The back wall (6 boxes) and two side walls (4 boxes each), rows of adjacent boxes of random
    heights whose tops stay a few degrees above the horizon at most (sky stays visible)."""
    prims = []
    n_back = 6
    xs = np.linspace(-side_x, side_x, n_back + 1)
    for i in range(n_back):
        h = rng.uniform(2.0, 4.0)
        prims.append(_static(T, "box", (0.5 * (xs[i + 1] - xs[i]), h / 2, 0.6),
                             (0.5 * (xs[i] + xs[i + 1]), ground_y - h / 2, back_z + 0.6),
                             0.0, _material(rng, (0.5, 1.5)), f"building-back-{i}"))
    for side in (-1, 1):
        zs = np.linspace(-8.0, back_z, 5)
        for i in range(4):
            h = rng.uniform(1.5, 3.0)
            prims.append(_static(T, "box", (0.6, h / 2, 0.5 * (zs[i + 1] - zs[i])),
                                 (side * (side_x + 0.6), ground_y - h / 2, 0.5 * (zs[i] + zs[i + 1])),
                                 0.0, _material(rng, (0.5, 1.5)), f"building-{'left' if side < 0 else 'right'}-{i}"))
    return prims


def _draw_static_boxes(rng: np.random.Generator, T: int, ground_y: float, n_static: int) -> list[Primitive]:
    """``n_static`` boxes standing on the ground 8–16 units ahead, randomly sized and yawed."""
    prims = []
    for i in range(n_static):
        half = rng.uniform(0.4, 1.4, size=3)
        c = (rng.uniform(-7, 7), ground_y - half[1], rng.uniform(8, 16))
        prims.append(_static(T, "box", half, c, rng.uniform(0, np.pi / 2), _material(rng, (0.25, 0.8)), f"box-{i}"))
    return prims


def _draw_moving_objects(rng: np.random.Generator, path: _CameraPath, half_hfov: float, ground_y: float,
                         n_dynamic: int) -> list[Primitive]:
    """``n_dynamic`` moving objects: alternately a rolling (possibly bouncing) sphere and a spinning
    box, each in view at mid-video (``half_hfov``: half the horizontal field of view, radians)."""
    mid_i = (len(path.s) - 1) // 2
    yaw_mid = float(path.yaw[mid_i])
    prims = []
    for i in range(n_dynamic):
        mat = _material(rng, (0.15, 0.5), pattern=str(rng.choice(["checker", "stripes"])))
        direction, travel, pos = _draw_trajectory(rng, path.s, path.centre[mid_i], yaw_mid, half_hfov)
        if i % 2 == 0:
            kind = "sphere"
            size, Rm, pos[:, 1] = _draw_rolling_sphere(rng, path.s, direction, travel, ground_y)
        else:
            kind = "box"
            size, Rm, pos[:, 1] = _draw_spinning_box(rng, path.s, ground_y)
        prims.append(Primitive(kind, size, _pose(Rm, pos), mat, True, f"moving-{kind}-{i}"))
    return prims


def _draw_trajectory(rng: np.random.Generator, s: np.ndarray, centre_mid: np.ndarray, yaw_mid: float,
                     half_hfov: float) -> tuple[np.ndarray, float, np.ndarray]:
    """A straight horizontal path mostly across the camera's mid-video line of sight, passing 8–13
    units from the camera (``centre_mid`` (3,)) within ±60 % of the half field of view.

    Returns:
        ``direction`` (3,) unit, ``travel`` (its length, 2–5 units) and positions (T, 3) over ``s``
        (T,) (their y is set by the caller).
    """
    heading = rng.uniform(-np.pi / 6, np.pi / 6) + (np.pi if rng.uniform() < 0.5 else 0.0)
    heading += yaw_mid
    direction = np.array([np.cos(heading), 0.0, -np.sin(heading)])
    travel = rng.uniform(2.0, 5.0)
    bearing = yaw_mid + rng.uniform(-0.6, 0.6) * half_hfov
    mid = centre_mid + rng.uniform(8, 13) * np.array([np.sin(bearing), 0.0, np.cos(bearing)])
    start = mid - 0.5 * travel * direction
    pos = start[None] + (s * travel)[:, None] * direction[None]
    return direction, travel, pos


def _draw_rolling_sphere(rng: np.random.Generator, s: np.ndarray, direction: np.ndarray, travel: float,
                         ground_y: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A sphere rolling along ``direction`` (sometimes bouncing): size (3,) = radius, rotations
    (T, 3, 3) about the horizontal axis ⟂ motion, and its centre's y (T,) over ``s`` (T,)."""
    r = rng.uniform(0.5, 1.0)
    bounce = rng.uniform(0.0, 1.2) if rng.uniform() < 0.5 else 0.0
    y = ground_y - r - bounce * np.abs(np.sin(np.pi * rng.integers(1, 4) * s))
    axis = np.cross([0.0, -1.0, 0.0], direction)
    axis /= np.linalg.norm(axis)
    return np.full(3, r), _axis_angle(axis, s * travel / r), y


def _draw_spinning_box(rng: np.random.Generator, s: np.ndarray, ground_y: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A box spinning about the vertical while it slides on the ground: half extents (3,), rotations
    (T, 3, 3) and its centre's y (T,) over ``s`` (T,)."""
    size = rng.uniform(0.35, 0.8, size=3)
    y = np.full(len(s), ground_y - size[1])
    spin = np.radians(rng.uniform(30, 120)) * rng.choice([-1, 1])
    return size, _rot_y(rng.uniform(0, np.pi) + spin * s), y


# ---------------------------------------------------------------------------------------------
# Ray casting
# ---------------------------------------------------------------------------------------------
_EPS = 1e-6


def _intersect_box(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Ray parameter of the first hit of rays ``o + t d`` (origin (3,), directions (N,3)) with the box [-half, half]; inf = miss.

    Slab method, one axis at a time on 1-D arrays (reductions over a length-3 axis are slow in NumPy).
    """
    tmin = np.full(d.shape[0], -np.inf)
    tmax = np.full(d.shape[0], np.inf)
    for k in range(3):
        dk = d[:, k]
        dk = np.where(np.abs(dk) < 1e-12, 1e-12, dk)
        inv = 1.0 / dk
        ok = o[k]
        t1 = (-half[k] - ok) * inv
        t2 = (half[k] - ok) * inv
        np.maximum(tmin, np.minimum(t1, t2), out=tmin)
        np.minimum(tmax, np.maximum(t1, t2), out=tmax)
    hit = (tmax >= tmin) & (tmin > _EPS)
    return np.where(hit, tmin, np.inf)


def _intersect_sphere(o: np.ndarray, d: np.ndarray, r: float) -> np.ndarray:
    """First hit of rays ``o + t d`` (origin (3,), directions (N,3)) with the sphere of radius ``r``
    at the origin; inf = miss."""
    a = np.einsum("ni,ni->n", d, d)
    b = d @ o
    c = float(o @ o) - r * r
    disc = b * b - a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


def _value_noise(x: np.ndarray, y: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """Smooth periodic value noise in [0, 1] sampled at (x, y) lattice units (bilinear, smoothstep)."""
    n = lattice.shape[0]
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    fx = fx * fx * (3 - 2 * fx)
    fy = fy * fy * (3 - 2 * fy)
    i0 = x0.astype(np.int64) % n
    j0 = y0.astype(np.int64) % n
    i1 = (i0 + 1) % n
    j1 = (j0 + 1) % n
    a = lattice[j0, i0] * (1 - fx) + lattice[j0, i1] * fx
    b = lattice[j1, i0] * (1 - fx) + lattice[j1, i1] * fx
    return a * (1 - fy) + b * fy


def _fractal(x: np.ndarray, y: np.ndarray, lattice: np.ndarray, octaves: int = 3) -> np.ndarray:
    """Fractal value noise in [0, 1] at (x, y) (same shapes): ``octaves`` octaves of halving amplitude."""
    total = np.zeros_like(x)
    amp, freq, norm = 1.0, 1.0, 0.0
    for k in range(octaves):
        total += amp * _value_noise(x * freq + 17.0 * k, y * freq + 31.0 * k, lattice)
        norm += amp
        amp *= 0.5
        freq *= 2.0
    return total / norm


def _texture(mat: Material, u: np.ndarray, v: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """RGB (N,3) of a material at surface coordinates (u, v) in scene units."""
    if mat.pattern == "checker":
        pat = (np.floor(u / mat.period) + np.floor(v / mat.period)) % 2
    elif mat.pattern == "stripes":
        pat = (np.floor((u + 0.5 * v) / mat.period)) % 2
    else:
        pat = _fractal(u / mat.period + 3.1, v / mat.period + 7.7, lattice, 2) > 0.5
    nz = _fractal(u * mat.noise_freq + mat.offset[0], v * mat.noise_freq + mat.offset[1], lattice)
    mix = np.clip((1 - mat.noise_amp) * pat + mat.noise_amp * nz, 0.0, 1.0)
    a = np.asarray(mat.color_a)
    b = np.asarray(mat.color_b)
    return a[None] * (1 - mix[:, None]) + b[None] * mix[:, None]


def _sky(d: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """Sky colour (N,3) from ray directions in the scene frame only (so it sits at infinity)."""
    dn = d / np.linalg.norm(d, axis=-1, keepdims=True)
    elev = np.clip(-dn[:, 1], -1.0, 1.0)  # up is -y
    azim = np.arctan2(dn[:, 0], dn[:, 2])
    horizon = np.array([0.86, 0.9, 0.95])
    zenith = np.array([0.3, 0.5, 0.85])
    w = np.clip(elev * 2.5, 0.0, 1.0)[:, None]
    col = horizon * (1 - w) + zenith * w
    cloud = _fractal(azim * 6.0 + 5.0, np.arcsin(elev) * 14.0, lattice, 4)
    c = np.clip((cloud - 0.5) * 3.0, 0.0, 1.0)[:, None]
    return col * (1 - c) + np.array([0.97, 0.97, 0.98]) * c


def render(scene: SyntheticScene) -> RenderedVideo:
    """Ray-cast every pixel of every frame of ``scene``.

    For pixel ``(u, v)`` of frame ``i`` the ray is ``c_i + t R_i K_i⁻¹ [u, v, 1]ᵀ`` in the scene frame
    (``R_i, c_i`` from ``scene_from_cam[i]``, ``K_i = scene.intrinsics[i]``). Its camera-frame
    direction has z = 1, so the ray parameter of the nearest hit *is* the z-depth; no hit means sky
    (depth ``+inf``). Surfaces are shaded with their procedural texture and a Lambertian sun plus
    ambient light.

    Returns:
        :class:`RenderedVideo` with frames uint8 (T,H,W,3) and its ``geometry``: depth float32
        (T,H,W), valid (T,H,W) = finite depth, intrinsics (T,3,3), world_from_cam (T,4,4),
        dynamic_mask bool (T,H,W), fps and meta.

    Example:
        >>> g = render(make_scene(1, n_frames=2, height=24, width=32)).geometry
        >>> bool(np.isinf(g.depth[:, 0]).any()), bool(np.isfinite(g.depth[:, -1]).all())
        (True, True)
    """
    T, H, W = scene.n_frames, scene.height, scene.width
    Ks = scene.intrinsics
    rays_cam = _camera_rays(scene.K, H, W)
    frames = np.empty((T, H, W, 3), np.uint8)
    depth = np.empty((T, H, W), np.float32)
    dyn = np.zeros((T, H, W), bool)
    for i in range(T):
        rays_i = rays_cam if scene.focal_scale is None else _camera_rays(Ks[i], H, W)
        frames[i], depth[i], dyn[i] = _render_frame(scene, i, rays_i)
    meta = {"generator": GENERATOR_VERSION, "synthetic": True, "seed": scene.seed, "scene": scene.params}
    geometry = Geometry.from_depth(depth, Ks, scene.world_from_cam,
                                   dynamic_mask=dyn, fps=scene.fps, meta=meta)
    return RenderedVideo(frames=frames, geometry=geometry, seed=scene.seed)


def _camera_rays(K: np.ndarray, H: int, W: int) -> np.ndarray:
    """(H·W, 3) camera-frame ray directions ``K⁻¹ [u, v, 1]ᵀ`` (z = 1) of every pixel, row-major."""
    grid = pixel_grid(H, W).reshape(-1, 2)
    pix = np.concatenate([grid, np.ones((H * W, 1))], axis=1)
    return pix @ np.linalg.inv(K).T


def _render_frame(scene: SyntheticScene, i: int, rays_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame ``i``: RGB (H, W, 3) uint8, z-depth (H, W) float32 (``+inf`` at sky) and dynamic mask
    (H, W) bool, from the camera rays ``rays_cam`` (H·W, 3) of :func:`_camera_rays`."""
    H, W = scene.height, scene.width
    o = scene.scene_from_cam[i, :3, 3]
    d = rays_cam @ scene.scene_from_cam[i, :3, :3].T  # (N,3) scene frame
    which, t, local = _nearest_hits(scene, i, o, d)
    col, normal, dmask = _surface_colours(scene, i, o, d, which, t, local)
    lit = np.isfinite(t)
    lam = np.clip(normal[lit] @ scene.sun, 0.0, 1.0)
    col[lit] *= (0.5 + 0.55 * lam)[:, None]
    frame = np.clip(col * 255.0 + 0.5, 0, 255).astype(np.uint8).reshape(H, W, 3)
    return frame, t.reshape(H, W).astype(np.float32), dmask.reshape(H, W)


def _ground_hit(scene: SyntheticScene, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(N,) ray parameter of rays ``o + t d`` (o (3,), d (N, 3), scene frame) on the ground plane
    ``y = ground_y`` within the enclosed rectangle; inf = miss."""
    gx0, gx1, gz0, gz1 = scene.ground_extent
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = (scene.ground_y - o[1]) / d[:, 1]
    px = o[0] + tg * d[:, 0]
    pz = o[2] + tg * d[:, 2]
    return np.where((d[:, 1] > 0) & (tg > _EPS) & (px >= gx0) & (px <= gx1) & (pz >= gz0) & (pz <= gz1), tg, np.inf)


def _nearest_hits(scene: SyntheticScene, i: int, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Nearest surface of rays ``o + t d`` (o (3,), d (N, 3), scene frame) at frame ``i``.

    Returns:
        ``which`` (N,) int: 0 = ground, k ≥ 1 = ``scene.primitives[k - 1]``; ``t`` (N,) its ray
        parameter (inf = sky); ``local``: per primitive, the rays ``(origin (3,), directions (N, 3))``
        in its object frame.
    """
    ts = [_ground_hit(scene, o, d)]
    local = []
    for p in scene.primitives:
        P = p.scene_from_obj[i]
        R = P[:3, :3]
        ol = (o - P[:3, 3]) @ R  # Rᵀ(o - c)
        dl = d @ R
        local.append((ol, dl))
        ts.append(_intersect_box(ol, dl, p.size) if p.kind == "box" else _intersect_sphere(ol, dl, float(p.size[0])))
    tstack = np.stack(ts)  # (1+P, N)
    which = np.argmin(tstack, axis=0)
    return which, tstack[which, np.arange(d.shape[0])], local


def _surface_colours(scene: SyntheticScene, i: int, o: np.ndarray, d: np.ndarray, which: np.ndarray,
                     t: np.ndarray, local: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unlit colour (N, 3) of every ray's nearest surface (sky colour where ``t`` is inf), its
    scene-frame normal (N, 3) (0 at sky) and the dynamic mask (N,) bool, from :func:`_nearest_hits`."""
    lat = scene.noise_lattice
    N = d.shape[0]
    sky = ~np.isfinite(t)
    col = np.empty((N, 3))
    col[sky] = _sky(d[sky], lat)
    normal = np.zeros((N, 3))
    sel = (which == 0) & ~sky
    if sel.any():
        hx = o[0] + t[sel] * d[sel, 0]
        hz = o[2] + t[sel] * d[sel, 2]
        col[sel] = _texture(scene.ground, hx, hz, lat)
        normal[sel] = (0.0, -1.0, 0.0)
    dmask = np.zeros(N, bool)
    for k, p in enumerate(scene.primitives, start=1):
        sel = (which == k) & ~sky
        if not sel.any():
            continue
        ol, dl = local[k - 1]
        q = ol[None] + t[sel, None] * dl[sel]  # hit point in the object frame
        nl, uu, vv = _primitive_surface(p, q)
        col[sel] = _texture(p.material, uu, vv, lat)
        normal[sel] = nl @ p.scene_from_obj[i, :3, :3].T
        if p.dynamic:
            dmask[sel] = True
    return col, normal, dmask


def _primitive_surface(p: Primitive, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object-frame normals (M, 3) and surface coordinates ``u, v`` (M,) (scene units) of hit points
    ``q`` (M, 3) on primitive ``p`` (in its object frame)."""
    if p.kind == "box":
        rel = np.abs(q) / p.size
        ax = np.argmax(rel, axis=1)
        nl = np.zeros_like(q)
        nl[np.arange(len(q)), ax] = np.sign(q[np.arange(len(q)), ax])
        # surface coordinates: the two in-face coordinates
        uu = np.where(ax == 0, q[:, 2], q[:, 0])
        vv = np.where(ax == 1, q[:, 2], q[:, 1])
        uu = uu + 3.7 * ax  # different faces, different patches of noise
        return nl, uu, vv
    r = float(p.size[0])
    nl = q / r
    uu = np.arctan2(nl[:, 0], nl[:, 2]) * r
    vv = np.arcsin(np.clip(nl[:, 1], -1, 1)) * r
    return nl, uu, vv


# ---------------------------------------------------------------------------------------------
# Video file
# ---------------------------------------------------------------------------------------------
def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 10.0, crf: int = 18) -> Path:
    """Encode RGB frames as an H.264 (yuv420p) MP4 with PyAV.

    Args:
        path: output file (its parent is created; an existing file is replaced).
        frames: (T, H, W, 3) uint8 with even H and W (yuv420p subsamples chroma 2×2).
        fps: frame rate.
        crf: x264 constant rate factor (lower = better quality; 18 is visually near-lossless).

    Returns:
        The path written.
    """
    import av

    frames = np.asarray(frames)
    check_shape(frames, (None, None, None, 3), "frames")
    if frames.dtype != np.uint8:
        raise InputError(f"{path}: frames must be uint8, got {frames.dtype}")
    T, H, W = frames.shape[:3]
    if T == 0:
        raise InputError(f"{path}: no frames to write")
    if H % 2 or W % 2:
        raise InputError(f"{path}: H.264 yuv420p needs even frame sizes, got {W}×{H} (W×H)")
    if not fps > 0:
        raise InputError(f"{path}: fps must be > 0, got {fps!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width = W
        stream.height = H
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(int(crf)), "preset": "veryfast"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
