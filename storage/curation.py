"""Which shots an export holds, and why the others are left out (docs/curation.md).

An export's units are shots (:mod:`geo4d.shots`). :func:`plan_shots` decides for every shot of the
chosen fused videos: exported (with its split), or dropped with one reason — ``damaged: …`` (the
video's frames or fused arrays), ``skipped: …`` (the shot was too short to reconstruct), ``filter:
<clause> (<values>)`` (the ``--where`` filter, :mod:`geo4d.curation`), or ``max_shots`` (past
``--max-shots``, in the order of video id and shot). Every format of one export writes the same
kept shots, the plan's (Zarr, webdataset and the standard formats of :func:`storage.export.export_formats`).
:func:`dry_run_lines` says it all, per format, without writing anything; :func:`export_webdataset`
writes the kept shots as training shards, one shard set per split (:mod:`storage.shards`), and
:func:`write_export_card` the dataset card (:mod:`storage.dataset_card`).
"""

from __future__ import annotations

from collections import Counter
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geo4d.cameras import invert_pose
from geo4d.curation import DEFAULT_SPLITS, ShotFilter, assign_split, load_where
from geo4d.errors import InputError
from geo4d.quality import SCORE_NAMES, skipped_scores
from storage.store import Store

__all__ = ["Curation", "ShotPlan", "plan_shots", "dry_run_lines", "drop_counts", "export_webdataset",
           "webdataset_sample_refs", "write_export_card", "WEBDATASET_DIR"]

#: Folder of the training shards inside an export: one shard set per split, ``webdataset/<split>/``.
WEBDATASET_DIR = "webdataset"


@dataclass(frozen=True)
class Curation:
    """How an export chooses its shots: the filter (default :data:`geo4d.curation.DEFAULT_WHERE`,
    lenient), the file it came from, the split fractions and seed, and at most ``max_shots`` shots."""

    where: ShotFilter = field(default_factory=lambda: load_where(None)[0])
    filter_file: str | None = None
    splits: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_SPLITS))
    split_seed: int = 0
    max_shots: int | None = None

    def __post_init__(self) -> None:
        for name in self.splits:  # a split names a folder of the webdataset shards
            if not name or name.startswith(".") or any(c in name for c in "/\\"):
                raise InputError(f"--split: split name {name!r} must be a plain folder name "
                                 "(no '/', not starting with '.')")


@dataclass
class ShotPlan:
    """One shot's fate in an export: ``reason`` None (exported) or why not; ``multi``: its video has
    several shots (then its Zarr is ``videos/<id>-shot<k>.zarr``, else ``videos/<id>.zarr``)."""

    video_id: str
    shot: int
    start: int
    end: int
    multi: bool
    scores: dict
    split: str
    fuse_record: dict
    reason: str | None = None

    @property
    def zarr_path(self) -> str:
        return f"videos/{self.video_id}-shot{self.shot}.zarr" if self.multi else f"videos/{self.video_id}.zarr"

    @property
    def unit(self) -> str:
        """The shot's directory name in the standard formats: ``<video_id>-shot<k>``, or the video id
        for a video of one shot (as its Zarr)."""
        return f"{self.video_id}-shot{self.shot}" if self.multi else self.video_id

    @property
    def n_frames(self) -> int:
        return self.end - self.start

    def label(self) -> str:
        return f"{self.video_id} shot {self.shot} (frames {self.start}–{self.end - 1})"


def _video_plans(store: Store, vid: str, rec: dict, curation: Curation, damage: str | None) -> list[ShotPlan]:
    """The plans of one fused video's shots (before ``max_shots``)."""
    shots = store.read_shots(vid)
    scores = {r["shot"]: r for r in store.read_shot_scores(vid)}
    split = assign_split(vid, curation.splits, curation.split_seed)
    plans = []
    for s in shots:
        sc = dict(scores.get(s.index) or skipped_scores(s))
        sc.setdefault("n_frames", s.n_frames)
        if damage is not None:
            reason = f"damaged: {damage}"
        elif s.skipped:
            reason = f"skipped: {s.skipped}"
        else:
            why = curation.where.failing(sc)
            reason = f"filter: {why}" if why else None
        plans.append(ShotPlan(vid, s.index, s.start, s.end, len(shots) > 1, sc, split, rec, reason))
    return plans


def plan_shots(store: Store, video_ids: list[str], curation: Curation,
               damage: Callable[[str], str | None]) -> tuple[list[ShotPlan], list[str]]:
    """Every shot of the fused videos among ``video_ids`` with its fate; and the videos not fused.

    ``damage(video_id)`` says why a video's data cannot be exported (None: whole). The shots kept
    past ``curation.max_shots`` (in video id, shot order) are dropped as ``max_shots``.
    """
    plans, not_fused = [], []
    for vid in sorted(video_ids):
        rec = store.stage_record(vid, "fuse") or {}
        if rec.get("status") not in ("complete", "damaged"):
            not_fused.append(vid)
            continue
        plans += _video_plans(store, vid, rec, curation, damage(vid))
    kept = 0
    for p in plans:
        if p.reason is None:
            kept += 1
            if curation.max_shots is not None and kept > curation.max_shots:
                p.reason = f"max_shots: past --max-shots {curation.max_shots}"
    return plans, not_fused


def _reason_kind(reason: str) -> str:
    """The reason's group for the counts: ``filter: <clause>`` without the values, ``damaged``, …"""
    head, _, rest = reason.partition(": ")
    if head == "filter":
        return f"filter: {rest.split(' (')[0]}"
    if head == "skipped":
        return f"skipped: {rest.split(' (')[0]}"
    return head


def drop_counts(plans: list[ShotPlan]) -> dict[str, int]:
    """Reason group → shots dropped (``filter: window_agreement < 0.05``, ``skipped: shorter than one
    window``, ``damaged``, ``max_shots``)."""
    return dict(sorted(Counter(_reason_kind(p.reason) for p in plans if p.reason).items()))


def _targets(p: ShotPlan, formats: Sequence[str], samples: Mapping[tuple[str, int], int]) -> str:
    """Where each format would write the kept shot ``p`` (paths relative to the export)."""
    out = []
    for fmt in formats:
        if fmt == "zarr":
            out.append(f"zarr {p.zarr_path}")
        elif fmt == "webdataset":
            out.append(f"webdataset {WEBDATASET_DIR}/{p.split}/ ({samples.get((p.video_id, p.shot), 0)} sample(s))")
        else:
            out.append(f"{fmt} {fmt}/{p.unit}/")
    return ", ".join(out)


def _format_totals(kept: list[ShotPlan], formats: Sequence[str], samples: Mapping[tuple[str, int], int]) -> list[str]:
    """One line per format: what it would get (the same shots for all; webdataset per split)."""
    lines = []
    for fmt in formats:
        if fmt != "webdataset":
            where = "videos/" if fmt == "zarr" else f"{fmt}/"
            lines.append(f"  {fmt}: {len(kept)} shot(s) → {where}")
            continue
        per = Counter()
        for p in kept:
            per[p.split] += samples.get((p.video_id, p.shot), 0)
        parts = [f"{name} {n} sample(s) → {WEBDATASET_DIR}/{name}/" for name, n in sorted(per.items()) if n]
        lines.append(f"  webdataset: {sum(per.values())} sample(s) of {len(kept)} shot(s)"
                     + (f": {', '.join(parts)}" if parts else "") + " (empty splits: no folder)")
    return lines


def dry_run_lines(plans: list[ShotPlan], not_fused: list[str], formats: Sequence[str] = ("zarr",),
                  sampling: Mapping[str, Any] | None = None) -> list[str]:
    """What an export in ``formats`` would write and why the rest would not: one line per shot (the
    kept ones with where each format would put them), then the counts per format, reason and split.
    ``sampling``: the webdataset samples' ``unit``, ``clip_frames``, ``stride``
    (:func:`webdataset_sample_refs`)."""
    kept = [p for p in plans if p.reason is None]
    samples = {(p.video_id, p.shot): len(webdataset_sample_refs(p, **dict(sampling or {})))
               for p in kept} if "webdataset" in formats else {}
    lines = [f"would export {p.label()} [{p.split}] → {_targets(p, formats, samples)}" if p.reason is None
             else f"would drop {p.label()}: {p.reason}" for p in plans]
    lines += [f"would skip {v}: fuse stage not complete" for v in not_fused]
    lines.append(f"{len(kept)} of {len(plans)} shot(s) would be exported "
                 f"({len({p.video_id for p in kept})} video(s), {sum(p.n_frames for p in kept)} frames), "
                 f"the same shots in every format; nothing written (--dry-run)")
    lines += _format_totals(kept, formats, samples)
    lines += [f"  dropped {n}: {why}" for why, n in drop_counts(plans).items()]
    splits = Counter(p.split for p in kept)
    lines += [f"  split {name}: {n} shot(s)" for name, n in sorted(splits.items())]
    return lines


# ---- training shards -------------------------------------------------------------------------------
def _load_sample(store: Store, ref, scores: dict, provenance: dict):
    """One shard sample read from the store: frames ``shot_start + start …`` of the sample only
    (the store's arrays are chunked per frame); poses re-based on the sample's first frame."""
    from storage.shards import ShardSample

    a = ref.shot_start + ref.start
    sl = slice(a, a + ref.length)

    def arr(path: str) -> np.ndarray:
        return np.asarray(store.video_array(ref.video_id, path)[sl])

    poses = arr("fused/cam_to_world").astype(np.float64)
    first = poses[0].copy()
    rebased = invert_pose(first) @ poses
    rebased[0] = np.eye(4)
    depth = arr("fused/depth")
    conf = arr("fused/confidence")
    return ShardSample(ref, arr("frames"), np.where(conf > 0, depth, 0), conf, arr("fused/intrinsics"), rebased,
                       scores, provenance, first)


def webdataset_sample_refs(p: ShotPlan, *, unit: str = "clip", clip_frames: int = 16,
                           stride: int = 16) -> list:
    """The webdataset samples (:class:`storage.shards.SampleRef`) of the planned shot ``p``: clips of
    ``clip_frames`` every ``stride`` frames, or the whole shot (:func:`storage.shards.shot_samples`)."""
    from storage.shards import shot_samples

    return shot_samples(p.video_id, p.shot, p.n_frames, unit=unit, clip_frames=clip_frames, stride=stride,
                        shot_start=p.start)


def _split_order(kept: list[ShotPlan], splits: Sequence[str] | None) -> list[str]:
    """The splits holding kept shots: in the curation's order, then any others by name."""
    present = {p.split for p in kept}
    order = [s for s in (splits or ()) if s in present]
    return order + sorted(present - set(order))


def _write_split(store: Store, root: Path, split: str, kept: list[ShotPlan], sampling: dict, target_bytes: int,
                 seed: int, provenance: Callable[[str], dict]) -> dict | None:
    """One split's shard set ``root/<split>/`` (shuffled within the split by ``seed``); its card entry,
    or None (and no folder) when its shots give no sample."""
    from storage.shards import write_shards

    refs, info = [], {}
    for p in kept:
        for ref in webdataset_sample_refs(p, **sampling):
            refs.append(ref)
            info[ref.key] = p
    if not refs:
        return None

    def load(ref):
        p = info[ref.key]
        return _load_sample(store, ref, {**p.scores, "split": p.split}, provenance(p.video_id))

    clips = sampling["unit"] == "clip"
    meta = {"unit": sampling["unit"], "split": split, "clip_frames": sampling["clip_frames"] if clips else None,
            "stride": sampling["stride"] if clips else None}
    shards = write_shards(refs, root / split, load=load, target_bytes=target_bytes, seed=seed, meta=meta)
    return {"shards": len(shards), "samples": len(refs), "shots": len(kept), "path": f"{WEBDATASET_DIR}/{split}"}


def _remove_stale_shards(root: Path, keep: set[str]) -> None:
    """Remove the shard sets of an earlier export that this one did not write: the flat layout (shards
    directly in ``webdataset/``, before shards per split; manifest first) and the folders of splits
    now empty (those with a ``shards.json``: a shard set, nothing else)."""
    from storage.shards import SHARDS_MANIFEST

    if (root / SHARDS_MANIFEST).is_file():
        (root / SHARDS_MANIFEST).unlink()
        for old in root.glob("shard-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
            old.unlink()
    for d in root.iterdir():
        if d.is_dir() and d.name not in keep and (d / SHARDS_MANIFEST).is_file():
            (d / SHARDS_MANIFEST).unlink()  # a reader starting from it sees no set while it goes
            shutil.rmtree(d)


def export_webdataset(store: Store, outdir: str | Path, plans: list[ShotPlan], *, unit: str = "clip",
                      clip_frames: int = 16, stride: int = 16, target_bytes: int = 256 << 20, seed: int = 0,
                      provenance: Callable[[str], dict] | None = None,
                      splits: Sequence[str] | None = None) -> dict[str, Any]:
    """The kept shots as webdataset tar shards, one shard set per split: ``OUTDIR/webdataset/<split>/``
    with ``shard-NNNNNN.tar`` and its own ``shards.json`` (:func:`storage.shards.write_shards`: clips of
    ``clip_frames`` every ``stride`` frames, or whole shots; shuffled within the split by ``seed``). A
    split without samples has no folder; shard sets of an earlier export that this one does not
    write (a now empty split, the former single set in ``webdataset/``) are removed. ``splits``: the
    curation's split names, for the order of the entry (default: by name).

    Returns:
        the card's ``webdataset`` entry (``splits``: split → shards, samples, shots, path; ``shards``
        the total) plus ``samples`` (how many were written in all).
    """
    kept = [p for p in plans if p.reason is None]
    prov = provenance or (lambda vid: {"video_id": vid})
    sampling = {"unit": unit, "clip_frames": clip_frames, "stride": stride}
    root = Path(outdir) / WEBDATASET_DIR
    if root.exists() and not root.is_dir():
        raise InputError(f"{root}: exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    per_split = {}
    for name in _split_order(kept, splits):
        entry = _write_split(store, root, name, [p for p in kept if p.split == name], sampling, int(target_bytes),
                             seed, prov)
        if entry is not None:
            per_split[name] = entry
    _remove_stale_shards(root, set(per_split))
    return {"unit": unit, "clip_frames": clip_frames if unit == "clip" else None,
            "stride": stride if unit == "clip" else None, "shards": sum(e["shards"] for e in per_split.values()),
            "target_bytes": int(target_bytes), "seed": int(seed), "path": WEBDATASET_DIR, "splits": per_split,
            "samples": sum(e["samples"] for e in per_split.values())}


# ---- dataset card ----------------------------------------------------------------------------------
def predictor_info(store: Store, video_ids: list[str]) -> dict | None:
    """The card's predictor entry from the first video's windows-stage parameters (name, checkpoint
    fingerprint, dtype, fs, image size, sampler steps; ``synthetic`` for the test instrument)."""
    for vid in video_ids:
        rec = store.stage_record(vid, "windows") or {}
        p = (rec.get("parameters") or {}).get("predictor") or {}
        if not rec:
            continue
        name = str(rec.get("predictor") or p.get("name") or p.get("kind") or "unknown")
        size = p.get("image_size")
        return {"name": name, "synthetic": name.startswith("synthetic") or p.get("kind") == "synthetic",
                "checkpoint_fingerprint": p.get("checkpoint_fingerprint"), "dtype": p.get("dtype"),
                "fs": p.get("fs"), "image_size": tuple(size) if size else None,
                "sampler_steps": p.get("ddim_steps") or p.get("steps")}
    return None


def _splits(kept: list[ShotPlan]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for p in kept:
        s = out.setdefault(p.split, {"videos": set(), "shots": 0, "frames": 0})
        s["videos"].add(p.video_id)
        s["shots"] += 1
        s["frames"] += p.n_frames
    return {k: {**v, "videos": len(v["videos"])} for k, v in sorted(out.items())}


def write_export_card(store: Store, outdir: str | Path, plans: list[ShotPlan], curation: Curation,
                      formats: list[str], webdataset: Mapping[str, Any] | None = None) -> Path:
    """Write the export's ``DATASET.md`` + ``dataset.json`` + histogram figure (:mod:`storage.dataset_card`):
    source and counts, shots kept and dropped per reason, splits, filters, score distributions over the
    kept shots, the predictor and the code version. Returns the ``DATASET.md`` path."""
    from storage.dataset_card import score_distributions, write_dataset_card

    kept = [p for p in plans if p.reason is None]
    videos = sorted({p.video_id for p in plans})
    wds = {k: v for k, v in (webdataset or {}).items() if k != "samples"} or None
    info = {
        "sources": [{"location": store.location, "videos": len(videos), "shots": len(plans),
                     "frames": sum(p.n_frames for p in plans)}],
        "counts": {"videos": len({p.video_id for p in kept}), "shots": len(kept), "frames": sum(p.n_frames for p in kept),
                   "samples": (webdataset or {}).get("samples")},
        "shots_kept": len(kept), "shots_dropped": drop_counts(plans), "splits": _splits(kept),
        "filters": {"where": curation.where.text, "filter_file": curation.filter_file,
                    "split_fractions": dict(curation.splits), "split_seed": curation.split_seed,
                    "max_shots": curation.max_shots},
        "scores": score_distributions([p.scores for p in kept], SCORE_NAMES),
        "predictor": predictor_info(store, [p.video_id for p in kept] or videos),
        "formats": list(formats), "webdataset": wds,
    }
    md, _ = write_dataset_card(outdir, info)
    return md
