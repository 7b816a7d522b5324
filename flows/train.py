"""Training: fine-tune the point-map VAE decoder and the diffusion U-Net on 4D datasets
(docs/training.md). One task: the run checkpoints itself and resumes where it stopped."""

from __future__ import annotations

from prefect import flow

from tasks.train import train_task


@flow(name="train-geo4d", log_prints=True)
def train_geo4d(recipe: str, out_dir: str, data: list[str] | None = None, init_checkpoint: str | None = None,
                init_pointmap_vae: str | None = None, context: str | None = None, max_steps: int | None = None,
                resume: bool = False, device: str = "auto", validate_pipeline: bool = True,
                split: str = "train") -> dict:
    """Train with ``recipe`` (a YAML of configs/train/) on ``data`` (export or shard directories,
    ``synthetic``; default synthetic scenes; exports contribute their ``split``) into ``out_dir``;
    ``resume`` continues from its latest checkpoint. The final official-format ``model.ckpt`` and
    ``vae.ckpt`` land in ``out_dir/final/``."""
    return train_task(recipe, list(data or []), out_dir, init_checkpoint=init_checkpoint,
                      init_pointmap_vae=init_pointmap_vae, context=context, max_steps=max_steps, resume=resume,
                      device=device, validate_pipeline=validate_pipeline, split=split)
