"""`geo4d reconstruct --checkpoint …` runs the Geo4D network predictor through the whole flow.

Uses the tiny random-weight fixture model (its outputs are meaningless geometry; the test checks the
plumbing: official files load, the cached constant context is used, windows land in the store in its
conventions, fusion completes).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")


def test_reconstruct_with_the_network_predictor(reference_dir, tmp_path, capsys, prefect_env):
    from safetensors.torch import load_file

    from geo4d_cli import main
    from geo4d.synthetic import make_scene, render, write_video
    from geo4d_model.context import cache_path, constant_context
    from geo4d_model.loader import load_official
    from storage.store import Store

    d = reference_dir / "fixtures" / "tiny"
    loaded = load_official(d / "config.yaml", d / "model.ckpt", d / "vae.ckpt")
    cases = load_file(str(d / "cases.safetensors"))
    # The fixture has no CLIP weights: seed the context cache from the fixture's CLIP outputs.
    constant_context(loaded, cache=tmp_path / "cache",
                     compute=lambda _: (cases["ddim.text_emb"], cases["ddim.image_tokens"]))
    assert cache_path(loaded.fingerprint, tmp_path / "cache").is_file()
    r = render(make_scene(seed=1, n_frames=20, height=32, width=48))
    write_video(tmp_path / "v.mp4", r.frames, fps=10)
    store = tmp_path / "s.zarr"
    args = ["reconstruct", str(tmp_path / "v.mp4"), "--store", str(store), "--checkpoint", str(d / "model.ckpt"),
            "--pointmap-vae", str(d / "vae.ckpt"), "--config", str(d / "config.yaml"), "--image-size", "32x48",
            "--clip-cache", str(tmp_path / "cache"), "--no-evaluate", "--device", "cpu"]
    assert main(args) == 0, capsys.readouterr().err
    s = Store(store, mode="r")
    vid = s.video_ids()[0]
    rec = s.stage_record(vid, "windows")
    assert rec["status"] == "complete" and rec["predicted"] == 2 and "synthetic" not in rec["predictor"]
    assert rec["parameters"]["predictor"]["image_size"] == [32, 48]
    # the official demo's frame-rate condition: int(fps / frame stride) of the video (10 fps here)
    assert rec["parameters"]["predictor"]["fs"] == 10 and rec["parameters"]["predictor"]["autocast"] == "off"
    arrays, starts, V = s.windows(vid)
    assert starts == [0, 4] and V == 16
    # unit directions, within the store's precision (8 mantissa bits: relative change ≤ 2^-9 per value)
    assert np.allclose(np.linalg.norm(arrays["ray_dir"][1], axis=-1), 1, atol=2 ** -8)
    assert (arrays["pointmap_conf"][:] >= 0).all()
    fused = s.read_fused(vid)
    assert fused.depth.shape == (20, 32, 48) and np.allclose(fused.world_from_cam[0], np.eye(4), atol=1e-5)
    # The rerun skips every stage; a wrong size is a one-line error.
    assert main(args) == 0
    assert s.stage_record(vid, "windows")["finished_at"] == rec["finished_at"]
    capsys.readouterr()
    # another fs than the finished stage's: one line naming it, nothing changed
    assert main(args + ["--fs", "24"]) == 2
    assert "predictor.fs=10; this run asks 24" in capsys.readouterr().err
    assert s.stage_record(vid, "windows")["finished_at"] == rec["finished_at"]
    bad = [a if a != "32x48" else "32by48" for a in args]
    assert main(bad) == 2
    assert "--image-size 32by48: expected HxW" in capsys.readouterr().err
