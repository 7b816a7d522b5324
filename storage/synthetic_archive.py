"""Write a SYNTHETIC archive with known defects to disk (the files of :mod:`geo4d.synthetic_archive`).

Layout of ``write_archive(directory, spec)``::

    <name>.mp4        H.264 video (geo4d.synthetic.write_video), as `geo4d synth` writes them
    <name>.gt/        its ground truth (storage.ground_truth), the shots end to end: each frame's pose
                      is relative to its shot's first camera, meta.json lists the shots
                      ("shots": [{"start", "end", "seed"}], end exclusive) and the archive entry
    archive.json      written last: every video's kind, boundaries, shot ranges, fade, the
                      predictor noise of a corrupted video, and the paths (relative to the directory)

``archive.json`` is the manifest a benchmark or test reads back with :func:`read_archive`; a
directory without it is an incomplete write.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from geo4d.errors import InputError
from geo4d.synthetic import GENERATOR_VERSION, write_video
from geo4d.synthetic_archive import ArchiveSpec, ArchiveVideo, build_video, concatenated_geometry
from storage.ground_truth import ground_truth_dir, write_ground_truth

__all__ = ["ARCHIVE_MANIFEST", "write_archive", "write_archive_video", "read_archive"]

ARCHIVE_MANIFEST = "archive.json"


def write_archive_video(directory: str | os.PathLike, video: ArchiveVideo, fps: float) -> dict[str, Any]:
    """Write one video (``<name>.mp4`` + ``<name>.gt/``) into ``directory``; its manifest entry."""
    d = Path(directory)
    name = video.meta["name"]
    path = write_video(d / f"{name}.mp4", video.frames, fps=fps)
    write_ground_truth(ground_truth_dir(path), concatenated_geometry(video))
    return {**video.meta, "video": path.name, "ground_truth": ground_truth_dir(path).name,
            "n_frames": int(video.frames.shape[0]), "boundaries": list(video.boundaries),
            "shots": [list(r) for r in video.shot_ranges]}


def write_archive(directory: str | os.PathLike, spec: ArchiveSpec | dict) -> dict[str, Any]:
    """Render and write every video of ``spec`` into ``directory`` (created), then ``archive.json``.

    Existing files of the same names are replaced; ``archive.json`` goes last (through a temporary
    name), so it only ever lists complete videos.

    Returns:
        The manifest (as written): ``{"synthetic": True, "generator", "spec", "videos": [entry…]}``.
    """
    spec = ArchiveSpec.parse(spec, what="synthetic archive")
    names = [v.name for v in spec.videos]
    if len(set(names)) != len(names):
        raise InputError(f"synthetic archive: video names must be unique, got {names}")
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise InputError(f"{d}: exists and is not a directory")
    d.mkdir(parents=True, exist_ok=True)
    entries = [write_archive_video(d, build_video(v, spec), spec.fps) for v in spec.videos]
    manifest = {"synthetic": True, "generator": GENERATOR_VERSION, "spec": spec.fingerprint_dict(), "videos": entries}
    tmp = d / f"{ARCHIVE_MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, d / ARCHIVE_MANIFEST)
    return manifest


def read_archive(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an archive written by :func:`write_archive`, with absolute ``video`` and
    ``ground_truth`` paths."""
    f = Path(directory) / ARCHIVE_MANIFEST
    if not f.is_file():
        raise InputError(f"{f}: missing; {directory} is not a complete synthetic archive")
    try:
        manifest = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{f}: not valid JSON ({exc})") from exc
    for e in manifest.get("videos", []):
        e["video"] = str(f.parent / e["video"])
        e["ground_truth"] = str(f.parent / e["ground_truth"])
    return manifest
