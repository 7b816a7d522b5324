"""The training engine (geo4d_model.train: recipe, losses, trainer, checkpoint, distributed) on the tiny
network (configs/train/tiny-network.yaml, random weights = a synthetic stand-in), small clips.

Every run here uses one torch thread (restored afterwards): bitwise comparisons between processes
need the same reduction order, and the machine's few cores are shared.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from geo4d.errors import InputError  # noqa: E402
from geo4d_model.train import checkpoint as ck  # noqa: E402
from geo4d_model.train.losses import (  # noqa: E402
    diffusion_targets,
    noisy_and_velocity,
    pointmap_vae_loss,
    v_prediction_loss,
)
from geo4d_model.train.recipe import load_recipe, recipe_fingerprint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NETWORK = ROOT / "configs" / "train" / "tiny-network.yaml"
V, SIZE = 4, (16, 24)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_recipe(folder: Path, name: str = "recipe.yaml", **changes) -> Path:
    """A small recipe: VAE decoder 2 steps, U-Net on the point map 2 steps, all modalities 2 steps (ramped)."""
    recipe = {
        "network": str(NETWORK), "seed": 3, "clip_frames": V, "batch_size": 1,
        "optimizer": {"lr": 1.0e-3, "grad_clip": 1.0},
        "lr_schedule": {"name": "constant_with_warmup", "warmup_steps": 1},
        "ema": {"decay": 0.9, "every": 1}, "checkpoint_every": 3, "log_every": 1,
        "validation": {"every": 0, "clips": 1, "sizes": [list(SIZE)], "timesteps": [499, 999]},
        "synthetic": {"seed": 0, "scene_frames": 8, "fs": 24},
        "phases": [
            {"name": "vae", "train": "pointmap_vae", "steps": 2, "lr": 2.0e-3, "sizes": [list(SIZE)]},
            {"name": "unet-pm", "train": "unet", "steps": 2, "sizes": [list(SIZE), [16, 32]],
             "modalities": {"pointmap": 1.0}},
            {"name": "unet-all", "train": "unet", "steps": 2, "sizes": [list(SIZE)], "ramp_steps": 2,
             "modalities": {"pointmap": 1.0, "ray": 1.0, "moment": 1.0, "disparity": 1.0}},
        ],
    }
    for key, value in changes.items():
        recipe[key] = value
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


class StandInSource:
    """Random-but-deterministic samples of the documented layout (no geometry behind them)."""

    name = "stand-in (random arrays)"
    fs = 24

    def clip(self, index: int, size: tuple[int, int], n_frames: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(index)
        H, W = size
        f = lambda c, lo=-1.0, hi=1.0: rng.uniform(lo, hi, (n_frames, c, H, W)).astype(np.float32)  # noqa: E731
        ray = f(3)
        return {"frames": f(3), "pointmap": f(3), "disparity": f(1), "moment": f(3) * 0.1,
                "ray": ray / np.linalg.norm(ray, axis=1, keepdims=True), "valid": rng.random((n_frames, H, W)) > 0.2,
                "scale": np.float32(2.0), "z_lower": np.float32(1.0), "fs": np.int64(24)}


@pytest.fixture(scope="module")
def tiny_models():
    from geo4d_model.loader import build_random

    return build_random(NETWORK, seed=0)


def state_hash(*modules) -> str:
    h = hashlib.sha256()
    for m in modules:
        for k, t in sorted(m.state_dict().items()):
            h.update(k.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def metrics(out: Path, kind: str = "train") -> list[dict]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["kind"] == kind]


# --- losses ----------------------------------------------------------------------------------------
def test_pointmap_vae_loss_equals_hand_computed_value():
    decoded = torch.tensor([[[[0.5, -1.0]], [[0.0, 2.0]], [[1.0, 1.05]], [[0.3, -2.0]]]])  # (1, 4, 1, 2)
    target = torch.tensor([[[[0.0, -1.0]], [[0.25, 1.0]], [[1.0, 1.05]]]])  # (1, 3, 1, 2)
    loss, stats = pointmap_vae_loss(decoded, target)
    l1 = [0.5 + 0.25 + 0.0, 0.0 + 1.0 + 0.0]
    sigma = [math.log1p(math.exp(0.3)) + 1e-6, math.log1p(math.exp(-2.0)) + 1e-6]
    hand = sum(math.log(math.sqrt(2) * s) + math.sqrt(2) * e / s for e, s in zip(l1, sigma)) / 2
    assert float(loss) == pytest.approx(hand, rel=1e-6)
    # the same number as the negative log-likelihood of a Laplace distribution of scale σ/√2 at ℓ1
    laplace = torch.distributions.Laplace(0.0, torch.tensor(sigma) / math.sqrt(2))
    assert float(loss) == pytest.approx(float(-laplace.log_prob(torch.tensor(l1)).mean()), rel=1e-6)
    assert float(stats["l1"]) == pytest.approx(np.mean(l1))
    assert float(stats["sigma"]) == pytest.approx(np.mean(sigma), rel=1e-6)
    with pytest.raises(ValueError, match="decoded"):
        pointmap_vae_loss(decoded[:, :3], target)


def test_velocity_matches_diffusers_on_the_stored_schedule(tiny_models):
    from diffusers import DDIMScheduler

    net, _ = tiny_models
    sched = DDIMScheduler(num_train_timesteps=1000, rescale_betas_zero_snr=True, prediction_type="v_prediction")
    sched.alphas_cumprod = net.alphas_cumprod.clone()
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 16, 2, 4, 4, generator=gen), torch.randn(3, 16, 2, 4, 4, generator=gen)
    t = torch.tensor([0, 421, 999])
    x_t, v = noisy_and_velocity(net.alphas_cumprod, x0, noise, t)
    assert torch.allclose(v, sched.get_velocity(x0, noise, t), atol=1e-6)
    assert torch.allclose(x_t, sched.add_noise(x0, noise, t), atol=1e-6)
    assert float(net.alphas_cumprod[999]) == 0.0  # zero terminal SNR: at t = 999, x_t = ε and v = −x₀
    assert torch.equal(v[2], -x0[2]) and torch.equal(x_t[2], noise[2])


def test_v_prediction_loss_weights_modalities(tiny_models):
    net, _ = tiny_models
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 16, 2, 4, 4, generator=gen), torch.randn(2, 16, 2, 4, 4, generator=gen)
    cond, ctx, t = torch.zeros(2, 4, 2, 4, 4), torch.zeros(1, 5, 64), torch.tensor([10, 700])
    _, v = noisy_and_velocity(net.alphas_cumprod, x0, noise, t)
    seen = {}

    def zero(x_t, c, tt, context, fs):
        seen["context"] = tuple(context.shape)
        return torch.zeros_like(x_t)

    loss, per = v_prediction_loss(net, x0, cond, ctx, None, t, noise, {"pointmap": 1.0, "ray": 3.0, "moment": 0.0},
                                  apply=zero)
    mse = {m: float((v[:, sl] ** 2).mean()) for m, sl in
           {"pointmap": slice(0, 4), "ray": slice(4, 8), "moment": slice(8, 12), "disparity": slice(12, 16)}.items()}
    assert {m: float(x) for m, x in per.items()} == pytest.approx(mse, rel=1e-6)
    assert float(loss) == pytest.approx((mse["pointmap"] + 3 * mse["ray"]) / 4, rel=1e-6)
    assert seen["context"] == (2, 5, 64)
    exact, _ = v_prediction_loss(net, x0, cond, ctx, None, t, noise, {"disparity": 1.0}, apply=lambda x, *a: v)
    assert float(exact) == 0.0
    with pytest.raises(ValueError, match="positive"):
        v_prediction_loss(net, x0, cond, ctx, None, t, noise, {"pointmap": 0.0}, apply=zero)
    with pytest.raises(ValueError, match="unknown modality"):
        v_prediction_loss(net, x0, cond, ctx, None, t, noise, {"depth": 1.0}, apply=zero)


def test_diffusion_targets_encode_each_modality_in_latent_order(tiny_models):
    from geo4d_model.train.data import collate

    net, pm = tiny_models
    batch = collate([StandInSource().clip(i, SIZE, 2) for i in range(2)])
    x0, cond = diffusion_targets(net, pm, batch)
    h, w = SIZE[0] // 2, SIZE[1] // 2
    assert x0.shape == (2, 16, 2, h, w) and cond.shape == (2, 4, 2, h, w) and not x0.requires_grad
    frame = lambda x: x[1, :, 1][None]  # noqa: E731 - clip 1, frame 1, as (1, C, H, W)
    s = net.scale_factor
    with torch.no_grad():
        assert torch.allclose(x0[1, 0:4, 1], s * pm.moments(frame(batch["pointmap"]))[0][0], atol=1e-5)
        assert torch.allclose(x0[1, 4:8, 1], s * net.first_stage_model.moments(frame(batch["ray"]))[0][0], atol=1e-5)
        assert torch.allclose(x0[1, 8:12, 1], s * net.first_stage_model.moments(frame(batch["moment"]))[0][0], atol=1e-5)
        disp = frame(batch["disparity"]).repeat(1, 3, 1, 1)
        assert torch.allclose(x0[1, 12:16, 1], s * net.first_stage_model.moments(disp)[0][0], atol=1e-5)
        assert torch.allclose(cond[1, :, 1], net.encode_frames(frame(batch["frames"]))[0], atol=1e-5)


# --- recipe ----------------------------------------------------------------------------------------
def test_recipe_errors_name_the_file_and_key(tmp_path):
    path = write_recipe(tmp_path)
    recipe = load_recipe(path)
    assert recipe.total_steps == 6 and recipe.network == NETWORK
    for changes, expected in [
        ({"max_steps": 10}, "unknown key max_steps"),
        ({"phases": [{"name": "a", "train": "unet", "steps": 1, "sizes": [[18, 24]], "modalities": {"ray": 1}}]},
         "phases[0].sizes: 18×24 is not a multiple of the network's downsampling factor 4"),
        ({"optimizer": {"lr": 1e-3, "momentum": 0.9}}, "unknown key optimizer.momentum"),
        ({"network": "no-such.yaml"}, "no such network config"),
    ]:
        with pytest.raises(InputError, match=None) as err:
            load_recipe(write_recipe(tmp_path, "bad.yaml", **changes))
        assert str(err.value).startswith(str(tmp_path / "bad.yaml")) and expected in str(err.value), str(err.value)
    # relative network paths are resolved against the recipe's folder
    (tmp_path / "sub").mkdir()
    rel = write_recipe(tmp_path / "sub", network=os.path.relpath(NETWORK, tmp_path / "sub"))
    assert load_recipe(rel).network.resolve() == NETWORK.resolve()


def test_fingerprint_ignores_logging_and_follows_training_settings(tmp_path):
    base = recipe_fingerprint(load_recipe(write_recipe(tmp_path)))
    assert recipe_fingerprint(load_recipe(write_recipe(tmp_path, "b.yaml", log_every=7, checkpoint_every=9))) == base
    assert recipe_fingerprint(load_recipe(write_recipe(tmp_path, "c.yaml", seed=4))) != base


# --- trainer pieces ----------------------------------------------------------------------------------
def test_gradients_flow_only_into_the_phase_parameters(tmp_path):
    from geo4d_model.train.trainer import Trainer, build_models, resolve_context, trained_parameters

    recipe = load_recipe(write_recipe(tmp_path))
    models = build_models(recipe)
    context, desc = resolve_context(models.network, {}, seed=recipe.seed)
    assert "synthetic" in desc and context.shape == (1, 77 + 16, 64)
    trainer = Trainer(recipe, StandInSource(), tmp_path / "run", models, context)
    for step, module in ((0, "pointmap_vae"), (2, "unet")):
        for p in [*models.network.parameters(), *models.pointmap_vae.parameters()]:
            p.grad = None
        trainer._train_step(step)
        trained = {id(p) for p in trained_parameters(models, module)}
        named = [*models.network.named_parameters(prefix="network"),
                 *models.pointmap_vae.named_parameters(prefix="pointmap_vae")]
        got = sorted(n for n, p in named if p.grad is not None)
        expected = sorted(n for n, p in named if id(p) in trained)
        assert got == expected and got, module
        assert all(p.requires_grad == (id(p) in trained) for _, p in named)
        if module == "pointmap_vae":
            assert any(n.startswith("pointmap_vae.decoder_adaptor.") for n in got)
            assert any(n.startswith("pointmap_vae.vae.post_quant_conv.") for n in got)
            assert not any(n.startswith(("pointmap_vae.vae.encoder.", "pointmap_vae.vae.quant_conv.",
                                         "pointmap_vae.encoder_adaptor.", "network.")) for n in got)
        else:
            assert all(n.startswith("network.model.diffusion_model.") for n in got)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_models):
    from geo4d_model.loader import build_random
    from geo4d_model.train.trainer import PointmapDecoder

    net, pm = build_random(NETWORK, seed=5)
    z = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(0))
    grads = []
    for on in (False, True):
        pm.zero_grad()
        pm.train()
        dec = PointmapDecoder(pm, gradient_checkpointing=on)
        out = dec(z)
        out.square().mean().backward()
        grads.append((out.detach(), [p.grad.clone() for p in pm.vae.decoder.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[0][1], grads[1][1]))
    unet_grads = []
    x, t, ctx = torch.randn(1, 20, 2, 4, 4), torch.tensor([5]), torch.randn(1, 93, 64)
    for on in (False, True):
        net.unet.zero_grad()
        net.unet.train()
        net.unet.gradient_checkpointing = on
        net.unet(x, t, ctx).square().mean().backward()
        unet_grads.append([p.grad.clone() for p in net.unet.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*unet_grads))


def test_validation_losses_and_ema_swap_restore_weights(tmp_path):
    from geo4d_model.train.trainer import Trainer, build_models, resolve_context, validation_losses

    recipe = load_recipe(write_recipe(tmp_path))
    models = build_models(recipe)
    context, _ = resolve_context(models.network, {}, seed=0)
    trainer = Trainer(recipe, StandInSource(), tmp_path / "run", models, context)
    trainer._train_step(0)
    trainer._train_step(1)
    before = state_hash(models.pointmap_vae)
    with trainer.ema_weights():
        swapped = state_hash(models.pointmap_vae)
        out = validation_losses(models, context, recipe)
    assert swapped != before and state_hash(models.pointmap_vae) == before
    keys = {"vae_loss", "vae_l1", "vae_sigma_spearman", "denoise_loss", "denoise_pointmap", "denoise_ray",
            "denoise_moment", "denoise_disparity"}
    assert keys <= set(out) and all(math.isfinite(out[k]) for k in keys)
    assert validation_losses(models, context, recipe) == validation_losses(models, context, recipe)


def test_init_from_a_model_checkpoint_without_vae_ckpt(tmp_path, tiny_models):
    from geo4d_model.loader import save_official
    from geo4d_model.train.trainer import build_models

    net, _ = tiny_models
    save_official(net, tmp_path / "model.ckpt")
    models = build_models(load_recipe(write_recipe(tmp_path)), init_checkpoint=tmp_path / "model.ckpt")
    first = net.first_stage_model.state_dict()
    for k, v in models.pointmap_vae.state_dict().items():
        if k.startswith("vae."):
            assert torch.equal(v, first[k]), k
    assert float(models.pointmap_vae.decoder_adaptor.conv_out.weight.detach().abs().max()) == 0.0
    assert "freshly initialised confidence adaptor" in models.description and not models.random_init


# --- checkpoints -----------------------------------------------------------------------------------
def test_checkpoints_are_atomic_pruned_and_damage_falls_back(tmp_path, caplog):
    for step in (1, 2, 3, 4):
        ck.save_checkpoint(tmp_path, step, {"w": torch.full((3,), float(step))}, keep=3)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [2, 3, 4]
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["step"] == 4
    leftover = tmp_path / "checkpoints" / ".tmp-step-00000005-999"  # a write killed half-way
    leftover.mkdir()
    (leftover / "state.pt").write_bytes(b"partial")
    assert ck.latest_checkpoint(tmp_path).name == "step-00000004"
    state = tmp_path / "checkpoints" / "step-00000004" / "state.pt"
    state.write_bytes(state.read_bytes()[:-20])  # damaged newest checkpoint
    (tmp_path / "checkpoints" / "latest.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        path = ck.latest_checkpoint(tmp_path)
    assert path.name == "step-00000003" and float(ck.load_checkpoint(path)["w"][0]) == 3.0
    assert "damaged" in caplog.text
    with pytest.raises(InputError, match="damaged checkpoint"):
        ck.load_checkpoint(tmp_path / "checkpoints" / "step-00000004")
    ck.save_checkpoint(tmp_path, 5, {"w": torch.zeros(1)}, keep=3)
    assert not leftover.exists() and ck.latest_checkpoint(tmp_path).name == "step-00000005"


# --- whole runs ------------------------------------------------------------------------------------
def test_vae_decoder_training_lowers_the_loss(tmp_path):
    from geo4d_model.train.trainer import run_training

    phases = [{"name": "vae", "train": "pointmap_vae", "steps": 30, "sizes": [list(SIZE)]}]
    path = write_recipe(tmp_path, phases=phases, ema=None, checkpoint_every=100,
                        optimizer={"lr": 2.0e-3, "grad_clip": 1.0})
    result = run_training(path, [], tmp_path / "run", device="cpu")
    losses = [r["loss"] for r in metrics(tmp_path / "run")]
    assert len(losses) == 30 and result.finished
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


_KILLED_RUN = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    from geo4d_model.train.trainer import run_training
    def on_log(step, record):
        if step >= 4:
            time.sleep(600)  # hold here until the test kills the process (steps 1-4 logged, checkpoint at 3)
    run_training(sys.argv[1], [], sys.argv[2], device="cpu", on_log=on_log)
""")


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """The uninterrupted reference run (6 steps over three phases, checkpoints at 3 and 6)."""
    from geo4d_model.train.trainer import run_training

    folder = tmp_path_factory.mktemp("run_a")
    recipe = write_recipe(folder)
    result = run_training(recipe, [], folder / "out", device="cpu")
    return recipe, folder / "out", result


def _wait_for(predicate, proc, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


def test_resume_after_sigkill_is_bitwise_exact(run_a, tmp_path):
    from geo4d_model.train.trainer import run_training

    recipe, out_a, result_a = run_a
    out_b = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(recipe), str(out_b)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: (out_b / "metrics.jsonl").exists() and
                  any(json.loads(x)["step"] == 4 for x in (out_b / "metrics.jsonl").read_text().splitlines()), proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert ck.latest_checkpoint(out_b).name == "step-00000003" and not (out_b / "final").exists()
    result_b = run_training(recipe, [], out_b, device="cpu", resume=True)
    assert result_b.resumed_from == 3 and result_b.finished
    state_a = ck.load_checkpoint(ck.latest_checkpoint(out_a))
    state_b = ck.load_checkpoint(ck.latest_checkpoint(out_b))
    assert state_a["step"] == state_b["step"] == 6
    for key in ("network", "pointmap_vae"):
        assert state_a[key].keys() == state_b[key].keys()
        assert all(torch.equal(state_a[key][k], state_b[key][k]) for k in state_a[key]), key
    for name in state_a["ema"]:
        assert all(torch.equal(a, b) for a, b in zip(state_a["ema"][name]["shadow_params"],
                                                     state_b["ema"][name]["shadow_params"]))
    for pa, pb in zip(state_a["optimizer"]["state"].values(), state_b["optimizer"]["state"].values()):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    lines_a, lines_b = strip(metrics(out_a)), strip(metrics(out_b))
    assert [r["step"] for r in lines_b] == [1, 2, 3, 4, 5, 6]  # the killed run's step-4 line was rewritten
    assert lines_b == lines_a
    assert (out_a / "final" / "model.ckpt").read_bytes() == (out_b / "final" / "model.ckpt").read_bytes()


def test_final_files_load_strictly_with_the_trained_weights(run_a):
    from geo4d_model.context import constant_context
    from geo4d_model.loader import build_random, load_official
    from geo4d_model.train.trainer import synthetic_context, trained_parameters

    recipe, out, result = run_a
    final = out / "final"
    loaded = load_official(NETWORK, final / "model.ckpt", final / "vae.ckpt")
    state = ck.load_checkpoint(ck.latest_checkpoint(out))
    net, pm = build_random(NETWORK)
    net.load_state_dict(state["network"])
    pm.load_state_dict(state["pointmap_vae"])
    models = type("M", (), {"network": net, "pointmap_vae": pm})()
    for name, ema in state["ema"].items():  # the final files hold the EMA weights
        for p, shadow in zip(trained_parameters(models, name), ema["shadow_params"]):
            p.data.copy_(shadow)
    assert state_hash(loaded.network, loaded.pointmap_vae) == state_hash(net, pm)
    assert state_hash(loaded.network) != state_hash(build_random(NETWORK, seed=3)[0])  # it did train
    ctx = constant_context(loaded, cache=final / "context-cache", compute=lambda _: pytest.fail("cache not used"))
    assert torch.equal(ctx, synthetic_context(loaded.network, seed=3))  # the resampler stayed frozen
    readme = (final / "README.txt").read_text()
    assert "EMA" in readme and "SYNTHETIC STAND-IN" in readme and "6 of 6" in readme and "--clip-cache" in readme
    assert metrics(out, "validation")[-1]["step"] == 6


def test_resume_refuses_another_recipe_or_nothing_to_resume(run_a, tmp_path):
    from geo4d_model.train.trainer import run_training

    recipe, out, _ = run_a
    before = (out / "metrics.jsonl").read_bytes()
    changed = write_recipe(tmp_path, optimizer={"lr": 5.0e-4, "grad_clip": 1.0})
    with pytest.raises(InputError, match=r"optimizer\.lr \(checkpoint: 0\.001, now: 0\.0005\)") as err:
        run_training(changed, [], out, device="cpu", resume=True)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="holds checkpoints of an earlier run"):
        run_training(recipe, [], out, device="cpu")
    assert (out / "metrics.jsonl").read_bytes() == before
    with pytest.raises(InputError, match="nothing to resume"):
        run_training(recipe, [], tmp_path / "empty", device="cpu", resume=True)


_DDP_RUN = textwrap.dedent("""
    import hashlib, os, sys, torch
    from geo4d_model.train.trainer import run_training
    result = run_training(sys.argv[1], [], sys.argv[2], device="cpu")
    h = hashlib.sha256()
    for m in (result.models.network, result.models.pointmap_vae):
        for k, t in sorted(m.state_dict().items()):
            h.update(k.encode()); h.update(t.detach().contiguous().numpy().tobytes())
    rank = os.environ["RANK"]
    open(os.path.join(sys.argv[3], f"rank{rank}.sha256"), "w").write(h.hexdigest())
""")


def test_two_process_ddp_on_cpu(tmp_path):
    """torchrun, 2 ranks, Gloo: about 20 s (two processes importing torch and diffusers)."""
    from geo4d_model.loader import load_official

    phases = [{"name": "vae", "train": "pointmap_vae", "steps": 2, "sizes": [list(SIZE)]},
              {"name": "unet", "train": "unet", "steps": 2, "sizes": [list(SIZE)], "modalities": {"pointmap": 1.0}}]
    recipe = write_recipe(tmp_path, phases=phases, ema=None, checkpoint_every=2)
    out = tmp_path / "out"
    script = tmp_path / "ddp_run.py"
    script.write_text(_DDP_RUN)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           str(script), str(recipe), str(out), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    h0, h1 = (tmp_path / "rank0.sha256").read_text(), (tmp_path / "rank1.sha256").read_text()
    assert h0 == h1
    loaded = load_official(NETWORK, out / "final" / "model.ckpt", out / "final" / "vae.ckpt")
    assert state_hash(loaded.network, loaded.pointmap_vae) == h1  # rank 0 wrote what rank 1 holds (EMA off)
    metas = [ck.read_meta(p) for _, p in ck.list_checkpoints(out)]
    assert [m["step"] for m in metas] == [2, 4] and all(m["rank"] == 0 and m["world_size"] == 2 for m in metas)
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]  # one line per step: only rank 0 logs


def test_image_vae_decoder_phase_trains_only_the_first_stage_decoder(tmp_path):
    """The stand-in for a pretrained image VAE: the first-stage decoder (and post_quant_conv) learn to
    reconstruct the ray, moment and disparity maps; its encoder (the frames' latents), the U-Net and
    the point-map VAE stay as they were."""
    from geo4d_model.train.trainer import run_training

    phases = [{"name": "img", "train": "image_vae_decoder", "steps": 20, "lr": 2.0e-3, "sizes": [list(SIZE)]}]
    path = write_recipe(tmp_path, phases=phases, ema=None, checkpoint_every=100)
    before = load_recipe(path)
    from geo4d_model.train.trainer import build_models

    initial = build_models(before)
    result = run_training(path, [], tmp_path / "run", device="cpu")
    losses = [r["loss"] for r in metrics(tmp_path / "run")]
    assert {"l1_ray", "l1_moment", "l1_disparity"} <= set(metrics(tmp_path / "run")[-1])
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    new = dict(result.models.network.named_parameters())
    changed = {n for n, p in initial.network.named_parameters() if not torch.equal(p, new[n])}
    assert changed and all(n.startswith(("first_stage_model.vae.decoder.", "first_stage_model.vae.post_quant_conv."))
                           for n in changed), sorted(changed)[:5]
    assert all(torch.equal(p, q) for p, q in zip(initial.pointmap_vae.parameters(),
                                                  result.models.pointmap_vae.parameters()))


def test_sampler_timesteps_are_the_ones_inference_visits(tiny_models):
    from geo4d_model.sampler import DDIMSampler
    from geo4d_model.train.recipe import recipe_from_dict
    from geo4d_model.train.trainer import _timesteps

    net = tiny_models[0]
    base = {"network": str(NETWORK), "phases": [{"name": "u", "train": "unet", "steps": 1, "sizes": [list(SIZE)],
                                                 "modalities": {"pointmap": 1.0}}]}
    gen = torch.Generator().manual_seed(0)
    drawn = _timesteps(recipe_from_dict(base | {"timesteps": "sampler"}), net, 200, gen)
    assert set(drawn.tolist()) == set(DDIMSampler.from_network(net).timesteps) == {999, 799, 599, 399, 199}
    uniform = _timesteps(recipe_from_dict(base), net, 200, gen)
    assert len(set(uniform.tolist())) > 150 and 0 <= int(uniform.min()) and int(uniform.max()) < 1000


def test_image_vae_pretraining_stand_in_trains_the_whole_first_stage_then_restarts_the_pointmap_vae(tmp_path):
    """``image_vae`` (the stand-in pretraining of a random-initialised network's VAE): encoder and
    decoder learn to autoencode the frames and maps, with latents of unit RMS under the scale factor;
    no EMA; at the next phase the point-map VAE becomes the first stage's autoencoder (its confidence
    adaptor restarted), so the point maps are encoded by the same encoder as the frames."""
    from geo4d_model.train.trainer import build_models, run_training

    phases = [{"name": "pre", "train": "image_vae", "steps": 16, "lr": 2.0e-3, "sizes": [list(SIZE)]},
              {"name": "vae", "train": "pointmap_vae", "steps": 1, "sizes": [list(SIZE)]}]
    path = write_recipe(tmp_path, phases=phases, checkpoint_every=100)
    initial = build_models(load_recipe(path))
    result = run_training(path, [], tmp_path / "run", device="cpu")
    rows = [r for r in metrics(tmp_path / "run") if r["phase"] == "pre"]
    assert {"l1_frames", "l1_pointmap", "l1_ray", "l1_moment", "l1_disparity", "latent_rms"} <= set(rows[-1])
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], [r["loss"] for r in rows]
    assert abs(rows[-1]["latent_rms"] - 1) < abs(rows[0]["latent_rms"] - 1), [r["latent_rms"] for r in rows]
    new = dict(result.models.network.named_parameters())
    changed = {n for n, p in initial.network.named_parameters() if not torch.equal(p, new[n])}
    assert any(n.startswith("first_stage_model.vae.encoder.") for n in changed)
    assert all(n.startswith("first_stage_model.vae.") for n in changed), sorted(changed)[:5]
    first = result.models.network.first_stage_model.state_dict()
    pm = result.models.pointmap_vae.state_dict()
    # Stopped at the phase boundary and resumed: the same weights bit for bit (the restart happens once).
    run_training(path, [], tmp_path / "split", device="cpu", max_steps=16)
    resumed = run_training(path, [], tmp_path / "split", device="cpu", resume=True)
    assert state_hash(resumed.models.network, resumed.models.pointmap_vae) == state_hash(result.models.network,
                                                                                         result.models.pointmap_vae)
    frozen = [k for k in first if k.startswith(("vae.encoder.", "vae.quant_conv."))]
    assert frozen and all(torch.equal(pm[k], first[k]) for k in frozen)
    assert not torch.equal(pm["vae.encoder.conv_in.weight"], initial.pointmap_vae.state_dict()["vae.encoder.conv_in.weight"])


def test_image_vae_pretraining_only_first_and_only_from_random_weights(tmp_path, tiny_models):
    from geo4d_model.loader import save_official
    from geo4d_model.train.trainer import run_training

    late = [{"name": "vae", "train": "pointmap_vae", "steps": 1, "sizes": [list(SIZE)]},
            {"name": "pre", "train": "image_vae", "steps": 1, "sizes": [list(SIZE)]}]
    with pytest.raises(InputError, match=r"phases\[1\]: an 'image_vae' phase .* must come before every other phase"):
        load_recipe(write_recipe(tmp_path, phases=late))
    net, pm = tiny_models
    save_official(net, tmp_path / "model.ckpt", pm, tmp_path / "vae.ckpt")
    path = write_recipe(tmp_path, phases=late[::-1])
    with pytest.raises(InputError, match="cannot train .*model.ckpt.*its VAE is the pretrained one"):
        run_training(path, [], tmp_path / "run", device="cpu", init_checkpoint=tmp_path / "model.ckpt",
                     init_pointmap_vae=tmp_path / "vae.ckpt")
