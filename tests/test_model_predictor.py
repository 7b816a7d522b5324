"""Geo4DPredictor on the tiny fixture model: the fast path equals the plain (official-style) path in float32."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_predictor_parts(reference_dir):
    from safetensors.torch import load_file

    from geo4d_model.loader import load_official

    d = reference_dir / "fixtures" / "tiny"
    if not (d / "model.ckpt").is_file():
        pytest.skip("tiny fixture absent")
    loaded = load_official(d / "config.yaml", d / "model.ckpt", d / "vae.ckpt")
    cases = load_file(str(d / "cases.safetensors"))
    with torch.no_grad():
        context = loaded.network.context(cases["ddim.text_emb"], cases["ddim.image_tokens"])
    V, H, W = cases["ddim.video"].shape[2:]
    return loaded, context, (V, H, W)


def _video(T, H, W, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(1, H, W, 3)).astype(np.float64)
    drift = np.linspace(0, 40, T)[:, None, None, None]
    return np.clip(base + drift + rng.normal(0, 8, size=(T, H, W, 3)), 0, 255).astype(np.uint8)


def _fake_post(decoded, sky_eps=0.35):
    """Stand-in post-processing (plumbing test only): channels → the documented keys."""
    s = decoded[0]
    return {"pts3d": s[0:3].permute(1, 2, 3, 0), "conf": torch.nn.functional.softplus(s[3])[..., None],
            "inverse_depth": ((s[10] + 1) / 2)[..., None]}


def test_fast_path_matches_plain_path_float32(tiny_predictor_parts):
    from geo4d_model.predictor import Geo4DPredictor

    loaded, context, (V, H, W) = tiny_predictor_parts
    video = _video(3 * V, H, W)
    starts = [0, 2, V, 2 * V]
    pred = Geo4DPredictor(loaded.network, loaded.pointmap_vae, context, image_size=(H, W), window_batch=3,
                          vae_batch=5, postprocess=_fake_post)
    fast = dict(pred.decoded_windows(video, starts, V))
    assert sorted(fast) == list(range(len(starts)))
    for g, s in enumerate(starts):
        plain = pred.decode_window_plain(video[s : s + V], s)
        assert plain.shape == (1, 11, V, H, W)
        scale = float(plain.abs().max())
        diff = float((fast[g] - plain).abs().max())
        assert diff <= 1e-4 * scale, f"window {s}: {diff:.3e} vs scale {scale:.3e}"
    # overlapping windows share frames but not noise: different windows give different outputs
    assert not torch.allclose(fast[0][:, :, 2:], fast[1][:, :, :-2])


def test_predictions_are_deterministic_and_in_store_layout(tiny_predictor_parts):
    from geo4d_model.predictor import Geo4DPredictor

    loaded, context, (V, H, W) = tiny_predictor_parts
    video = _video(V + 2, H, W, seed=1)
    pred = Geo4DPredictor(loaded.network, loaded.pointmap_vae, context, image_size=(H, W), postprocess=_fake_post)
    a = dict(pred.predict_windows(video, [0, 2], V))
    b = dict(pred.predict_windows(video, [2], V))
    p = a[0]
    assert p.pointmap.shape == (V, H, W, 3) and p.pointmap_conf.shape == (V, H, W)
    assert p.disparity.shape == (V, H, W) and p.ray_dir.shape == (V, H, W, 3)
    np.testing.assert_allclose(np.linalg.norm(p.ray_dir, axis=-1), 1.0, atol=1e-5)
    # the window at start 2 does not depend on which other windows were batched with it
    np.testing.assert_allclose(a[1].pointmap, b[0].pointmap, atol=1e-5)
    params = pred.parameters()
    assert params["fs"] == 24 and params["steps"] == 5 and params["video_latents"] == "posterior mean"


def test_frames_resized_and_scaled():
    from geo4d_model.predictor import frames_to_model_input

    frames = np.zeros((2, 10, 12, 3), np.uint8)
    frames[..., 0] = 255
    x = frames_to_model_input(frames, (8, 8))
    assert x.shape == (2, 3, 8, 8)
    assert float(x[:, 0].min()) == pytest.approx(1.0, abs=1e-6) and float(x[:, 1].max()) == -1.0
    assert torch.equal(frames_to_model_input(frames)[:, 0], torch.ones(2, 10, 12))


def test_bad_image_size_and_context(tiny_predictor_parts):
    from geo4d.errors import InputError
    from geo4d_model.predictor import Geo4DPredictor

    loaded, context, _ = tiny_predictor_parts
    with pytest.raises(InputError, match="multiples of 4"):
        Geo4DPredictor(loaded.network, loaded.pointmap_vae, context, image_size=(30, 48))
    with pytest.raises(InputError, match="context: expected"):
        Geo4DPredictor(loaded.network, loaded.pointmap_vae, context[..., :5], image_size=(32, 48))


# --- the overlapped fast path (background device loop and post-processing) -------------------------
def _predictor(parts, **kwargs):
    from geo4d_model.predictor import Geo4DPredictor

    loaded, context, (V, H, W) = parts
    kwargs.setdefault("postprocess", _fake_post)
    kwargs.setdefault("overlap", True)  # the default ("auto") is on for CUDA only
    return Geo4DPredictor(loaded.network, loaded.pointmap_vae, context, image_size=(H, W), **kwargs)


def _new_threads_gone(before, timeout=2.0):
    """Join the threads started since ``before`` (up to ``timeout`` s in all); True when none is left."""
    import threading
    import time

    deadline = time.monotonic() + timeout
    for t in set(threading.enumerate()) - before:
        t.join(max(0.0, deadline - time.monotonic()))
    return not [t for t in set(threading.enumerate()) - before if t.is_alive()]


def test_overlap_on_equals_off_exactly(tiny_predictor_parts):
    _, _, (V, H, W) = tiny_predictor_parts
    video = _video(3 * V, H, W, seed=2)
    starts = [0, 2, V, 2 * V]
    on = list(_predictor(tiny_predictor_parts, window_batch=3, overlap=True).predict_windows(video, starts, V))
    off = list(_predictor(tiny_predictor_parts, window_batch=3, overlap=False).predict_windows(video, starts, V))
    assert [g for g, _ in on] == [g for g, _ in off] == list(range(len(starts)))  # in order
    for (_, a), (_, b) in zip(on, off):
        for name, arr in a.as_dict().items():
            assert np.array_equal(arr, b.as_dict()[name]), name


def test_window_noise_is_deterministic_and_drawn_on_the_device():
    from geo4d_model.predictor import window_noise

    a = window_noise(7, 4, (1, 2, 3))
    assert a.device.type == "cpu" and a.dtype == torch.float32
    assert torch.equal(a, window_noise(7, 4, (1, 2, 3), device="cpu"))
    assert not torch.equal(a, window_noise(7, 8, (1, 2, 3)))
    # on CPU: the values of a CPU generator seeded by SeedSequence([seed, start]), as before
    gen = torch.Generator("cpu").manual_seed(int(np.random.SeedSequence([7, 4]).generate_state(1)[0]))
    assert torch.equal(a, torch.randn((1, 2, 3), generator=gen))
    if torch.cuda.is_available():
        c = window_noise(7, 4, (1, 2, 3), device="cuda")
        assert c.device.type == "cuda" and torch.equal(c, window_noise(7, 4, (1, 2, 3), device="cuda"))


class OutOfMemoryError(RuntimeError):
    """Stand-in for torch.OutOfMemoryError (the windows stage matches on the class name)."""


def test_exception_in_the_device_loop_reaches_the_caller(tiny_predictor_parts, monkeypatch):
    import threading

    _, _, (V, H, W) = tiny_predictor_parts
    pred = _predictor(tiny_predictor_parts, window_batch=1)
    real, calls = pred._sample, []

    def sample(cond, starts):
        calls.append(list(starts))
        if len(calls) == 2:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(cond, starts)

    monkeypatch.setattr(pred, "_sample", sample)
    before = set(threading.enumerate())
    got = []
    with pytest.raises(OutOfMemoryError, match=r"^CUDA out of memory\. Tried to allocate 2\.00 GiB$") as info:
        for g, _ in pred.predict_windows(_video(V + 4, H, W), [0, 2, 4], V):
            got.append(g)
    assert type(info.value) is OutOfMemoryError and got == [0]
    assert _new_threads_gone(before)


def test_exception_in_the_postprocessing_reaches_the_caller(tiny_predictor_parts):
    import threading

    from geo4d.errors import PredictionError

    _, _, (V, H, W) = tiny_predictor_parts

    def nan_post(decoded, sky_eps=0.35):
        out = _fake_post(decoded, sky_eps)
        out["pts3d"] = out["pts3d"] * float("nan")
        return out

    before = set(threading.enumerate())
    with pytest.raises(PredictionError, match="non-finite"):
        list(_predictor(tiny_predictor_parts, postprocess=nan_post).predict_windows(_video(V, H, W), [0], V))
    assert _new_threads_gone(before)


def test_closing_early_leaves_no_thread_running(tiny_predictor_parts):
    import threading

    _, _, (V, H, W) = tiny_predictor_parts
    pred = _predictor(tiny_predictor_parts, window_batch=1)
    before = set(threading.enumerate())
    gen = pred.predict_windows(_video(V + 8, H, W), [0, 2, 4, 6, 8], V)
    g, first = next(gen)
    assert g == 0 and first.pointmap.shape == (V, H, W, 3)
    names = {t.name for t in set(threading.enumerate()) - before}
    assert "geo4d-postprocess" in names and names <= {"geo4d-device", "geo4d-postprocess"}  # still at work
    gen.close()
    assert _new_threads_gone(before, timeout=1.0)
    # an exception in the consumer ends the generator the same way (here: its garbage collection)
    with pytest.raises(KeyError):
        for g, _ in pred.predict_windows(_video(V + 8, H, W), [0, 2, 4, 6, 8], V):
            raise KeyError(g)
    assert _new_threads_gone(before, timeout=5.0)
    # the shallow copy of with_fs shares the network, not any thread or queue
    other = pred.with_fs(10)
    assert other.fs == 10 and other.network is pred.network
    assert len(list(other.predict_windows(_video(V, H, W), [0], V))) == 1


def test_postprocessing_runs_while_the_device_loop_works(tiny_predictor_parts, monkeypatch):
    """Slow fake sampling (0.2 s per window) and post-processing (0.2 s per window), instant fake
    encoding and decoding: overlapped, the wall time stays well below the serial sum and the
    intervals intersect."""
    import time

    _, _, (V, H, W) = tiny_predictor_parts
    n, nap = 6, 0.2
    spans: dict[str, list] = {"sample": [], "post": []}
    grad_modes = []

    def slow_post(decoded, sky_eps=0.35):
        t0 = time.perf_counter()
        time.sleep(nap)
        grad_modes.append(torch.is_grad_enabled())
        spans["post"].append((t0, time.perf_counter()))
        return _fake_post(decoded, sky_eps)

    pred = _predictor(tiny_predictor_parts, window_batch=1, postprocess=slow_post)

    def slow_sample(cond, starts):
        t0 = time.perf_counter()
        time.sleep(nap)
        grad_modes.append(torch.is_grad_enabled())
        spans["sample"].append((t0, time.perf_counter()))
        B, _, V_, h, w = cond.shape
        return torch.zeros(B, 16, V_, h, w)

    monkeypatch.setattr(pred, "_sample", slow_sample)
    # encoding and decoding cost next to nothing here, so that only the sleeps count (a loaded machine)
    monkeypatch.setattr(pred, "_encode", lambda frames: torch.zeros(len(frames), 4, H // 4, W // 4))
    monkeypatch.setattr(pred, "_decode", lambda z: torch.zeros(z.shape[0], 11, *z.shape[2:3], H, W))
    video = _video(V + n - 1, H, W)
    t0 = time.perf_counter()
    out = list(pred.predict_windows(video, list(range(n)), V))
    wall = time.perf_counter() - t0
    assert [g for g, _ in out] == list(range(n))
    assert not any(grad_modes)  # torch.no_grad() holds in the worker threads
    serial = 2 * n * nap  # 2.4 s; overlapped ideally (n + 1) · nap = 1.4 s
    assert wall < serial, f"overlapped run took {wall:.2f} s, the serial sum of the sleeps is {serial:.2f} s"
    assert any(a0 < b1 and b0 < a1 for a0, a1 in spans["post"] for b0, b1 in spans["sample"])


def test_overlap_is_on_for_cuda_only_by_default(tiny_predictor_parts):
    from geo4d_model.predictor import Geo4DPredictor

    loaded, context, (V, H, W) = tiny_predictor_parts
    assert not Geo4DPredictor(loaded.network, loaded.pointmap_vae, context, image_size=(H, W)).overlap  # on CPU
    assert Geo4DPredictor(loaded.network, loaded.pointmap_vae, context, image_size=(H, W), overlap=True).overlap
