"""``Geo4DPredictor``: the Geo4D network behind the project's :class:`~geo4d.predictor.WindowPredictor`.

Per window it computes what the official inference computes — frames in [−1, 1], first-stage latents
as the local condition, the constant cross-attention context, 5-step DDIM, per-frame decoding of the
four modalities, the official post-processing (:func:`geo4d_model.postprocess.postprocess_window`) — and
converts the result to the store's conventions (:class:`~geo4d.predictor.WindowPrediction`).

Two paths:

* **plain** (:meth:`Geo4DPredictor.predict_window`, or ``fast=False``): one window at a time, every
  frame of the window encoded for that window (as the official script does).
* **fast** (:meth:`Geo4DPredictor.predict_windows`): each frame's latent is encoded once per video (in
  batches of ``vae_batch`` frames) and sliced per window; ``window_batch`` windows share each U-Net call;
  decoding runs per frame in batches; bf16 autocast on CUDA (``autocast="auto"``); optional
  ``torch.compile`` of the U-Net. In float32 its outputs equal the plain path's within the parity
  tolerance (tested).

  With ``overlap`` on (the default on CUDA) the accelerator is kept busy: a background thread runs the device
  loop (encode, sample, decode of group k+1) while a second one post-processes group k and the caller
  writes the windows before; bounded queues (depth :attr:`Geo4DPredictor.queue_depth`) join the
  three, results come out in order, an exception of any thread reaches the caller unchanged, and
  closing the generator stops and joins both threads. On CUDA the frames go to the device from
  pinned memory and the decoded windows come back into pinned buffers with non-blocking copies
  (a CUDA event is waited on before the host reads them). Outputs do not depend on ``overlap``.

Deviation from the official script (documented in ``docs/model.md``): video latents are the posterior
**mean**; the official script draws a posterior sample (its spread is negligible; the parity fixtures
use the mean too). Initial noise is drawn per window on the predictor's device from a generator seeded
by ``(seed, start)``, so results do not depend on batching; on CPU the values are those of a CPU
generator, on CUDA they are other values (CUDA's generator), deterministic per ``(seed, start)``.
"""

from __future__ import annotations

import copy
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from geo4d.errors import InputError, PredictionError
from geo4d.predictor import WindowPrediction, WindowPredictor
from geo4d_model.context import constant_context
from geo4d_model.network import Geo4DNetwork
from geo4d_model.sampler import DDIMSampler, SamplerSettings
from geo4d_model.vae import LatentVAE

__all__ = ["Geo4DPredictor", "frames_to_model_input", "window_noise", "context_fingerprint", "SUPPORTED_SIZES"]

#: (H, W) sizes the official demo accepts; others work if divisible by the network's factor, untested.
SUPPORTED_SIZES = ((320, 512), (384, 512), (256, 576), (192, 640))


def frames_to_model_input(frames: np.ndarray | torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 RGB frames (V, H, W, 3) → (V, 3, H', W') float32 in [−1, 1] as ``(u8/255 − 0.5)·2``;
    resized (bilinear, antialiased) to ``size`` = (H', W') when given and different. A tensor stays on
    its device (the fast path converts the frames on the accelerator)."""
    x = frames if isinstance(frames, torch.Tensor) else torch.as_tensor(np.asarray(frames))
    if x.ndim != 4 or x.shape[-1] != 3:
        raise InputError(f"frames: expected (V, H, W, 3) RGB, got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise InputError(f"frames: expected uint8, got {x.dtype}")
    x = x.permute(0, 3, 1, 2).float()
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 255)
    return (x / 255.0 - 0.5) * 2.0


def window_noise(seed: int, start: int, shape: tuple[int, ...], device: str | torch.device = "cpu") -> torch.Tensor:
    """Initial noise x_T of the window starting at ``start``: ``shape`` (e.g. (1, 16, V, h, w)) float32
    standard normal, drawn on ``device`` from a generator of that device seeded by ``(seed, start)``.

    Independent of batching. On CPU the values are those of ``torch.Generator("cpu")``; on CUDA they
    come from CUDA's generator (other values, equally deterministic per ``(seed, start)``), so no
    host-to-device copy of the noise is needed.
    """
    device = torch.device(device)
    state = int(np.random.SeedSequence([int(seed), int(start)]).generate_state(1)[0])
    gen = torch.Generator(device).manual_seed(state)
    return torch.randn(shape, generator=gen, dtype=torch.float32, device=device)


def context_fingerprint(context: torch.Tensor) -> str:
    """A short hash of a context tensor's float32 values (enters the windows fingerprint)."""
    data = context.detach().float().cpu().contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


# --- background threads of the overlapped fast path ----------------------------------------------------
class _Cancelled(Exception):
    """Raised inside a worker thread whose pipeline was stopped; never reaches the caller."""


#: Per-thread: ``stop``, the :class:`threading.Event` of the pipeline the current worker thread serves.
_WORKER = threading.local()
_ITEM, _END, _ERROR = "item", "end", "error"


def _check_cancelled() -> None:
    """In a worker thread whose pipeline was stopped: raise :class:`_Cancelled` (checked between groups
    and before every U-Net call, so a closed generator does not wait for the rest of a window)."""
    stop = getattr(_WORKER, "stop", None)
    if stop is not None and stop.is_set():
        raise _Cancelled


class _Stage:
    """One worker thread iterating ``produce()`` under ``torch.no_grad()`` (grad mode is thread-local)
    into a bounded queue; iterating the stage yields its items in order and re-raises its exception
    (the same object: type and message unchanged). Every wait polls ``stop`` so that a stopped
    pipeline ends promptly: the thread then drops what it has and returns."""

    _POLL_S = 0.05

    def __init__(self, produce: Callable[[], Iterator], depth: int, stop: threading.Event, name: str):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = stop
        self.thread = threading.Thread(target=self._run, args=(produce,), name=name, daemon=True)
        self.thread.start()

    def _run(self, produce: Callable[[], Iterator]) -> None:
        _WORKER.stop = self._stop
        try:
            with torch.no_grad():
                for item in produce():
                    if not self._put((_ITEM, item)):
                        return
            self._put((_END, None))
        except _Cancelled:
            pass
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put((_ERROR, exc))

    def _put(self, message: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=self._POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _get(self) -> tuple:
        while True:
            try:
                return self._queue.get(timeout=self._POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    raise _Cancelled from None
                if not self.thread.is_alive():  # it ended: all its puts are in the queue
                    try:
                        return self._queue.get_nowait()
                    except queue.Empty:
                        raise RuntimeError(f"{self.thread.name}: worker thread ended without a result") from None

    def __iter__(self) -> Iterator:
        while True:
            kind, value = self._get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value


def _wait(ready) -> None:
    """Block until a non-blocking device-to-host copy has landed (``ready``: a CUDA event, or None)."""
    if ready is not None:
        ready.synchronize()


def _default_postprocess() -> Callable[..., dict]:
    from geo4d_model.postprocess import postprocess_window

    return postprocess_window


def _pick(post: dict, names: tuple[str, ...], what: str):
    for n in names:
        if n in post:
            return post[n]
    raise PredictionError(f"post-processing result lacks {what} (looked for {', '.join(names)}; has {', '.join(post)})")


def _np(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class Geo4DPredictor(WindowPredictor):
    """Frames → Geo4D modalities with the network.

    Args:
        network, pointmap_vae: from :func:`geo4d_model.loader.load_official`.
        context: (1, 77 + Q·T, C) constant cross-attention context of the checkpoint
            (:mod:`geo4d_model.context`); ``uncond_context`` the unconditional one (only for guidance ≠ 1).
        image_size: (H, W) the frames are run at (default 320×512).
        fs: frame-rate condition (default 24, the evaluation script's value; the demo script uses the
            video's fps divided by the frame-sampling stride instead).
        seed: base of the per-window noise seeds.
        sampler: :class:`~geo4d_model.sampler.SamplerSettings` (default: 5 steps, eta 0, guidance 1).
        window_batch: windows per U-Net call on the fast path; vae_batch: frames per VAE call.
        autocast: "auto" (bf16 on CUDA, off on CPU), None/"off", or a dtype such as torch.float16.
        compile: wrap the U-Net in ``torch.compile``.
        fast: whether :meth:`predict_windows` uses the fast path.
        overlap: on the fast path, run the device loop and the post-processing in background threads
            so the accelerator works on the next windows while the caller handles the last ones
            (outputs identical either way; off: everything in the caller's thread, one step at a time;
            "auto", the default: on for CUDA, off on CPU).
        sky_eps: sky-mask half-width of the post-processing (0.35 demo script, 0.1 evaluation script).
        postprocess: ``fn(decoded (1, 11, V, H, W), sky_eps=…) -> dict`` (default
            :func:`geo4d_model.postprocess.postprocess_window`).
    """

    name = "geo4d"
    #: The decoded point map is ``(x/s, y/s, (z − lower)/s)`` (FACTS_rays §5): z is shifted by an
    #: unknown per-window ``lower``, which the fusion estimates with the focal length.
    pointmap_z_offset = True
    #: Bounded queue depth between the device loop, the post-processing and the caller (overlap on).
    queue_depth = 2

    def __init__(self, network: Geo4DNetwork, pointmap_vae: LatentVAE, context: torch.Tensor, *,
                 image_size: tuple[int, int] = (320, 512), fs: int = 24, seed: int = 123,
                 sampler: SamplerSettings | None = None, uncond_context: torch.Tensor | None = None,
                 window_batch: int = 4, vae_batch: int = 16, autocast: str | torch.dtype | None = "auto",
                 compile: bool = False, fast: bool = True, sky_eps: float = 0.35,
                 postprocess: Callable[..., dict] | None = None, fingerprint: str = "", overlap: bool | str = "auto"):
        if pointmap_vae is None:
            raise InputError("Geo4DPredictor: the point-map VAE (vae.ckpt) is required")
        H, W = (int(s) for s in image_size)
        factor = network.cfg.first_stage.downsample_factor * network.unet.downsample_factor
        if H <= 0 or W <= 0 or H % factor or W % factor:
            raise InputError(f"image_size {H}×{W} (H×W): both must be positive multiples of {factor} for this network")
        C = network.cfg.unet.context_dim
        if context.ndim == 2:
            context = context[None]
        if context.ndim != 3 or context.shape[0] != 1 or context.shape[-1] != C:
            raise InputError(f"context: expected (1, L, {C}), got {tuple(context.shape)}")
        if window_batch < 1 or vae_batch < 1:
            raise InputError(f"window_batch and vae_batch must be >= 1, got {window_batch}, {vae_batch}")
        self.network, self.pointmap_vae = network.eval(), pointmap_vae.eval()
        self.device = next(network.parameters()).device
        self.param_dtype = next(network.unet.parameters()).dtype
        self.context = context.to(self.device, self.param_dtype)
        self.uncond_context = None if uncond_context is None else uncond_context.to(self.device, self.param_dtype)
        self.image_size = (H, W)
        self.fs, self.seed, self.sky_eps = int(fs), int(seed), float(sky_eps)
        self.settings = sampler or SamplerSettings()
        if self.settings.guidance_scale != 1.0 and self.uncond_context is None:
            raise InputError("guidance_scale != 1 needs uncond_context (CLIP text of '' + the image tokens)")
        self.sampler = DDIMSampler.from_network(network, self.settings)
        self.window_batch, self.vae_batch, self.fast = int(window_batch), int(vae_batch), bool(fast)
        # threads and queues are made per call (the instance stays copyable); "auto": on for CUDA only —
        # on a CPU the compute itself fills the cores and the threads cost more than they hide
        # (benchmarks/results/busy.md)
        self.overlap = self.device.type == "cuda" if overlap == "auto" else bool(overlap)
        if autocast == "auto":
            autocast = torch.bfloat16 if self.device.type == "cuda" else None
        elif autocast == "off":
            autocast = None
        self.autocast_dtype = autocast
        self._unet = torch.compile(network.unet) if compile else network.unet
        self.compiled = bool(compile)
        self._postprocess = postprocess
        self.fingerprint = fingerprint

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def from_official(cls, config, checkpoint, pointmap_vae, device: str | torch.device = "cpu",
                      dtype: torch.dtype | str = torch.float32, clip_context_cache: str | os.PathLike | None = None,
                      context: torch.Tensor | None = None, **kwargs) -> Geo4DPredictor:
        """Load the official files (:func:`~geo4d_model.loader.load_official`) and build the predictor.

        The constant context is ``context`` when given, else computed once per checkpoint by
        :mod:`geo4d_model.context` (needs the CLIP weights in ``model.ckpt`` or a cached context in
        ``clip_context_cache``). ``kwargs`` go to the constructor (``image_size``, ``fs``, ``seed``, …).
        """
        from geo4d_model.loader import load_official

        if isinstance(dtype, str):
            try:
                dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
            except KeyError:
                raise InputError(f"dtype {dtype!r}: expected float32, bfloat16 or float16") from None
        if pointmap_vae is None:
            raise InputError("--pointmap-vae: the point-map VAE (vae.ckpt) is required to predict")
        if "image_size" in kwargs and kwargs["image_size"] is not None:
            kwargs["image_size"] = tuple(int(s) for s in kwargs["image_size"])
        else:
            kwargs.pop("image_size", None)
        loaded = load_official(config, checkpoint, pointmap_vae, device=device, dtype=dtype)
        if context is None:
            context = constant_context(loaded, cache=clip_context_cache)
        return cls(loaded.network, loaded.pointmap_vae, context, fingerprint=loaded.fingerprint, **kwargs)

    def parameters(self) -> dict:
        """Everything that changes this predictor's outputs (what enters the windows fingerprint)."""
        return {
            "name": self.name, "checkpoint_fingerprint": self.fingerprint, "image_size": list(self.image_size),
            "fs": self.fs, "seed": self.seed, "steps": self.settings.steps, "eta": self.settings.eta,
            "guidance_scale": self.settings.guidance_scale, "guidance_rescale": self.settings.guidance_rescale,
            "sky_eps": self.sky_eps, "video_latents": "posterior mean",
            "dtype": str(self.param_dtype).removeprefix("torch."),
            "autocast": "off" if self.autocast_dtype is None else str(self.autocast_dtype).removeprefix("torch."),
            "compile": self.compiled, "fast": self.fast,
            "context_fingerprint": context_fingerprint(self.context),
        }

    def with_fs(self, fs: int) -> Geo4DPredictor:
        """This predictor with another frame-rate condition, sharing the loaded network (a video's own
        ``fs`` on a resident model)."""
        if int(fs) < 1:
            raise InputError(f"fs {fs}: the frame-rate condition must be >= 1")
        other = copy.copy(self)
        other.fs = int(fs)
        return other

    # --- pieces -----------------------------------------------------------------------------------
    def _amp(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _frames_to_device(self, frames_u8: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) frames → the same as a tensor on the device: on CUDA copied once from pinned
        memory, non-blocking, as uint8 (4× fewer bytes than the float input); on CPU shared, no copy."""
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(frames_u8)))
        if self.device.type != "cuda":
            return x
        return x.pin_memory().to(self.device, non_blocking=True)

    def _encode(self, frames_u8: np.ndarray, batch: int | None = None) -> torch.Tensor:
        """(N, H, W, 3) uint8 → scaled posterior-mean latents (N, 4, h, w), ``batch`` (default
        ``vae_batch``) frames per call."""
        batch = batch or self.vae_batch
        frames = self._frames_to_device(frames_u8)
        out = []
        for i in range(0, len(frames), batch):
            x = frames_to_model_input(frames[i : i + batch], self.image_size).to(self.device, self.param_dtype)
            with self._amp():
                out.append(self.network.encode_frames(x).float())
        return torch.cat(out)

    def _sample(self, cond: torch.Tensor, starts: Sequence[int]) -> torch.Tensor:
        """cond (B, 4, V, h, w) → final latents (B, 16, V, h, w) float32."""
        B, _, V, h, w = cond.shape
        x_T = torch.cat([window_noise(self.seed, s, (1, 16, V, h, w), device=self.device) for s in starts])
        fs = torch.full((B,), self.fs, dtype=torch.long, device=self.device)
        unet = self._unet

        def model_for(context):
            def fn(x, t):
                _check_cancelled()  # a stopped pipeline ends here rather than after the whole window
                with self._amp():
                    inp = torch.cat([x, cond], dim=1).to(self.param_dtype)
                    return unet(inp, t, context.expand(B, -1, -1), fs).float()
            return fn

        uncond = model_for(self.uncond_context) if self.uncond_context is not None else None
        return self.sampler.sample(model_for(self.context), x_T, uncond_model=uncond)

    def _decode(self, latents: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """Final latents (B, 16, V, h, w) → decoded windows (B, 11, V, H, W) float32, on the device."""
        with self._amp():
            return self.network.decode_window(latents.to(self.param_dtype), self.pointmap_vae,
                                              batch=batch or self.vae_batch).float()

    def _to_host(self, decoded: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Decoded windows (B, 11, V, H, W) on the device → (host tensor, ``ready``). On CUDA the copy
        goes, non-blocking, into a pinned buffer (PyTorch's caching host allocator reuses them) and
        ``ready`` is a CUDA event recorded after it: :func:`_wait` on it before reading the buffer.
        Elsewhere a plain ``.cpu()`` (a no-op on CPU) and ``ready`` None."""
        if self.device.type != "cuda":
            return decoded.cpu(), None
        host = torch.empty(decoded.shape, dtype=decoded.dtype, pin_memory=True)
        host.copy_(decoded, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(self.device))
        return host, ready

    def _to_prediction(self, decoded: torch.Tensor, start: int) -> WindowPrediction:
        """Decoded window (1, 11, V, H, W) → :class:`WindowPrediction` (store conventions)."""
        post_fn = self._postprocess or _default_postprocess()
        post = post_fn(decoded, sky_eps=self.sky_eps)
        V, H, W = decoded.shape[2:]
        pts = _np(_pick(post, ("pts3d", "pointmap"), "the point map")).reshape(V, H, W, 3)
        conf = _np(_pick(post, ("conf", "weight", "pointmap_conf"), "the confidence weight")).reshape(V, H, W)
        disp = _np(_pick(post, ("inverse_depth", "disparity", "inverse_depthmap"), "the disparity")).reshape(V, H, W)
        ray_dir = post.get("ray_dir")
        ray_moment = post.get("ray_moment")
        if ray_dir is None or ray_moment is None:
            d = decoded[0, 4:7].permute(1, 2, 3, 0).float()  # (V, H, W, 3)
            ray_dir = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            ray_moment = decoded[0, 7:10].permute(1, 2, 3, 0)
        pred = WindowPrediction(pointmap=pts.astype(np.float32), pointmap_conf=conf.astype(np.float32),
                                ray_dir=_np(ray_dir).reshape(V, H, W, 3).astype(np.float32),
                                ray_moment=_np(ray_moment).reshape(V, H, W, 3).astype(np.float32),
                                disparity=disp.astype(np.float32))
        for name, arr in pred.as_dict().items():
            if not np.isfinite(arr).all():
                raise PredictionError(f"window starting at frame {start}: {name} has non-finite values")
        return pred

    # --- decoded windows (before post-processing) -------------------------------------------------
    @torch.no_grad()
    def decode_window_plain(self, frames: np.ndarray, start: int) -> torch.Tensor:
        """Official-style: encode this window's frames one by one, sample, decode frame by frame
        → (1, 11, V, H, W) float32."""
        cond = self._encode(np.asarray(frames), batch=1)  # (V, 4, h, w)
        cond = cond.transpose(0, 1)[None]
        host, ready = self._to_host(self._decode(self._sample(cond, [start]), batch=1))
        _wait(ready)
        return host

    @staticmethod
    def _checked_starts(n_frames: int, starts: Sequence[int], size: int) -> list[int]:
        starts = [int(s) for s in starts]
        for s in starts:
            if s < 0 or s + size > n_frames:
                raise InputError(f"window start {s} with size {size} does not fit a video of {n_frames} frames")
        return starts

    def _device_groups(self, video: np.ndarray, starts: list[int], size: int) -> Iterator[tuple]:
        """The device loop: ``(b0, decoded (B, 11, V, H, W) on the host, ready)`` per group of
        ``window_batch`` windows ``starts[b0 : b0 + B]`` (``ready``: see :meth:`_to_host`). Each frame
        is encoded once; ``starts`` are checked already."""
        needed = sorted({f for s in starts for f in range(s, s + size)})
        latents = self._encode(np.asarray(video)[needed])  # each frame once
        index = {f: i for i, f in enumerate(needed)}
        batch = self.window_batch
        for b0 in range(0, len(starts), batch):
            _check_cancelled()
            group = starts[b0 : b0 + batch]
            cond = torch.stack([latents[[index[f] for f in range(s, s + size)]].transpose(0, 1) for s in group])
            host, ready = self._to_host(self._decode(self._sample(cond, group)))
            yield b0, host, ready

    @torch.no_grad()
    def decoded_windows(self, video: np.ndarray, starts: Sequence[int], size: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Fast path: ``(index into starts, decoded (1, 11, V, H, W))`` for every window, in order (in
        the caller's thread; :meth:`predict_windows` overlaps this loop with the post-processing)."""
        starts = self._checked_starts(len(video), starts, size)
        if not starts:
            return
        for b0, host, ready in self._device_groups(video, starts, size):
            _wait(ready)
            for j in range(host.shape[0]):
                yield b0 + j, host[j : j + 1]

    # --- WindowPredictor --------------------------------------------------------------------------
    def predict_window(self, frames: np.ndarray, start: int) -> WindowPrediction:
        return self._to_prediction(self.decode_window_plain(frames, start), start)

    def predict_windows(self, video: np.ndarray, starts: Sequence[int], size: int) -> Iterator[tuple[int, WindowPrediction]]:
        """``(index into starts, WindowPrediction)`` for every window, in order. Fast path with
        ``overlap``: see :meth:`_overlapped`."""
        if not self.fast:
            yield from super().predict_windows(video, starts, size)
            return
        starts = self._checked_starts(len(video), starts, size)
        if not starts:
            return
        if self.overlap:
            yield from self._overlapped(video, starts, size)
            return
        for g, decoded in self.decoded_windows(video, starts, size):
            yield g, self._to_prediction(decoded, starts[g])

    def _postprocessed(self, groups: Iterator[tuple], starts: list[int]) -> Iterator[tuple[int, WindowPrediction]]:
        for b0, host, ready in groups:
            _wait(ready)
            for j in range(host.shape[0]):
                yield b0 + j, self._to_prediction(host[j : j + 1], starts[b0 + j])

    def _overlapped(self, video: np.ndarray, starts: list[int], size: int) -> Iterator[tuple[int, WindowPrediction]]:
        """Three steps in three threads, joined by bounded queues: the device loop (thread
        ``geo4d-device``), the post-processing (``geo4d-postprocess``) and the caller's handling of each
        window (this generator's thread). When the generator ends — exhausted, closed early, or by an
        exception of any step — both threads are stopped and joined before it returns."""
        stop = threading.Event()
        stages: list[_Stage] = []
        try:
            device = _Stage(lambda: self._device_groups(video, starts, size), self.queue_depth, stop, "geo4d-device")
            stages.append(device)
            post = _Stage(lambda: self._postprocessed(iter(device), starts), self.queue_depth, stop,
                          "geo4d-postprocess")
            stages.append(post)
            yield from post
        finally:
            stop.set()
            for stage in stages:
                stage.thread.join()
