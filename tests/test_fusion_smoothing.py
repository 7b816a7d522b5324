"""Smoothing chosen from the data, and the consensus initialisation (issue 13, items 1–2).

Window predictions come from the synthetic predictor (a test instrument): independent per-window,
per-frame rotation jitter, a fast turn (angular acceleration peaking at 1.5°/frame²) and windows
corrupted by a rotation drift that no window rotation absorbs.
"""

from __future__ import annotations

import numpy as np
import pytest

import geo4d.fusion.solver as solver
from geo4d.fusion import fuse
from geo4d.fusion.consensus import batched_rotation_means
from geo4d.fusion.lie import so3_exp, so3_log
from geo4d.metrics import reconstruction_metrics
from geo4d.predictor import stacked_windows
from geo4d.synthetic import make_scene, render
from geo4d.synthetic_predictor import SyntheticPredictor
from geo4d.windows import window_starts

H, W, T = 32, 48, 48
JITTER = {"depth_noise": 0.03, "rot_jitter_axis_deg": 0.5}


def _case(seed: int, noise: dict, **scene):
    video = render(make_scene(seed, n_frames=T, height=H, width=W, **scene))
    pred = SyntheticPredictor(video.geometry, noise=noise, seed=seed)
    starts = window_starts(T)
    return video.geometry, pred, starts, stacked_windows(pred, video.frames, starts)


def _rpe_rot(res, gt) -> float:
    g = res.geometry
    m = reconstruction_metrics(g.depth, g.intrinsics, g.world_from_cam, gt.depth, gt.intrinsics, gt.world_from_cam)
    return float(m["rpe_rot"])


@pytest.fixture(scope="module")
def jitter_case():
    return _case(0, JITTER)


@pytest.fixture(scope="module")
def turn_case():
    return _case(0, JITTER, turn_accel_deg=1.5)


def test_independent_jitter_is_smoothed(jitter_case):
    gt, _, starts, win = jitter_case
    smoothed = _rpe_rot(fuse(win, starts, T), gt)
    unsmoothed = _rpe_rot(fuse(win, starts, T, config={"alpha_smooth": 0.0}), gt)
    assert smoothed < 0.3 * unsmoothed, (smoothed, unsmoothed)


def test_fast_turn_is_not_over_smoothed(turn_case):
    gt, _, starts, win = turn_case
    res = fuse(win, starts, T)
    auto = _rpe_rot(res, gt)
    fixed = {s: _rpe_rot(fuse(win, starts, T, config={"smooth_auto": False, "smooth_rot_deg": s}), gt)
             for s in (0.05, 0.1, 0.2, 0.4)}
    best = min(fixed.values())
    assert auto <= 1.15 * best, (auto, fixed)
    assert auto < 0.6 * fixed[0.05], (auto, fixed)  # the floor alone over-smooths the turn
    # the prior widened at the turn only (frames 18–30), not over the smooth stretches
    sc = res.diagnostics["solver"]["smooth_scale"]
    assert sc["chosen"] == "per frame, from the data" and sc["rot_deg_max"] > 5 * sc["rot_deg"], sc


def test_fixed_scale_is_used_as_given(jitter_case):
    gt, _, starts, win = jitter_case
    res = fuse(win, starts, T, config={"smooth_auto": False, "smooth_rot_deg": 0.3})
    sc = res.diagnostics["solver"]["smooth_scale"]
    assert sc["chosen"] == "fixed" and sc["rot_deg"] == pytest.approx(0.3) and sc["rot_deg_max"] == pytest.approx(0.3)


def _interior_seeds(n: int) -> list[int]:
    """The first ``n`` seeds whose one corrupted window has three other windows at every frame."""
    out = []
    for seed in range(60):
        gt = render(make_scene(seed, n_frames=T, height=4, width=6)).geometry
        c = SyntheticPredictor(gt, noise={"corrupt_windows": 1}, seed=seed).corrupted_starts[0]
        if 12 <= c <= T - 16 - 12:
            out.append(seed)
        if len(out) == n:
            break
    return out


def _relative_error_deg(R: np.ndarray, Rg: np.ndarray, i: int, j: np.ndarray) -> np.ndarray:
    """Angle (degrees) between the estimated and true rotation from frame i to frames j."""
    E = np.einsum("ij,njk->nik", R[i].T, R[j])
    Eg = np.einsum("ij,njk->nik", Rg[i].T, Rg[j])
    return np.degrees(np.linalg.norm(so3_log(np.einsum("nji,njk->nik", Eg, E)), axis=-1))


@pytest.mark.parametrize("seed", _interior_seeds(3))
def test_drifting_window_does_not_steer_the_initialisation_and_is_flagged(seed, monkeypatch):
    noise = {**JITTER, "corrupt_windows": 1, "corrupt_deg": 15.0, "ramp_corruption": True}
    gt, pred, starts, win = _case(seed, noise)
    seen = {}
    consensus = solver.consensus_init

    def spy_consensus(state, *a, **k):
        seen["chain_state"] = state.copy()
        seen["consensus"] = out = consensus(state, *a, **k)
        return out

    monkeypatch.setattr(solver, "consensus_init", spy_consensus)
    res = fuse(win, starts, T)
    c = pred.corrupted_starts[0]
    frames = np.arange(c, c + 16)
    Rg = gt.world_from_cam[:, :3, :3]
    first = frames[-4:]  # the frames the drifting window reaches first: chaining places them from it alone
    chained = _relative_error_deg(seen["chain_state"].R, Rg, c - 1, first).max()
    agreed = _relative_error_deg(seen["consensus"][0].R, Rg, c - 1, first).max()
    drift = 15.0 * 12 / 15  # the window's own error there, at least (before its rotation absorbs part)
    assert chained > 4.0, chained  # chaining alone is steered by the drifting window …
    assert agreed < 0.6 * chained and agreed < 0.45 * drift, (agreed, chained)  # … the consensus much less
    assert set(pred.corrupted_starts) <= set(res.diagnostics["flagged_starts"])  # the drifting window is flagged


_KNOWN_MISS = pytest.mark.xfail(reason="known miss (issue 13 closing note): next to a drifting window a good one is "
                                       "flagged too on this seed (windows 16 and 20 flagged, 20 drifting)", strict=True)


@pytest.mark.parametrize("seed", [pytest.param(s, marks=_KNOWN_MISS) if s == 2 else s for s in _interior_seeds(3)])
def test_only_the_drifting_window_is_flagged(seed):
    noise = {**JITTER, "corrupt_windows": 1, "corrupt_deg": 15.0, "ramp_corruption": True}
    _, pred, starts, win = _case(seed, noise)
    assert fuse(win, starts, T).diagnostics["flagged_starts"] == pred.corrupted_starts


def test_rigidly_corrupted_windows_are_flagged_and_do_not_hurt(jitter_case):
    gt, _, starts, win = jitter_case
    ref = _rpe_rot(fuse(win, starts, T), gt)
    cgt, pred, cstarts, cwin = _case(0, {**JITTER, "corrupt_windows": 2, "corrupt_deg": 15.0})
    res = fuse(cwin, cstarts, T)
    assert res.diagnostics["flagged_starts"] == pred.corrupted_starts and len(pred.corrupted_starts) == 2
    assert _rpe_rot(res, cgt) <= 1.1 * ref


def test_clean_input_stays_exact():
    gt, _, starts, win = _case(1, {}, turn_accel_deg=1.5)
    res = fuse(win, starts, T)
    g = res.geometry
    m = reconstruction_metrics(g.depth, g.intrinsics, g.world_from_cam, gt.depth, gt.intrinsics, gt.world_from_cam)
    assert m["ate_rel"] < 1e-6 and m["rpe_rot"] < 1e-4 and m["abs_rel"] < 1e-5, m
    assert res.diagnostics["flagged_windows"] == []


def test_batched_rotation_means_ignore_the_odd_one_out():
    rng = np.random.default_rng(0)
    base = so3_exp(rng.normal(size=(5, 3)))
    Rs = np.einsum("nij,ncjk->ncik", base, so3_exp(np.radians(0.3) * rng.normal(size=(5, 4, 3))))
    Rs[:, 3] = base @ so3_exp(np.array([0.0, np.radians(20.0), 0.0]))  # one wrong vote per set
    w = np.ones((5, 4))
    w[4, 2] = 0.0  # an absent vote
    R, rw = batched_rotation_means(Rs, w)
    err = np.degrees(np.linalg.norm(so3_log(np.einsum("nji,njk->nik", base, R)), axis=-1))
    assert err.max() < 0.5, err
    assert (rw[:, 3] < 0.05).all() and rw[4, 2] == 0.0 and (rw[:, :2] > 0.5).all()
    with pytest.raises(ValueError, match="expected Rs"):
        batched_rotation_means(Rs[0], w)
