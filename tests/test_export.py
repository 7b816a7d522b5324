"""`geo4d export`: the 4D dataset layout, statistics, lazy loading, skips and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import write_synthetic_videos

from geo4d_cli import main


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from pipeline import stages
    from storage.store import Store

    d = tmp_path_factory.mktemp("exp")
    s = Store(d / "s.zarr")
    for i, path in enumerate(write_synthetic_videos(d, [50, 51, 52])):
        vid = stages.decode_stage(s, str(path), video_id=f"v{i}").video_id
        if i < 2:  # v2 stays only decoded
            stages.windows_stage(s, vid, {"kind": "synthetic"})
            stages.fuse_stage(s, vid)
            stages.evaluate_stage(s, vid)
    return s


def test_export_layout_statistics_and_lazy_loading(store, tmp_path, capsys):
    import dask.array as da

    out = tmp_path / "ds"
    assert main(["export", store.location, str(out)]) == 0
    assert "skip v2: fuse stage not complete" in capsys.readouterr().out
    index = pq.read_table(out / "index.parquet")
    rows = {r["video_id"]: r for r in index.to_pylist()}
    assert sorted(rows) == ["v0", "v1"]
    assert b"geo4d_dataset" in index.schema.metadata
    r = rows["v0"]
    fused = store.read_fused("v0")
    depth = da.from_zarr(str(out / r["zarr_path"]), component="depth")
    assert depth.shape == (20, 48, 64) and np.array_equal(depth.compute(), fused.depth)
    pose = da.from_zarr(str(out / r["zarr_path"]), component="world_from_cam")
    assert np.allclose(pose[0].compute(), np.eye(4), atol=1e-5)
    valid = fused.depth[fused.valid]
    assert np.isclose(r["depth_median"], np.median(valid)) and 0 < r["valid_fraction"] <= 1
    assert r["abs_rel"] is not None and r["abs_rel"] < 0.01 and r["path_length"] > 0
    rgb = da.from_zarr(str(out / r["zarr_path"]), component="rgb")
    assert rgb.dtype == np.uint8 and rgb.chunks[0] == (1,) * 20
    import xarray as xr

    ds = xr.open_zarr(str(out / r["zarr_path"]), consolidated=False)
    assert ds["depth"].dims == ("frame", "y", "x") and ds.sizes["frame"] == 20
    assert np.array_equal(ds["depth"].isel(frame=3).values, fused.depth[3])
    # Re-export keeps what is already exported from the same result.
    assert main(["export", store.location, str(out), "--videos", "v0"]) == 0
    assert "keep v0" in capsys.readouterr().out
    assert sorted(r["video_id"] for r in pq.read_table(out / "index.parquet").to_pylist()) == ["v0", "v1"]


def test_export_unknown_video_is_a_one_line_error(store, tmp_path, capsys):
    assert main(["export", store.location, str(tmp_path / "ds"), "--videos", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "'nope'" in err and len(err.splitlines()) == 1


def test_damaged_videos_are_skipped_with_their_reason_never_exported(store, tmp_path, capsys):
    """A lost fused/depth chunk (read back as zeros before) and a truncated frames chunk (a Blosc
    traceback before): both videos are skipped with their reason, exit 1, the index is written."""
    import shutil

    from storage.store import Store

    path = tmp_path / "s.zarr"
    shutil.copytree(store.location, path)
    s = Store(path, mode="r")
    depth = s.video_array("v1", "fused/depth")
    (path / "videos/v1/fused/depth" / depth.metadata.encode_chunk_key((4, 0, 0))).unlink()
    frames = s.video_array("v0", "frames")
    chunk = path / "videos/v0/frames" / frames.metadata.encode_chunk_key((2, 0, 0, 0))
    chunk.write_bytes(chunk.read_bytes()[:100])
    out = tmp_path / "ds"
    assert main(["export", str(path), str(out)]) == 1
    printed = capsys.readouterr().out
    assert "skip v1: damaged, not exported: fused/depth chunk 4: missing" in printed
    assert "skip v0: damaged, not exported: frames chunk 2: checksum mismatch" in printed
    assert "SKIPPED v1" in printed and "2 damaged video(s) skipped" in printed
    rows = {r["video_id"]: r for r in pq.read_table(out / "index.parquet").to_pylist()}
    assert sorted(rows) == ["v0", "v1"]
    assert all(r["zarr_path"] is None and r["skipped"].startswith("damaged: ") for r in rows.values())
    assert not list((out / "videos").iterdir()), "nothing of a damaged video is written"
    # Once repaired (here: the chunks restored), the same command exports both.
    shutil.copy(Path(store.location) / "videos/v0/frames" / chunk.relative_to(path / "videos/v0/frames"), chunk)
    shutil.copy(Path(store.location) / "videos/v1/fused/depth" / depth.metadata.encode_chunk_key((4, 0, 0)),
                path / "videos/v1/fused/depth" / depth.metadata.encode_chunk_key((4, 0, 0)))
    assert main(["export", str(path), str(out)]) == 0
    rows = {r["video_id"]: r for r in pq.read_table(out / "index.parquet").to_pylist()}
    assert all(r["skipped"] is None and r["zarr_path"] for r in rows.values())
