"""Curation benchmark (issue 15): shots, per-shot fusion, quality scores and the default filter on a
SYNTHETIC archive with known defects.

The archive (:mod:`geo4d.synthetic_archive`, written by :mod:`storage.synthetic_archive`): videos with
1–3 hard cuts, videos with fades through black, static-camera videos, videos whose windows the
synthetic predictor corrupts (``SyntheticNoise.corrupt_windows``: a 15° wrong rotation, rigid or a
drift with ``ramp_corruption``), and clean ones. Windows come from the synthetic predictor — a TEST
INSTRUMENT (predictions derived from ground truth with unknown per-window gauges); the figures
measure the pipeline around the network, not a network. Each video goes through the pipeline's own
stages on a store: decode → shots → windows → fuse (with the per-shot scores).

Measured:

* shot boundaries found within ±1 frame: precision and recall over the edited videos (one-to-one
  matching, scipy's ``linear_sum_assignment``);
* per-shot fused accuracy of every shot of an edited video (clean predictions; Abs Rel, ATE / path
  length, after each shot's own alignment) next to the same scene fused alone as a single-shot video;
* ROC AUC per score separating the corrupted (and the static) videos' shots from the clean ones, all
  with the same mild noise (depth 2 %, 0.2° pose jitter): ``P(defective score > clean score)``,
  ties counted half (the Mann–Whitney U statistic / (n₁ n₂), scipy);
* the default filter's keep rate on clean shots (clean videos, every shot of the edited videos,
  the clean shots of the corrupted multi-shot videos), its drop rate on corrupted shots (the
  corrupted videos and the shots of multi-shot videos holding a corrupted window: the synthetic
  predictor draws those among the per-shot windows) and its keep rate on static-camera shots;
* the added time of shot detection + scoring on a 48-frame video (shots stage + ``shot_scores``
  against decode + windows + fuse without them).

    .venv/bin/python benchmarks/curation.py [--quick]

Prints the tables and writes benchmarks/results/curation.json and curation.md (``--quick``: a
smaller archive, results to a temporary directory unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The mild noise of every scored (clean, static, corrupted) video.
BASE_NOISE = {"depth_noise": 0.02, "pose_jitter_deg": 0.2}
CORRUPTIONS = [{"corrupt_windows": 2, "corrupt_deg": 15.0},
               {"corrupt_windows": 1, "corrupt_deg": 15.0, "ramp_corruption": True}]
FADE = 5  # frames of fade through black (odd: the boundary frame is black)
TOLERANCE = 1  # frames: a boundary found this close to the true one counts
#: Per-shot accuracy in its video ≤ 1.1 × the same scene alone + this (Abs Rel and ATE/path): clean
#: predictions fuse to a floor of 1e-5–1e-4 set by the store's float16 windows, and that floor varies
#: with each window's gauges, which the synthetic predictor draws from the window's frame index in
#: its video (so a shot's windows in an edited video are not its windows alone). For scale: a window
#: straddling a cut spoils a video to Abs Rel 0.067, ATE 5.5 % (issue 15).
PER_SHOT_SLACK = 1e-3
#: Multi-shot videos whose windows the synthetic predictor corrupts (one window: the shot holding it
#: is corrupted, the other clean), with :data:`BASE_NOISE`.
MULTI_CORRUPTED = [{"name": "mcorrupt0", "seeds": [500, 501], "shot_frames": [24, 26],
                    "noise": {**CORRUPTIONS[0], "corrupt_windows": 1}},
                   {"name": "mcorrupt1", "seeds": [502, 503], "shot_frames": [26, 22], "noise": CORRUPTIONS[1]}]
#: ``keep_static``: the default filter is for broken reconstructions; a static camera's shot is a
#: sound one (it teaches poses little: ``rotation_deg > 5`` drops it on request).
TARGETS = {"precision": 0.95, "recall": 0.95, "keep_clean": 0.95, "drop_corrupted": 0.90, "keep_static": 0.95,
           "added_time": 0.10}


# ---- the archive --------------------------------------------------------------------------------------
def _edited_videos(quick: bool) -> list[dict]:
    """Cut and faded videos (clean predictions): 1–3 hard cuts, fades at one or two boundaries."""
    if quick:
        return [{"name": "cut1", "kind": "cut", "seeds": [100, 101], "shot_frames": [20, 22]},
                {"name": "fade1", "kind": "cut", "seeds": [110, 111], "shot_frames": [20, 20], "fade_frames": FADE}]
    return [{"name": "cut1", "kind": "cut", "seeds": [100, 101], "shot_frames": [24, 30]},
            {"name": "cut2", "kind": "cut", "seeds": [102, 103, 104], "shot_frames": [20, 26, 22]},
            {"name": "cut3", "kind": "cut", "seeds": [105, 106, 107, 108], "shot_frames": [22, 18, 24, 20]},
            {"name": "cut1b", "kind": "cut", "seeds": [109, 120], "shot_frames": [32, 20]},
            {"name": "fade1", "kind": "cut", "seeds": [110, 111], "shot_frames": [26, 26], "fade_frames": FADE},
            {"name": "fade2", "kind": "cut", "seeds": [112, 113, 114], "shot_frames": [22, 24, 20],
             "fade_frames": FADE}]


def _scored_videos(quick: bool) -> list[dict]:
    """Clean, static-camera and corrupted videos (one shot each, all with :data:`BASE_NOISE`)."""
    n, T = (2, 24) if quick else (6, 48)
    out = []
    for i in range(n):
        out.append({"name": f"clean{i}", "kind": "clean", "seeds": [200 + i], "shot_frames": [T],
                    "predictor_noise": BASE_NOISE})
        out.append({"name": f"static{i}", "kind": "static", "seeds": [300 + i], "shot_frames": [T],
                    "predictor_noise": BASE_NOISE})
        out.append({"name": f"corrupt{i}", "kind": "corrupted", "seeds": [400 + i], "shot_frames": [T],
                    "predictor_noise": {**BASE_NOISE, **CORRUPTIONS[i % len(CORRUPTIONS)]}})
    return out


def _multi_corrupted_videos(quick: bool) -> list[dict]:
    """Two-shot videos with a corrupted window (kind ``cut``, with corrupting predictor noise)."""
    return [{"name": m["name"], "kind": "cut", "seeds": m["seeds"], "shot_frames": m["shot_frames"],
             "predictor_noise": {**BASE_NOISE, **m["noise"]}} for m in MULTI_CORRUPTED[:1 if quick else None]]


def corrupting(entry: dict) -> bool:
    """Whether the entry's windows are predicted with corrupted windows."""
    return int((entry.get("predictor_noise") or {}).get("corrupt_windows") or 0) > 0


def _reference_videos(edited: list[dict]) -> list[dict]:
    """Every shot of the edited videos alone, as a single-shot clean video (``<video>_ref<k>``)."""
    return [{"name": f"{e['name']}_ref{k}", "kind": "clean", "seeds": [seed], "shot_frames": [n]}
            for e in edited for k, (seed, n) in enumerate(zip(e["seeds"], e["shot_frames"]))]


def archive_spec(quick: bool) -> dict:
    """The benchmark's archive (:class:`geo4d.synthetic_archive.ArchiveSpec` fields): the edited,
    scored and reference videos."""
    h, w = (48, 64) if quick else (64, 96)
    edited = _edited_videos(quick)
    return {"height": h, "width": w, "fps": 10.0,
            "videos": edited + _scored_videos(quick) + _multi_corrupted_videos(quick) + _reference_videos(edited)}


# ---- metrics written here ---------------------------------------------------------------------------
def match_boundaries(found: list[int], truth: list[int], tol: int = TOLERANCE) -> tuple[int, int, int]:
    """``(true positives, false positives, false negatives)`` of one-to-one matches within ``tol`` frames.

    >>> match_boundaries([10, 21, 40], [11, 20, 30])
    (2, 1, 1)
    """
    from scipy.optimize import linear_sum_assignment

    if not found or not truth:
        return 0, len(found), len(truth)
    d = np.abs(np.subtract.outer(np.asarray(found), np.asarray(truth)))
    rows, cols = linear_sum_assignment(np.where(d <= tol, d, 10**6))
    tp = int((d[rows, cols] <= tol).sum())
    return tp, len(found) - tp, len(truth) - tp


def roc_auc(defective: list[float], clean: list[float]) -> float | None:
    """``P(defective > clean)`` with ties half: the Mann–Whitney U of ``defective`` / (n₁ n₂) (scipy).

    >>> roc_auc([3.0, 4.0], [1.0, 3.0])
    0.875
    """
    from scipy.stats import mannwhitneyu

    a = np.asarray([v for v in defective if v is not None and np.isfinite(v)], dtype=float)
    b = np.asarray([v for v in clean if v is not None and np.isfinite(v)], dtype=float)
    if not a.size or not b.size:
        return None
    return float(mannwhitneyu(a, b, alternative="two-sided").statistic / (a.size * b.size))


# ---- running the pipeline -----------------------------------------------------------------------------
def run_video(store, entry: dict) -> dict:
    """decode → shots → windows (synthetic predictor with the entry's noise) → fuse; seconds per stage."""
    from pipeline.stages import decode_stage, fuse_stage, shots_stage, windows_stage

    seconds = {}
    vid = decode_stage(store, entry["video"], video_id=entry["name"]).video_id
    for name, run in (("shots", lambda: shots_stage(store, vid)),
                      ("windows", lambda: windows_stage(store, vid, {"kind": "synthetic",
                                                                     "noise": entry.get("predictor_noise") or {}})),
                      ("fuse", lambda: fuse_stage(store, vid))):
        t0 = time.perf_counter()
        run()
        seconds[name] = time.perf_counter() - t0
    seconds["decode"] = float((store.stage_record(vid, "decode") or {}).get("seconds") or 0.0)
    return {"video_id": vid, "seconds": seconds, "shots": store.read_shots(vid), "scores": store.read_shot_scores(vid),
            "corrupted_starts": _corrupted_starts(store, vid, entry)}


def _corrupted_starts(store, vid: str, entry: dict) -> list[int]:
    """The starts of the windows the synthetic predictor corrupted (drawn among the stored windows)."""
    from pipeline.predictors import predictor_from_spec

    if not corrupting(entry):
        return []
    _, starts, _ = store.windows(vid)
    spec = {"kind": "synthetic", "noise": entry["predictor_noise"]}
    return list(predictor_from_spec(spec, video_path=entry["video"], starts=starts).corrupted_starts)


def shot_kinds(entry: dict, run: dict) -> list[tuple[str, dict]]:
    """``(kind, scores)`` of each reconstructed shot: ``clean`` (clean videos, edited videos' shots),
    ``static``, ``corrupted`` (a corrupted video's shot, or a shot holding a corrupted window)."""
    out = []
    for shot, sc in zip(run["shots"], run["scores"]):
        if sc.get("skipped") is not None:
            continue
        if entry["kind"] == "cut" and corrupting(entry):
            bad = any(shot.start <= s and s + 16 <= shot.end for s in run["corrupted_starts"])
            out.append(("corrupted" if bad else "clean", sc))
        else:
            out.append(("clean" if entry["kind"] == "cut" else entry["kind"], sc))
    return out


def _rebased(poses: np.ndarray) -> np.ndarray:
    """(n, 4, 4) poses relative to the first: ``P_0⁻¹ P_i``."""
    from geo4d.cameras import invert_pose

    return invert_pose(poses[0]) @ poses


def _accuracy(depth, K, poses, gt) -> dict[str, float]:
    """Abs Rel, δ<1.25 and ATE / path of one shot against its ground truth (a Geometry slice)."""
    from geo4d.metrics import reconstruction_metrics

    m = reconstruction_metrics(depth, K, _rebased(poses), gt.depth, gt.intrinsics, _rebased(gt.world_from_cam))
    return {k: float(m[k]) for k in ("abs_rel", "delta_1_25", "ate_rel") if k in m}


def shot_accuracy(store, vid: str, gt_dir: str, start: int, end: int) -> dict[str, float]:
    """The fused frames ``start … end − 1`` of ``vid`` against the ground truth of the same frames."""
    from geo4d.geometry import Geometry
    from storage.ground_truth import read_ground_truth

    fused, gt = store.read_fused(vid), read_ground_truth(gt_dir)
    sl = slice(start, end)
    part = Geometry.from_depth(gt.depth[sl], gt.intrinsics[sl], gt.world_from_cam[sl])
    depth = np.where(fused.valid[sl], fused.depth[sl], 0.0)
    return _accuracy(depth, fused.intrinsics[sl], fused.world_from_cam[sl], part)


# ---- the parts of the report ---------------------------------------------------------------------------
def boundary_figures(entries: list[dict], runs: dict[str, dict]) -> dict[str, Any]:
    """Precision/recall of the detected boundaries over the edited videos, and each video's lists."""
    tp = fp = fn = 0
    per_video = {}
    for e in entries:
        found = [s.start for s in runs[e["name"]]["shots"][1:]]
        a, b, c = match_boundaries(found, e["boundaries"])
        tp, fp, fn = tp + a, fp + b, fn + c
        per_video[e["name"]] = {"truth": e["boundaries"], "found": found, "fade": e.get("fade_frames", 0)}
    return {"precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1), "tp": tp, "fp": fp, "fn": fn,
            "videos": per_video}


def per_shot_figures(store, entries: list[dict], runs: dict[str, dict], refs: dict[str, dict]) -> list[dict]:
    """Each true shot of the edited videos: fused in its video (the detected shot at its start) next
    to the same scene as a single-shot video through the same pipeline (``refs``: name → entry)."""
    rows = []
    for e in entries:
        found = {s.start: s for s in runs[e["name"]]["shots"]}
        for k, ((start, end), seed) in enumerate(zip(e["shots"], e["seeds"])):
            shot = next((found[s] for s in (start, start - 1, start + 1) if s in found), None)
            ref = refs[f"{e['name']}_ref{k}"]
            row = {"video": e["name"], "shot": k, "frames": [start, end], "seed": seed,
                   "reference": shot_accuracy(store, runs[ref["name"]]["video_id"], ref["ground_truth"], 0,
                                              end - start)}
            if shot is None or shot.skipped:
                row["in_video"], row["note"] = None, "not found as a shot" if shot is None else shot.skipped
            else:
                row["in_video"] = shot_accuracy(store, runs[e["name"]]["video_id"], e["ground_truth"],
                                                shot.start, shot.end)
            rows.append(row)
    return rows


def _numeric(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float, bool)) and v is not None else None


def score_figures(entries: list[dict], runs: dict[str, dict]) -> dict[str, Any]:
    """ROC AUC per score: corrupted vs clean and static vs clean (shots of the scored videos)."""
    from geo4d.quality import SCORE_NAMES

    by_kind: dict[str, list[dict]] = {"clean": [], "static": [], "corrupted": []}
    for e in entries:
        for kind, sc in shot_kinds(e, runs[e["name"]]):
            by_kind[kind].append(sc)
    out: dict[str, Any] = {"n_shots": {k: len(v) for k, v in by_kind.items()}, "auc": {}, "values": {}}
    for name in SCORE_NAMES:
        vals = {k: [_numeric(s.get(name)) for s in v] for k, v in by_kind.items()}
        out["values"][name] = vals
        out["auc"][name] = {d: roc_auc(vals[d], vals["clean"]) for d in ("corrupted", "static")}
    return out


def default_filter():
    """The export's default shot filter as ``(expression, predicate(scores) -> bool)``
    (:func:`geo4d.curation.load_where` without a ``--where``: :data:`geo4d.curation.DEFAULT_WHERE`,
    lenient), or None where the code has none."""
    try:
        from geo4d.curation import DEFAULT_WHERE, load_where
    except ImportError:
        return None
    shot_filter, _ = load_where(None)
    return DEFAULT_WHERE, shot_filter.passes


def filter_figures(entries: list[dict], runs: dict[str, dict]) -> dict[str, Any] | None:
    """The default filter's keep rate on clean shots (:func:`shot_kinds`: clean videos, the edited
    videos' shots, the clean shots of the corrupted multi-shot videos), drop rate on corrupted ones
    and keep rate on static ones."""
    found = default_filter()
    if found is None:
        return None
    where, keep = found
    groups: dict[str, list[bool]] = {}
    for e in entries:
        for kind, sc in shot_kinds(e, runs[e["name"]]):
            groups.setdefault(kind, []).append(bool(keep(sc)))
    rates = {k: float(np.mean(v)) if v else None for k, v in groups.items()}
    return {"where": where, "keep_clean": rates.get("clean"), "drop_corrupted": 1 - rates["corrupted"]
            if rates.get("corrupted") is not None else None, "keep_static": rates.get("static"),
            "counts": {k: len(v) for k, v in groups.items()},
            "kept": {k: int(sum(v)) for k, v in groups.items()}}


def timing_figures(store, entry: dict, run: dict) -> dict[str, float]:
    """Shot detection + scoring against the rest of a 48-frame video's processing."""
    from geo4d.fusion import fuse
    from geo4d.quality import shot_scores

    vid = run["video_id"]
    arrays, starts, _ = store.windows(vid)
    windows = {k: np.asarray(v[:]) for k, v in arrays.items()}
    res = fuse(windows, starts, store.video_info(vid).n_frames)
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        shot_scores(run["shots"][0], windows, starts, res.geometry, res.depth_source, res.diagnostics, True)
        best = min(best, time.perf_counter() - t0)
    s = run["seconds"]
    added = s["shots"] + best
    base = s["decode"] + s["windows"] + s["fuse"] - best
    return {"n_frames": store.video_info(vid).n_frames, "shots_s": s["shots"], "scoring_s": best,
            "decode_s": s["decode"], "windows_s": s["windows"], "fuse_s": s["fuse"], "added_fraction": added / base}


# ---- report ----------------------------------------------------------------------------------------------
def _excess(row: dict) -> float:
    """How far a shot's accuracy in its video is beyond ``1.1 × single-shot + PER_SHOT_SLACK`` (≤ 0: within;
    inf: the shot was not reconstructed), the worse of Abs Rel and ATE/path."""
    got, ref = row["in_video"], row["reference"]
    if not got:
        return float("inf")
    return max(got[k] - (1.1 * ref[k] + PER_SHOT_SLACK) for k in ("abs_rel", "ate_rel"))


def _targets(res: dict) -> list[tuple[str, bool, float | None]]:
    b, f, t = res["boundaries"], res.get("filter"), res["timing"]
    rows = [(f"boundary precision ≥ {TARGETS['precision']}", b["precision"] >= TARGETS["precision"], b["precision"]),
            (f"boundary recall ≥ {TARGETS['recall']}", b["recall"] >= TARGETS["recall"], b["recall"])]
    worst = max(_excess(r) for r in res["per_shot"])
    rows.append((f"every shot's Abs Rel and ATE/path ≤ 1.1 × its single-shot video's + {PER_SHOT_SLACK:g} "
                 "(worst excess, ≤ 0 passes)",
                 bool(worst <= 0.0), float(worst)))
    if f is not None:
        rows += [(f"default filter keeps ≥ {TARGETS['keep_clean']:.0%} of clean shots",
                  (f["keep_clean"] or 0) >= TARGETS["keep_clean"], f["keep_clean"]),
                 (f"default filter drops ≥ {TARGETS['drop_corrupted']:.0%} of corrupted shots",
                  (f["drop_corrupted"] or 0) >= TARGETS["drop_corrupted"], f["drop_corrupted"]),
                 (f"default filter keeps ≥ {TARGETS['keep_static']:.0%} of static-camera shots",
                  (f["keep_static"] or 0) >= TARGETS["keep_static"], f["keep_static"])]
    rows.append((f"shot detection + scoring add < {TARGETS['added_time']:.0%} (48 frames)",
                 t["added_fraction"] < TARGETS["added_time"], t["added_fraction"]))
    return rows


def _fmt(v: Any) -> str:
    return "–" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def _md_boundaries(res: dict) -> list[str]:
    b = res["boundaries"]
    lines = ["## Shot boundaries (±1 frame)", "", f"precision {b['precision']:.3f}, recall {b['recall']:.3f} "
             f"(TP {b['tp']}, FP {b['fp']}, FN {b['fn']})", "", "| video | fade frames | true | found |",
             "| --- | ---: | --- | --- |"]
    lines += [f"| {k} | {v['fade']} | {v['truth']} | {v['found']} |" for k, v in b["videos"].items()]
    return lines + [""]


def _md_per_shot(res: dict) -> list[str]:
    lines = ["## Per-shot fused accuracy (clean predictions)", "",
             "| video | shot | frames | Abs Rel in the video | single-shot Abs Rel | ATE/path in the video | single-shot ATE/path |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in res["per_shot"]:
        got, ref = r["in_video"] or {}, r["reference"]
        lines.append(f"| {r['video']} | {r['shot']} | {r['frames'][0]}–{r['frames'][1] - 1} | {_fmt(got.get('abs_rel'))} "
                     f"| {_fmt(ref.get('abs_rel'))} | {_fmt(got.get('ate_rel'))} | {_fmt(ref.get('ate_rel'))} |")
    return lines + [""]


def _md_scores(res: dict) -> list[str]:
    s = res["scores"]
    lines = ["## Scores: ROC AUC, defective vs clean shots", "",
             f"Shots: {s['n_shots']}. AUC = P(defective score > clean score), ties half: 1 = the defect "
             "scores higher every time, 0 = lower every time, 0.5 = no separation.", "",
             "| score | corrupted vs clean | static vs clean | clean median | corrupted median | static median |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, auc in s["auc"].items():
        med = {k: (float(np.median([x for x in v if x is not None])) if any(x is not None for x in v) else None)
               for k, v in s["values"][name].items()}
        lines.append(f"| `{name}` | {_fmt(auc['corrupted'])} | {_fmt(auc['static'])} | {_fmt(med['clean'])} | "
                     f"{_fmt(med['corrupted'])} | {_fmt(med['static'])} |")
    return lines + [""]


def _md_filter_timing(res: dict) -> list[str]:
    f, t = res.get("filter"), res["timing"]
    lines = ["## Default filter", ""]
    if f is None:
        lines.append("The code has no default filter (geo4d.curation.DEFAULT_WHERE): not measured.")
    else:
        lines += _md_filter_table(f)
    lines += ["", f"## Time ({t['n_frames']} frames)", "",
              f"shots stage {t['shots_s']:.3f} s + scoring {t['scoring_s']:.3f} s against decode {t['decode_s']:.3f} s "
              f"+ windows {t['windows_s']:.3f} s (synthetic predictor) + fuse {t['fuse_s'] - t['scoring_s']:.3f} s: "
              f"**{t['added_fraction']:.1%}** added. With the network sampling the windows, the share is far smaller.", ""]
    return lines


def _md_filter_table(f: dict) -> list[str]:
    """The default filter's rates per kind of shot, each with its target."""
    n, k = f["counts"], f["kept"]
    rows = [("clean shots kept", f["keep_clean"], "clean", False, f"≥ {TARGETS['keep_clean']:.0%}"),
            ("corrupted shots dropped", f["drop_corrupted"], "corrupted", True, f"≥ {TARGETS['drop_corrupted']:.0%}"),
            ("static-camera shots kept", f["keep_static"], "static", False, f"≥ {TARGETS['keep_static']:.0%}")]
    lines = [f"`{f['where']}` (geo4d.curation.DEFAULT_WHERE, what `geo4d export` applies without `--where`):", "",
             "| | rate | shots | target |", "| --- | ---: | ---: | --- |"]
    for label, rate, kind, dropped, target in rows:
        count = (n.get(kind, 0) - k.get(kind, 0)) if dropped else k.get(kind, 0)
        lines.append(f"| {label} | {'–' if rate is None else f'{rate:.1%}'} | {count} of {n.get(kind, 0)} | {target} |")
    return lines + ["", "Clean: the clean videos, every shot of the edited videos and the clean shot of each corrupted "
                    "multi-shot video; corrupted: the corrupted videos and the shot of a multi-shot video holding the "
                    "corrupted window."]


def write_report(res: dict, out: Path) -> None:
    """``curation.json`` and ``curation.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "curation.json").write_text(json.dumps(res, indent=2, default=float))
    lines = ["# Curation benchmark (issue 15)", "", "SYNTHETIC archive with known defects; windows from the "
             "synthetic predictor (a test instrument, not the network). Command: `" + res["command"] + "`.",
             f"Machine: {res['machine']}. Wall time {res['wall_s']:.0f} s.", ""]
    lines += _md_boundaries(res) + _md_per_shot(res) + _md_scores(res) + _md_filter_timing(res)
    lines += ["## Targets", ""] + [f"- [{'x' if ok else ' '}] {name}: {_fmt(v)}" for name, ok, v in res["targets"]]
    (out / "curation.md").write_text("\n".join(lines) + "\n")


def run(quick: bool, work: Path) -> dict:
    """Write the archive, run every video, measure."""
    from storage.store import Store
    from storage.synthetic_archive import read_archive, write_archive

    t0 = time.perf_counter()
    spec = archive_spec(quick)
    write_archive(work / "archive", spec)
    entries = read_archive(work / "archive")["videos"]
    store = Store(work / "store")
    runs = {e["name"]: run_video(store, e) for e in entries}
    refs = {e["name"]: e for e in entries if "_ref" in e["name"]}
    edited = [e for e in entries if e["kind"] == "cut" and not corrupting(e)]
    scored = [e for e in entries if (e["kind"] != "cut" or corrupting(e)) and e["name"] not in refs]
    clean48 = next(e for e in scored if e["kind"] == "clean")
    res = {"boundaries": boundary_figures(edited, runs), "per_shot": per_shot_figures(store, edited, runs, refs),
           "scores": score_figures(scored, runs), "filter": filter_figures(edited + scored, runs),
           "multi_corrupted": {e["name"]: runs[e["name"]]["corrupted_starts"] for e in scored if e["kind"] == "cut"},
           "timing": timing_figures(store, clean48, runs[clean48["name"]]), "quick": quick,
           "archive": {"height": spec["height"], "width": spec["width"], "videos": len(entries)}}
    res["targets"] = _targets(res)
    res["wall_s"] = time.perf_counter() - t0
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small archive (smoke test)")
    ap.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results; "
                    "--quick: a temporary one)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="geo4d-curation-") as tmp:
        res = run(args.quick, Path(tmp))
        res["command"] = "benchmarks/curation.py" + (" --quick" if args.quick else "")
        res["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        out = args.out or (Path(tmp) / "results" if args.quick else ROOT / "benchmarks" / "results")
        write_report(res, out)
        print((out / "curation.md").read_text())
    return 0 if all(ok for _, ok, _ in res["targets"]) or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
