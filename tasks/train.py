"""Prefect task of a training run: a thin wrapper of :func:`pipeline.training.train` that reports
progress to the run logger and the console, and publishes the loss curve and the validations as
artifacts."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipeline import training
from tasks.progress import train_progress

#: Columns of the loss-curve artifact.
_LOSS_KEYS = ("step", "phase", "loss", "lr")


@task(name="train", cache_policy=NO_CACHE)
def train_task(recipe: str, data: list[str], out_dir: str, init_checkpoint: str | None = None,
               init_pointmap_vae: str | None = None, context: str | None = None, max_steps: int | None = None,
               resume: bool = False, device: str = "auto", validate_pipeline: bool = True,
               split: str = "train") -> dict:
    logger = get_run_logger()

    def on_log(step: int, metrics: dict) -> None:
        total = int(metrics.get("total_steps") or 0)
        logger.info("step %s/%s %s loss %.4g", step, total or "?", metrics.get("phase", ""),
                    float(metrics.get("loss", float("nan"))))
        train_progress(step, metrics)

    out = training.train(recipe, data, out_dir, init_checkpoint=init_checkpoint, init_pointmap_vae=init_pointmap_vae,
                         context=context, max_steps=max_steps, resume=resume, device=device,
                         validate_pipeline=validate_pipeline, split=split, on_log=on_log)
    publish_artifacts(out_dir)
    return out


def publish_artifacts(out_dir: str) -> None:
    """The loss curve (a table) and every validation (a markdown table) of a run as artifacts."""
    rows = training.read_metrics(out_dir)
    losses = [{k: r.get(k) for k in _LOSS_KEYS} for r in rows if r.get("kind", "train") == "train"]
    if losses:
        create_table_artifact(key="train-loss", table=losses, description="training loss per log step")
    validations = [r for r in rows if r.get("kind") == "validation"]
    if validations:
        keys = sorted({k for r in validations for k in r if k not in ("kind",)})
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in validations]
        create_markdown_artifact(key="train-validation", markdown="\n".join(lines),
                                 description="validation per checkpoint (losses and the full pipeline)")


def _cell(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))
