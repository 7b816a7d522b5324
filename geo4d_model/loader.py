"""Loading the official Geo4D files unchanged: ``configs/inference_geo4d.yaml``, ``model.ckpt`` and the
point-map ``vae.ckpt``.

Memory: the network is built on the ``meta`` device (no weights allocated), checkpoints are opened
with ``torch.load(mmap=True)`` (tensor data stays in the file's page cache until touched) and the
tensors are attached with ``load_state_dict(assign=True)``, so no second full copy of the weights
exists (a dtype cast creates the converted copy only). See ``docs/model.md`` for peak RAM figures.

Strictness: before anything is attached, the checkpoint's keys and shapes are compared with the
network the config describes; missing keys, unexpected keys and shape mismatches are all listed in
one :class:`~geo4d.errors.InputError` that names the file. The CLIP towers (``cond_stage_model.*``,
``embedder.*``) are optional: when present they are kept aside (see :attr:`LoadedGeo4D.clip_state_dict`)
for :mod:`geo4d_model.context`, which needs them once per checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from geo4d.errors import InputError
from geo4d_model.config import Geo4DConfig, load_config
from geo4d_model.network import (
    SCHEDULE_BUFFERS,
    Geo4DNetwork,
    official_key_map,
    official_shapes,
    pointmap_vae_key_map,
    to_internal_state_dict,
)
from geo4d_model.vae import LatentVAE, to_official_shape

__all__ = ["LoadedGeo4D", "load_official", "read_checkpoint", "check_state_dict", "CLIP_PREFIXES",
           "file_fingerprint", "build_network", "build_random", "save_official"]

#: Key prefixes of the two open_clip towers inside ``model.ckpt``.
CLIP_PREFIXES = ("cond_stage_model.", "embedder.")


@dataclass
class LoadedGeo4D:
    """What :func:`load_official` returns.

    Attributes:
        network: U-Net, first-stage VAE, resampler and stored schedule (eval mode, on ``device``).
        pointmap_vae: the point-map VAE with its confidence branch, or None when not given.
        config: the parsed config.
        clip_state_dict: the ``cond_stage_model.*`` / ``embedder.*`` tensors of the checkpoint, original
            names (empty when the checkpoint has no CLIP weights, e.g. the parity fixtures).
        checkpoint: path of ``model.ckpt``; ``fingerprint``: :func:`file_fingerprint` of it.
    """

    network: Geo4DNetwork
    pointmap_vae: LatentVAE | None
    config: Geo4DConfig
    clip_state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    checkpoint: str = ""
    fingerprint: str = ""


def file_fingerprint(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Cheap content fingerprint of a large file: sha256 of its size and its first, middle and last MiB."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as f:
        for offset in sorted({0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}):
            f.seek(offset)
            h.update(f.read(chunk))
    return h.hexdigest()[:32]


def read_checkpoint(path: str | os.PathLike, weights_only: bool = True) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint file (``{'state_dict': …}`` or a plain tensor dict; torch pickle or
    safetensors), memory-mapped when the format allows.

    Raises:
        InputError: the file is missing, truncated/corrupt, or holds no tensor dictionary.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: checkpoint file not found")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: checkpoint file is empty")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"{p}: not a readable safetensors file (truncated or corrupt?): {exc}") from None
    else:
        try:
            try:
                obj = torch.load(p, map_location="cpu", mmap=True, weights_only=weights_only)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                obj = torch.load(p, map_location="cpu", weights_only=weights_only)  # legacy (non-zip) format
        except pickle.UnpicklingError as exc:
            if weights_only and "weights_only" in str(exc):
                raise InputError(
                    f"{p}: the checkpoint pickles objects other than tensors; if you trust the file, "
                    "load it with weights_only=False"
                ) from None
            raise InputError(f"{p}: cannot read the checkpoint (truncated or corrupt?): {_first_line(exc)}") from None
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
            raise InputError(f"{p}: cannot read the checkpoint (truncated or corrupt?): {_first_line(exc)}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{p}: expected a tensor dictionary or {{'state_dict': ...}}, got {type(obj).__name__}")
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_state_dict(state_dict: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], source: str,
                     limit: int = 12) -> None:
    """Compare keys and shapes; raise one :class:`InputError` listing every kind of difference."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state_dict) if tuple(state_dict[k].shape) != tuple(expected[k]))
    if not (missing or unexpected or wrong):
        return

    def listing(keys: list[str], fmt) -> str:
        shown = ", ".join(fmt(k) for k in keys[:limit])
        return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {listing(missing, str)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {listing(unexpected, str)}")
    if wrong:
        parts.append(f"{len(wrong)} shape mismatch(es): " + listing(
            wrong, lambda k: f"{k} checkpoint {list(state_dict[k].shape)} vs config {list(expected[k])}"))
    raise InputError(f"{source}: does not match the config: " + "; ".join(parts))


def build_network(config: str | os.PathLike | dict | Geo4DConfig, device: str | torch.device = "meta",
                  with_pointmap_vae: bool = True) -> tuple[Geo4DNetwork, LatentVAE | None]:
    """Build the network (and point-map VAE) of a config on ``device`` (``meta``: no memory; ``cpu``:
    random weights, e.g. for tests and benchmarks)."""
    cfg = load_config(config)
    with torch.device(device):
        net = Geo4DNetwork(cfg)
        pm = LatentVAE(cfg.pointmap_vae) if with_pointmap_vae and cfg.pointmap_vae is not None else None
    return net, pm


def load_official(config: str | os.PathLike | dict | Geo4DConfig, checkpoint: str | os.PathLike,
                  pointmap_vae: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, weights_only: bool = True) -> LoadedGeo4D:
    """Build the Geo4D network from the official yaml and load the official checkpoints strictly.

    Args:
        config: ``inference_geo4d.yaml`` (or a fixture config of the same schema).
        checkpoint: ``model.ckpt``; CLIP weights (``cond_stage_model.*``, ``embedder.*``) may be absent.
        pointmap_vae: ``vae.ckpt`` (keys stored with a leading ``model.``), or None.
        device: where the weights end up.
        dtype: parameter dtype (schedule buffers stay float32).

    Raises:
        InputError: a file is missing/unreadable/truncated, or keys/shapes differ from the config
            (all differences listed).
    """
    cfg = load_config(config)
    if cfg.pointmap_vae is None and pointmap_vae is not None:
        raise InputError(f"{cfg.source}: has no pointmap_vae_config but a point-map VAE file was given")
    net, pm = build_network(cfg, "meta", with_pointmap_vae=pointmap_vae is not None)

    sd = read_checkpoint(checkpoint, weights_only)
    clip = {k: v for k, v in sd.items() if k.startswith(CLIP_PREFIXES)}
    main = {k: v for k, v in sd.items() if not k.startswith(CLIP_PREFIXES)}
    key_map = official_key_map(net)
    if main and all(k.startswith("model.") and not k.startswith("model.diffusion_model.") for k in main):
        raise InputError(f"{checkpoint}: holds only 'model.*' autoencoder weights: this looks like the point-map "
                         "VAE (vae.ckpt), not model.ckpt")
    check_state_dict(main, official_shapes(net, key_map), str(checkpoint))
    internal = to_internal_state_dict(main, net, key_map, dtype=dtype, keep_float32=SCHEDULE_BUFFERS)
    net.load_state_dict(internal, strict=True, assign=True)
    del sd, main, internal

    if pm is not None:
        psd = read_checkpoint(pointmap_vae, weights_only)
        pkey_map = pointmap_vae_key_map(cfg.pointmap_vae)
        check_state_dict(psd, official_shapes(pm, pkey_map), str(pointmap_vae))
        pm.load_state_dict(to_internal_state_dict(psd, pm, pkey_map, dtype=dtype), strict=True, assign=True)
        del psd

    for module, name in ((net, str(checkpoint)), (pm, str(pointmap_vae))):
        if module is None:
            continue
        left = [k for k, v in module.state_dict(keep_vars=True).items() if v.is_meta]
        if left:  # cannot happen after a strict load; guards against non-persistent buffers
            raise RuntimeError(f"{name}: tensors left uninitialised after loading: {left[:5]}")
        module.to(device).eval()
    return LoadedGeo4D(network=net, pointmap_vae=pm, config=cfg, clip_state_dict=clip, checkpoint=str(checkpoint),
                       fingerprint=file_fingerprint(checkpoint))


def build_random(config: str | os.PathLike | dict | Geo4DConfig, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0,
                 with_pointmap_vae: bool = True) -> tuple[Geo4DNetwork, LatentVAE | None]:
    """A random-weight network of a config (tests, benchmarks): built on ``meta`` and materialised once on
    ``device`` (no default-init pass), weights ~ U(±√(3/fan_in)) (variance 1/fan_in), norm scales 1, biases 0, schedule
    buffers from the config (float32). Not a trained model: outputs are meaningless but finite. The values
    depend on the seed and on the device type (CUDA tensors are filled from a CUDA generator)."""
    from geo4d_model.network import schedule_buffers

    cfg = load_config(config)
    net, pm = build_network(cfg, "meta", with_pointmap_vae)
    # the generator must live where the tensors are filled (a CPU generator cannot fill CUDA tensors)
    target = torch.device(device)
    gen = torch.Generator(target if target.type == "cuda" else "cpu").manual_seed(seed)
    for module in (net, pm):
        if module is None:
            continue
        module.to(dtype).to_empty(device=device)  # parameters allocated once, directly in ``dtype``
        with torch.no_grad():
            for name, p in module.named_parameters():
                if p.ndim >= 2:
                    bound = (3.0 / p[0].numel()) ** 0.5  # uniform with variance 1/fan_in
                    p.uniform_(-bound, bound, generator=gen)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.fill_(1.0)
        module.eval()
    with torch.no_grad():
        for name, value in schedule_buffers(cfg.diffusion).items():
            getattr(net, name).data = value.to(device)
    return net, pm


def _official_state_dict(module: torch.nn.Module, key_map: dict[str, str], dtype: torch.dtype | None,
                         keep_float32: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Internal tensors of ``module`` under their official names and shapes (the inverse of
    :func:`~geo4d_model.network.to_internal_state_dict`), on CPU, contiguous; floating tensors cast to
    ``dtype`` (None: as they are) except internal keys in ``keep_float32``."""
    internal = module.state_dict()
    out: dict[str, torch.Tensor] = {}
    for off, key in key_map.items():
        t = internal[key].detach()
        if t.is_meta:
            raise RuntimeError(f"save_official: {key} is on the meta device (not materialised)")
        t = t.reshape(to_official_shape(off, tuple(t.shape)))
        if dtype is not None and t.is_floating_point() and key not in keep_float32:
            t = t.to(dtype)
        out[off] = t.cpu().contiguous()
    return out


def _atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary name beside ``path``, then ``os.replace`` (no partial file under
    the final name, even when interrupted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_official(network: Geo4DNetwork, model_path: str | os.PathLike, pointmap_vae: LatentVAE | None = None,
                  vae_path: str | os.PathLike | None = None, dtype: torch.dtype | None = None) -> None:
    """Write a network in the official file layout: the inverse of :func:`load_official`.

    ``model_path`` gets ``{"state_dict": …}`` with the official ``model.ckpt`` names and shapes
    (U-Net, first-stage VAE, resampler, schedule buffers; no CLIP towers); ``vae_path`` (when
    ``pointmap_vae`` is given) gets the point-map VAE's tensors under their official names with the
    leading ``model.``. Each file is written to a temporary name and moved into place atomically.

    Args:
        network, pointmap_vae: materialised modules (any device; tensors are copied to CPU).
        dtype: cast floating tensors (schedule buffers stay float32); None keeps each tensor's dtype.

    Raises:
        ValueError: ``pointmap_vae`` and ``vae_path`` are not given together.
    """
    if (pointmap_vae is None) != (vae_path is None):
        raise ValueError("save_official: give pointmap_vae and vae_path together")
    sd = _official_state_dict(network, official_key_map(network), dtype, keep_float32=SCHEDULE_BUFFERS)
    _atomic_save({"state_dict": sd}, Path(model_path))
    del sd
    if pointmap_vae is not None:
        psd = _official_state_dict(pointmap_vae, pointmap_vae_key_map(network.cfg.pointmap_vae), dtype)
        _atomic_save({"state_dict": psd}, Path(vae_path))
