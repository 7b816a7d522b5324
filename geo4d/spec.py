"""Typed settings: the base of every spec (fusion, synthetic noise, sampler, predictor).

A spec is a frozen pydantic model that refuses unknown keys. :meth:`Spec.parse` turns a plain
mapping (a JSON/YAML document, a flow parameter) into the spec with one-line errors that name the
offending key and, for an unknown key, the allowed ones; :meth:`Spec.fingerprint_dict` is the full
validated spec as JSON-able data, which is what fingerprints are computed from.

Example:
    >>> class Noise(Spec):
    ...     sigma: float = 0.0
    >>> Noise.parse({"sigma": 0.5}).sigma
    0.5
    >>> Noise.parse({"sigmaa": 1})
    Traceback (most recent call last):
    ...
    geo4d.errors.InputError: Noise: unknown key 'sigmaa' (allowed: sigma)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from geo4d.errors import InputError

__all__ = ["Spec", "jsonable"]


class Spec(BaseModel):
    """Base of the project's settings models: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def parse(cls, data: Mapping[str, Any] | Spec | None = None, *, what: str | None = None) -> Self:
        """Validate ``data`` (None: the defaults); raise :class:`InputError` with one line on failure."""
        if isinstance(data, cls):
            return data
        if isinstance(data, Spec):
            data = data.model_dump()
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as exc:
            raise InputError(_one_line(what or cls.__name__, cls, exc)) from None

    def fingerprint_dict(self) -> dict[str, Any]:
        """The full validated spec as JSON-able data (every field, defaults included)."""
        return self.model_dump(mode="json")


def _one_line(what: str, cls: type[BaseModel], exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed(cls, err["loc"][:-1]))
        return f"{what}: unknown key {key.split('.')[-1]!r} (allowed: {allowed})"
    if err["type"] == "missing":
        return f"{what}: {key} is required"
    if not key:  # a check of the whole mapping (its message names the keys)
        return f"{what}: {err['msg']}"
    return f"{what}: {key}: {err['msg']} (got {err.get('input')!r})"


def _allowed(cls: type[BaseModel], path: tuple) -> list[str]:
    model = cls
    for part in path:
        field = model.model_fields.get(str(part))
        sub = getattr(field, "annotation", None) if field else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            break
        model = sub
    return sorted(model.model_fields)


def jsonable(x: Any) -> Any:
    """``x`` with numpy scalars/arrays, tuples and specs turned into plain JSON types (NaN/inf → None)."""
    if isinstance(x, Spec):
        return x.fingerprint_dict()
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
