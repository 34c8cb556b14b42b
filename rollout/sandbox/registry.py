"""Backends by name: `backend=<name>` finds its config class here, never an if-chain.

A backend module defines a `BackendConfig` subclass with `name: Literal["<name>"]` and
registers it (`register(MyConfig)`) at import. Built-in backends are imported on first use,
so a backend's SDK is only needed when that backend is selected.
"""

from __future__ import annotations

import importlib
from typing import Any

from rollout.sandbox.config import BackendConfig

# name -> module that registers it when imported.
BUILTIN = {"local": "rollout.sandbox.local", "nomad": "rollout.sandbox.nomad",
           "modal": "rollout.sandbox.modal"}

_REGISTRY: dict[str, type[BackendConfig]] = {}


class UnknownBackend(ValueError):
    pass


def register(cls: type[BackendConfig]) -> type[BackendConfig]:
    """Register a backend config class under the default of its `name` field."""
    name = cls.model_fields["name"].default
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__}.name needs a default (the backend's name)")
    _REGISTRY[name] = cls
    return cls


def names() -> list[str]:
    return sorted(set(BUILTIN) | set(_REGISTRY))


def config_class(name: str) -> type[BackendConfig]:
    if name not in _REGISTRY and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownBackend(f"unknown backend {name!r} (available: {', '.join(names())})") \
            from None


def backend_config(data: dict[str, Any]) -> BackendConfig:
    """Validate a `backend:` mapping into its backend's config (pydantic errors propagate)."""
    data = dict(data)
    name = data.setdefault("name", "local")
    if not isinstance(name, str):
        raise UnknownBackend(f"backend.name must be a string, got {name!r}")
    return config_class(name).model_validate(data)
