"""Training runs as the command line and the Prefect flow start them: ``--data`` locations resolved
into clip sources, the held-back pipeline validation attached, the run summarised.

The computation is :mod:`geo4d_model.train` (plain PyTorch); the readers of exported datasets are
:mod:`storage.training_data` (Zarr/Parquet) and :mod:`storage.shards` (webdataset tar shards); this
module wires them together, so neither knows the other.

Data locations (``--data``, any number, mixed with equal weight):

* an export directory of ``geo4d export`` (``index.parquet`` + ``videos/*.zarr``, docs/dataset.md):
  the rows of one split (``split``, default ``train``; ``all``: every row);
* a directory of webdataset shards of ``geo4d export --format webdataset`` (``shards.json``), or a
  folder holding one shard set per split (``<split>/shards.json`` or ``webdataset/<split>/shards.json``);
* ``synthetic`` or ``synthetic:SEED``: procedural synthetic scenes with exact ground truth (the
  recipe's ``synthetic`` settings; the default when no ``--data`` is given).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from geo4d.errors import InputError

__all__ = ["clip_source", "clip_sources", "pipeline_validator", "train", "read_metrics", "SYNTHETIC_DATA"]

#: The ``--data`` value naming the procedural synthetic scenes.
SYNTHETIC_DATA = "synthetic"


def clip_source(location: str, recipe, split: str = "train") -> Any:
    """One ``--data`` location → a :class:`geo4d_model.train.data.ClipSource` (of ``split``).

    Raises:
        InputError: the location does not exist, is neither an export nor a shard directory, or has
            nothing in ``split``.
    """
    from geo4d_model.train.data import SyntheticClips

    if location == SYNTHETIC_DATA or location.startswith(SYNTHETIC_DATA + ":"):
        settings = recipe.synthetic.model_dump()
        if ":" in location:
            try:
                settings["seed"] = int(location.split(":", 1)[1])
            except ValueError:
                raise InputError(f"--data {location}: expected synthetic or synthetic:SEED (an integer)") from None
        return SyntheticClips(**settings)
    path = Path(location)
    if not path.exists():
        raise InputError(f"--data {location}: no such dataset directory")
    if (path / "index.parquet").is_file():
        return _export_source(path, split)
    shards = _shard_dir(path, split)
    if shards is not None:
        return _shard_source(shards)
    raise InputError(f"--data {location}: neither a `geo4d export` directory (index.parquet) nor webdataset "
                     f"shards (shards.json, or {split}/shards.json per split)")


def _shard_dir(path: Path, split: str) -> Path | None:
    """The shard set of ``path``: itself, else its ``split`` folder (directly or under ``webdataset/``)."""
    for candidate in (path, path / split, path / "webdataset" / split):
        if (candidate / "shards.json").is_file():
            return candidate
    return None


def _export_source(path: Path, split: str):
    from geo4d_model.train.data import ExportClips
    from storage.training_data import ExportReader

    reader = ExportReader(path, split)  # reads the index once; picklable for data-loader workers
    return ExportClips(reader.videos, reader, name=f"{path} ({split})")


def _shard_source(path: Path):
    from geo4d_model.train.data import ExportClips
    from storage.training_data import ShardReader

    reader = ShardReader(path)  # one "video" per shard sample (a clip or a whole shot)
    return ExportClips(reader.videos, reader, name=str(path))


def clip_sources(data: Sequence[str], recipe, split: str = "train") -> list:
    """Every ``--data`` location as a clip source (the synthetic scenes when ``data`` is empty)."""
    return [clip_source(d, recipe, split) for d in (data or [SYNTHETIC_DATA])]


def pipeline_validator(recipe, videos: int = 2, n_frames: int = 20):
    """The full-pipeline validation of a recipe: ``videos`` held-back synthetic videos at the recipe's
    first validation size, seeds after the loss-validation clips' (disjoint from training)."""
    from geo4d_model.train.validate import PipelineValidation

    v = recipe.validation
    size = tuple(int(s) for s in v.sizes[0])
    seeds = tuple(int(v.seed) + 500_000 + i for i in range(videos))
    return PipelineValidation(seeds=seeds, n_frames=n_frames, size=size)


def train(recipe_path: str, data: Sequence[str], out_dir: str, *, init_checkpoint: str | None = None,
          init_pointmap_vae: str | None = None, context: str | None = None, max_steps: int | None = None,
          resume: bool = False, device: str = "auto", validate_pipeline: bool = True, split: str = "train",
          on_log: Callable[[int, dict], None] | None = None) -> dict:
    """Run (or resume) a training run on the ``split`` of exported datasets and return its summary
    (:func:`summary`)."""
    from geo4d_model.train.recipe import load_recipe
    from geo4d_model.train.trainer import run_training

    recipe = load_recipe(recipe_path)
    sources = clip_sources(data, recipe, split)
    validators = (pipeline_validator(recipe),) if validate_pipeline else ()
    end = recipe.total_steps if max_steps is None else min(recipe.total_steps, int(max_steps))

    def log(step: int, record: dict) -> None:  # the records with the run's last step, for progress lines
        if on_log is not None:
            on_log(step, record | {"total_steps": end})

    result = run_training(recipe, sources, out_dir, init_checkpoint=init_checkpoint,
                          init_pointmap_vae=init_pointmap_vae, context_file=context, max_steps=max_steps,
                          resume=resume, device=device, on_log=log, validators=validators)
    return summary(out_dir, result)


def read_metrics(out_dir: str | Path) -> list[dict]:
    """The run's ``metrics.jsonl`` lines (training logs and validations), oldest first."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary(out_dir: str | Path, result) -> dict:
    """What a run produced: steps, the final files, the first and last validation."""
    rows = read_metrics(out_dir)
    validations = [r for r in rows if r.get("kind") == "validation"]
    final = Path(out_dir) / "final"
    return {
        "out_dir": str(out_dir),
        "step": int(getattr(result, "step", 0)),
        "model_ckpt": str(final / "model.ckpt") if (final / "model.ckpt").is_file() else None,
        "vae_ckpt": str(final / "vae.ckpt") if (final / "vae.ckpt").is_file() else None,
        "first_validation": validations[0] if validations else None,
        "last_validation": validations[-1] if validations else None,
    }
