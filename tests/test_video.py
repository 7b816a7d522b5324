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
