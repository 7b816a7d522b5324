"""The dataset card of an export: ``DATASET.md`` + ``dataset.json`` + ``score_histograms.png`` (issue 15).

Every export writes one, from a :class:`DatasetInfo` (the schema below; ``dataset.json`` is its JSON,
``DatasetInfo.model_validate_json`` reads it back):

=====================  ===========================================================================
field                  what
=====================  ===========================================================================
``name``               the dataset's name; ``description``: free text
``created_at``         ISO time of the export (UTC)
``sources``            per source (a store or archive location): videos, shots, frames
``counts``             totals exported: videos, shots, frames, samples (webdataset samples or None)
``shots_kept``         shots exported
``shots_dropped``      reason → number of shots not exported (``skipped: shorter than one window``,
                       ``filter: window_agreement < 0.05``, ``max_shots``, ``damaged`` …)
``splits``             split name → videos, shots and frames (a video is in exactly one split)
``filters``            the ``--where`` expression or filter file, split fractions and seed, max shots
``scores``             score name → :class:`ScoreDistribution` over the exported shots (n, min,
                       median, max, quantiles, histogram edges/counts; booleans as 0/1)
``predictor``          name, checkpoint fingerprint, dtype, fs, image size, sampler steps, and
                       ``synthetic`` (a test instrument, not a network: the card says so)
``code``               package version (importlib.metadata) and git commit when the code is a git
                       checkout (best effort: None otherwise, never an error)
``formats``            the export formats written (``zarr``, ``webdataset``, …)
``webdataset``         shards: unit, clip frames and stride, shards (in all), target size, seed, and
                       ``splits``: split → its shard set ``webdataset/<split>/`` (shards, samples,
                       shots, path; a split without samples has none) (or None)
=====================  ===========================================================================

``DATASET.md`` names every kept/dropped reason and every score, embeds the histogram figure, and has a
"how to load it" section with runnable snippets (Zarr with dask, as docs/dataset.md, and webdataset
with the ``webdataset`` library). Each file is written under a temporary name and renamed.
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from geo4d.errors import InputError

__all__ = ["DatasetInfo", "SourceInfo", "Counts", "SplitInfo", "FilterInfo", "ScoreDistribution", "PredictorInfo",
           "CodeVersion", "WebDatasetInfo", "WebDatasetSplit", "score_distribution", "score_distributions", "code_version",
           "write_dataset_card", "read_dataset_card", "render_markdown", "CARD_MD", "CARD_JSON", "CARD_FIGURE"]

CARD_MD = "DATASET.md"
CARD_JSON = "dataset.json"
CARD_FIGURE = "score_histograms.png"
QUANTILES = (0.05, 0.25, 0.75, 0.95)
HISTOGRAM_BINS = 20


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceInfo(_Model):
    """One source of the dataset (a store, an archive)."""

    location: str
    videos: int = Field(ge=0)
    shots: int = Field(ge=0)
    frames: int = Field(ge=0)


class Counts(_Model):
    """What the export holds."""

    videos: int = Field(ge=0)
    shots: int = Field(ge=0)
    frames: int = Field(ge=0)
    samples: int | None = Field(None, ge=0, description="webdataset samples (clips or shots)")


class SplitInfo(_Model):
    """One split's size."""

    videos: int = Field(ge=0)
    shots: int = Field(ge=0)
    frames: int = Field(0, ge=0)


class FilterInfo(_Model):
    """How shots were chosen."""

    where: str | None = Field(None, description="the --where expression over the scores")
    filter_file: str | None = Field(None, description="a YAML filter file, if one was given")
    split_fractions: dict[str, float] = Field(default_factory=dict, description="split → fraction of videos")
    split_seed: int | None = None
    max_shots: int | None = Field(None, ge=0)


class ScoreDistribution(_Model):
    """A score over the exported shots (None-valued shots left out; booleans as 0/1)."""

    n: int = Field(ge=0)
    min: float | None = None
    median: float | None = None
    max: float | None = None
    quantiles: dict[str, float] = Field(default_factory=dict, description="'q05' … → value")
    edges: list[float] = Field(default_factory=list, description="histogram bin edges (bins + 1)")
    counts: list[int] = Field(default_factory=list, description="shots per bin")


class PredictorInfo(_Model):
    """The predictor that made the windows."""

    name: str
    synthetic: bool = Field(False, description="the synthetic test instrument (not a network)")
    checkpoint_fingerprint: str | None = None
    dtype: str | None = None
    fs: int | None = None
    image_size: tuple[int, int] | None = None
    sampler_steps: int | None = None


class CodeVersion(_Model):
    """The code that wrote the dataset."""

    package: str = "geo4d-pipeline"
    version: str | None = None
    git_commit: str | None = None


class WebDatasetSplit(_Model):
    """One split's shard set: ``<path>/shard-NNNNNN.tar`` and ``<path>/shards.json``."""

    shards: int = Field(ge=0)
    samples: int = Field(ge=0)
    shots: int | None = Field(None, ge=0)
    path: str = Field(description="folder of the split's shards, relative to the export")


class WebDatasetInfo(_Model):
    """The training shards, when ``--format webdataset``: one shard set per split."""

    unit: str = Field(description="'clip' or 'shot'")
    clip_frames: int | None = None
    stride: int | None = None
    shards: int = Field(ge=0, description="shards in all splits")
    target_bytes: int = Field(ge=1)
    seed: int = Field(0, description="seed of the shuffle within each split")
    path: str = Field("webdataset", description="folder of the split folders, relative to the export")
    splits: dict[str, WebDatasetSplit] = Field(default_factory=dict, description="split → its shard set")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class DatasetInfo(_Model):
    """Everything a dataset card says (module docstring)."""

    name: str = "geo4d dataset"
    description: str | None = None
    created_at: str = Field(default_factory=_now)
    sources: list[SourceInfo] = Field(default_factory=list)
    counts: Counts
    shots_kept: int = Field(ge=0)
    shots_dropped: dict[str, int] = Field(default_factory=dict)
    splits: dict[str, SplitInfo] = Field(default_factory=dict)
    filters: FilterInfo = FilterInfo()
    scores: dict[str, ScoreDistribution] = Field(default_factory=dict)
    predictor: PredictorInfo | None = None
    code: CodeVersion = Field(default_factory=lambda: code_version())
    formats: list[str] = Field(default_factory=list)
    webdataset: WebDatasetInfo | None = None


def score_distribution(values: Sequence[float | bool | None], bins: int = HISTOGRAM_BINS) -> ScoreDistribution:
    """The distribution of one score (None and non-finite values left out).

    >>> d = score_distribution([0.0, 1.0, None, 2.0], bins=2)
    >>> d.n, d.median, d.counts
    (3, 1.0, [1, 2])
    """
    x = np.array([float(v) for v in values if v is not None], dtype=np.float64)
    x = x[np.isfinite(x)]
    if not x.size:
        return ScoreDistribution(n=0)
    counts, edges = np.histogram(x, bins=int(bins))
    q = {f"q{round(p * 100):02d}": float(np.quantile(x, p)) for p in QUANTILES}
    return ScoreDistribution(n=int(x.size), min=float(x.min()), median=float(np.median(x)), max=float(x.max()),
                             quantiles=q, edges=[float(e) for e in edges], counts=[int(c) for c in counts])


def score_distributions(shots: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, ScoreDistribution]:
    """Each score of ``names`` over the shots' score records (dicts with those keys)."""
    return {n: score_distribution([s.get(n) for s in shots]) for n in names}


def _git_commit(where: Path) -> str | None:
    """The commit of the git checkout holding ``where`` (None when it is not one, or git is absent)."""
    try:
        out = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def code_version() -> CodeVersion:
    """The package version and, best effort, the git commit of the code (never raises)."""
    import importlib.metadata as md

    try:
        version = md.version("geo4d-pipeline")
    except md.PackageNotFoundError:
        version = None
    return CodeVersion(version=version, git_commit=_git_commit(Path(__file__).resolve().parent))


def _fmt(v: float | None) -> str:
    """A number for the card's tables (4 significant digits; '–' for None)."""
    return "–" if v is None else f"{v:.4g}"


def _md_counts(info: DatasetInfo) -> list[str]:
    c = info.counts
    lines = ["## Contents", "", "| | videos | shots | frames |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| source `{s.location}` | {s.videos} | {s.shots} | {s.frames} |" for s in info.sources]
    lines += [f"| **exported** | {c.videos} | {c.shots} | {c.frames} |"]
    if c.samples is not None:
        lines += ["", f"Training samples (webdataset): {c.samples}."]
    lines += ["", "### Shots kept and dropped", "", "| reason | shots |", "| --- | ---: |",
              f"| kept | {info.shots_kept} |"]
    lines += [f"| dropped: {reason} | {n} |" for reason, n in sorted(info.shots_dropped.items())]
    if info.splits:
        lines += ["", "### Splits (by source video: no video is in two splits)", "",
                  "| split | videos | shots | frames |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {k} | {s.videos} | {s.shots} | {s.frames} |" for k, s in info.splits.items()]
    return lines + [""]


def _md_filters(info: DatasetInfo) -> list[str]:
    f = info.filters
    fr = ", ".join(f"{k} {v:g}" for k, v in f.split_fractions.items()) or "none"
    return ["## Filters", "", f"- where: `{f.where}`" if f.where else "- where: none (every reconstructed shot)",
            f"- filter file: `{f.filter_file}`" if f.filter_file else "- filter file: none",
            f"- split fractions: {fr}; split seed: {f.split_seed}",
            f"- max shots: {f.max_shots if f.max_shots is not None else 'no limit'}", ""]


def _md_scores(info: DatasetInfo) -> list[str]:
    lines = ["## Score distributions (exported shots)", "",
             "| score | n | min | q05 | q25 | median | q75 | q95 | max |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, d in info.scores.items():
        q = d.quantiles
        lines.append(f"| `{name}` | {d.n} | {_fmt(d.min)} | {_fmt(q.get('q05'))} | {_fmt(q.get('q25'))} | "
                     f"{_fmt(d.median)} | {_fmt(q.get('q75'))} | {_fmt(q.get('q95'))} | {_fmt(d.max)} |")
    return lines + ["", f"![score histograms]({CARD_FIGURE})", ""]


def _md_provenance(info: DatasetInfo) -> list[str]:
    p = info.predictor
    lines = ["## Provenance", ""]
    if p is None:
        lines.append("- predictor: not recorded")
    else:
        tag = " — SYNTHETIC test instrument (predictions derived from ground truth), not a network" if p.synthetic else ""
        size = f"{p.image_size[0]}×{p.image_size[1]}" if p.image_size else "–"
        lines += [f"- predictor: {p.name}{tag}", f"- checkpoint fingerprint: `{p.checkpoint_fingerprint}`",
                  f"- dtype: {p.dtype}, fs: {p.fs}, image size (H×W): {size}, sampler steps: {p.sampler_steps}"]
    c = info.code
    lines += [f"- code: {c.package} {c.version or '(version unknown)'}, git commit "
              f"{c.git_commit or '(not a git checkout)'}", f"- formats: {', '.join(info.formats) or 'none'}", ""]
    return lines


_ZARR_SNIPPET = '''```python
import dask.array as da
import pyarrow.parquet as pq

root = "{root}"
index = pq.read_table(f"{{root}}/index.parquet").to_pandas()
index = index[index.skipped.isna()]                        # exported rows only
row = index.iloc[0]
z = f"{{root}}/{{row.zarr_path}}"
depth = da.from_zarr(z, component="depth")[:8].compute()    # (8, H, W) float32, 0 = invalid
rgb = da.from_zarr(z, component="rgb")[:8].compute()        # (8, H, W, 3) uint8
# or lazily, with xarray: xarray.open_zarr(z, consolidated=False).depth.isel(frame=slice(0, 8))
```'''

_WDS_SNIPPET = '''```python
import json
import webdataset as wds

split = "{split}"                                               # one of: {splits}
root = "{root}/{path}/" + split                                 # each split its own shards.json
shards = [f"{{root}}/{{s['name']}}" for s in json.load(open(f"{{root}}/shards.json"))["shards"]]
dataset = wds.WebDataset(shards, shardshuffle=False).decode()   # add .shuffle(1000) for training
for sample in dataset:
    frames = sample["frames.npy"]            # (V, H, W, 3) uint8
    depth = sample["depth.npy"]              # (V, H, W) float32, 0 = invalid
    poses = sample["world_from_cam.npy"]     # (V, 4, 4) float32, [0] = I (the clip's first frame)
    scores = sample["scores.json"]["scores"]
    break
```'''


def _md_loading(info: DatasetInfo, root: str) -> list[str]:
    lines = ["## How to load it", "",
             "Conventions: OpenCV camera axes (x right, y down, z forward), pixel centres at integer (u, v), "
             "poses map camera points to world points; each shot has its own world frame and scale.", ""]
    if "zarr" in info.formats or not info.formats:
        lines += ["Zarr (one group per exported shot, read lazily with dask; see docs/dataset.md):", "",
                  _ZARR_SNIPPET.format(root=root), ""]
    if info.webdataset is not None:
        lines += _md_webdataset(info.webdataset, root)
    return lines


def _md_webdataset(w: WebDatasetInfo, root: str) -> list[str]:
    """The shard sets per split (a table) and the snippet reading one (``train`` when there is one)."""
    unit = f"{w.clip_frames}-frame clips every {w.stride} frames" if w.unit == "clip" else "whole shots"
    lines = [f"webdataset: one shard set per split, `{w.path}/<split>/` ({w.shards} shards in all, of about "
             f"{w.target_bytes / (1 << 20):.0f} MiB; samples: {unit}; shuffled within each split with seed "
             f"{w.seed}):", "", "| split | shards | samples | folder |", "| --- | ---: | ---: | --- |"]
    lines += [f"| {k} | {s.shards} | {s.samples} | `{s.path}/` |" for k, s in w.splits.items()]
    if not w.splits:
        lines += ["| (none: no samples) | 0 | 0 | – |"]
    split = "train" if "train" in w.splits else next(iter(w.splits), "train")
    names = ", ".join(w.splits) or "none"
    return lines + ["", _WDS_SNIPPET.format(root=root, path=w.path, split=split, splits=names), ""]


def render_markdown(info: DatasetInfo, root: str = ".") -> str:
    """The text of ``DATASET.md`` (``root``: the export's path as the snippets should name it)."""
    synthetic = info.predictor is not None and info.predictor.synthetic
    head = [f"# {info.name}", ""]
    if synthetic:
        head += ["**SYNTHETIC**: made with the synthetic test instrument, not the Geo4D network.", ""]
    if info.description:
        head += [info.description, ""]
    head += [f"Exported {info.created_at}.", ""]
    body = _md_counts(info) + _md_filters(info) + _md_scores(info) + _md_provenance(info) + _md_loading(info, root)
    return "\n".join(head + body)


def _write_figure(info: DatasetInfo, dest: Path) -> None:
    """One histogram panel per score (matplotlib, Agg), written through a temporary name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(info.scores) or ["(no scores)"]
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        d = info.scores.get(name)
        if d is not None and d.counts:
            e = np.asarray(d.edges)
            ax.bar(e[:-1], d.counts, width=np.diff(e), align="edge", color="#4477aa")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    fig.suptitle(f"{info.name}: scores of the {info.shots_kept} exported shots", fontsize=10)
    fig.tight_layout()
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    os.replace(tmp, dest)


def _write_text(dest: Path, text: str) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, dest)


def write_dataset_card(out_dir: str | os.PathLike, info: DatasetInfo | Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``DATASET.md``, ``dataset.json`` and ``score_histograms.png`` into ``out_dir``.

    Args:
        out_dir: the export directory (must exist or be creatable).
        info: a :class:`DatasetInfo` or a mapping of its fields (validated; a bad field is one
            :class:`InputError` line naming it).

    Returns:
        ``(DATASET.md path, dataset.json path)``; the figure lies beside them.
    """
    from pydantic import ValidationError

    try:
        info = info if isinstance(info, DatasetInfo) else DatasetInfo.model_validate(dict(info))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InputError(f"dataset card: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from exc
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    _write_figure(info, out / CARD_FIGURE)
    _write_text(out / CARD_JSON, info.model_dump_json(indent=2))
    _write_text(out / CARD_MD, render_markdown(info, root=str(out)))
    return out / CARD_MD, out / CARD_JSON


def read_dataset_card(out_dir: str | os.PathLike) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``out_dir/dataset.json``."""
    from pydantic import ValidationError

    f = Path(out_dir) / CARD_JSON
    if not f.is_file():
        raise InputError(f"{f}: missing")
    try:
        return DatasetInfo.model_validate_json(f.read_text())
    except (OSError, ValidationError) as exc:
        raise InputError(f"{f}: not a dataset card ({str(exc).splitlines()[0]})") from exc
