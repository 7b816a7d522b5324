"""Store benchmark: window-modality codecs, the store's current window bytes, and decode memory.

1. **Codecs of the window modalities** on realistic data: the synthetic predictor (a test instrument,
   docs/synthetic.md) with a little noise on a rendered scene, at 256×160 and 320×512, 3 windows of
   16 frames each. Every modality is written as a Zarr v3 array of per-window chunks
   ``(1, 16, H, W[, 3])`` with Zstd(3) and a crc32c checksum appended, stored as float32, float16, or
   float32 with the mantissa rounded in NumPy to 7 or 10 kept bits (``storage.store.round_mantissa``;
   the result is plain float32). Reported: bytes per window frame (all five modalities together and
   each), the share of raw float32 bytes, write and read MB/s (of the bytes of the stored dtype,
   best of ``--repeats``), and the max relative error each introduces (``|x'−x| / |x|`` over
   elements with ``|x| ≥ 1e-3·max|x|``, so float16's subnormal range is not counted as relative).
2. **The store as it is**: a 96-frame 256×160 video's windows (21 windows) written through
   ``Store.prepare_windows`` / ``Store.write_window``, so the codecs are whatever ``storage/store.py``
   uses now (read back from the arrays' metadata): bytes on disk per modality and per video frame.
3. **Decode memory**: ``pipeline.stages.decode_stage`` (streaming) on a 100- and a 1,000-frame
   256×160 synthetic video, each in a fresh subprocess: the tracemalloc peak of the decode and the
   growth of the process's peak RSS over the decode; beside them the in-memory decode it replaced
   (``read_video``, then the whole array written), for comparison.

Writes benchmarks/results/store.{json,md}.

    python benchmarks/store.py [--repeats 2] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
SIZES = ((160, 256), (320, 512))
NOISE = {"depth_noise": 0.01, "pose_jitter_deg": 0.2, "pose_jitter_trans": 0.002}
VARIANTS = ("float32", "float16", "float32, 10 bits kept", "float32, 7 bits kept")


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2, help="timing repeats per variant (best is kept)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--decode-child", nargs=3, metavar=("MODE", "VIDEO", "STORE"), help=argparse.SUPPRESS)
    ap.add_argument("--baseline-rev", default="cb6cbf7",
                    help="git revision whose store (format 1) the whole-store figure is compared with")
    return ap.parse_args()


#: Part 4, run in a fresh process with the code of this checkout or of the baseline revision (same API):
#: decode → windows (synthetic, no noise) → fuse of the 96-frame 256×160 video; prints bytes per group.
_WHOLE_CODE = """
import json, sys
from pathlib import Path
from geo4d.synthetic import make_scene, render, write_video
from pipeline import stages
from storage.ground_truth import write_ground_truth
from storage.store import Store
d = Path(sys.argv[1])
r = render(make_scene(seed=3, n_frames=96, height=160, width=256))
write_video(d / "v.mp4", r.frames, fps=10)
write_ground_truth(d / "v.gt", r.geometry)
store = Store(d / "s.zarr")
vid = stages.decode_stage(store, str(d / "v.mp4")).video_id
stages.windows_stage(store, vid, {"kind": "synthetic"})
stages.fuse_stage(store, vid)
root = d / "s.zarr" / "videos" / vid
du = lambda p: sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file())
print(json.dumps({**{g: du(root / g) for g in ("frames", "windows", "fused")}, "total": du(d / "s.zarr")}))
"""


def whole_store(work: Path, baseline_rev: str) -> dict:
    """Part 4: the whole store of the issue's 96-frame 256×160 video, now and at ``baseline_rev``
    (a git worktree of that revision, run with its own code: format 1)."""
    import subprocess

    def run(code_root: Path, sub: str) -> dict:
        (work / sub).mkdir()
        env = dict(os.environ, PYTHONPATH=str(code_root))
        res = subprocess.run([sys.executable, "-c", _WHOLE_CODE, str(work / sub)], cwd=code_root, env=env,
                             capture_output=True, text=True, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])

    now = run(ROOT, "now")
    tree = work / "baseline-tree"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), baseline_rev], cwd=ROOT, check=True)
    try:
        before = run(tree, "before")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    return {"baseline_rev": baseline_rev, "now": now, "before": before, "share": round(now["total"] / before["total"], 3)}


def _predictions(height: int, width: int, n_frames: int, seed: int = 0):
    """Window predictions (one per start) of the synthetic predictor on a rendered scene, and the starts."""
    from geo4d.synthetic import make_scene, render
    from geo4d.synthetic_predictor import SyntheticPredictor
    from geo4d.windows import window_starts

    r = render(make_scene(seed=seed, n_frames=n_frames, height=height, width=width))
    pred = SyntheticPredictor(r.geometry, noise=NOISE, seed=seed)
    starts = window_starts(n_frames)
    return r.frames, starts, (pred.predict_window(r.frames[s : s + 16], s) for s in starts)


def _stored(values: np.ndarray, variant: str) -> np.ndarray:
    """``values`` (float32) as the variant stores them."""
    from storage.store import round_mantissa

    if variant == "float16":
        return values.astype(np.float16)
    if "bits kept" in variant:
        return round_mantissa(values, keep=int(variant.split(", ")[1].split()[0]))
    return values


def _max_rel_error(ref: np.ndarray, got: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    big = np.abs(ref) >= 1e-3 * np.abs(ref).max()
    return float((np.abs(got.astype(np.float64)[big] - ref[big]) / np.abs(ref[big])).max()) if big.any() else 0.0


def _codec_row(data: dict[str, np.ndarray], variant: str, work: Path, repeats: int) -> dict:
    """Write and read every modality in one variant; bytes, speeds and errors."""
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    n_window_frames = data["pointmap"].shape[0] * data["pointmap"].shape[1]
    per, write_s, read_s, stored_bytes, raw32, nb = {}, 0.0, 0.0, 0, 0, 0
    for name, values in data.items():
        x = _stored(values, variant)
        best_w = best_r = float("inf")
        for k in range(repeats):
            path = work / f"{x.shape[2]}x{x.shape[3]}-{variant.replace(', ', '_').replace(' ', '')}-{name}-{k}.zarr"
            t0 = time.perf_counter()
            arr = zarr.create_array(str(path), shape=x.shape, chunks=(1,) + x.shape[1:], dtype=x.dtype,
                                    compressors=[ZstdCodec(level=3), Crc32cCodec()], fill_value=0,
                                    zarr_format=3, config={"write_empty_chunks": True})
            arr[:] = x
            nbytes = arr.nbytes_stored()
            best_w = min(best_w, time.perf_counter() - t0)
            t0 = time.perf_counter()
            back = zarr.open_array(str(path), mode="r")[:]
            best_r = min(best_r, time.perf_counter() - t0)
            shutil.rmtree(path)
        per[name] = {"bytes_per_window_frame": round(nbytes / n_window_frames),
                     "share_of_raw_float32": round(nbytes / values.nbytes, 4),
                     "max_rel_error": _max_rel_error(values, back)}
        write_s, read_s, stored_bytes = write_s + best_w, read_s + best_r, stored_bytes + nbytes
        raw32, nb = raw32 + values.nbytes, nb + x.nbytes
    return {"variant": variant, "bytes_per_window_frame": round(stored_bytes / n_window_frames),
            "share_of_raw_float32": round(stored_bytes / raw32, 4),
            "write_MB_s": round(nb / write_s / 1e6, 1), "read_MB_s": round(nb / read_s / 1e6, 1),
            "window_frames_per_s_write": round(n_window_frames / write_s, 1),
            "max_rel_error": max(p["max_rel_error"] for p in per.values()), "modalities": per}


def codec_benchmark(work: Path, repeats: int) -> list[dict]:
    """Part 1: every variant at every size, on 3 windows (24 frames) of synthetic-predictor output."""
    out = []
    for H, W in SIZES:
        _, starts, preds = _predictions(H, W, 24)
        preds = list(preds)
        data = {name: np.stack([p.as_dict()[name] for p in preds]).astype(np.float32) for name in preds[0].as_dict()}
        for variant in VARIANTS:
            row = {"size": f"{W}x{H}", "windows": len(starts), **_codec_row(data, variant, work, repeats)}
            out.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "modalities"}))
    return out


def current_store(work: Path, n_frames: int = 96, size: tuple[int, int] = (160, 256)) -> dict:
    """Part 2: the windows of an ``n_frames`` video written through the store as it is now."""
    from storage.store import Store, VideoInfo

    H, W = size
    frames, starts, preds = _predictions(H, W, n_frames, seed=1)
    store = Store(work / "current.zarr")
    store.ensure_video(VideoInfo("bench", "synthetic", n_frames, H, W, 10.0))
    store.prepare_windows("bench", starts, 16, 4, "synthetic (test instrument)", "bench")
    write_s, mid, kept = 0.0, len(starts) // 2, {}
    for g, p in enumerate(preds):
        t0 = time.perf_counter()
        store.write_window("bench", g, p)
        write_s += time.perf_counter() - t0
        if g == mid:  # one window kept in memory to measure the rounding error
            kept = p.as_dict()
    arrays, _, _ = store.windows("bench")
    per = {}
    for name, arr in arrays.items():
        nbytes = arr.nbytes_stored()
        raw = int(np.prod(arr.shape)) * 4
        per[name] = {"bytes": nbytes, "share_of_raw_float32": round(nbytes / raw, 4),
                     "dtype": str(arr.dtype), "codecs": _codec_names(arr),
                     "max_rel_error": _max_rel_error(kept[name], np.asarray(arrays[name][mid]))}
    total = sum(p["bytes"] for p in per.values())
    raw_total = sum(int(np.prod(a.shape)) * 4 for a in arrays.values())
    return {"video_frames": n_frames, "size": f"{W}x{H}", "windows": len(starts), "bytes": total,
            "bytes_per_video_frame": round(total / n_frames), "share_of_raw_float32": round(total / raw_total, 4),
            "write_s": round(write_s, 2), "store_format": store.root.attrs.get("geo4d_store"), "modalities": per}


def _codec_names(arr) -> list[str]:
    meta = arr.metadata.to_dict()
    return [f"{c['name']}{'(' + ', '.join(f'{k}={v}' for k, v in (c.get('configuration') or {}).items()) + ')' if c.get('configuration') else ''}"
            for c in meta.get("codecs", [])]


def _write_decode_video(path: Path, n_frames: int) -> None:
    """A rendered 256×160 scene of 100 frames, played forward and back to reach ``n_frames``."""
    from geo4d.synthetic import make_scene, render, write_video

    base = render(make_scene(seed=2, n_frames=100, height=160, width=256)).frames
    loop = np.concatenate([base, base[::-1]])
    idx = np.arange(n_frames) % len(loop)
    write_video(path, loop[idx], fps=25)


def _decode_child(mode: str, video: str, store_path: str) -> None:
    """Run in a fresh process: one decode, measured; prints a JSON line."""
    from geo4d.video import read_video
    from pipeline.stages import decode_stage
    from storage.store import Store, VideoInfo

    import av  # noqa: F401  (imported before the baseline, as the decode imports it)

    store = Store(store_path)
    rss0 = _reset_peak_rss()
    tracemalloc.start()
    t0 = time.perf_counter()
    if mode == "streaming":
        n = decode_stage(store, video).details["n_frames"]
    else:  # the in-memory decode it replaced: every frame in memory, then written at once
        frames, meta = read_video(video)
        store.ensure_video(VideoInfo("before", video, len(frames), *frames.shape[1:3], meta.fps))
        store.frames_array("before", create=True)[:] = frames
        n = len(frames)
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss1 = _proc_status_kb("VmHWM")
    print(json.dumps({"mode": mode, "frames": n, "seconds": round(dt, 2), "tracemalloc_peak_MB": round(peak / 1e6, 2),
                      "peak_rss_growth_MB": round((rss1 - rss0) / 1024, 1), "peak_rss_MB": round(rss1 / 1024, 1)}))


def _proc_status_kb(key: str) -> int:
    """A ``/proc/self/status`` figure in kB (``VmRSS``: now, ``VmHWM``: peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss() -> int:
    """Reset the process's peak RSS to its current RSS (Linux ``clear_refs`` 5); returns that, in kB.

    ``getrusage``'s ``ru_maxrss`` cannot be used: it survives ``exec``, so a child started from a big
    parent reports the parent's peak."""
    Path("/proc/self/clear_refs").write_text("5")
    return _proc_status_kb("VmRSS")


def decode_memory(work: Path) -> list[dict]:
    """Part 3: each decode in its own process (peak RSS is per process)."""
    rows = []
    for n in (100, 1000):
        video = work / f"decode{n}.mp4"
        _write_decode_video(video, n)
        for mode in ("streaming", "in-memory (before)"):
            store = work / f"decode-{n}-{mode.split()[0]}.zarr"
            out = subprocess.run([sys.executable, __file__, "--decode-child", mode, str(video), str(store)],
                                 capture_output=True, text=True, check=True, cwd=ROOT)
            rows.append({"video_frames": n, "size": "256x160", "frame_MB": round(160 * 256 * 3 / 1e6, 3),
                         **json.loads(out.stdout.strip().splitlines()[-1])})
            print(json.dumps(rows[-1]))
    return rows


def _markdown(out: dict) -> list[str]:
    md = ["# Store benchmark", "", f"Machine: {out['machine']}. Generated by `benchmarks/store.py`. "
          "Data: the synthetic predictor (a test instrument) on rendered scenes, noise " + json.dumps(NOISE) + ".", "",
          "## Window modalities: Zstd(3) + crc32c, per-window chunks (1, 16, H, W[, 3])", "",
          "| size | stored as | bytes / window frame | share of raw float32 | write MB/s | read MB/s | max rel. error |",
          "|---|---|---|---|---|---|---|"]
    for r in out["codecs"]:
        md.append(f"| {r['size']} | {r['variant']} | {r['bytes_per_window_frame']:,} | {r['share_of_raw_float32']:.3f} | "
                  f"{r['write_MB_s']} | {r['read_MB_s']} | {r['max_rel_error']:.2e} |")
    md += ["", "Per modality (share of raw float32 / max rel. error), 256×160:", "",
           "| stored as | " + " | ".join(out["codecs"][0]["modalities"]) + " |",
           "|---|" + "---|" * len(out["codecs"][0]["modalities"])]
    for r in out["codecs"][: len(VARIANTS)]:
        md.append(f"| {r['variant']} | " + " | ".join(f"{m['share_of_raw_float32']:.3f} / {m['max_rel_error']:.1e}"
                                                   for m in r["modalities"].values()) + " |")
    c = out["current_store"]
    md += ["", f"## The store as it is: {c['video_frames']}-frame {c['size']} video, {c['windows']} windows "
           f"(store format version {(c['store_format'] or {}).get('version')})", "",
           f"Window arrays: **{c['bytes'] / 1e6:.1f} MB** on disk, {c['bytes_per_video_frame']:,} bytes per video frame, "
           f"{c['share_of_raw_float32']:.3f} of raw float32 (written in {c['write_s']} s).", "",
           "| modality | dtype | codecs | MB | share of raw float32 | max rel. error |", "|---|---|---|---|---|---|"]
    for name, m in c["modalities"].items():
        e = f"{m['max_rel_error']:.1e}" if m["max_rel_error"] is not None else "—"
        md.append(f"| {name} | {m['dtype']} | {', '.join(m['codecs'])} | {m['bytes'] / 1e6:.2f} | "
                  f"{m['share_of_raw_float32']:.3f} | {e} |")
    w = out["whole_store"]
    md += ["", f"## The whole store of the 96-frame 256×160 video (synthetic windows, no noise) vs `{w['baseline_rev']}` "
           "(format 1)", "", "| | frames MB | windows MB | fused MB | total MB |", "|---|---|---|---|---|"]
    for label, key in (("format 1 (before)", "before"), ("now", "now")):
        r = w[key]
        md.append(f"| {label} | {r['frames'] / 1e6:.1f} | {r['windows'] / 1e6:.1f} | {r['fused'] / 1e6:.1f} | "
                  f"{r['total'] / 1e6:.1f} |")
    md += ["", f"Now / before: **{w['share']:.3f}** (target ≤ 0.25)."]
    md += ["", "## Decode memory (256×160, each decode in a fresh process)", "",
           "| frames | decode | seconds | tracemalloc peak MB | peak RSS growth MB | peak RSS MB |", "|---|---|---|---|---|---|"]
    for r in out["decode"]:
        md.append(f"| {r['video_frames']} | {r['mode']} | {r['seconds']} | {r['tracemalloc_peak_MB']} | "
                  f"{r['peak_rss_growth_MB']} | {r['peak_rss_MB']} |")
    md += ["", f"One frame is {out['decode'][0]['frame_MB']} MB. tracemalloc counts NumPy and Python allocations "
           "(not FFmpeg's own buffers); the RSS growth is the process's peak RSS during the decode minus its RSS "
           "before it (Linux `VmHWM` after resetting it through `/proc/self/clear_refs`)."]
    return md


def main() -> None:
    a = _args()
    if a.decode_child:
        _decode_child(*a.decode_child)
        return
    work = Path(tempfile.mkdtemp(prefix="geo4d-bench-store-"))
    out = {"machine": f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
           "noise": NOISE, "codecs": codec_benchmark(work, a.repeats), "current_store": current_store(work),
           "decode": decode_memory(work), "whole_store": whole_store(work, a.baseline_rev)}
    print(json.dumps({k: v for k, v in out["current_store"].items() if k != "modalities"}))
    md = _markdown(out)
    print("\n".join(md))
    if not a.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "store.json").write_text(json.dumps(out, indent=2))
        (RESULTS / "store.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
