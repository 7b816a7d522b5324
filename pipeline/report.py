"""The per-video report figure: what the store holds about a video → ``STORE/reports/<id>.png``.

The figure is :func:`geo4d.report.write_summary_png` (sample frames, inverse depth, confidence, the
camera path from above and the camera height) titled with the video id, frame count, fps, focal
length, whether the predictor was the synthetic test instrument and — after an evaluation against
ground truth — the metrics, with the true trajectory overlaid. The PNG carries what it was drawn
from (text chunk ``geo4d-report``: the fuse and evaluate fingerprints), so a rerun whose stages were
all skipped finds the report current and draws nothing. No Prefect here: :mod:`tasks` wraps it.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass

import numpy as np

from geo4d.errors import StoreError
from geo4d.report import SummaryInfo, write_summary_png
from storage.reports import read_report, read_report_inputs, report_location, write_report
from storage.store import Store

__all__ = ["REPORT_VERSION", "ReportResult", "check_fused", "predictor_is_synthetic", "report_key", "draw_report",
           "write_video_report", "try_video_report"]

#: Bumped when the figure changes, so that stored reports are drawn again.
REPORT_VERSION = 1
#: PNG text chunk naming what the figure was drawn from.
KEY_CHUNK = "geo4d-report"
#: Frames shown in the figure.
N_SHOW = 4


@dataclass
class ReportResult:
    """A report write: ``location`` of the figure (None: not written, ``error`` says why); ``skipped``
    when the stored one was current."""

    video_id: str
    location: str | None
    skipped: bool = False
    seconds: float = 0.0
    error: str | None = None


def check_fused(store: Store, video_id: str) -> None:
    """Raise a one-line :class:`StoreError` unless the store holds ``video_id`` with its fusion complete."""
    store.video_info(video_id)  # names the video and the ones the store has when unknown
    rec = store.stage_record(video_id, "fuse") or {}
    if rec.get("status") != "complete":
        state = rec.get("status") or "not run"
        raise StoreError(f"{store.location}: video {video_id} is not fused (fuse stage: {state}; "
                         "run geo4d reconstruct or geo4d fuse first)")


def predictor_is_synthetic(store: Store, video_id: str) -> bool | None:
    """Whether the video's windows came from the synthetic test instrument (None: not recorded),
    from the windows stage record's parameters."""
    rec = store.stage_record(video_id, "windows") or {}
    kind = ((rec.get("parameters") or {}).get("predictor") or {}).get("kind")
    if kind is None and isinstance(rec.get("predictor"), str):
        kind = rec["predictor"].split()[0]
    return None if kind is None else kind == "synthetic"


def report_key(store: Store, video_id: str) -> str:
    """What a report of the video is drawn from: the figure's version and the fingerprints of the
    fuse and evaluate stages (``-`` for one not complete)."""
    parts = [f"v{REPORT_VERSION}"]
    for stage in ("fuse", "evaluate"):
        rec = store.stage_record(video_id, stage) or {}
        parts.append(f"{stage}={rec.get('fingerprint') if rec.get('status') == 'complete' else '-'}")
    return ";".join(parts)


def _evaluation(store: Store, video_id: str, n_frames: int) -> tuple[dict | None, np.ndarray | None]:
    """(metrics, true world_from_cam (T, 4, 4)) of a complete evaluation against ground truth; the
    trajectory is None when the ground truth is no longer readable or has another length."""
    from storage.ground_truth import read_ground_truth

    rec = store.stage_record(video_id, "evaluate") or {}
    metrics = rec.get("metrics") if rec.get("status") == "complete" else None
    gt_dir = (rec.get("parameters") or {}).get("ground_truth")
    if not metrics or not gt_dir:
        return metrics, None
    try:
        gt = read_ground_truth(gt_dir).world_from_cam
    except Exception:  # noqa: BLE001 — the figure is drawn without the overlay
        return metrics, None
    return metrics, gt if gt.shape[0] == n_frames else None


def draw_report(store: Store, video_id: str) -> bytes:
    """The report figure of a fused video as PNG bytes (see the module docstring).

    Raises:
        StoreError: unknown video, or its fusion not complete.
    """
    check_fused(store, video_id)
    info = store.video_info(video_id)
    shown = np.linspace(0, info.n_frames - 1, min(N_SHOW, info.n_frames)).round().astype(int).tolist()
    arrays = read_report_inputs(store, video_id, shown)
    metrics, gt = _evaluation(store, video_id, info.n_frames)
    K = arrays["intrinsics"]
    summary = SummaryInfo(video_id, info.n_frames, info.fps, (float(np.median(K[:, 0, 0])), float(np.median(K[:, 1, 1]))),
                          predictor_is_synthetic(store, video_id), metrics, shots=store.read_shot_scores(video_id))
    out = io.BytesIO()
    write_summary_png(out, arrays["frames"], arrays["depth"], arrays["confidence"], arrays["world_from_cam"], gt,
                      info=summary, shown=shown, metadata={KEY_CHUNK: report_key(store, video_id)})
    return out.getvalue()


def _stored_key(store: Store, video_id: str, storage_options: dict | None) -> str | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(read_report(store, video_id, storage_options))) as img:
            return img.text.get(KEY_CHUNK)
    except (StoreError, OSError):
        return None


def write_video_report(store: Store, video_id: str, storage_options: dict | None = None,
                       force: bool = False) -> ReportResult:
    """Draw the video's report into the store unless the stored one is current (``force``: always)."""
    t0 = time.perf_counter()
    check_fused(store, video_id)
    if not force and _stored_key(store, video_id, storage_options) == report_key(store, video_id):
        return ReportResult(video_id, report_location(store, video_id), skipped=True)
    location = write_report(store, video_id, draw_report(store, video_id), storage_options)
    return ReportResult(video_id, location, seconds=time.perf_counter() - t0)


def try_video_report(location: str, video_id: str, storage_options: dict | None = None) -> dict:
    """:func:`write_video_report` into the store at ``location`` that never raises: a figure that cannot
    be drawn or stored is a :class:`ReportResult` with ``error`` (one line), as a dict."""
    try:
        store = Store(location, mode="a", storage_options=storage_options)
        result = write_video_report(store, video_id, storage_options)
    except Exception as exc:  # noqa: BLE001 — a report never fails the video
        text = str(exc).splitlines()[0] if str(exc) else ""
        result = ReportResult(video_id, None, error=f"{type(exc).__name__}: {text}")
    return asdict(result)
