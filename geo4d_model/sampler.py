"""The Geo4D sampler: DDIM with v-prediction on diffusers' :class:`~diffusers.DDIMScheduler`, plus what
diffusers lacks (written here by hand):

* the **stored schedule**: the scheduler's ``alphas_cumprod`` are replaced by the checkpoint's buffer
  (diffusers computes them in float32, the checkpoint stores float64 math rounded to float32);
  with ``set_alpha_to_one=False`` the last step uses ``ᾱ[0]`` as previous alpha, as the official sampler;
* the **dynamic x₀ rescale**: at the step of timestep ``t_k`` the predicted x₀ is multiplied by
  ``scale_arr[t_next] / scale_arr[t_k]`` (``t_next`` the next, smaller, sampled timestep; the last
  step uses ratio 1). DDIM's update is linear in x₀, so the rescaled update is the scheduler's update
  plus ``√ᾱ_prev · (r − 1) · x₀``;
* **guidance**: ``v = v_u + s·(v_c − v_u)``, then with ``guidance_rescale`` r > 0
  ``v ← r·v·std(v_c)/std(v) + (1 − r)·v`` (diffusers' ``rescale_noise_cfg``). With scale 1 (the
  official setting) only the conditional pass runs and the rescale is inert.

Example:
    >>> sampler = DDIMSampler.from_network(network)                       # doctest: +SKIP
    >>> x0 = sampler.sample(lambda x, t: network.apply_model(x, cond, t, ctx, fs), x_T)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler

from geo4d_model.settings import SamplerSettings

__all__ = ["SamplerSettings", "DDIMSampler"]


class DDIMSampler:
    """DDIM over a stored ``alphas_cumprod`` (T,) with optional dynamic rescale ``scale_arr``.

    Args:
        alphas_cumprod: (T,) the checkpoint's ᾱ (float32).
        scale_arr: (≥T,) dynamic-rescale factors indexed by timestep, or None to disable.
        settings: :class:`SamplerSettings`.
        beta_start, beta_end: the config's ``linear_start``/``linear_end`` (only used to construct the
            diffusers scheduler before its ᾱ are replaced; kept for :meth:`config_alphas_cumprod`).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, scale_arr: torch.Tensor | None = None,
                 settings: SamplerSettings = SamplerSettings(), beta_start: float = 0.00085, beta_end: float = 0.012):
        if alphas_cumprod.ndim != 1:
            raise ValueError(f"alphas_cumprod must be (T,), got {tuple(alphas_cumprod.shape)}")
        T = alphas_cumprod.shape[0]
        self.settings = settings
        self.scheduler = DDIMScheduler(
            num_train_timesteps=T, beta_start=beta_start, beta_end=beta_end, beta_schedule="scaled_linear",
            prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing=settings.timestep_spacing,
            clip_sample=False, set_alpha_to_one=False, steps_offset=0,
        )
        self._config_alphas = self.scheduler.alphas_cumprod.clone()
        ac = alphas_cumprod.detach().to("cpu", torch.float32)
        self.scheduler.alphas_cumprod = ac
        self.scheduler.final_alpha_cumprod = ac[0]
        self.scheduler.set_timesteps(settings.steps)
        self.alphas_cumprod = ac
        self.scale_arr = None
        if settings.dynamic_rescale and scale_arr is not None:
            self.scale_arr = scale_arr.detach().to("cpu", torch.float32)

    @classmethod
    def from_network(cls, network, settings: SamplerSettings = SamplerSettings()) -> DDIMSampler:
        """Sampler on a :class:`~geo4d_model.network.Geo4DNetwork`'s stored buffers and config."""
        d = network.cfg.diffusion
        return cls(network.alphas_cumprod, network.scale_arr if d.use_dynamic_rescale else None, settings,
                   beta_start=d.linear_start, beta_end=d.linear_end)

    def config_alphas_cumprod(self) -> torch.Tensor:
        """ᾱ as diffusers computes them from the config (float32), for comparison with the stored ones."""
        return self._config_alphas

    @property
    def timesteps(self) -> list[int]:
        """Timesteps in sampling order (descending), e.g. [999, 799, 599, 399, 199]."""
        return [int(t) for t in self.scheduler.timesteps]

    def schedule_table(self) -> dict[str, torch.Tensor]:
        """Per-step constants indexed by k ascending (k = 0 is the last step): ``timesteps``, ``a``, ``a_prev``,
        ``scale``, ``scale_prev`` (float32; ``scale*`` are 1 without dynamic rescale)."""
        asc = torch.tensor(sorted(self.timesteps), dtype=torch.long)
        a = self.alphas_cumprod[asc]
        a_prev = torch.cat([self.alphas_cumprod[:1], a[:-1]])
        if self.scale_arr is not None:
            scale = self.scale_arr[asc]
            scale_prev = torch.cat([scale[:1], scale[:-1]])
        else:
            scale = scale_prev = torch.ones(len(asc))
        return {"timesteps": asc, "a": a, "a_prev": a_prev, "scale": scale, "scale_prev": scale_prev}

    def _guided(self, v_cond: torch.Tensor, v_uncond: torch.Tensor) -> torch.Tensor:
        s, r = self.settings.guidance_scale, self.settings.guidance_rescale
        v = v_uncond + s * (v_cond - v_uncond)
        if r > 0:
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

            v = rescale_noise_cfg(v, v_cond, guidance_rescale=r)
        return v

    @torch.no_grad()
    def sample(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_T: torch.Tensor,
               uncond_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
               callback: Callable[[int, int, dict[str, torch.Tensor]], None] | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Run the sampler from ``x_T`` (b, …); ``model(x, t)`` returns the v-prediction for timestep
        tensor ``t`` (b,). With ``guidance_scale != 1`` ``uncond_model`` is required.

        ``callback(i, t, {"x_t", "v", "pred_x0"})`` is called at step i (0 = first, t = 999) with the
        input latent, the (guided) model output and x₀ after the dynamic rescale.
        """
        guided = self.settings.guidance_scale != 1.0
        if guided and uncond_model is None:
            raise ValueError(f"guidance_scale {self.settings.guidance_scale} needs an unconditional model")
        sched = self.scheduler
        steps = self.timesteps
        x = x_T
        for i, t in enumerate(steps):
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            v = model(x, t_batch)
            if guided:
                v = self._guided(v, uncond_model(x, t_batch))
            v = v.to(x.dtype)
            out = sched.step(v, t, x, eta=self.settings.eta, generator=generator)
            x_prev, x0 = out.prev_sample, out.pred_original_sample
            if self.scale_arr is not None:
                t_next = steps[i + 1] if i + 1 < len(steps) else t
                ratio = float(self.scale_arr[t_next] / self.scale_arr[t])
                if ratio != 1.0:
                    prev_t = t - sched.config.num_train_timesteps // sched.num_inference_steps
                    a_prev = sched.alphas_cumprod[prev_t] if prev_t >= 0 else sched.final_alpha_cumprod
                    x0_scaled = x0 * ratio
                    x_prev = x_prev + float(a_prev) ** 0.5 * (x0_scaled - x0)
                    x0 = x0_scaled
            if callback is not None:
                callback(i, t, {"x_t": x, "v": v, "pred_x0": x0})
            x = x_prev
        return x
