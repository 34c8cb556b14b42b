"""The launch configuration, validated once into typed dataclasses.

Hydra composes a plain mapping (see conf/); `load_config` turns it into a `LaunchConfig` or
raises `ConfigError` with a one-line message naming the bad key. Nothing past this point
touches a raw DictConfig.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from rollout.agent import AgentConfig
from rollout.policy import PolicyConfig
from pydantic import ValidationError

from rollout.sandbox.config import BackendConfig, PoolSection
from rollout.sandbox.limits import SlotLimits
from rollout.sandbox.registry import UnknownBackend, backend_config
from rollout.tasks import TaskSourceConfig
from rollout.trainer.sink import TrainerConfig


class ConfigError(ValueError):
    """A user-facing configuration mistake."""


@dataclass
class RunSection:
    dir: str = "runs/default"  # reuse a run dir to resume (task cursor + outbox)
    max_groups: int | None = None  # stop after this many tasks finished (None: all)
    shutdown_grace: float = 60.0  # seconds in-flight groups get to finish on Ctrl-C
    progress: bool | None = None  # live view; None: only when stdout is a terminal
    log_level: str = "INFO"


@dataclass
class EnvConfig:
    """Names as in Atropos's BaseEnvConfig, so Atropos users feel at home."""

    name: str = "swe_smith"
    group_size: int = 4
    batch_size: int = -1  # -1: use the trainer's
    max_batches_offpolicy: int = 3
    max_token_length: int = 8192
    ensure_scores_are_not_same: bool = False
    include_messages: bool = False
    weight: float = 1.0
    min_batch_allocation: float | None = None


@dataclass
class WorkersConfig:
    num: int = 2
    groups_in_flight: int = 2
    acquire_timeout: float = 300.0
    lease_renew_interval: float = 10.0


@dataclass
class QueueConfig:
    lease_seconds: float = 120.0  # a worker that stops renewing loses its tasks after this
    max_attempts: int = 3


@dataclass
class RayConfig:
    address: str | None = None  # None: $RAY_ADDRESS if set, else a local Ray on loopback
    num_cpus: int | None = None


@dataclass
class LaunchConfig:
    run: RunSection
    env: EnvConfig
    workers: WorkersConfig
    queue: QueueConfig
    ray: RayConfig
    backend: BackendConfig  # the selected backend's own typed config (backend.name)
    sandbox: SlotLimits  # what every slot enforces, whatever the backend
    pool: PoolSection
    policy: PolicyConfig
    agent: AgentConfig
    tasks: TaskSourceConfig
    trainer: TrainerConfig
    extra: dict[str, Any] = field(default_factory=dict)


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if hint is Any or hint is typing.Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return list(value) if origin is list else tuple(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return build(hint, value, where)
    return value


def build(cls: type, data: dict[str, Any] | None, where: str) -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types are errors."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(f'{where}.{k}' for k in unknown)}; valid keys: {', '.join(names)}"
        )
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from e
    return obj


def pydantic_error(where: str, error: ValidationError) -> ConfigError:
    """The first problem of a pydantic validation, as one line naming the dotted key."""
    first = error.errors()[0]
    key = ".".join([where, *(str(p) for p in first["loc"])])
    if first["type"] == "extra_forbidden":
        return ConfigError(f"unknown key {key}")
    got = first.get("input")
    shown = "" if isinstance(got, dict) else f", got {got!r}"
    return ConfigError(f"{key}: {first['msg'].removeprefix('Value error, ')}{shown}")


def _model(where: str, build_it: Any, data: Any) -> Any:
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    try:
        return build_it(dict(data or {}))
    except ValidationError as e:
        raise pydantic_error(where, e) from None
    except UnknownBackend as e:
        raise ConfigError(str(e)) from None


def load_config(raw: dict[str, Any]) -> LaunchConfig:
    raw = dict(raw)
    raw.pop("hydra", None)
    raw.pop("conf", None)  # the preset's name, recorded by Hydra's defaults list
    sections = {
        "run": RunSection, "env": EnvConfig, "workers": WorkersConfig, "queue": QueueConfig,
        "ray": RayConfig, "policy": PolicyConfig, "agent": AgentConfig,
        "tasks": TaskSourceConfig, "trainer": TrainerConfig,
    }
    built = {name: build(cls, raw.pop(name, None), name) for name, cls in sections.items()}
    backend = _model("backend", backend_config, raw.pop("backend", None))
    sandbox = _model("sandbox", SlotLimits.model_validate, raw.pop("sandbox", None))
    pool = _model("pool", PoolSection.model_validate, raw.pop("pool", None))
    if raw:
        raise ConfigError(
            f"unknown top-level key(s): {', '.join(sorted(raw))}; "
            f"valid: backend, sandbox, pool, {', '.join(sections)}"
        )
    cfg = LaunchConfig(backend=backend, sandbox=sandbox, pool=pool, **built)
    _cross_check(cfg)
    return cfg


def _cross_check(cfg: LaunchConfig) -> None:
    if cfg.env.group_size < 1:
        raise ConfigError(f"env.group_size must be >= 1, got {cfg.env.group_size}")
    if cfg.env.group_size == 1 and cfg.env.ensure_scores_are_not_same:
        raise ConfigError(
            "env.group_size=1 with env.ensure_scores_are_not_same=true would drop every group; "
            "set one of them differently"
        )
    if cfg.workers.num < 1 or cfg.workers.groups_in_flight < 1:
        raise ConfigError("workers.num and workers.groups_in_flight must be >= 1")
    if cfg.queue.max_attempts < 1:
        raise ConfigError("queue.max_attempts must be >= 1")
    if cfg.queue.lease_seconds <= cfg.workers.lease_renew_interval:
        raise ConfigError(
            "queue.lease_seconds must exceed workers.lease_renew_interval, or live workers "
            "would lose their leases"
        )
    if cfg.run.max_groups is not None and cfg.run.max_groups < 1:
        raise ConfigError("run.max_groups must be >= 1 (or null for all tasks)")
