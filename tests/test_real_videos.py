"""Real videos in: another aspect ratio kept with square pixels, phone rotation applied, timestamps
kept, intrinsics in source pixels, known intrinsics held fixed.

The network runs are the tiny random-weight fixture model (meaningless geometry; these tests check
the framing and the camera bookkeeping around it).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("torch")


@pytest.fixture
def network_args(reference_dir, tmp_path):
    """CLI arguments that run the tiny fixture network (its constant context seeded into a cache)."""
    from safetensors.torch import load_file

    from geo4d_model.context import constant_context
    from geo4d_model.loader import load_official

    d = reference_dir / "fixtures" / "tiny"
    cases = load_file(str(d / "cases.safetensors"))
    constant_context(load_official(d / "config.yaml", d / "model.ckpt", d / "vae.ckpt"), cache=tmp_path / "cache",
                     compute=lambda _: (cases["ddim.text_emb"], cases["ddim.image_tokens"]))
    return ["--checkpoint", str(d / "model.ckpt"), "--pointmap-vae", str(d / "vae.ckpt"), "--config",
            str(d / "config.yaml"), "--clip-cache", str(tmp_path / "cache"), "--device", "cpu", "--no-evaluate",
            "--no-report"]


def _reference_crop(path, stride, scaled, offset, size):
    """The source frames scaled to ``scaled`` (H, W) by FFmpeg, then cut at ``offset`` to ``size``."""
    import av

    out = []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(c.streams.video[0])):
            if i % stride == 0:
                img = f.to_ndarray(width=scaled[1], height=scaled[0], format="rgb24")
                out.append(img[offset[0]: offset[0] + size[0], offset[1]: offset[1] + size[1]])
    return np.stack(out)


def test_a_960x540_video_keeps_its_aspect_and_reports_source_pixel_intrinsics(shared_dir, network_args, tmp_path,
                                                                               capsys, prefect_env):
    from geo4d_cli import main
    from storage.store import Store

    video = shared_dir / "data" / "videos" / "davis_rollercoaster.mp4"  # MPEG-4 Part 2, 960×540, 24 fps
    store = tmp_path / "s.zarr"
    args = ["reconstruct", str(video), "--store", str(store), "--image-size", "32x48", "--frame-stride", "4"]
    assert main(args + network_args) == 0
    s = Store(store, mode="r")
    vid = s.video_ids()[0]
    framing = s.framing(vid)
    assert (framing.mode, framing.source_size, framing.size) == ("crop", (540, 960), (32, 48))
    assert framing.scaled_size == (32, 57) and framing.offset == (0, 4)  # one scale for both axes
    frames = s.read_frames(vid)
    assert np.array_equal(frames, _reference_crop(video, 4, (32, 57), (0, 4), (32, 48)))
    assert np.allclose(np.diff(s.frame_times(vid)), 4 / 24, atol=1e-3) and s.video_info(vid).fps == pytest.approx(6.0)
    fused = s.read_fused(vid)
    K, Ks = fused.intrinsics, s.read_intrinsics_source(vid)
    assert np.allclose(K[:, 0, 0], K[:, 1, 1])  # square network pixels: one focal length
    assert np.allclose(Ks[:, 0, 0], K[:, 0, 0] * 960 / 57) and np.allclose(Ks[:, 1, 1], K[:, 1, 1] * 540 / 32)
    # the network frame's centre is the source frame's centre (a centred crop)
    centre = framing.intrinsics_to_source(np.array([[1.0, 0, 23.5], [0, 1, 15.5], [0, 0, 1]]))
    assert abs(centre[0, 2] - 479.5) <= 0.5 * 960 / 57 + 1e-9 and centre[1, 2] == pytest.approx(269.5)  # ± half a pixel of 57
    # known intrinsics: K fixed at them (in source pixels), the fusion says so
    given = [800.0, 790.0, 470.0, 275.0]
    assert "frames 960×540 (rotated 0°) → 48×32 (crop); K in source pixels: fx " in capsys.readouterr().out
    assert main(args + network_args + ["--intrinsics", ",".join(map(str, given)), "--overwrite"]) == 0
    assert "K in source pixels: fx 800.0 fy 790.0 cx 470.0 cy 275.0 (given)" in capsys.readouterr().out
    Ks = s.read_intrinsics_source(vid)
    assert np.allclose(Ks[:, 0, 0], 800) and np.allclose(Ks[:, 1, 1], 790)
    assert np.allclose(Ks[:, 0, 2], 470) and np.allclose(Ks[:, 1, 2], 275)
    assert s.read_fused(vid).meta["diagnostics"]["intrinsics"]["given"] is True
    capsys.readouterr()
    assert main(args + network_args + ["--intrinsics", "800,0,470,275"]) == 2
    assert "--intrinsics '800,0,470,275': expected fx,fy,cx,cy" in capsys.readouterr().err


def _phone_video(path, upright: np.ndarray, fps: int = 10):
    """A phone-style recording: the sensor's landscape frames plus a display matrix (90° counter-clockwise)."""
    import av

    coded = np.ascontiguousarray(np.rot90(upright, k=-1, axes=(1, 2)))
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = coded.shape[2], coded.shape[1], "yuv420p"
        s.set_display_rotation(90)
        s.options = {"crf": "12"}
        for img in coded:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_a_rotated_phone_video_is_stored_upright_and_padding_is_invalid(network_args, tmp_path, capsys, prefect_env):
    from geo4d.synthetic import make_scene, render
    from geo4d_cli import main
    from storage.store import Store

    r = render(make_scene(seed=3, n_frames=18, height=64, width=48))  # portrait, as held
    video = _phone_video(tmp_path / "phone.mp4", r.frames)
    store = tmp_path / "p.zarr"
    args = ["reconstruct", str(video), "--store", str(store), "--image-size", "32x48", "--resize", "pad"]
    assert main(args + network_args) == 0, capsys.readouterr().err
    s = Store(store, mode="r")
    vid = s.video_ids()[0]
    framing = s.framing(vid)
    assert (framing.rotation, framing.source_size, framing.scaled_size, framing.offset) == (90, (64, 48), (32, 24), (0, -12))
    frames = s.read_frames(vid).astype(int)
    assert frames[:, :, :12].max() == 0 and frames[:, :, 36:].max() == 0  # black side bands
    import av

    with av.open(str(video)) as c:  # the upright picture, as a player shows it, scaled to 32×24
        ref = np.stack([np.rot90(f.to_ndarray(width=32, height=24, format="rgb24"), 1)
                        for f in c.decode(c.streams.video[0])])
    assert np.abs(frames[:, :, 12:36] - ref).mean() < 1.0
    wrong_way = np.rot90(ref, 2, axes=(1, 2))  # a picture upside down would match this instead
    assert np.abs(frames[:, :, 12:36] - ref).mean() < np.abs(frames[:, :, 12:36] - wrong_way).mean() / 4
    fused = s.read_fused(vid)
    assert (fused.confidence[:, :, :12] == 0).all() and (fused.depth[:, :, 36:] == 0).all()
    assert (fused.confidence[:, :, 12:36] > 0).mean() > 0.5
    assert s.stage_record(vid, "decode")["source_size"] == [64, 48]
