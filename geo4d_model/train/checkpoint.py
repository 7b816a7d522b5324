"""Training checkpoints that survive being killed at any moment.

Layout under a run's output folder::

    checkpoints/
      step-00000050/state.pt     everything to continue bit for bit (see Trainer.state_dict)
      step-00000050/meta.json    step, phase, recipe fingerprint/settings, size + fingerprint of state.pt
      latest.json                {"step": 50, "path": "step-00000050"}

:func:`save_checkpoint` writes into ``checkpoints/.tmp-…``, fsyncs the files and the folder, renames
the folder into place, then replaces ``latest.json`` atomically (``os.replace``) and keeps the newest
``keep``. A kill at any point leaves either the previous checkpoint or the new one complete, plus at
most a ``.tmp-`` leftover that readers ignore (and the next save removes). :func:`latest_checkpoint`
returns the newest complete checkpoint; a damaged one (unreadable meta, state.pt of another size or
content fingerprint) is skipped with a warning, falling back to the previous.

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = save_checkpoint(d, 5, {"w": torch.ones(2)}, meta={"phase": 0})
    ...     p = latest_checkpoint(d)
    ...     p.name, read_meta(p)["step"], load_checkpoint(p)["w"].tolist()
    ('step-00000005', 5, [1.0, 1.0])
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geo4d.errors import InputError
from geo4d_model.loader import file_fingerprint

__all__ = ["save_checkpoint", "latest_checkpoint", "load_checkpoint", "list_checkpoints", "read_meta",
           "checkpoint_problem", "rng_state", "set_rng_state", "CHECKPOINTS", "STATE_FILE", "META_FILE",
           "LATEST_FILE"]

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
LATEST_FILE = "latest.json"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


def _step_name(step: int) -> str:
    return f"step-{int(step):08d}"


def _fsync(path: Path) -> None:
    """Flush a file or a directory entry to disk (directories: where the OS allows opening them)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. directories on some platforms
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, data: dict) -> None:
    """JSON to ``path`` atomically (temporary name, fsync, ``os.replace``)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_state(folder: Path, step: int, state: dict, meta: dict | None) -> None:
    """state.pt and meta.json into ``folder``, both fsynced."""
    state_path = folder / STATE_FILE
    torch.save(state, state_path)
    _fsync(state_path)
    info = {**(meta or {}), "step": int(step), "state_bytes": state_path.stat().st_size,
            "state_fingerprint": file_fingerprint(state_path)}
    _write_json(folder / META_FILE, info)
    _fsync(folder)


def save_checkpoint(out_dir: str | os.PathLike, step: int, state: dict, keep: int = 3,
                    meta: dict | None = None) -> Path:
    """Write ``state`` as ``out_dir/checkpoints/step-<step:08d>/state.pt`` (+ ``meta.json`` with ``meta``),
    point ``latest.json`` at it and delete all but the newest ``keep`` checkpoints; returns its folder.

    Nothing under the final names is ever partial (see the module docstring).
    """
    root = Path(out_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(".tmp-*"):  # a killed earlier write (one writer per run folder)
        shutil.rmtree(leftover, ignore_errors=True)
    name = _step_name(step)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    try:
        _write_state(tmp, step, state, meta)
        final = root / name
        old = root / f".tmp-old-{name}-{os.getpid()}"
        if final.exists():  # the same step written again (e.g. after falling back past a damaged one)
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync(root)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write_json(root / LATEST_FILE, {"step": int(step), "path": name})
    _fsync(root)
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    for _, path in list_checkpoints(root.parent)[:-max(1, keep)]:
        shutil.rmtree(path, ignore_errors=True)


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of every ``checkpoints/step-*`` folder, oldest first (complete or not)."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """``meta.json`` of a checkpoint folder.

    Raises:
        InputError: missing or not a JSON object.
    """
    p = Path(path) / META_FILE
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: cannot read the checkpoint's meta.json ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or "step" not in meta:
        raise InputError(f"{p}: not a checkpoint meta.json (no 'step')")
    return meta


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why a checkpoint folder is not usable (damaged meta, state.pt missing or not the file that was
    written: size or content fingerprint differ), or None."""
    p = Path(path)
    try:
        meta = read_meta(p)
    except InputError as exc:
        return str(exc)
    state = p / STATE_FILE
    if not state.is_file():
        return f"{state}: missing"
    if state.stat().st_size != meta.get("state_bytes"):
        return f"{state}: {state.stat().st_size} bytes, {meta.get('state_bytes')} were written"
    if file_fingerprint(state) != meta.get("state_fingerprint"):
        return f"{state}: content differs from what was written"
    return None


def _latest_pointer(root: Path) -> str | None:
    path = root / LATEST_FILE
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text())["path"])
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s: damaged; using the newest complete checkpoint", path)
        return None


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run, or None.

    Damaged checkpoints are skipped with a warning (the previous one is used); ``.tmp-`` leftovers of
    a killed write are ignored.
    """
    root = Path(out_dir) / CHECKPOINTS
    pointer = _latest_pointer(root)
    for _, path in reversed(list_checkpoints(out_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            if pointer is not None and pointer != path.name:
                log.info("%s: latest.json names %s; the newest complete checkpoint is %s", root, pointer, path.name)
            return path
        log.warning("checkpoint %s is damaged (%s); falling back to the previous one", path.name, problem)
    return None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The state dict saved in a checkpoint folder (tensors on ``map_location``; no code is unpickled).

    Raises:
        InputError: missing, damaged or unreadable.
    """
    p = Path(path)
    problem = checkpoint_problem(p)
    if problem is not None:
        raise InputError(f"{p}: damaged checkpoint: {problem}")
    try:
        return torch.load(p / STATE_FILE, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is one line naming the file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{p / STATE_FILE}: cannot read the checkpoint ({first})") from None


# --- random number generator states -----------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The global torch (CPU and, when available, CUDA), NumPy and Python RNG states (tensors, tuples and
    numbers only, so that they load with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
