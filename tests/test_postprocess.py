"""Official per-window post-processing and Plücker → camera recovery."""

from __future__ import annotations

import numpy as np
import pytest

from geo4d.plucker import cameras_from_plucker_official, plucker_rays
from geo4d_model.postprocess import postprocess_window, to_window_prediction


@pytest.mark.parametrize("case", ["A_land_id0", "B_portrait_nonid0", "C_oddcrop_noisy", "D_sintel_like_id0"])
def test_official_camera_recovery_matches_fixture(reference_dir, case):
    z = np.load(reference_dir / "fixtures" / "rays" / "cases.npz")
    d = z[f"{case}.raymap"][0].transpose(1, 2, 3, 0)
    m = z[f"{case}.crossmap"][0].transpose(1, 2, 3, 0)
    P = cameras_from_plucker_official(d, m)
    assert np.abs(P - z[f"{case}.rec_P_c2w"]).max() < 5e-6


def _decoded(V=3, H=8, W=12, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.uniform(-0.6, 0.6, size=(11, V, H, W)).astype(np.float32)  # no accidental sky (band 0.7–1.4)
    K = np.array([[10.0, 0, 5.5], [0, 10.0, 3.5], [0, 0, 1]])
    poses = np.tile(np.eye(4), (V, 1, 1))
    poses[:, :3, 3] = np.arange(V)[:, None] * np.array([0.2, 0.0, 0.1])
    d, m = plucker_rays(poses, K, H, W)
    s[4:7] = np.moveaxis(d, -1, 0)
    s[7:10] = np.moveaxis(m, -1, 0)
    return s, poses


def test_masks_weights_and_denormalisation_follow_the_facts():
    s, poses = _decoded()
    s[0:3, 0, 0, 0] = 1.05 + 0.3      # sky with eps 0.35 (strictly inside), not with eps 0.1
    s[0, 1, 2, 3] = -2.5              # far away
    s[3, 2, 1, 1] = 30.0              # softplus linear branch
    out = postprocess_window(s[None], sky_eps=0.35)
    assert not out["valid"][0, 0, 0] and out["sky"][0, 0, 0] and out["conf"][0, 0, 0] == 0
    assert not out["valid"][1, 2, 3] and not out["sky"][1, 2, 3] and out["conf"][1, 2, 3] == 0
    assert out["valid"].sum() == out["valid"].size - 2
    assert np.isclose(out["conf"][2, 1, 1], 1 / 30.0)
    logit = float(s[3, 0, 1, 1])
    assert np.isclose(out["conf"][0, 1, 1], 1 / np.log1p(np.exp(logit)), rtol=1e-6)
    assert np.allclose(out["pts3d"][1, 1, 1], [s[0, 1, 1, 1] / 2, s[1, 1, 1, 1] / 2, (s[2, 1, 1, 1] + 1) / 2])
    assert np.allclose(out["inverse_depth"], (s[10] + 1) / 2)
    assert np.allclose(out["traj"], poses, atol=1e-6)
    assert postprocess_window(s, sky_eps=0.1)["valid"][0, 0, 0]  # the evaluation script's narrower band


def test_conversion_to_store_conventions():
    s, _ = _decoded()
    s[0:3, 0, 0, 0] = 1.05
    pred = to_window_prediction(postprocess_window(s))
    assert pred.pointmap_conf[0, 0, 0] == 0 and pred.disparity[0, 0, 0] == 0
    assert np.allclose(np.linalg.norm(pred.ray_dir, axis=-1), 1, atol=1e-6)
    with pytest.raises(ValueError, match=r"decoded: expected shape \(11, \*, \*, \*\)"):
        postprocess_window(np.zeros((10, 2, 2, 2)))


def test_network_predictor_with_official_postprocessing_writes_a_store(reference_dir, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    from geo4d_model.loader import load_official
    from geo4d_model.predictor import Geo4DPredictor
    from storage.store import Store, VideoInfo

    d = reference_dir / "fixtures" / "tiny"
    loaded = load_official(d / "config.yaml", d / "model.ckpt", d / "vae.ckpt")
    cases = load_file(str(d / "cases.safetensors"))
    with torch.no_grad():
        context = loaded.network.context(cases["ddim.text_emb"], cases["ddim.image_tokens"])
    V, H, W = cases["ddim.video"].shape[2:]
    pred = Geo4DPredictor(loaded.network, loaded.pointmap_vae, context, image_size=(H, W))
    video = np.random.default_rng(0).integers(0, 256, size=(V + 2, H, W, 3), dtype=np.uint8)
    out = dict(pred.predict_windows(video, [0, 2], V))
    assert sorted(out) == [0, 1]
    w = out[1]
    assert w.pointmap.shape == (V, H, W, 3) and np.isfinite(w.pointmap).all()
    assert (w.pointmap_conf >= 0).all() and np.allclose(np.linalg.norm(w.ray_dir, axis=-1), 1, atol=1e-5)
    store = Store(tmp_path / "s.zarr")
    store.ensure_video(VideoInfo("v", "x", V + 2, H, W, 24.0))
    store.prepare_windows("v", [0, 2], V, 2, pred.name, "fp")
    for g, p in out.items():
        store.write_window("v", g, p)
    arrays, starts, _ = store.windows("v")
    from storage.store import round_mantissa

    assert np.array_equal(arrays["pointmap"][1], round_mantissa(w.pointmap))  # stored at the store's precision
