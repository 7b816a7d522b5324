"""``geo4d check-fixture``: run the network on a parity fixture and compare with the official outputs.
``geo4d context``: compute a checkpoint's constant cross-attention context once, for checkpoints without CLIP."""

from __future__ import annotations

import argparse
from pathlib import Path

from geo4d.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-fixture",
        help="verify a checkpoint conversion against a parity fixture (official outputs)",
        description="Evaluate every stage whose inputs appear in CASES (resampler.*, unet.*, unet2.*, apply.*, "
                    "vae.encode.*, vae.decode.*, pmvae.decode.*, ddim.*, and stages registered by other modules), "
                    "write the outputs to OUT under the fixture's names, and print max |ours − official| per "
                    "output against the tolerance rtol·max|official|. Exit status 1 when any output is out of "
                    "tolerance or an output listed in outputs.json (beside CASES) was not produced.",
    )
    p.add_argument("--config", required=True, help="official-schema yaml (inference_geo4d.yaml or a fixture's config.yaml)")
    p.add_argument("--checkpoint", required=True, help="model.ckpt (official key names)")
    p.add_argument("--pointmap-vae", default=None, help="vae.ckpt (point-map VAE); needed by pmvae.* and ddim.decoded")
    p.add_argument("--cases", required=True, help="cases.safetensors (inputs and official outputs)")
    p.add_argument("--out", required=True, help="output .safetensors for the computed outputs")
    p.add_argument("--rtol", type=float, default=1e-4, help="tolerance relative to max|official| (default 1e-4)")
    p.add_argument("--stage", action="append", default=None, help="run only this stage (repeatable)")
    p.set_defaults(func=cmd_check_fixture)
    _register_context(sub)


def _register_context(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "context",
        help="compute a checkpoint's constant cross-attention context into a file (for checkpoints without CLIP)",
        description="Load MODEL_CKPT (its CLIP towers included; no point-map VAE needed), compute the constant "
                    "cross-attention context [text(fixed prompt); resampler(CLIP(zero image))] of shape (1, L, C) "
                    "in float32 on the CPU, and write it to FILE.safetensors (tensor 'context', the "
                    "checkpoint's fingerprint in the metadata). Pass that file as --context to geo4d "
                    "reconstruct/archive to run a copy of the checkpoint that lacks the CLIP weights.",
    )
    p.add_argument("--config", required=True, metavar="CONFIG",
                   help="official-schema yaml (inference_geo4d.yaml or a fixture's config.yaml)")
    p.add_argument("--checkpoint", required=True, metavar="MODEL_CKPT",
                   help="model.ckpt holding the CLIP weights (cond_stage_model.*, embedder.*)")
    p.add_argument("--out", required=True, metavar="FILE.safetensors",
                   help="the context file to write (parent directories are created; an existing file is replaced)")
    p.set_defaults(func=cmd_context)


def cmd_context(args: argparse.Namespace) -> int:
    from geo4d_model.context import compute_context, has_clip_weights, write_context_file
    from geo4d_model.loader import load_official

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise InputError(f"--out {out}: expected a .safetensors path")
    if out.is_dir():
        raise InputError(f"--out {out}: is a directory")
    loaded = load_official(args.config, args.checkpoint)
    if not has_clip_weights(loaded.clip_state_dict):
        raise InputError(f"{args.checkpoint}: has no CLIP weights (cond_stage_model.model.*, embedder.model.visual.*): "
                         "geo4d context needs a checkpoint that holds both CLIP towers")
    ctx = compute_context(loaded)
    write_context_file(out, ctx, loaded.fingerprint)
    print(f"context {tuple(ctx.shape)} of {args.checkpoint} → {out}")
    return 0


def cmd_check_fixture(args: argparse.Namespace) -> int:
    import time

    import torch
    from safetensors.torch import save_file

    from geo4d_model.fixture import STAGES, FixtureContext, expected_outputs, load_cases, load_extra_stages, run_fixture

    if not args.rtol > 0:
        raise InputError(f"--rtol must be > 0, got {args.rtol}")
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise InputError(f"--out {out}: expected a .safetensors path")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: directory {out.parent} does not exist")
    load_extra_stages()
    if args.stage:
        unknown = sorted(set(args.stage) - set(STAGES))
        if unknown:
            raise InputError(f"--stage {', '.join(unknown)}: unknown (known: {', '.join(STAGES)})")
    cases, metadata = load_cases(args.cases)
    ctx = FixtureContext(args.config, args.checkpoint, args.pointmap_vae, metadata)
    t0 = time.perf_counter()
    with torch.no_grad():  # scoped: callers in the same process (notebooks, tests) keep autograd
        report = run_fixture(cases, ctx, rtol=args.rtol, expected=expected_outputs(args.cases), only=args.stage)
    elapsed = time.perf_counter() - t0
    save_file({k: v.contiguous().clone() for k, v in report.outputs.items()}, str(out),
              metadata={"cases": str(args.cases), "checkpoint": str(args.checkpoint), "config": str(args.config)})
    print(report.table())
    n_fail = sum(r.failed for r in report.rows)
    n_ok = sum(r.status == "ok" for r in report.rows)
    print(f"\nstages run: {', '.join(report.stages_run) or 'none'} ({elapsed:.1f} s); "
          f"{n_ok} output(s) within tolerance, {n_fail} failure(s); outputs written to {out}")
    if not report.stages_run:
        print("no stage ran: CASES holds none of the known input names")
        return 1
    return 1 if n_fail else 0
