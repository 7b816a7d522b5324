"""Training benchmark: the CPU acceptance run of ``geo4d train`` (docs/training.md) and, when a GPU is
present, the full model's training speed and memory.

1. **VAE decoders** — the tiny fixture network (configs/train/tiny-network.yaml), random-initialised
   (a synthetic stand-in), trained with configs/train/tiny-cpu.yaml's phases before the U-Net's on
   synthetic scenes (the stand-in VAE pretraining; the point-map VAE decoder): held-back validation
   loss, point-map L1, the rank correlation of σ with the actual error and the image VAE's L1, before
   and after, and the wall time.
2. **U-Net** — the rest of the recipe (point map only → several sizes → rays and disparity ramped in),
   resumed from part 1's run: held-back denoising loss before and after, and the whole inference
   pipeline (5-step DDIM sampling → fusion → metrics) on held-back synthetic videos with the initial
   weights, with the VAE-trained weights (U-Net still random) and with the trained checkpoint loaded
   from its official-format files (``final/model.ckpt``, ``final/vae.ckpt``) by ``load_official``.
3. **kill -9 and --resume** — ``geo4d train`` on a short recipe, once uninterrupted and once killed
   with SIGKILL right after its first checkpoint and resumed: final weights compared tensor by tensor
   (bitwise), and the loss lines after the resume point.
4. **GPU** (only where CUDA is available): the full-size architecture (random weights) at 320×512,
   16 frames, bf16 autocast and gradient checkpointing: U-Net and VAE-decoder steps/s and peak memory.

Writes benchmarks/results/training.{json,md}.

    python benchmarks/training.py [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
RECIPE = ROOT / "configs" / "train" / "tiny-cpu.yaml"
OFFICIAL_CONFIG = ROOT.parent / "shared" / "geo4d-reference" / "official_inference_geo4d.yaml"
#: Held-back videos of the pipeline comparison (seeds far from the training scenes).
EVAL_SEEDS = tuple(range(2_000_000, 2_000_006))
EVAL_FRAMES = 24


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: every phase 1/10 as long, 2 eval videos")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--render-only", action="store_true", help="rewrite training.md from training.json (no run)")
    return ap.parse_args()


def _recipe_file(directory: Path, quick: bool, **changes) -> Path:
    """tiny-cpu.yaml (network path made absolute), optionally shortened, with ``changes`` applied."""
    data = yaml.safe_load(RECIPE.read_text())
    data["network"] = str(RECIPE.parent / data["network"])
    if quick:
        for p in data["phases"]:
            p["steps"] = max(2, p["steps"] // 10)
            if p.get("ramp_steps"):
                p["ramp_steps"] = max(1, p["ramp_steps"] // 10)
        data["validation"]["every"] = 0
        data["checkpoint_every"] = 10
    data.update(changes)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ("recipe-quick.yaml" if quick else "recipe.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _pipeline(models, context, seeds) -> dict:
    from geo4d_model.train.validate import PipelineValidation

    return PipelineValidation(seeds=seeds, n_frames=EVAL_FRAMES, size=(32, 48))(models, context, -1)


def _initial(recipe_path: Path, seeds) -> dict:
    """Validation of the random-initialised models (what step 0 of the run starts from)."""
    from geo4d_model.train.recipe import load_recipe
    from geo4d_model.train.trainer import build_models, resolve_context, validation_losses

    recipe = load_recipe(recipe_path)
    models = build_models(recipe, device="cpu")
    context, _ = resolve_context(models.network, models.clip_state_dict, seed=recipe.seed)
    return validation_losses(models, context, recipe) | _pipeline(models, context, seeds)


def _trained(run: Path, seeds) -> dict:
    """The pipeline with the final official-format files, as ``geo4d reconstruct`` would load them."""
    import types

    from geo4d_model.context import constant_context
    from geo4d_model.loader import load_official

    final = run / "final"
    loaded = load_official(final / "config.yaml", final / "model.ckpt", final / "vae.ckpt")
    context = constant_context(loaded, cache=final / "context-cache")
    models = types.SimpleNamespace(network=loaded.network, pointmap_vae=loaded.pointmap_vae)
    return _pipeline(models, context, seeds)


def _validations(run: Path) -> list[dict]:
    from pipeline.training import read_metrics

    return [r for r in read_metrics(run) if r.get("kind") == "validation"]


def acceptance(work: Path, quick: bool) -> dict:
    """Parts 1 and 2: one run of the recipe, stopped after the VAE phase and resumed to the end."""
    from geo4d_model.train.recipe import load_recipe
    from geo4d_model.train.trainer import run_training
    from pipeline.training import pipeline_validator

    recipe_path = _recipe_file(work, quick)
    recipe = load_recipe(recipe_path)
    seeds = EVAL_SEEDS[:2] if quick else EVAL_SEEDS
    run = work / "run"
    t = time.perf_counter()
    before = _initial(recipe_path, seeds)
    t_initial = time.perf_counter() - t
    vae_steps = recipe.phase_start(next(i for i, p in enumerate(recipe.phases) if p.train == "unet"))
    validators = (pipeline_validator(recipe),)
    t = time.perf_counter()
    run_training(recipe_path, [], run, max_steps=vae_steps, device="cpu", validators=validators)
    t_vae = time.perf_counter() - t
    after_vae = _validations(run)[-1] | _pipeline_of_run(run, seeds)
    t = time.perf_counter()
    run_training(recipe_path, [], run, resume=True, device="cpu", validators=validators)
    t_unet = time.perf_counter() - t
    after = _validations(run)[-1] | _trained(run, seeds)
    return {"recipe": str(RECIPE.relative_to(ROOT)), "quick": quick, "vae_steps": vae_steps,
            "unet_steps": recipe.total_steps - vae_steps, "eval_videos": len(seeds), "eval_frames": EVAL_FRAMES,
            "seconds": {"initial_validation": t_initial, "vae_phase_with_validation": t_vae,
                        "unet_phases_with_validation": t_unet},
            "initial": before, "after_vae": after_vae, "trained": after,
            "validations": _validations(run)}


def _pipeline_of_run(run: Path, seeds) -> dict:
    """The pipeline with the weights of ``run/final`` (after the VAE phase: U-Net still as initialised)."""
    return {f"vae_only_{k}": v for k, v in _trained(run, seeds).items()}


# --- part 3: kill -9 and resume ---------------------------------------------------------------------
def _train_cmd(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "geo4d_cli", "train", str(recipe), "--out", str(out), "--device", "cpu",
            "--no-pipeline-validation", *extra]


def _kill_after_first_checkpoint(cmd: list[str], out: Path, timeout: float = 600) -> int:
    """Start ``cmd``; SIGKILL it as soon as its first checkpoint is complete; return that step."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "checkpoints" / "latest.json"
    t0 = time.monotonic()
    while not latest.is_file():
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            raise RuntimeError(f"the run ended (rc {proc.returncode}) before writing a checkpoint")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return int(json.loads(latest.read_text())["step"])


def _state(final: Path) -> dict:
    import torch

    return {name: torch.load(final / name, map_location="cpu", weights_only=True)["state_dict"]
            for name in ("model.ckpt", "vae.ckpt")}


def kill_resume(work: Path) -> dict:
    """Part 3 through the command line."""
    import torch

    recipe = _recipe_file(work, quick=True, checkpoint_every=5, clip_frames=8)
    a, b = work / "uninterrupted", work / "killed"
    t = time.perf_counter()
    subprocess.run(_train_cmd(recipe, a), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    t_run = time.perf_counter() - t
    killed_at = _kill_after_first_checkpoint(_train_cmd(recipe, b), b)
    subprocess.run(_train_cmd(recipe, b, "--resume"), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    sa, sb = _state(a / "final"), _state(b / "final")
    tensors = sum(len(s) for s in sa.values())
    equal = sum(torch.equal(sa[f][k], sb[f][k]) for f in sa for k in sa[f] if k in sb[f])
    from pipeline.training import read_metrics

    la = [r["loss"] for r in read_metrics(a) if r.get("kind") == "train" and r["step"] > killed_at]
    lb = [r["loss"] for r in read_metrics(b) if r.get("kind") == "train" and r["step"] > killed_at]
    return {"killed_after_checkpoint_step": killed_at, "tensors": tensors, "bitwise_equal_tensors": int(equal),
            "identical": equal == tensors, "loss_lines_after_resume": len(lb), "losses_equal": la == lb,
            "uninterrupted_seconds": t_run}


# --- part 4: GPU -------------------------------------------------------------------------------------
def gpu_figures(steps: int = 5) -> dict:
    """U-Net and VAE-decoder training steps of the full architecture at 320×512 on CUDA."""
    import torch

    if not torch.cuda.is_available():
        return {"run": False, "why": "no CUDA device on this machine"}
    from geo4d_model.train.recipe import recipe_from_dict
    from geo4d_model.train.trainer import Trainer, build_models, resolve_context

    config = OFFICIAL_CONFIG if OFFICIAL_CONFIG.is_file() else None
    if config is None:
        return {"run": False, "why": f"{OFFICIAL_CONFIG} (the full-size config) is absent"}
    rows = {}
    for module in ("unet", "pointmap_vae"):
        phase = {"name": module, "train": module, "steps": steps + 2, "sizes": [[320, 512]]}
        if module == "unet":
            phase["modalities"] = {"pointmap": 1.0, "ray": 1.0, "moment": 1.0, "disparity": 1.0}
        recipe = recipe_from_dict({"network": str(config), "clip_frames": 16, "precision": "bf16",
                                   "gradient_checkpointing": True, "ema": None, "checkpoint_every": 10_000,
                                   "validation": {"every": 0}, "phases": [phase]})
        models = build_models(recipe, device="cuda")
        context, _ = resolve_context(models.network, {}, seed=0)
        with tempfile.TemporaryDirectory() as d:
            trainer = Trainer(recipe, _OneClip((320, 512)), d, models, context)
            rows[module] = _time_steps(trainer, steps)
        del models, trainer
        torch.cuda.empty_cache()
    return {"run": True, "device": torch.cuda.get_device_name(), "size": [320, 512], "frames": 16,
            "precision": "bf16 autocast", "gradient_checkpointing": True, **rows}


def _time_steps(trainer, steps: int) -> dict:
    import torch

    trainer._enter_phase(0)
    trainer._train_step(0)  # warm-up (allocations, cuDNN autotuning)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for k in range(1, steps + 1):
        trainer._train_step(k)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    return {"steps_per_s": steps / dt, "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}


class _OneClip:
    """A source returning one pre-rendered synthetic clip for every index (GPU timing without the CPU
    renderer in the loop)."""

    name = "synthetic (one pre-rendered clip)"
    fs = 24

    def __init__(self, size: tuple[int, int], n_frames: int = 16):
        from geo4d_model.train.data import SyntheticClips

        self.sample = SyntheticClips(seed=0, scene_frames=n_frames).clip(0, size, n_frames)

    def clip(self, index: int, size: tuple[int, int], n_frames: int) -> dict:
        return self.sample


# --- report -----------------------------------------------------------------------------------------
def _f(v, spec: str = ".4g") -> str:
    return "—" if v is None else format(v, spec)


def _ratio(a, b) -> str:
    return "—" if not a or not b else f"{a / b:.2f}×"


def markdown(r: dict) -> str:
    a = r["acceptance"]
    i, v, t = a["initial"], a["after_vae"], a["trained"]
    s = a["seconds"]
    lines = [
        "# Training (`benchmarks/training.py`)", "",
        f"Machine: {r['machine']}. Recipe `{a['recipe']}`{' (--quick: every phase 1/10)' if a['quick'] else ''}: the tiny "
        "fixture network, random-initialised (a SYNTHETIC stand-in, not Geo4D's weights), trained on procedural "
        "synthetic scenes; every figure below is measured on held-back scenes (seeds disjoint from training).", "",
        f"## 1. VAE decoders ({a['vae_steps']} steps, {s['vae_phase_with_validation']:.0f} s with validation)", "",
        "Because the tiny network has no pretrained VAE, a stand-in for the pretraining the real model's VAE "
        "has first trains the whole first-stage VAE (encoder included) to autoencode the frames and maps with "
        "unit-RMS latents; then the paper's first stage: the point-map VAE, restarted from it, fine-tunes its "
        "decoder and confidence branch with the encoder frozen.", "",
        "| held-back metric | initial | trained | improvement |", "|---|---|---|---|",
        f"| uncertainty-weighted loss | {_f(i['vae_loss'])} | {_f(v['vae_loss'])} | "
        f"{_f(i['vae_loss'] - v['vae_loss'], '.3g')} lower |",
        f"| point-map L1 (normalised units, valid pixels) | {_f(i['vae_l1'])} | {_f(v['vae_l1'])} | "
        f"{_ratio(i['vae_l1'], v['vae_l1'])} |",
        f"| Spearman ρ(σ, actual error) | {_f(i['vae_sigma_spearman'], '.3f')} | {_f(v['vae_sigma_spearman'], '.3f')} | |",
    ]
    for m in ("ray", "moment", "disparity"):
        k = f"image_vae_l1_{m}"
        if k in i and k in v:
            lines.append(f"| image VAE L1, {m} maps | {_f(i[k])} | {_f(v[k])} | {_ratio(i[k], v[k])} |")
    lines += [
        "",
        "The loss is a log-likelihood (it can be negative), so its improvement is a difference, not a ratio.", "",
        f"## 2. U-Net ({a['unet_steps']} steps, {s['unet_phases_with_validation']:.0f} s with validation)", "",
        "| held-back metric | initial | VAE trained, U-Net initial | trained |", "|---|---|---|---|",
        f"| denoising v-loss (all modalities) | {_f(i['denoise_loss'])} | {_f(v['denoise_loss'])} | {_f(t['denoise_loss'])} |",
    ]
    for m in ("pointmap", "ray", "moment", "disparity"):
        k = f"denoise_{m}"
        if k in t:
            lines.append(f"| … {m} | {_f(i.get(k))} | {_f(v.get(k))} | {_f(t.get(k))} |")
    lines += ["", f"Whole pipeline on {a['eval_videos']} held-back synthetic videos of {a['eval_frames']} frames at 32×48 "
              "(16-frame windows, 5-step DDIM, fusion, metrics against the exact ground truth; the trained model "
              "loaded from its official-format `final/` files):", "",
              "| metric | initial | VAE trained, U-Net initial | trained |", "|---|---|---|---|"]
    for k, label in (("abs_rel", "Abs Rel ↓"), ("delta_1_25", "δ<1.25 ↑"), ("ate", "ATE ↓"), ("ate_rel", "ATE / path ↓"),
                     ("rpe_rot", "RPE-R ° ↓"), ("failed", "videos the fusion could not run")):
        key = f"pipeline_{k}"
        lines.append(f"| {label} | {_f(i.get(key))} | {_f(v.get('vae_only_' + key))} | {_f(t.get(key))} |")
    k = r["kill_resume"]
    lines += ["", "## 3. kill -9 and --resume", "",
              f"`geo4d train` on a short recipe, killed with SIGKILL right after its checkpoint at step "
              f"{k['killed_after_checkpoint_step']}, then `--resume`: {k['bitwise_equal_tensors']}/{k['tensors']} "
              f"tensors of the final model.ckpt + vae.ckpt bitwise equal to an uninterrupted run's "
              f"({'identical' if k['identical'] else 'DIFFERENT'}); the {k['loss_lines_after_resume']} loss lines "
              f"after the resume point {'equal' if k['losses_equal'] else 'DIFFER from'} the uninterrupted run's.", "",
              "## 4. GPU", ""]
    g = r["gpu"]
    if not g.get("run"):
        lines.append(f"Not run: {g['why']}.")
    else:
        lines += [f"{g['device']}, the full-size architecture (random weights), {g['frames']} frames at "
                  f"{g['size'][0]}×{g['size'][1]}, {g['precision']}, gradient checkpointing:", "",
                  "| trained module | steps/s | peak memory (GiB) |", "|---|---|---|",
                  f"| U-Net | {g['unet']['steps_per_s']:.2f} | {g['unet']['peak_memory_gib']:.1f} |",
                  f"| point-map VAE decoder | {g['pointmap_vae']['steps_per_s']:.2f} | "
                  f"{g['pointmap_vae']['peak_memory_gib']:.1f} |"]
    return "\n".join(lines + _targets(r)) + "\n"


def _targets(r: dict) -> list[str]:
    """The issue's acceptance lines, ticked from the figures above."""
    a, k = r["acceptance"], r["kill_resume"]
    i, v, t = a["initial"], a["after_vae"], a["trained"]
    pi, pt = (lambda key: i.get(f"pipeline_{key}")), (lambda key: t.get(f"pipeline_{key}"))
    rows = [
        (v["vae_l1"] * 2 <= i["vae_l1"] and v["vae_loss"] < i["vae_loss"],
         f"VAE decoder: validation loss lower and point-map L1 ≥ 2× lower ({i['vae_l1']:.3g} → {v['vae_l1']:.3g}); "
         f"σ–error rank correlation {v['vae_sigma_spearman']:.3f}"),
        (t["denoise_loss"] < v["denoise_loss"],
         f"U-Net: denoising validation loss lower ({v['denoise_loss']:.3g} → {t['denoise_loss']:.3g})"),
        (pt("abs_rel") < pi("abs_rel") and pt("ate") < pi("ate") and pt("failed") <= pi("failed"),
         f"fused depth and poses of held-back videos better with the trained checkpoint than with the untrained one: "
         f"Abs Rel {pi('abs_rel'):.4f} → {pt('abs_rel'):.4f}, ATE {pi('ate'):.4f} → {pt('ate'):.4f}, "
         f"RPE-R {pi('rpe_rot'):.1f}° → {pt('rpe_rot'):.1f}°, videos the fusion could not run {pi('failed'):.0f} → "
         f"{pt('failed'):.0f} (budget: {a['vae_steps'] + a['unet_steps']} CPU steps)"),
        (k["identical"] and k["losses_equal"], "kill -9 and --resume: identical final weights and loss curve"),
    ]
    return ["", "## Targets", ""] + [f"- [{'x' if ok else ' '}] {text}" for ok, text in rows] + _shares(a)


def _shares(a: dict) -> list[str]:
    """Which stage the pipeline's gains come from: the VAE stages (U-Net still random) vs the U-Net's training."""
    i, v, t = a["initial"], a["after_vae"], a["trained"]
    pi, pv, pt = (lambda k: i.get(f"pipeline_{k}")), (lambda k: v.get(f"vae_only_pipeline_{k}")), \
        (lambda k: t.get(f"pipeline_{k}"))
    if None in (pv("abs_rel"), pt("abs_rel")):
        return []
    return ["", f"Where the gains come from: the VAE stages alone (U-Net still random) take the fused depth's Abs Rel "
            f"{pi('abs_rel'):.4f} → {pv('abs_rel'):.4f} (the trained decoders turn any latent into a plausible "
            f"map); the U-Net's training then {pv('abs_rel'):.4f} → {pt('abs_rel'):.4f}, ATE {pv('ate'):.4f} → "
            f"{pt('ate'):.4f}, RPE-R {pv('rpe_rot'):.1f}° → {pt('rpe_rot'):.1f}°."]


def main() -> int:
    args = _args()
    if args.render_only:
        result = json.loads((RESULTS / "training.json").read_text())
        (RESULTS / "training.md").write_text(markdown(result))
        print(markdown(result))
        return 0
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
                  "acceptance": acceptance(work / "acceptance", args.quick),
                  "kill_resume": kill_resume(work / "kill"),
                  "gpu": gpu_figures()}
    text = markdown(result)
    print(text)
    if not args.no_write and not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "training.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
        (RESULTS / "training.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
