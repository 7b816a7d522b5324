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
        meta, blocks = stream_video(path, size=size, stride=stride, block=block)
        got = list(blocks)
        assert all(1 <= len(b) <= block for b in got) and all(len(b) == block for b in got[:-1])
        ref = _reference_decode(path, size, stride)
        assert np.array_equal(np.concatenate(got), ref), (size, stride)
        assert np.array_equal(read_video(path, size=size, stride=stride)[0], ref)
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
            got.append(b)
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
