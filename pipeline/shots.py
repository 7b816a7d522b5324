"""Shot boundary detection on decoded frames with PySceneDetect (docs/curation.md).

Hard cuts: PySceneDetect's ``AdaptiveDetector`` — ContentDetector's frame score (the weighted
change of hue, saturation and luminance between consecutive frames) at least ``cut_threshold`` and
at least ``adaptive_threshold`` times the mean score of the two frames on either side, so that fast
camera motion (high scores over many frames) is not a cut; cuts at least ``min_scene_len`` frames
apart. (The plain ContentDetector at its default threshold 27 cut the synthetic videos' fast turns.) Fades through black: its ``ThresholdDetector`` (the frame's mean
intensity falling below ``fade_threshold`` and rising again; the boundary is the middle of the dark
stretch). Cross-fades (dissolves) between two shots are not detected (no maintained detector for
them runs without model weights; TransNetV2 in PySceneDetect needs a weights file and onnxruntime). A content cut within ``min_scene_len`` frames of a fade is the fade's own change of
brightness and is dropped. Both detectors take the frames as NumPy arrays, frame by frame, so the
frames are read from the store block by block (memory flat in the video's length).

PySceneDetect imports OpenCV, so detection lives here rather than in the pure :mod:`geo4d`; the
shots themselves are :mod:`geo4d.shots`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
from pydantic import Field

from geo4d.spec import Spec

__all__ = ["ShotSettings", "SHOT_DETECTORS", "detect_boundaries", "detector_version"]

#: ``--shots`` choices: PySceneDetect's detectors, or ``off`` (every video is one shot).
SHOT_DETECTORS = ("pyscenedetect", "off")


class ShotSettings(Spec):
    """How shots are found (the ``shots`` stage's settings; ``geo4d reconstruct/archive --shots``).

    Attributes:
        detector: ``pyscenedetect`` (AdaptiveDetector for cuts + ThresholdDetector for fades) or
            ``off`` (one shot per video, as before shots existed).
        cut_threshold: the least frame-to-frame HSV change of a cut (AdaptiveDetector's
            ``min_content_val``, 0–255 scale).
        adaptive_threshold: a cut's change over the mean change of its neighbours (±2 frames).
        fade_threshold: ThresholdDetector's mean 8-bit intensity below which a frame is black.
        min_scene_len: frames: cuts closer than this to the previous one are merged (flash filter).
    """

    detector: Literal["pyscenedetect", "off"] = Field("pyscenedetect", description="pyscenedetect or off")
    cut_threshold: float = Field(20.0, gt=0, allow_inf_nan=False, description="least HSV change of a cut")
    adaptive_threshold: float = Field(2.0, gt=0, allow_inf_nan=False,
                                      description="cut: HSV change over the mean change of its neighbours")
    fade_threshold: float = Field(20.0, ge=0, le=255, allow_inf_nan=False, description="ThresholdDetector level")
    min_scene_len: int = Field(4, ge=1, description="frames between two cuts at least")


def detector_version() -> str:
    """``pyscenedetect <version>`` (what the stage's parameters record)."""
    import scenedetect

    return f"pyscenedetect {scenedetect.__version__}"


def detect_boundaries(blocks: Iterable[np.ndarray], fps: float, settings: ShotSettings) -> list[tuple[int, str]]:
    """Shot boundaries of the frames given block by block (each (n, H, W, 3) uint8 RGB, in order).

    Returns:
        sorted ``(frame, kind)``: the first frame of each new shot, kind ``"cut"`` or ``"fade"``
        (nothing when ``settings.detector`` is ``off``).
    """
    if settings.detector == "off":
        return []
    from scenedetect.common import FrameTimecode
    from scenedetect.detectors import AdaptiveDetector, ThresholdDetector

    content = AdaptiveDetector(adaptive_threshold=settings.adaptive_threshold, min_content_val=settings.cut_threshold,
                               min_scene_len=settings.min_scene_len)
    fade = ThresholdDetector(threshold=settings.fade_threshold, min_scene_len=settings.min_scene_len)
    rate = float(fps) if fps and fps > 0 else 24.0
    cuts: list[int] = []
    fades: list[int] = []
    i = 0
    for block in blocks:
        for frame in np.asarray(block, dtype=np.uint8):
            tc = FrameTimecode(i, rate)
            cuts += [c.frame_num for c in content.process_frame(tc, np.ascontiguousarray(frame[..., ::-1]))]  # BGR
            fades += [c.frame_num for c in fade.process_frame(tc, frame)]
            i += 1
    if i:
        end = FrameTimecode(i - 1, rate)
        cuts += [c.frame_num for c in content.post_process(end)]
    return _merge(cuts, fades, settings.min_scene_len)


def _merge(cuts: list[int], fades: list[int], gap: int) -> list[tuple[int, str]]:
    """Fades, and the cuts not within ``gap`` frames of a fade (those are the fade's brightness change)."""
    out = {int(f): "fade" for f in fades}
    for c in cuts:
        if all(abs(int(c) - f) > gap for f in fades):
            out.setdefault(int(c), "cut")
    return sorted(out.items())
