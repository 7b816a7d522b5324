"""Depth and pose metrics: hand-computable cases, the official fixture, evo agreement."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geo4d.align import sim3_matrix
from geo4d.errors import InputError
from geo4d.metrics import (
    DEPTH_PROTOCOLS,
    depth_metrics,
    depth_metrics_protocol,
    fit_scale_l1,
    fit_scale_shift_l1,
    pose_metrics,
    reconstruction_metrics,
)
from geo4d.metrics.trajectory import (
    Trajectory,
    associate,
    evaluate_trajectories,
    evaluate_tum_files,
    evaluate_tum_files_evo,
    matrix_to_quaternion,
    quaternion_to_matrix,
    read_tum_trajectory,
    write_tum_trajectory,
)

RTOL_EVO = 1e-6


# ---- depth: hand-computable ---------------------------------------------------------------------
def test_depth_metrics_unaligned_by_hand():
    gt = np.array([2.0, 2.0, 4.0, 1.0])
    pred = np.array([1.0, 3.0, 4.0, 1.3])
    m = depth_metrics(pred, gt, align=None)
    assert m["abs_rel"] == pytest.approx((0.5 + 0.5 + 0.0 + 0.3) / 4)
    assert m["sq_rel"] == pytest.approx((1 / 2 + 1 / 2 + 0 + 0.09) / 4)
    assert m["rmse"] == pytest.approx(np.sqrt((1 + 1 + 0 + 0.09) / 4))
    # ratios max(p/g, g/p): 2, 1.5, 1, 1.3 → δ<1.25: 1/4; δ<1.5625: 2/4 (1.5 < 1.5625); δ<1.953: 3/4
    assert m["delta_1_25"] == 0.25
    assert m["delta_1_25_2"] == 0.75
    assert m["delta_1_25_3"] == 0.75
    assert m["log_rmse"] == pytest.approx(np.sqrt(np.mean(np.log(pred / gt) ** 2)))
    assert m["valid_pixels"] == 4 and m["scale"] == 1.0 and m["shift"] == 0.0


def test_invalid_ground_truth_pixels_are_excluded():
    gt = np.array([[1.0, np.inf, 0.0], [-1.0, np.nan, 80.0]])
    pred = np.array([[1.5, 7.0, 7.0], [7.0, 7.0, 80.0]])
    m = depth_metrics(pred, gt, align=None)
    assert m["valid_pixels"] == 2
    assert m["abs_rel"] == pytest.approx(0.25)
    m = depth_metrics(pred, gt, align=None, max_depth=70)  # 80 m is beyond the cap
    assert m["valid_pixels"] == 1 and m["abs_rel"] == pytest.approx(0.5)
    m = depth_metrics(pred, gt, valid=np.array([[False, True, True], [True, True, True]]), align=None)
    assert m["valid_pixels"] == 1 and m["abs_rel"] == 0.0


def test_post_clip_applies_after_alignment_and_has_no_lower_clip():
    gt = np.array([10.0, 20.0, 60.0, 65.0])
    pred = np.array([10.0, 20.0, 100.0, -5.0])
    m = depth_metrics(pred, gt, align=None, post_clip_max=70)
    # p = [10, 20, 70, -5]: |0| + |0| + 10/60 + 70/65
    assert m["abs_rel"] == pytest.approx((10 / 60 + 70 / 65) / 4)


def test_exact_l1_alignment_ignores_outliers_and_recovers_affine_map():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1, 50, size=(3, 20, 30))
    pred = (gt - 2.0) / 3.0
    pred[0, :3] *= 1.6  # 90 outliers out of 1800
    m = depth_metrics(pred, gt, align="scale_shift_l1")
    assert m["scale"] == pytest.approx(3.0, rel=1e-9) and m["shift"] == pytest.approx(2.0, rel=1e-8)
    g = gt[0, :3]
    assert m["abs_rel"] == pytest.approx(np.sum(np.abs(1.6 * g - 1.2 - g) / g) / gt.size, rel=1e-6)
    # median scaling cannot model the shift
    assert depth_metrics(pred, gt, align="median")["abs_rel"] > 3 * m["abs_rel"]


def test_align_mask_restricts_the_fit_not_the_metrics():
    gt = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    pred = gt.copy()
    pred[-1] = 60.0  # excluded from the fit by the mask, still counted
    mask = np.array([1, 1, 1, 1, 1, 0], bool)
    m = depth_metrics(pred, gt, align="scale_shift_l1", align_mask=mask)
    assert m["scale"] == pytest.approx(1.0) and m["shift"] == pytest.approx(0.0, abs=1e-9)
    assert m["valid_pixels"] == 6 and m["abs_rel"] == pytest.approx(9.0 / 6)


def test_scale_l1_is_weighted_median_and_median_scaling():
    pred = np.array([1.0, 1.0, 2.0])
    gt = np.array([3.0, 4.0, 2.0])  # ratios 3, 4, 1 with weights 1, 1, 2
    assert fit_scale_l1(pred, gt) == 1.0  # half the weight sits at ratio 1
    s_grid = np.linspace(0, 5, 5001)
    obj = [np.abs(s * pred - gt).sum() for s in s_grid]
    assert np.abs(fit_scale_l1(pred, gt) * pred - gt).sum() <= min(obj) + 1e-12
    m = depth_metrics(pred, gt, align="median")
    assert m["scale"] == pytest.approx(3.0 / 1.0)


def test_exact_l1_fit_matches_linear_programming():
    from scipy.optimize import linprog

    rng = np.random.default_rng(3)
    for trial in range(3):
        n = 60
        p = rng.uniform(0.5, 3.0, n)
        g = 1.7 * p + 0.4 + rng.standard_t(1.5, n)
        # min Σ e_i  s.t. −e ≤ s p + t − g ≤ e ; variables (s, t, e)
        c = np.r_[0, 0, np.ones(n)]
        A = np.block([[p[:, None], np.ones((n, 1)), -np.eye(n)], [-p[:, None], -np.ones((n, 1)), -np.eye(n)]])
        b = np.r_[g, -g]
        lp = linprog(c, A_ub=A, b_ub=b, bounds=[(None, None)] * 2 + [(0, None)] * n, method="highs")
        s, t = fit_scale_shift_l1(p, g)
        assert np.abs(s * p + t - g).sum() == pytest.approx(lp.fun, rel=1e-9)


def test_exact_l1_fit_on_large_input_uses_subset_then_refines():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.1, 10, 300_000)
    g = 4.0 * p - 1.0 + rng.laplace(0, 0.3, p.size)
    s, t = fit_scale_shift_l1(p, g)
    f = lambda s_, t_: np.abs(s_ * p + t_ - g).sum()  # noqa: E731
    best = f(s, t)
    for ds, dt in ((1e-5, 0), (-1e-5, 0), (0, 1e-4), (0, -1e-4), (1e-5, -5e-5), (-1e-5, 5e-5)):
        assert best <= f(s + ds, t + dt)
    assert s == pytest.approx(4.0, rel=1e-3) and t == pytest.approx(-1.0, abs=5e-3)


def test_depth_metrics_errors():
    with pytest.raises(ValueError, match="pred_depth: expected the shape"):
        depth_metrics(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="align: expected one of"):
        depth_metrics(np.ones(3), np.ones(3), align="lstsq")
    with pytest.raises(ValueError, match="non-finite"):
        depth_metrics(np.array([1.0, np.nan]), np.ones(2))
    m = depth_metrics(np.ones(3), np.zeros(3))
    assert m["valid_pixels"] == 0 and np.isnan(m["abs_rel"])


# ---- depth: official fixture ------------------------------------------------------------------
OFFICIAL_KEYS = {"abs_rel": "Abs Rel", "sq_rel": "Sq Rel", "rmse": "RMSE", "log_rmse": "Log RMSE",
                 "delta_1_25": "δ < 1.25", "delta_1_25_2": "δ < 1.25^2", "delta_1_25_3": "δ < 1.25^3",
                 "valid_pixels": "valid_pixels"}


@pytest.fixture(scope="module")
def eval_fixture(reference_dir):
    d = reference_dir / "fixtures" / "eval"
    return np.load(d / "cases.npz"), json.loads((d / "results.json").read_text())


@pytest.mark.parametrize("dataset,call", [("sintel", "depth_nonkitti_call"), ("kitti", "depth_kitti_call")])
def test_official_protocol_replica_matches_fixture(eval_fixture, dataset, call):
    cases, results = eval_fixture
    ref = results[call]
    m = depth_metrics_protocol(cases["depth.pred"], cases["depth.gt"], dataset, align_mask=cases["depth.align_mask"])
    assert DEPTH_PROTOCOLS[dataset].align == "scale_shift_l1_adam"
    for ours, theirs in OFFICIAL_KEYS.items():
        # the official helper computes in float32: agreement to float32 precision
        assert m[ours] == pytest.approx(ref[theirs], rel=2e-6), ours


def test_exact_l1_vs_official_adam_on_fixture(eval_fixture):
    """The exact fit reaches a lower L1 objective; Sintel/Bonn settings agree closely, KITTI's do not."""
    cases, results = eval_fixture
    gt, pred, am = cases["depth.gt"], cases["depth.pred"], cases["depth.align_mask"]
    exact = depth_metrics_protocol(pred, gt, DEPTH_PROTOCOLS["sintel"].with_align("scale_shift_l1"), align_mask=am)
    adam = depth_metrics_protocol(pred, gt, "sintel", align_mask=am)
    v = (gt > 0) & (gt < 70) & am
    obj = lambda m: np.abs(m["scale"] * pred[v] + m["shift"] - gt[v]).sum()  # noqa: E731
    assert obj(exact) <= obj(adam)
    assert exact["abs_rel"] == pytest.approx(results["depth_nonkitti_call"]["Abs Rel"], rel=5e-4)
    assert abs(exact["delta_1_25"] - results["depth_nonkitti_call"]["δ < 1.25"]) <= 1.0 / 3504 + 1e-9
    kitti_exact = depth_metrics_protocol(pred, gt, DEPTH_PROTOCOLS["kitti"].with_align("scale_shift_l1"))
    assert abs(kitti_exact["abs_rel"] - results["depth_kitti_call"]["Abs Rel"]) > 0.01  # documented gap


# ---- poses -----------------------------------------------------------------------------------------
def _random_rotations(rng, n, scale=1.0):
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(rng.normal(size=(n, 3)) * scale).as_matrix()


def _trajectory(rng, n=30):
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, :3] = _random_rotations(rng, n, 0.5)
    T[:, :3, 3] = np.cumsum(rng.normal(size=(n, 3)) * 0.1, axis=0)
    return T


def test_pose_metrics_zero_for_a_similar_trajectory_and_gauge_invariant():
    rng = np.random.default_rng(0)
    gt = _trajectory(rng)
    R = _random_rotations(rng, 1)[0]
    S = sim3_matrix(3.0, R, np.array([1.0, -2.0, 5.0]))
    est = S @ gt
    est[:, :3, :3] /= 3.0  # keep rotations orthonormal: est = Sim(3)·gt in world
    m = pose_metrics(est, gt)
    assert m["ate"] < 1e-12 and m["rpe_trans"] < 1e-12 and m["rpe_rot"] < 1e-6
    assert m["align_scale"] == pytest.approx(1 / 3.0)
    noisy = gt.copy()
    noisy[:, :3, 3] += rng.normal(size=(len(gt), 3)) * 0.01
    a = pose_metrics(noisy, gt)
    moved = S @ noisy
    moved[:, :3, :3] /= 3.0
    b = pose_metrics(moved, gt)
    for k in ("ate", "rpe_trans", "rpe_rot"):
        assert b[k] == pytest.approx(a[k], rel=1e-9)


def test_pose_metrics_by_hand():
    # Straight line along x; the estimate's centres are offset ±d alternately along y (no
    # alignment): ATE = d, and each consecutive relative translation is off by 2d.
    n, d = 6, 0.1
    gt = np.tile(np.eye(4), (n, 1, 1))
    gt[:, 0, 3] = np.arange(n)
    est = gt.copy()
    est[:, 1, 3] = d * np.array([1, -1, 1, -1, 1, -1])
    m = pose_metrics(est, gt, align=None)
    assert m["ate"] == pytest.approx(d, rel=1e-12)
    assert m["rpe_trans"] == pytest.approx(2 * d, rel=1e-12)
    assert m["rpe_rot"] == pytest.approx(0.0, abs=1e-9)
    assert m["path_length"] == pytest.approx(n - 1) and m["ate_rel"] == pytest.approx(d / (n - 1))
    # A rotation of 2° about z on every other camera: RPE angle 2° for each pair.
    c, s = np.cos(np.radians(2)), np.sin(np.radians(2))
    est = gt.copy()
    est[1::2, :3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    m = pose_metrics(est, gt, align=None)
    assert m["rpe_rot"] == pytest.approx(2.0, rel=1e-9) and m["ate"] == 0.0
    # Scale: SE(3) alignment cannot undo it, Sim(3) can.
    gt[:, 1, 3] = np.arange(n) ** 2 / 10.0
    est = gt.copy()
    est[:, :3, 3] *= 2.0
    assert pose_metrics(est, gt, align="sim3")["ate"] < 1e-12
    assert pose_metrics(est, gt, align="se3")["ate"] > 0.5
    assert pose_metrics(est, gt, align="se3")["align_scale"] == 1.0


def test_pose_metrics_errors():
    gt = np.tile(np.eye(4), (5, 1, 1))
    with pytest.raises(ValueError, match="gt_world_from_cam: expected shape"):
        pose_metrics(gt, gt[:4])
    with pytest.raises(ValueError, match="need at least 3 poses"):
        pose_metrics(gt[:2], gt[:2])
    with pytest.raises(ValueError, match="all identical"):
        pose_metrics(gt, gt)
    bad = gt.copy()
    bad[0, 0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pose_metrics(bad, gt)


def test_agrees_with_evo_on_random_trajectories(tmp_path):
    rng = np.random.default_rng(5)
    for k, align in enumerate(("sim3", "se3", None)):
        gt = _trajectory(rng, 40)
        est = gt.copy()
        est[:, :3, 3] = 0.7 * est[:, :3, 3] + rng.normal(size=(40, 3)) * 0.02 + 1.0
        est[:, :3, :3] = est[:, :3, :3] @ _random_rotations(rng, 40, 0.02)
        t_gt = 1000.0 + np.arange(40) / 30.0
        t_est = t_gt + rng.uniform(-0.004, 0.004, 40)
        keep = np.sort(rng.choice(40, 33, replace=False))
        write_tum_trajectory(tmp_path / f"gt{k}.txt", Trajectory.from_poses(t_gt, gt))
        write_tum_trajectory(tmp_path / f"est{k}.txt", Trajectory.from_poses(t_est[keep], est[keep]))
        ours = evaluate_tum_files(tmp_path / f"gt{k}.txt", tmp_path / f"est{k}.txt", align=align)
        evo = evaluate_tum_files_evo(tmp_path / f"gt{k}.txt", tmp_path / f"est{k}.txt", align=align)
        assert ours["n_associated"] == evo["n_associated"] == 33
        for key in ("ate", "rpe_trans", "rpe_rot"):
            assert ours[key] == pytest.approx(evo[key], rel=RTOL_EVO), (align, key)


def test_agrees_with_evo_on_real_tum_trajectories(shared_dir):
    tum = shared_dir / "data" / "tum"
    refs = json.loads((tum / "evo_reference.json").read_text())
    assert refs
    for ref in refs:
        ours = evaluate_tum_files(tum / ref["gt"], tum / ref["est"])
        assert ours["n_associated"] == ref["n_associated"]
        for key in ("ate", "rpe_trans", "rpe_rot"):
            assert ours[key] == pytest.approx(ref[key], rel=RTOL_EVO), (ref["est"], key)
        evo = evaluate_tum_files_evo(tum / ref["gt"], tum / ref["est"])  # the installed evo too
        for key in ("ate", "rpe_trans", "rpe_rot"):
            assert ours[key] == pytest.approx(evo[key], rel=RTOL_EVO), (ref["est"], key)


def test_official_pose_fixture(eval_fixture):
    cases, results = eval_fixture
    g, p = cases["pose.gt_xyz_wxyz"], cases["pose.pred_xyz_wxyz"]
    gt = Trajectory(cases["pose.gt_t"], g[:, :3], g[:, 3:])
    est = Trajectory(cases["pose.pred_t"], p[:, :3], p[:, 3:])
    with pytest.raises(InputError, match="no matching timestamps"):
        evaluate_trajectories(gt, est)  # stamps 0..24 vs 100.0..102.4
    m = evaluate_trajectories(gt, est, replace_timestamps=True)
    ref = results["pose_eval_metrics"]
    assert m["ate"] == pytest.approx(ref["ATE"], rel=1e-9)
    assert m["rpe_trans"] == pytest.approx(ref["RPE_trans"], rel=1e-9)
    assert m["rpe_rot"] == pytest.approx(ref["RPE_rot_deg"], rel=1e-9)


# ---- trajectories: files and association ----------------------------------------------------------
def test_tum_round_trip_exact(tmp_path):
    rng = np.random.default_rng(2)
    q = rng.normal(size=(7, 4))
    traj = Trajectory(1.3e9 + rng.uniform(0, 100, 7), rng.normal(size=(7, 3)), q)
    path = write_tum_trajectory(tmp_path / "t.txt", traj, header="made by a test")
    back = read_tum_trajectory(path)
    assert np.array_equal(back.timestamps, traj.timestamps)
    assert np.array_equal(back.positions, traj.positions)
    assert np.array_equal(back.quaternions, traj.quaternions)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#") and len(lines[1].split()) == 8
    # column order on disk: t x y z qx qy qz qw
    assert float(lines[1].split()[7]) == q[0, 0]


def test_quaternion_matrix_conventions():
    rng = np.random.default_rng(4)
    R = _random_rotations(rng, 10)
    q = matrix_to_quaternion(R)
    assert np.allclose(quaternion_to_matrix(q), R, atol=1e-12)
    assert np.allclose(quaternion_to_matrix(3.0 * q), R, atol=1e-12)  # normalised
    # 90° about z, (w, x, y, z)
    Rz = quaternion_to_matrix(np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)]))
    assert np.allclose(Rz, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)


@pytest.mark.parametrize("content,match", [
    ("1 2 3 4 5 6 7\n", r"t\.txt:1: expected 8 numbers"),
    ("# c\n1 2 3 4 5 6 7 x\n", r"t\.txt:2: not a number"),
    ("1 0 0 0 0 0 0 0\n", r"t\.txt:1: zero quaternion"),
    ("# only comments\n", r"t\.txt: no poses"),
])
def test_malformed_tum_files_name_the_file(tmp_path, content, match):
    (tmp_path / "t.txt").write_text(content)
    with pytest.raises(InputError, match=match):
        read_tum_trajectory(tmp_path / "t.txt")
    with pytest.raises(InputError, match="no such trajectory file"):
        read_tum_trajectory(tmp_path / "missing.txt")


def test_association_matches_evo():
    from evo.core.sync import matching_time_indices

    rng = np.random.default_rng(9)
    cases = [
        (np.array([0.0, 0.1, 0.2, 0.3]), np.array([0.005, 0.105, 0.195, 0.31, 0.4])),  # ties at 0.005
        (np.arange(10) * 0.1, np.arange(10) * 0.1 + 0.02),  # nothing within 0.01
        (np.array([0.0, 0.001, 0.002]), np.array([0.0015])),  # several map to one
        (rng.uniform(0, 3, 50), np.sort(rng.uniform(0, 3, 80))),
        (np.sort(rng.uniform(0, 3, 50)), rng.uniform(0, 3, 80)),  # unsorted second: linear search
    ]
    def traj(t):
        return Trajectory(t, np.zeros((len(t), 3)), np.tile([1.0, 0, 0, 0], (len(t), 1)))

    for a, b in cases:
        short_first = len(b) > len(a)
        s, l_ = (a, b) if short_first else (b, a)
        i_s, i_l = matching_time_indices(s, l_, 0.01)
        if not i_s:
            with pytest.raises(InputError, match="no matching timestamps"):
                associate(traj(a), traj(b), max_diff=0.01)
            continue
        ours = associate(traj(a), traj(b), max_diff=0.01)
        exp = (i_s, i_l) if short_first else (i_l, i_s)
        assert list(ours[0]) == list(exp[0]) and list(ours[1]) == list(exp[1])


# ---- reconstruction ---------------------------------------------------------------------------------
def test_reconstruction_metrics_perfect_up_to_gauge():
    rng = np.random.default_rng(0)
    T, H, W = 5, 6, 8
    gt_depth = rng.uniform(1, 5, (T, H, W)).astype(np.float32)
    gt_depth[:, 0, :] = np.inf  # sky
    gt_pose = _trajectory(rng, T)
    K = np.array([[50.0, 0, 3.5], [0, 50.0, 2.5], [0, 0, 1]])
    s = 0.5
    depth = np.where(np.isfinite(gt_depth), s * gt_depth, 0.0)
    pose = gt_pose.copy()
    pose[:, :3, 3] *= s
    K_est = K.copy()
    K_est[0, 0] = K_est[1, 1] = 55.0
    m = reconstruction_metrics(depth, np.tile(K_est, (T, 1, 1)), pose, gt_depth, K, gt_pose)
    assert m["abs_rel"] < 1e-7 and m["delta_1_25"] == 1.0
    assert m["ate"] < 1e-9 and m["rpe_rot"] < 1e-6
    assert m["focal_err_pct"] == pytest.approx(10.0)
    assert m["valid_pixels"] == T * (H - 1) * W
    assert set(["abs_rel", "delta_1_25", "ate", "ate_rel", "rpe_trans", "rpe_rot", "focal_err_pct"]) <= set(m)
