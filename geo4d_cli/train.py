"""``geo4d train``: fine-tune the point-map VAE decoder and the diffusion U-Net (docs/training.md).

The same command runs on one CPU, one GPU or many: under ``torchrun`` every process trains its
share of each batch (DistributedDataParallel) and the first one writes the checkpoints and prints.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from geo4d.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune the point-map VAE decoder and the diffusion U-Net on 4D datasets (resumable)",
        description="Train with the recipe CONFIG (configs/train/*.yaml: network config, phases, sizes, optimiser, "
                    "EMA, checkpoints) on --data (geo4d export directories, webdataset shards, or 'synthetic'). "
                    "Checkpoints go to RUN_DIR/checkpoints/ every N steps; --resume continues exactly after a "
                    "kill. The final weights are RUN_DIR/final/model.ckpt and vae.ckpt in the official format "
                    "(geo4d reconstruct --config RUN_DIR/final/config.yaml --checkpoint … --pointmap-vae … --clip-cache RUN_DIR/final/context-cache; RUN_DIR/final/README.txt has the command). "
                    "Several GPUs: torchrun --nproc_per_node N -m geo4d_cli train …",
    )
    p.add_argument("recipe", metavar="CONFIG", help="training recipe YAML (e.g. configs/train/tiny-cpu.yaml)")
    p.add_argument("--data", nargs="+", action="extend", default=[], metavar="DATASET",
                   help="geo4d export directory, webdataset shard directory, or synthetic[:SEED] "
                        "(default: synthetic scenes; several are mixed with equal weight)")
    p.add_argument("--split", default="train", help="the split of exported datasets to train on (their index's "
                   "split column, or shard folders per split); 'all': every exported shot")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (checkpoints, metrics.jsonl, final/)")
    p.add_argument("--init-checkpoint", metavar="MODEL_CKPT",
                   help="start from this official model.ckpt (default: random weights — a synthetic stand-in)")
    p.add_argument("--init-pointmap-vae", metavar="VAE_CKPT",
                   help="start the point-map VAE from this official vae.ckpt (default: the first-stage VAE of "
                        "--init-checkpoint plus a new confidence branch)")
    p.add_argument("--context", metavar="FILE", help="constant context file (.safetensors, `geo4d context`) for a "
                   "checkpoint without CLIP weights")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N steps in all (resume later to go on)")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its latest checkpoint")
    p.add_argument("--device", default="auto", help="torch device (auto: cuda if available, the local rank's GPU "
                   "under torchrun)")
    p.add_argument("--no-pipeline-validation", action="store_true",
                   help="validate with the losses only (default: also sample → fuse → metrics on held-back "
                        "synthetic videos at every validation)")
    p.add_argument("--prefect", action="store_true", help="run as the Prefect flow train-geo4d (loss and "
                   "validation artifacts; one process only)")
    p.set_defaults(func=cmd_train)


def _check_args(args: argparse.Namespace) -> None:
    if not Path(args.recipe).is_file():
        raise InputError(f"{args.recipe}: training recipe not found")
    if args.max_steps is not None and args.max_steps < 1:
        raise InputError(f"--max-steps must be >= 1, got {args.max_steps}")
    for opt in ("init_checkpoint", "init_pointmap_vae", "context"):
        value = getattr(args, opt)
        if value is not None and not Path(value).is_file():
            raise InputError(f"--{opt.replace('_', '-')} {value}: file not found")
    if args.init_pointmap_vae and not args.init_checkpoint:
        raise InputError("--init-pointmap-vae needs --init-checkpoint (the model.ckpt it belongs to)")
    if args.prefect and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("--prefect runs one process; under torchrun leave it out")


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def cmd_train(args: argparse.Namespace) -> int:
    _check_args(args)
    kwargs = dict(init_checkpoint=args.init_checkpoint, init_pointmap_vae=args.init_pointmap_vae,
                  context=args.context, max_steps=args.max_steps, resume=args.resume, device=args.device,
                  validate_pipeline=not args.no_pipeline_validation, split=args.split)
    if _is_main():
        print(f"training {args.recipe} on {', '.join(args.data) or 'synthetic scenes'} → {args.out}"
              + (" (resuming)" if args.resume else ""))
    if args.prefect:
        from geo4d_cli.prefect_server import prefect_env

        prefect_env()
        from flows.train import train_geo4d

        out = train_geo4d(args.recipe, args.out, data=args.data, **kwargs)
    else:
        from pipeline.training import train
        from tasks.progress import train_progress

        out = train(args.recipe, args.data, args.out, on_log=train_progress if _is_main() else None, **kwargs)
    if _is_main():
        _print_summary(out)
    return 0


def _print_summary(out: dict) -> None:
    from tasks.progress import close_console

    close_console()
    print(f"step {out['step']}: final weights {out['model_ckpt'] or '(not written)'}, {out['vae_ckpt'] or ''}")
    first, last = out.get("first_validation"), out.get("last_validation")
    if last:
        keys = [k for k in ("vae_l1", "denoise_loss", "pipeline_abs_rel", "pipeline_ate_rel") if k in last]
        for k in keys:
            before = f"{first[k]:.4g} → " if first and first is not last and k in first else ""
            print(f"  validation {k}: {before}{last[k]:.4g}")
