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
