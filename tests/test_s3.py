"""Stores on object storage (s3:// through fsspec), against a local S3 stand-in on 127.0.0.1."""

from __future__ import annotations

import socket

import numpy as np
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("moto")
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    opts = {"endpoint_url": endpoint, "key": "testing", "secret": "testing", "client_kwargs": {"region_name": "us-east-1"}}
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="geo4d-test")
    yield opts
    server.stop()


def test_reconstruct_status_and_manifest_on_s3(s3, tmp_path, prefect_env):
    from flows.reconstruct import reconstruct_video
    from geo4d.synthetic import make_scene, render, write_video
    from storage.ground_truth import write_ground_truth
    from storage.manifest import manifest_table, write_manifest
    from storage.store import Store

    r = render(make_scene(seed=4, n_frames=20, height=48, width=64))
    write_video(tmp_path / "v.mp4", r.frames, fps=10)
    write_ground_truth(tmp_path / "v.gt", r.geometry)
    url = "s3://geo4d-test/runs.zarr"
    res = reconstruct_video(str(tmp_path / "v.mp4"), url, predictor={"kind": "synthetic"}, storage_options=s3)
    assert res["evaluate"]["details"]["metrics"]["ate_rel"] < 0.01
    store = Store(url, mode="r", storage_options=s3)
    vid = res["video_id"]
    assert store.is_complete(vid, "fuse")
    assert np.allclose(store.read_fused(vid).world_from_cam[0], np.eye(4), atol=1e-5)
    again = reconstruct_video(str(tmp_path / "v.mp4"), url, predictor={"kind": "synthetic"}, storage_options=s3)
    assert again["windows"]["skipped"] and again["fuse"]["skipped"]
    location = write_manifest(store, s3)
    import pyarrow.parquet as pq
    import s3fs

    with s3fs.S3FileSystem(**s3).open(location, "rb") as f:
        table = pq.read_table(f).to_pylist()
    assert table == manifest_table(store).to_pylist() and table[0]["fuse_status"] == "complete"
