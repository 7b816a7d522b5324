"""Archive planning: every video gets one id before anything is written; ids cannot collide."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geo4d.errors import InputError
from geo4d_cli import main
from storage.sources import plan_archive


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from geo4d.synthetic import make_scene, render, write_video
    from storage.ground_truth import write_ground_truth

    d = tmp_path_factory.mktemp("sources")
    for i in range(2):
        r = render(make_scene(seed=40 + i, n_frames=20, height=32, width=48))
        write_video(d / "a" / f"clip_{i}.mp4", r.frames, fps=10)
        write_ground_truth(d / "a" / f"clip_{i}.gt", r.geometry)
    (d / "b").mkdir()
    shutil.copy(d / "a" / "clip_0.mp4", d / "b" / "copy_of_0.mp4")  # the same content, another folder
    return d


def test_the_same_content_under_two_paths_is_one_video(videos):
    planned, rejected = plan_archive([str(videos / "a"), str(videos / "b")])
    assert rejected == [] and len(planned) == 2
    first = next(v for v in planned if v.path.endswith("clip_0.mp4"))
    assert first.also == (str(videos / "b" / "copy_of_0.mp4"),)
    assert len({v.video_id for v in planned}) == 2


def test_two_videos_with_one_id_stop_before_any_write(videos, tmp_path, capsys):
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": [str(videos / "a" / "clip_0.mp4"), str(videos / "a" / "clip_1.mp4")],
                             "video_id": ["same", "same"]}), manifest)
    with pytest.raises(InputError, match=r"video_id 'same' names two different videos: .*clip_0\.mp4 and .*clip_1\.mp4"):
        plan_archive([str(manifest)])
    store = tmp_path / "never.zarr"
    assert main(["archive", str(manifest), "--store", str(store), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names two different videos" in err
    assert not store.exists()  # nothing written
    pq.write_table(pa.table({"path": [str(videos / "a" / "clip_0.mp4"), str(videos / "b" / "copy_of_0.mp4")],
                             "video_id": ["one", "two"]}), manifest)
    with pytest.raises(InputError, match="are the same video with two ids, 'one' and 'two'"):
        plan_archive([str(manifest)])


def test_an_invalid_id_fails_its_row_only(videos, tmp_path, capsys, prefect_env):
    import json

    from storage.store import Store

    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,video_id\n{videos / 'a' / 'clip_0.mp4'},bad id/with slash\n"
                        f"{videos / 'a' / 'clip_1.mp4'},good-one\n{videos / 'b' / 'copy_of_0.mp4'},\n")
    planned, rejected = plan_archive([str(manifest)])
    assert [r.video_id for r in rejected] == ["bad id/with slash"] and "not a valid id" in rejected[0].reason
    store = tmp_path / "s.zarr"
    rc = main(["archive", str(manifest), "--store", str(store), "--workers", "0", "--predictor", "synthetic",
               "--ground-truth", str(videos / "a" / "clip_0.gt"), "--no-evaluate",
               "--summary-json", str(tmp_path / "summary.json")])
    assert rc == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    by_status = {v["status"] for v in summary["videos"]}
    assert by_status == {"complete", "failed"} and summary["complete"] == 2 and summary["failed"] == 1
    bad = next(v for v in summary["videos"] if v["status"] == "failed")
    assert bad["failed_stage"] == "sources" and "bad id/with slash" in bad["error"]
    assert sorted(Store(store, mode="r").video_ids()) == sorted(v.video_id for v in planned)


def test_an_archive_records_every_path_of_one_video(videos, tmp_path, prefect_env):
    from storage.store import Store

    store = tmp_path / "s.zarr"
    rc = main(["archive", str(videos / "a" / "clip_0.mp4"), str(videos / "b"), "--store", str(store),
               "--workers", "0", "--predictor", "synthetic", "--ground-truth", str(videos / "a" / "clip_0.gt"),
               "--no-evaluate"])
    assert rc == 0
    s = Store(store, mode="r")
    (vid,) = s.video_ids()  # decoded and sampled once
    assert s.video_attrs(vid)["source_paths"] == [str(videos / "a" / "clip_0.mp4"), str(videos / "b" / "copy_of_0.mp4")]


def test_a_manifest_column_gives_known_intrinsics_per_video(videos, tmp_path, capsys, prefect_env):
    """``intrinsics`` per manifest row (``fx,fy,cx,cy``, source pixels): that video's fusion keeps K fixed
    there, the evaluation says K was given; a malformed value rejects its row alone; ``--intrinsics``
    fills the rows that give none."""
    import numpy as np

    from storage.store import Store

    rows = {"path": [str(videos / "a" / "clip_0.mp4"), str(videos / "a" / "clip_1.mp4"), str(videos / "b" / "x.mp4")],
            "intrinsics": ["41,43,23.5,15.5", None, "41,oops,23.5,15.5"]}
    pq.write_table(pa.table(rows), tmp_path / "m.parquet")
    store = tmp_path / "k.zarr"
    rc = main(["archive", str(tmp_path / "m.parquet"), "--store", str(store), "--workers", "0", "--no-report",
               "--intrinsics", "50,50,24,16"])
    out = capsys.readouterr().out
    assert rc == 1 and "'41,oops,23.5,15.5': expected fx,fy,cx,cy" in out, out
    s = Store(store, mode="r")
    by = {s.video_info(v).source.rsplit("/", 1)[-1]: v for v in s.video_ids()}
    K0, K1 = s.read_intrinsics_source(by["clip_0.mp4"]), s.read_intrinsics_source(by["clip_1.mp4"])
    assert np.allclose(K0[:, [0, 1, 0, 1], [0, 1, 2, 2]], [41, 43, 23.5, 15.5])
    assert np.allclose(K1[:, [0, 1, 0, 1], [0, 1, 2, 2]], [50, 50, 24, 16])
    rec = s.stage_record(by["clip_0.mp4"], "evaluate")
    assert "focal_err_pct" not in rec["metrics"] and rec["intrinsics"].startswith("given")
