"""`geo4d verify`: damage is found (presence, checksums, done markers), recorded, shown by `status`,
and repaired by a rerun that recomputes only what was damaged."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from geo4d_cli import main as cli
from storage.store import FUSED_ARRAYS, Store

T, H, W = 24, 48, 64


def _synth(d: Path, name: str, seed: int) -> Path:
    from geo4d.synthetic import make_scene, render, write_video
    from storage.ground_truth import write_ground_truth

    r = render(make_scene(seed=seed, n_frames=T, height=H, width=W))
    write_video(d / f"{name}.mp4", r.frames, fps=10)
    write_ground_truth(d / f"{name}.gt", r.geometry)
    return d / f"{name}.mp4"


def _chunk(store: Path, vid: str, array: str, index: int) -> Path:
    """The file of chunk ``index`` (first axis) of ``videos/<vid>/<array>`` (default chunk-key encoding)."""
    arr = Store(store, mode="r").video_array(vid, array)
    key = arr.metadata.encode_chunk_key((index,) + (0,) * (arr.ndim - 1))
    return store / "videos" / vid / array / key


def _fused(store: Path, vid: str) -> dict[str, np.ndarray]:
    s = Store(store, mode="r")
    return {n: np.asarray(s.video_array(vid, f"fused/{n}")[:]) for n in FUSED_ARRAYS}


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """Two videos through decode → windows → fuse with the stage functions (no Prefect)."""
    from pipeline import stages

    d = tmp_path_factory.mktemp("verify")
    s = Store(d / "s.zarr")
    for i in range(2):
        vid = stages.decode_stage(s, str(_synth(d, f"v{i}", 60 + i)), video_id=f"v{i}").video_id
        stages.windows_stage(s, vid, {"kind": "synthetic"})
        stages.fuse_stage(s, vid)
    return d / "s.zarr"


def test_reconstruct_rerun_repairs_only_what_verify_found_damaged(tmp_path, capsys, prefect_env, monkeypatch):
    from geo4d.synthetic_predictor import SyntheticPredictor

    store = tmp_path / "s.zarr"
    videos = [_synth(tmp_path, f"clip{i}", 10 + i) for i in range(2)]
    for v in videos:
        assert cli(["reconstruct", str(v), "--store", str(store), "--predictor", "synthetic"]) == 0
    a, b = Store(store, mode="r").video_ids()
    before = {vid: _fused(store, vid) for vid in (a, b)}
    capsys.readouterr()
    assert cli(["verify", str(store)]) == 0
    assert "0 damaged" in capsys.readouterr().out

    window1 = _chunk(store, a, "windows/disparity", 1)
    window1.write_bytes(window1.read_bytes()[: window1.stat().st_size // 2])  # truncated
    _chunk(store, b, "fused/depth", 5).unlink()  # lost
    assert cli(["verify", str(store)]) == 1
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:3]): line for line in out.splitlines() if line.startswith((a, b))}
    assert "1 / 3" in rows[(a, "windows", "windows/disparity")] and "checksum mismatch" in rows[(a, "windows", "windows/disparity")]
    assert "1 / 24" in rows[(b, "fuse", "fused/depth")] and "chunk 5: missing" in rows[(b, "fuse", "fused/depth")]
    assert "0 / 24" in rows[(a, "fuse", "fused/depth")] and "crc32c" in rows[(a, "decode", "frames")]
    assert "total: 2 video(s), 2 damaged (2 stage(s)); 2 of" in out

    assert cli(["status", str(store)]) == 0
    status = capsys.readouterr().out
    assert f"damaged: {a}: windows: windows/disparity chunks [1]" in status
    assert f"damaged: {b}: fuse: fused/depth chunks [5] (chunk 5: missing)" in status
    table = {line.split()[0]: line.split() for line in status.splitlines() if line.startswith((a, b))}
    # columns: video, frames, decode, shots, windows, fuse, …
    assert table[a][2:5] == ["complete", "complete", "damaged"]
    assert table[b][2:6] == ["complete", "complete", "complete", "damaged"]
    assert "2 damaged" in status

    predicted = []
    original = SyntheticPredictor.predict_window
    monkeypatch.setattr(SyntheticPredictor, "predict_window",
                        lambda self, frames, start: (predicted.append(start), original(self, frames, start))[1])
    for v in videos:
        assert cli(["reconstruct", str(v), "--store", str(store), "--predictor", "synthetic"]) == 0
    s = Store(store, mode="r")
    assert predicted == [4], "only window 1 (frames 4–19) is predicted again"
    assert s.stage_record(a, "windows")["predicted"] == 1
    assert all(s.stage_record(v, st)["status"] == "complete" for v in (a, b) for st in ("decode", "windows", "fuse", "evaluate"))
    for vid in (a, b):
        after = _fused(store, vid)
        assert all(np.array_equal(after[n], before[vid][n]) for n in FUSED_ARRAYS), vid
    capsys.readouterr()
    assert cli(["verify", str(store)]) == 0
    assert "total: 2 video(s), 0 damaged" in capsys.readouterr().out


def test_verify_finds_each_kind_of_damage_and_records_only_on_request(small_store, tmp_path, capsys):
    from storage.verify import verify_store

    store = tmp_path / "s.zarr"
    shutil.copytree(small_store, store)
    _chunk(store, "v0", "frames", 3).unlink()
    flipped = _chunk(store, "v0", "fused/points", 2)
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same length, other bytes: only the checksum can tell
    flipped.write_bytes(bytes(data))
    s = Store(store)
    s.video_array("v1", "windows/done")[2] = 0  # a finished stage with a window not marked done

    before = {p: p.read_bytes() for p in sorted(store.rglob("zarr.json"))}
    assert cli(["verify", str(store), "--no-record"]) == 1
    assert {p: p.read_bytes() for p in sorted(store.rglob("zarr.json"))} == before
    out = capsys.readouterr().out
    assert "chunk 3: missing" in out and "chunk 2: checksum mismatch" in out
    assert "chunk 2: window not marked done in a finished stage" in out

    checks = {c.video_id: c for c in verify_store(s)}
    assert set(checks["v0"].damage()) == {"decode", "fuse"} and set(checks["v1"].damage()) == {"windows"}
    assert checks["v1"].bad_windows == [2]
    recs = s.stage_records("v0")
    assert recs["decode"]["status"] == "damaged" and recs["decode"]["damage"]["frames"]["chunks"] == [3]
    assert recs["windows"]["status"] == "complete" and recs["fuse"]["damage"]["fused/points"]["chunks"] == [2]
    # Readers refuse what verify found: no fill values, no garbled data.
    from geo4d.errors import StoreError

    with pytest.raises(StoreError, match="frames: 1 chunk"):
        s.read_frames("v0")
    with pytest.raises(StoreError, match="fused/points: unreadable chunk"):
        s.read_fused("v0")
    # Data restored from a copy: the next verification marks the stages complete again.
    for name in ("frames", "fused/points"):
        shutil.rmtree(store / "videos/v0" / name)
        shutil.copytree(small_store / "videos/v0" / name, store / "videos/v0" / name)
    verify_store(s, ["v0"])
    assert [s.stage_record("v0", st)["status"] for st in ("decode", "fuse")] == ["complete", "complete"]
    assert "damage" not in s.stage_record("v0", "fuse")


def test_verify_errors_are_one_line(tmp_path, capsys):
    assert cli(["verify", str(tmp_path / "nothing.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no such store" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "nothing.zarr").exists()
