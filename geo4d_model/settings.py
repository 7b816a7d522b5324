"""Settings of the network's sampler, importable without torch (flows and specs use them).

Example:
    >>> SamplerSettings.parse({"steps": 10}).steps
    10
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from geo4d.spec import Spec

__all__ = ["SamplerSettings"]


class SamplerSettings(Spec):
    """Settings of one sampling run (defaults: the official demo/evaluation settings)."""

    steps: int = Field(5, ge=1, description="DDIM steps")
    eta: float = Field(0.0, ge=0.0, description="DDIM stochasticity (0: deterministic)")
    guidance_scale: float = Field(1.0, description="classifier-free guidance scale (1: conditional only)")
    guidance_rescale: float = Field(0.7, ge=0.0, le=1.0, description="guidance rescale factor")
    timestep_spacing: Literal["trailing", "leading", "linspace"] = "trailing"
    dynamic_rescale: bool = True
