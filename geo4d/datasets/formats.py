"""File formats of the depth/pose benchmarks: readers, writers and the protocol's resizing.

* Sintel ``.dpt`` (depth): little-endian float32 tag 202021.25, int32 width, int32 height, then
  width·height float32 depths, row-major (H, W).
* Sintel ``.cam`` (camera): the same tag, then 9 float64 (intrinsics K, row-major) and 12 float64
  (the 3×4 extrinsic ``[R | t]``, world → camera, i.e. ``cam_from_world``).
* 16-bit PNG depth: TUM RGB-D and Bonn store metres × 5000, KITTI metres × 256; 0 = no measurement.

Every reader raises :class:`geo4d.errors.InputError` naming the file on malformed input (bad tag,
impossible size, truncated payload, unreadable or 8-bit PNG). Depth readers return float32 with
**0 where there is no measurement** (invalid pixels are ``depth <= 0`` or non-finite everywhere in
the metrics).

Written by hand: these formats are a few lines each and no maintained package reads them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from geo4d.cameras import check_shape
from geo4d.errors import InputError

__all__ = [
    "SINTEL_TAG",
    "TUM_DEPTH_SCALE",
    "KITTI_DEPTH_SCALE",
    "read_dpt",
    "write_dpt",
    "read_cam",
    "write_cam",
    "read_depth_png",
    "write_depth_png",
    "read_image",
    "write_image",
    "resize_image",
    "resize_depth_to",
    "resize_mask_to",
]

SINTEL_TAG = np.float32(202021.25)
TUM_DEPTH_SCALE = 5000.0  # TUM RGB-D and Bonn: value / 5000 = metres
KITTI_DEPTH_SCALE = 256.0  # KITTI depth: value / 256 = metres
_MAX_PIXELS = 100_000_000


def _read_bytes(path: str | os.PathLike) -> tuple[Path, bytes]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    try:
        return p, p.read_bytes()
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from exc


def _atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, p)
    return p


# ---- Sintel ------------------------------------------------------------------------------------------
def _check_tag(p: Path, raw: bytes, kind: str) -> None:
    if len(raw) < 4:
        raise InputError(f"{p}: too short for a Sintel {kind} file ({len(raw)} bytes)")
    tag = np.frombuffer(raw, dtype="<f4", count=1)[0]
    if tag != SINTEL_TAG:
        raise InputError(f"{p}: bad magic number {tag!r} (a Sintel {kind} file starts with 202021.25)")


def read_dpt(path: str | os.PathLike) -> np.ndarray:
    """Read a Sintel ``.dpt`` depth map → (H, W) float32.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "d.dpt"
        >>> _ = write_dpt(f, np.arange(6, dtype=np.float32).reshape(2, 3))
        >>> read_dpt(f)
        array([[0., 1., 2.],
               [3., 4., 5.]], dtype=float32)
    """
    p, raw = _read_bytes(path)
    _check_tag(p, raw, "depth (.dpt)")
    if len(raw) < 12:
        raise InputError(f"{p}: truncated header ({len(raw)} bytes, expected at least 12)")
    w, h = (int(x) for x in np.frombuffer(raw, dtype="<i4", count=2, offset=4))
    if w <= 0 or h <= 0 or w * h > _MAX_PIXELS:
        raise InputError(f"{p}: impossible size {w}×{h} in the header")
    expected = 12 + 4 * w * h
    if len(raw) != expected:
        raise InputError(f"{p}: wrong size: header says {w}×{h} ({expected} bytes), file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype="<f4", count=w * h, offset=12).reshape(h, w).astype(np.float32)


def write_dpt(path: str | os.PathLike, depth: np.ndarray) -> Path:
    """Write an (H, W) depth map as a Sintel ``.dpt`` file."""
    check_shape(depth, (None, None), "depth")
    h, w = np.shape(depth)
    data = (np.asarray([SINTEL_TAG], dtype="<f4").tobytes() + np.asarray([w, h], dtype="<i4").tobytes()
            + np.ascontiguousarray(depth, dtype="<f4").tobytes())
    return _atomic_write(path, data)


def read_cam(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a Sintel ``.cam`` file → ``(K (3,3), cam_from_world (4,4))``, both float64.

    The file stores the 3×4 world → camera extrinsic; it is returned as a 4×4 ``cam_from_world``
    (invert it with :func:`geo4d.cameras.invert_pose` for ``world_from_cam``).
    """
    p, raw = _read_bytes(path)
    _check_tag(p, raw, "camera (.cam)")
    expected = 4 + 8 * 21
    if len(raw) != expected:
        raise InputError(f"{p}: wrong size: a .cam file has {expected} bytes (tag, 3×3 K, 3×4 extrinsic), this has {len(raw)}")
    vals = np.frombuffer(raw, dtype="<f8", count=21, offset=4)
    if not np.isfinite(vals).all():
        raise InputError(f"{p}: non-finite values in the camera matrices")
    K = vals[:9].reshape(3, 3).copy()
    E = np.eye(4)
    E[:3, :] = vals[9:].reshape(3, 4)
    return K, E


def write_cam(path: str | os.PathLike, K: np.ndarray, cam_from_world: np.ndarray) -> Path:
    """Write a Sintel ``.cam`` file from K (3,3) and ``cam_from_world`` (3,4) or (4,4)."""
    check_shape(K, (3, 3), "K")
    E = np.asarray(cam_from_world, dtype=np.float64)
    if E.shape not in ((3, 4), (4, 4)):
        raise ValueError(f"cam_from_world: expected shape (3, 4) or (4, 4), got {E.shape}")
    data = (np.asarray([SINTEL_TAG], dtype="<f4").tobytes() + np.asarray(K, dtype="<f8").tobytes()
            + np.ascontiguousarray(E[:3, :4], dtype="<f8").tobytes())
    return _atomic_write(path, data)


# ---- PNG depth and images ----------------------------------------------------------------------------
def _open_image(p: Path):
    from PIL import Image, UnidentifiedImageError

    if not p.is_file():
        raise InputError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    try:
        im = Image.open(p)
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{p}: not a readable image ({exc})") from exc
    return im


def read_depth_png(path: str | os.PathLike, scale: float) -> np.ndarray:
    """Read a 16-bit PNG depth map → (H, W) float32 metres (``value / scale``), 0 where missing.

    Raises:
        InputError: unreadable image, or not a single-channel 16-bit PNG (an 8-bit image would
            silently give depths 256× too small).
    """
    p = Path(path)
    im = _open_image(p)
    if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise InputError(f"{p}: not a 16-bit depth PNG (image mode {im.mode!r})")
    raw = np.asarray(im)
    if raw.ndim != 2:
        raise InputError(f"{p}: expected a single-channel depth image, got shape {raw.shape}")
    if raw.min() < 0 or raw.max() > 65535:
        raise InputError(f"{p}: values outside the 16-bit range")
    return (raw.astype(np.float64) / scale).astype(np.float32)


def write_depth_png(path: str | os.PathLike, depth: np.ndarray, scale: float) -> Path:
    """Write (H, W) metres as a 16-bit PNG (``round(depth · scale)``; non-finite or ≤ 0 → 0).

    Raises:
        ValueError: a depth beyond the 16-bit range at this scale.
    """
    from PIL import Image

    check_shape(depth, (None, None), "depth")
    d = np.asarray(depth, dtype=np.float64)
    ok = np.isfinite(d) & (d > 0)
    v = np.zeros(d.shape, dtype=np.float64)
    v[ok] = np.rint(d[ok] * scale)
    if v.max(initial=0) > 65535:
        raise ValueError(f"depth: {d[ok].max():.3f} exceeds the 16-bit range at scale {scale}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp.png")
    Image.fromarray(v.astype(np.uint16)).save(tmp, format="PNG")
    os.replace(tmp, p)
    return p


def read_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as uint8 RGB (H, W, 3) (EXIF orientation applied); optionally resized to
    ``size = (W, H)`` with :func:`resize_image`."""
    from PIL import ImageOps

    p = Path(path)
    im = _open_image(p)
    try:
        im = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: cannot convert to RGB ({exc})") from exc
    if size is not None:
        im = _resize_pil(im, size)
    return np.asarray(im, dtype=np.uint8).copy()


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write uint8 RGB (H, W, 3) as PNG (lossless)."""
    from PIL import Image

    check_shape(rgb, (None, None, 3), "rgb")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp.png")
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, p)
    return p


def _resize_pil(im, size: tuple[int, int]):
    from PIL import Image

    W, H = int(size[0]), int(size[1])
    if (W, H) == im.size:
        return im
    shrink = max(W, H) < max(im.size)
    return im.resize((W, H), Image.Resampling.LANCZOS if shrink else Image.Resampling.BICUBIC)


def resize_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The evaluation's frame resizing: straight to ``size = (W, H)`` — no crop, aspect ratio not
    kept — LANCZOS when the long side shrinks, BICUBIC otherwise (PIL)."""
    from PIL import Image

    check_shape(rgb, (None, None, 3), "rgb")
    return np.asarray(_resize_pil(Image.fromarray(np.asarray(rgb, dtype=np.uint8)), size), dtype=np.uint8)


def resize_depth_to(depth: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of (T, h, w) maps to (T, H, W) (PyTorch ``interpolate``, ``align_corners=False``,
    the kernel torchvision's tensor ``Resize(BICUBIC)`` uses when enlarging) — how the evaluation
    brings predictions to the ground-truth resolution."""
    import torch

    check_shape(depth, (None, None, None), "depth")
    H, W = int(size_hw[0]), int(size_hw[1])
    d = np.asarray(depth, dtype=np.float32)
    if d.shape[1:] == (H, W):
        return d.copy()
    t = torch.from_numpy(np.ascontiguousarray(d))[:, None]
    antialias = H < d.shape[1] or W < d.shape[2]
    out = torch.nn.functional.interpolate(t, size=(H, W), mode="bicubic", align_corners=False, antialias=antialias)
    return out[:, 0].numpy()


def resize_mask_to(mask: np.ndarray, size_hw: tuple[int, int], threshold: float = 0.8) -> np.ndarray:
    """Resize a (T, h, w) validity mask like the predictions, then keep ``> threshold``."""
    return resize_depth_to(np.asarray(mask, dtype=np.float32), size_hw) > threshold
