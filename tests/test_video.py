"""PyAV decoding: sizes, stride, and one-line errors for unusable files."""

from __future__ import annotations

import numpy as np
import pytest

from geo4d.errors import InputError
from geo4d.synthetic import write_video
from geo4d.video import probe_video, read_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 255, size=(20, 1, 1, 3), dtype=np.uint8), 64, axis=1)
    frames = np.repeat(frames, 96, axis=2)
    path = tmp_path_factory.mktemp("v") / "clip.mp4"
    write_video(path, frames, fps=12.5)
    return path, frames


def test_decode_all_frames_stride_and_resize(clip):
    path, frames = clip
    meta = probe_video(path)
    assert (meta.n_frames, meta.height, meta.width) == (20, 64, 96) and abs(meta.fps - 12.5) < 1e-6
    out, _ = read_video(path)
    assert out.shape == (20, 64, 96, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - frames).mean() < 6  # H.264 is lossy; flat colours survive
    seen = []
    out2, _ = read_video(path, size=(32, 48), stride=3, progress=lambda k, n: seen.append(k))
    assert out2.shape == (7, 32, 48, 3)
    assert np.abs(out2.astype(int)[1].mean(axis=(0, 1)) - frames[3, 0, 0]).max() < 8


def test_errors_name_the_file(tmp_path, clip):
    path, _ = clip
    with pytest.raises(InputError, match=r"missing\.mp4: no such file"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.mp4: empty file"):
        read_video(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("hello\n" * 100)
    with pytest.raises(InputError, match=r"text\.mp4: not a readable video"):
        read_video(tmp_path / "text.mp4")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(InputError, match=r"cut\.mp4: .*(truncated|not a readable video)"):
        read_video(cut)
    with pytest.raises(InputError, match="is a directory"):
        read_video(tmp_path)


def _reference_decode(path, size=None, stride=1):
    """The in-memory decode as it was before streaming: every frame decoded, every stride-th kept."""
    import av

    kept = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i % stride == 0:
                kept.append(frame.to_ndarray(format="rgb24") if size is None
                            else frame.to_ndarray(width=size[1], height=size[0], format="rgb24"))
    return np.stack(kept)


def test_streamed_blocks_equal_the_in_memory_decode(clip):
    from geo4d.video import stream_video

    path, _ = clip
    for size, stride, block in ((None, 1, 16), ((32, 48), 3, 4), ((40, 56), 2, 7)):
        meta, blocks = stream_video(path, size=size, stride=stride, block=block, resize="stretch")
        got = [b.frames for b in blocks]
        assert all(1 <= len(b) <= block for b in got) and all(len(b) == block for b in got[:-1])
        ref = _reference_decode(path, size, stride)
        assert np.array_equal(np.concatenate(got), ref), (size, stride)
        assert np.array_equal(read_video(path, size=size, stride=stride, resize="stretch")[0], ref)
    assert meta.n_frames == 20


def test_stream_raises_at_once_for_a_missing_file_and_after_the_good_blocks_for_a_truncated_one(tmp_path):
    from geo4d.video import stream_video

    with pytest.raises(InputError, match="no such file"):
        stream_video(tmp_path / "missing.mp4")
    cut = write_faststart_video(tmp_path / "full.mp4", 60, truncate_to=0.5)
    meta, blocks = stream_video(cut)
    got = []
    with pytest.raises(InputError, match=r"cut\.mp4: .*truncated or corrupt"):
        for b in blocks:
            got.append(b.frames)
    assert meta.n_frames == 60 and 0 < sum(map(len, got)) < 60


def write_faststart_video(path, n_frames, truncate_to=None, height=48, width=64):
    """An H.264 MP4 with its index first (movflags=faststart), so a cut copy still opens and then
    breaks off partway; returns the path, or that of the cut copy (``cut.mp4`` beside it)."""
    import av

    rng = np.random.default_rng(n_frames)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(n_frames):
            img = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    if truncate_to is None:
        return path
    cut = path.with_name("cut.mp4")
    cut.write_bytes(path.read_bytes()[: int(path.stat().st_size * truncate_to)])
    return cut


def _encode(path, coded, *, times=None, fps=10, rotation=0, codec="libx264"):
    """Write (T, H, W, 3) frames; ``times`` (s) give each frame its own pts (variable frame rate);
    ``rotation`` is stored as the display matrix (counter-clockwise degrees), as phones do."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = coded.shape[2], coded.shape[1], "yuv420p"
        s.time_base = s.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            s.set_display_rotation(rotation)
        for i, img in enumerate(coded):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = int(round((times[i] if times is not None else i / fps) * 1000)), Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _quadrants(n, h, w):
    """Frames with four flat quadrants (red, green, blue, white from top-left, clockwise)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (255, 0, 0)
    img[: h // 2, w // 2 :] = (0, 255, 0)
    img[h // 2 :, w // 2 :] = (0, 0, 255)
    img[h // 2 :, : w // 2] = (255, 255, 255)
    return np.repeat(img[None], n, axis=0)


def test_a_rotated_phone_video_comes_out_upright(tmp_path):
    upright = _quadrants(4, 96, 64)  # a portrait scene
    coded = np.ascontiguousarray(np.rot90(upright, k=-1, axes=(1, 2)))  # the sensor's landscape frames
    path = _encode(tmp_path / "phone.mp4", coded, rotation=90)
    meta = probe_video(path)
    assert (meta.height, meta.width, meta.rotation, meta.upright_size) == (64, 96, 90, (96, 64))
    out, _ = read_video(path)
    assert out.shape == (4, 96, 64, 3)
    assert np.abs(out.astype(int) - upright).mean() < 8


def test_crop_and_pad_keep_square_pixels_stretch_does_not(tmp_path):
    from geo4d.video import decode_framing

    path = _encode(tmp_path / "wide.mp4", _quadrants(3, 48, 128))  # 8:3, to a 4:3 network frame
    meta = probe_video(path)
    crop = decode_framing(meta, (48, 64), "crop")
    pad = decode_framing(meta, (48, 64), "pad")
    assert (crop.scaled_size, crop.offset) == ((48, 128), (0, 32))
    assert (pad.scaled_size, pad.offset) == ((24, 64), (-12, 0))
    out = read_video(path, size=(48, 64))[0][0].astype(int)  # crop: the middle half, unscaled
    assert np.abs(out[:20, :30] - (255, 0, 0)).max() < 40 and np.abs(out[30:, 40:] - (0, 0, 255)).max() < 40
    padded = read_video(path, size=(48, 64), resize="pad")[0][0].astype(int)
    assert padded[:12].max() == 0 and padded[-12:].max() == 0  # black bands, marked invalid
    assert pad.valid_mask()[:12].any() == False and pad.valid_mask()[12:36].all()  # noqa: E712
    assert np.abs(padded[14:22, 2:28] - (255, 0, 0)).max() < 40
    stretched = read_video(path, size=(48, 64), resize="stretch")[0][0].astype(int)
    assert np.abs(stretched[5:20, 5:28] - (255, 0, 0)).max() < 40 and np.abs(stretched[5:20, 36:60] - (0, 255, 0)).max() < 40


def test_variable_frame_rate_timestamps_are_kept(tmp_path):
    from geo4d.video import stream_video

    times = np.array([0.0, 0.1, 0.15, 0.35, 0.4, 0.9, 1.0, 1.05])
    path = _encode(tmp_path / "vfr.mp4", _quadrants(len(times), 32, 32), times=times, fps=8)
    _, blocks = stream_video(path, block=3)
    got = np.concatenate([b.times for b in blocks])
    assert np.allclose(got, times, atol=1e-3)
    _, blocks = stream_video(path, stride=2)
    assert np.allclose(np.concatenate([b.times for b in blocks]), times[::2], atol=1e-3)
