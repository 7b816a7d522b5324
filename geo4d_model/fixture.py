"""Parity fixtures: evaluate every stage whose inputs a cases file holds and compare with the official
outputs stored beside them (``geo4d check-fixture``).

A stage is ``(name, required input names, fn)``; ``fn(ctx, cases) -> {output name: tensor}``. Stages of
other modules register themselves through :func:`register_stage` (see :data:`EXTRA_STAGE_MODULES`).
Tolerance per output: ``max |ours − official| ≤ rtol · max |official|`` (rtol 1e-4), integer outputs exact.

Example:
    >>> ctx = FixtureContext("config.yaml", "model.ckpt", "vae.ckpt")        # doctest: +SKIP
    >>> report = run_fixture(load_cases("cases.safetensors"), ctx)          # doctest: +SKIP
    >>> report.ok, report.table()                                            # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from geo4d.errors import InputError

__all__ = [
    "Stage", "STAGES", "register_stage", "FixtureContext", "StageSkipped", "OutputRow", "FixtureReport",
    "load_cases", "run_fixture", "expected_outputs", "load_extra_stages", "DEFAULT_RTOL", "EXTRA_STAGE_MODULES",
]

DEFAULT_RTOL = 1e-4


@dataclass(frozen=True)
class Stage:
    """One fixture stage: runs when every name in ``inputs`` is in the cases."""

    name: str
    inputs: tuple[str, ...]
    fn: Callable[[FixtureContext, dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    doc: str = ""


#: Registered stages by name, in registration order.
STAGES: dict[str, Stage] = {}


def register_stage(name: str, inputs: tuple[str, ...] | list[str], doc: str = ""):
    """Decorator registering ``fn(ctx, cases) -> dict`` as stage ``name`` (re-registering replaces)."""

    def deco(fn):
        STAGES[name] = Stage(name, tuple(inputs), fn, doc or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


class StageSkipped(Exception):
    """Raised by a stage that cannot run with what was given (e.g. no point-map VAE); names its outputs."""

    def __init__(self, reason: str, outputs: tuple[str, ...] = ()):
        super().__init__(reason)
        self.reason, self.outputs = reason, tuple(outputs)


class FixtureContext:
    """Lazily loaded model files for the stages (``network``/``pointmap_vae`` load on first use).

    Attributes:
        metadata: the cases file's safetensors metadata (settings such as ``fs``, ``steps``), may be empty.
        skipped: ``{output name: reason}`` filled by stages that produce only part of their outputs.
    """

    def __init__(self, config: str | Path | None, checkpoint: str | Path | None, pointmap_vae: str | Path | None = None,
                 metadata: dict[str, str] | None = None):
        self.config_path = config
        self.checkpoint_path = checkpoint
        self.pointmap_vae_path = pointmap_vae
        self.metadata = dict(metadata or {})
        self.skipped: dict[str, str] = {}

    @cached_property
    def loaded(self):
        from geo4d_model.loader import load_official

        if self.config_path is None or self.checkpoint_path is None:
            raise StageSkipped("needs --config and --checkpoint")
        return load_official(self.config_path, self.checkpoint_path, self.pointmap_vae_path)

    @property
    def network(self):
        return self.loaded.network

    @property
    def pointmap_vae(self):
        if self.pointmap_vae_path is None:
            raise StageSkipped("needs --pointmap-vae")
        return self.loaded.pointmap_vae

    def setting(self, names: tuple[str, ...], kind: type, default):
        """A sampling setting from the cases' metadata (first of ``names`` present), else ``default``."""
        for n in names:
            if n in self.metadata:
                try:
                    return kind(json.loads(self.metadata[n]) if kind is not str else self.metadata[n])
                except (ValueError, TypeError):
                    return kind(self.metadata[n])
        return default


def load_cases(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a ``cases.safetensors`` file."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: cases file not found")
    try:
        with safe_open(str(p), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{p}: not a readable safetensors file: {exc}") from None


@dataclass
class OutputRow:
    """One line of the report: an output, its status and difference to the official value."""

    name: str
    status: str  # "ok", "FAIL", "new" (no reference), "skipped", "NOT PRODUCED", "ERROR"
    max_abs_diff: float | None = None
    tolerance: float | None = None
    scale: float | None = None
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("FAIL", "NOT PRODUCED", "ERROR")


@dataclass
class FixtureReport:
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: list[OutputRow] = field(default_factory=list)
    stages_run: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(r.failed for r in self.rows)

    def table(self) -> str:
        lines = [f"{'output':<28} {'status':<13} {'max|diff|':>11} {'tolerance':>11} {'max|ref|':>10}  note"]
        for r in self.rows:
            f = (lambda v: f"{v:11.3e}" if v is not None else f"{'-':>11}")
            scale = f"{r.scale:10.3g}" if r.scale is not None else f"{'-':>10}"
            lines.append(f"{r.name:<28} {r.status:<13} {f(r.max_abs_diff)} {f(r.tolerance)} {scale}  {r.note}".rstrip())
        return "\n".join(lines)


def compare(name: str, ours: torch.Tensor, ref: torch.Tensor, rtol: float = DEFAULT_RTOL) -> OutputRow:
    """Compare one output with its reference (shapes must agree; integers exactly)."""
    if tuple(ours.shape) != tuple(ref.shape):
        return OutputRow(name, "FAIL", note=f"shape {list(ours.shape)} vs official {list(ref.shape)}")
    if not ref.is_floating_point():
        same = bool(torch.equal(ours.to(ref.dtype), ref))
        diff = float((ours.double() - ref.double()).abs().max()) if ref.numel() else 0.0
        return OutputRow(name, "ok" if same else "FAIL", diff, 0.0, float(ref.abs().max()) if ref.numel() else 0.0,
                         "exact")
    ours_d, ref_d = ours.double(), ref.double()
    scale = float(ref_d.abs().max()) if ref.numel() else 0.0
    tol = rtol * scale if scale > 0 else rtol
    if not torch.isfinite(ours_d).all():
        return OutputRow(name, "FAIL", float("nan"), tol, scale, "non-finite values")
    diff = float((ours_d - ref_d).abs().max()) if ref.numel() else 0.0
    return OutputRow(name, "ok" if diff <= tol else "FAIL", diff, tol, scale)


def expected_outputs(cases_path: str | Path | None) -> list[str]:
    """Output names listed in ``outputs.json`` beside the cases file (empty when absent)."""
    if cases_path is None:
        return []
    p = Path(cases_path).with_name("outputs.json")
    if not p.is_file():
        return []
    try:
        names = json.loads(p.read_text())
    except (ValueError, OSError):
        return []
    return [str(n) for n in names] if isinstance(names, list) else []


def run_fixture(cases: dict[str, torch.Tensor], ctx: FixtureContext, rtol: float = DEFAULT_RTOL,
                expected: list[str] | tuple[str, ...] = (), only: list[str] | None = None) -> FixtureReport:
    """Run every registered stage whose inputs are all in ``cases`` and compare each output that the cases
    also hold. Names in ``expected`` that no stage produced are reported ``NOT PRODUCED`` (a failure);
    with ``only`` (a subset of stage names) ``expected`` is not checked."""
    load_extra_stages()
    report = FixtureReport()
    rows: dict[str, OutputRow] = {}
    with torch.no_grad():
        for stage in STAGES.values():
            if only and stage.name not in only:
                continue
            if not all(n in cases for n in stage.inputs):
                continue
            try:
                produced = stage.fn(ctx, cases)
            except StageSkipped as exc:
                for n in exc.outputs or (f"<stage {stage.name}>",):
                    rows.setdefault(n, OutputRow(n, "skipped", note=f"stage {stage.name}: {exc.reason}"))
                continue
            except InputError:
                raise
            except Exception as exc:  # a stage crash is a failure of that stage, reported, not fatal
                rows[f"<stage {stage.name}>"] = OutputRow(f"<stage {stage.name}>", "ERROR",
                                                          note=f"{type(exc).__name__}: {exc}")
                continue
            report.stages_run.append(stage.name)
            for name, value in produced.items():
                value = value.detach().cpu()
                if name in cases and value.shape != cases[name].shape and value.numel() == cases[name].numel():
                    value = value.reshape(cases[name].shape)  # same data, official layout (e.g. samples axis)
                report.outputs[name] = value
                rows[name] = compare(name, value, cases[name], rtol) if name in cases else OutputRow(name, "new", note="no reference in cases")
    for name, reason in ctx.skipped.items():
        rows.setdefault(name, OutputRow(name, "skipped", note=reason))
    for name in expected if not only else ():
        if name not in rows:
            rows[name] = OutputRow(name, "NOT PRODUCED", note="listed in outputs.json; no stage produced it")
        elif rows[name].status == "skipped":
            rows[name].status = "NOT PRODUCED"
    report.rows = sorted(rows.values(), key=lambda r: r.name)
    return report


# --- stages of this module ------------------------------------------------------------------------
def _long(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).long()


@register_stage("resampler", ["resampler.in"])
def _resampler(ctx, c):
    """Resampler on a 3-D token batch."""
    return {"resampler.out": ctx.network.image_proj_model(c["resampler.in"])}


@register_stage("resampler.bt", ["resampler.in_bt"])
def _resampler_bt(ctx, c):
    """Resampler, 3-D input with a batch of several images."""
    return {"resampler.out_bt": ctx.network.image_proj_model(c["resampler.in_bt"])}


@register_stage("resampler.4d", ["resampler.in_4d"])
def _resampler_4d(ctx, c):
    """Resampler, per-frame 4-D branch."""
    return {"resampler.out_4d": ctx.network.image_proj_model(c["resampler.in_4d"])}


def _unet_stage(prefix: str):
    def fn(ctx, c):
        net = ctx.network
        out = {f"{prefix}.out": net.unet(c[f"{prefix}.x"], _long(c[f"{prefix}.t"]), c[f"{prefix}.context"],
                                         _long(c[f"{prefix}.fs"]))}
        return out

    return fn


def _context_stage(prefix: str):
    def fn(ctx, c):
        return {f"{prefix}.context": ctx.network.context(c[f"{prefix}.text_emb"], c[f"{prefix}.image_tokens"])}

    return fn


for _p in ("unet", "unet2"):
    register_stage(_p, [f"{_p}.x", f"{_p}.t", f"{_p}.context", f"{_p}.fs"], doc="U-Net forward")(_unet_stage(_p))
    register_stage(f"{_p}.context", [f"{_p}.text_emb", f"{_p}.image_tokens"],
                   doc="context = [text; Resampler(image tokens)]")(_context_stage(_p))


@register_stage("apply", ["unet.x_noisy", "unet.c_concat", "unet.t", "unet.context", "unet.fs"])
def _apply(ctx, c):
    """Hybrid wrapper: U-Net on [noisy latents; video latents]."""
    return {"apply.out": ctx.network.apply_model(c["unet.x_noisy"], c["unet.c_concat"], _long(c["unet.t"]),
                                                 c["unet.context"], _long(c["unet.fs"]))}


def _frames_first(x: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """(N, C, H, W) passes; (b, C, t, H, W) → (b·t, C, H, W) with the inverse for outputs."""
    if x.ndim == 4:
        return x, lambda y: y
    if x.ndim == 5:
        b, C, t = x.shape[:3]
        flat = x.transpose(1, 2).reshape(b * t, C, *x.shape[3:])
        return flat, lambda y: y.view(b, t, *y.shape[1:]).transpose(1, 2)
    raise ValueError(f"expected (N, C, H, W) or (b, C, t, H, W), got {tuple(x.shape)}")


@register_stage("vae.encode", ["vae.encode.in"])
def _vae_encode(ctx, c):
    """First-stage encoding (scaled): posterior mean (``mode``) and, given noise, the posterior sample."""
    net = ctx.network
    frames, back = _frames_first(c["vae.encode.in"])
    mode = back(net.encode_frames(frames))
    out = {"vae.encode.mode": mode}
    if "vae.encode.noise" in c:
        noise, _ = _frames_first(c["vae.encode.noise"])
        out["vae.encode.out"] = back(net.encode_frames(frames, noise))
    else:
        out["vae.encode.out"] = mode
    return out


@register_stage("vae.decode", ["vae.decode.in"])
def _vae_decode(ctx, c):
    """First-stage decoding of scaled latents, per frame."""
    z, back = _frames_first(c["vae.decode.in"])
    return {"vae.decode.out": back(ctx.network.decode_first_stage(z))}


@register_stage("pmvae.decode", ["pmvae.decode.in"])
def _pmvae_decode(ctx, c):
    """Point-map VAE decoding with the confidence branch: xyz + raw confidence."""
    z, back = _frames_first(c["pmvae.decode.in"])
    try:
        pm = ctx.pointmap_vae
    except StageSkipped as exc:
        raise StageSkipped(exc.reason, ("pmvae.decode.out",)) from None
    return {"pmvae.decode.out": back(ctx.network.decode_pointmap(pm, z))}


@register_stage("ddim", ["ddim.video", "ddim.text_emb", "ddim.image_tokens", "ddim.noise"])
def _ddim(ctx, c):
    """One full window: conditioning, DDIM sampling (intermediates), decoding."""
    from geo4d_model.sampler import DDIMSampler, SamplerSettings

    net = ctx.network
    video = c["ddim.video"]  # (1, 3, V, H, W)
    frames, back = _frames_first(video)
    enc_noise = c.get("ddim.enc_noise")
    cond = back(net.encode_frames(frames, enc_noise))
    context = net.context(c["ddim.text_emb"], c["ddim.image_tokens"])
    steps = len(c["ddim.timesteps"]) if "ddim.timesteps" in c else 5
    settings = SamplerSettings(
        steps=ctx.setting(("ddim_steps", "steps"), int, steps),
        eta=ctx.setting(("ddim_eta", "eta"), float, 0.0),
        guidance_scale=ctx.setting(("unconditional_guidance_scale", "guidance_scale", "cfg_scale"), float, 1.0),
        guidance_rescale=ctx.setting(("guidance_rescale",), float, 0.7),
    )
    if settings.guidance_scale != 1.0:
        raise StageSkipped("guidance scale != 1 needs an unconditional context, which the cases do not give")
    fs = torch.tensor([ctx.setting(("fs", "frame_stride"), int, 24)])
    sampler = DDIMSampler.from_network(net, settings)
    out: dict[str, torch.Tensor] = {"ddim.cond_latents": cond, "ddim.context": context}

    def record(i, t, d):
        for k, v in d.items():
            out[f"ddim.{k}.{i}"] = v.clone()

    latents = sampler.sample(lambda x, t: net.apply_model(x, cond, t, context, fs), c["ddim.noise"], callback=record)
    out["ddim.latents"] = latents
    table = sampler.schedule_table()
    out["ddim.timesteps"] = table["timesteps"]
    for k in ("a", "a_prev", "scale", "scale_prev", "timesteps"):
        out[f"ddim.sched.{k}"] = table[k]
    try:
        pm = ctx.pointmap_vae
    except StageSkipped as exc:
        ctx.skipped["ddim.decoded"] = f"stage ddim: {exc.reason}"
        return out
    out["ddim.decoded"] = net.decode_window(latents, pm)
    return out


# --- stages registered by other modules -----------------------------------------------------------
# Other modules add their stages here. Each module listed below is imported and, if it defines
# ``register_fixture_stages(register_stage)``, that function is called once. Stages:
#   geo4d_model.postprocess → post.*, post_ddim.*      geo4d_model.clip → clip.*
EXTRA_STAGE_MODULES: tuple[str, ...] = (
    "geo4d_model.postprocess",
    "geo4d_model.clip",
)
_extra_loaded: set[str] = set()


def load_extra_stages() -> None:
    """Import :data:`EXTRA_STAGE_MODULES` and let them register their stages (once)."""
    for name in EXTRA_STAGE_MODULES:
        if name in _extra_loaded:
            continue
        _extra_loaded.add(name)
        module = importlib.import_module(name)
        hook = getattr(module, "register_fixture_stages", None)
        if callable(hook):
            hook(register_stage)
