"""The launch configuration, validated once into frozen pydantic models.

Hydra composes a plain mapping (see conf/); `load_config` turns it into a `LaunchConfig` or
raises `ConfigError` with a one-line message naming the bad key (see rollout/config_model.py).
Nothing past this point touches a raw DictConfig, and nothing changes the validated config:
what is derived later (the embedded server's URL, the trainer's env name) is a new object.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Any, ClassVar

from pydantic import Field, InstanceOf, ValidationInfo, field_validator

from rollout.agent import AgentConfig
from rollout.config_model import ConfigError, ConfigModel, Str
from rollout.policy import PolicyConfig
from rollout.sandbox.config import PoolConfig
from rollout.tasks import TaskSourceConfig
from rollout.trainer.sink import TrainerConfig


class RunSection(ConfigModel):
    section: ClassVar[str] = "run"

    dir: Str = "runs/default"  # reuse a run dir to resume (task cursor + outbox)
    # stop after this many tasks finished (None: all)
    max_groups: Annotated[int, Field(ge=1)] | None = None
    shutdown_grace: Annotated[float, Field(ge=0)] = 60.0  # seconds in-flight groups get on Ctrl-C
    progress: bool | None = None  # live view; None: only when stdout is a terminal
    log_level: Str = "INFO"


class EnvConfig(ConfigModel):
    """Names as in Atropos's BaseEnvConfig, so Atropos users feel at home."""

    section: ClassVar[str] = "env"

    name: Str = "swe_smith"
    group_size: Annotated[int, Field(ge=1)] = 4
    batch_size: int = -1  # -1: use the trainer's
    max_batches_offpolicy: int = 3
    max_token_length: int = 8192
    ensure_scores_are_not_same: bool = False
    include_messages: bool = False
    weight: float = 1.0
    min_batch_allocation: float | None = None

    @field_validator("ensure_scores_are_not_same")
    @classmethod
    def _groups_of_one_have_equal_scores(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("group_size") == 1:
            raise ValueError("must be false when group_size=1: it would drop every group "
                             "(set one of them differently)")
        return value


class WorkersConfig(ConfigModel):
    section: ClassVar[str] = "workers"

    num: Annotated[int, Field(ge=1)] = 2
    groups_in_flight: Annotated[int, Field(ge=1)] = 2
    acquire_timeout: float = 300.0
    lease_renew_interval: float = 10.0


class QueueConfig(ConfigModel):
    section: ClassVar[str] = "queue"

    # a worker that stops renewing loses its tasks after this
    lease_seconds: float = 120.0
    max_attempts: Annotated[int, Field(ge=1)] = 3


class RayConfig(ConfigModel):
    section: ClassVar[str] = "ray"

    address: Str | None = None  # None: $RAY_ADDRESS if set, else a local Ray on loopback
    num_cpus: int | None = None


class LaunchConfig(ConfigModel):
    run: RunSection
    env: EnvConfig
    workers: WorkersConfig
    queue: QueueConfig
    ray: RayConfig
    # The backend part is plain (a name and a dataclass built by `build`) until the backend
    # registry replaces it.
    backend: str
    pool: InstanceOf[PoolConfig]
    policy: PolicyConfig
    agent: AgentConfig
    tasks: TaskSourceConfig
    trainer: TrainerConfig
    extra: dict[str, Any] = Field(default_factory=dict)


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
    """Build dataclass `cls` from a mapping; unknown keys and wrong types are errors.

    Only the backend section (`PoolConfig`, a dataclass) is still built this way."""
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


SECTIONS = ("run", "env", "workers", "queue", "ray", "policy", "agent", "tasks", "trainer")


def load_config(raw: dict[str, Any]) -> LaunchConfig:
    raw = dict(raw)
    raw.pop("hydra", None)
    raw.pop("conf", None)  # the preset's name, recorded by Hydra's defaults list
    backend = dict(raw.pop("backend", None) or {"name": "local"})
    backend_name = backend.pop("name", "local")
    sections = {name: {} if (data := raw.pop(name, None)) is None else data
                for name in SECTIONS}
    if raw:
        raise ConfigError(
            f"unknown top-level key(s): {', '.join(sorted(raw))}; "
            f"valid: backend, {', '.join(SECTIONS)}"
        )
    typed = {name: LaunchConfig.model_fields[name].annotation for name in SECTIONS}
    validated = {name: typed[name].load(data, name) for name, data in sections.items()}
    pool = build(PoolConfig, backend, "backend")
    cfg = LaunchConfig(backend=backend_name, pool=pool, **validated)
    _cross_check(cfg)
    return cfg


def _cross_check(cfg: LaunchConfig) -> None:
    """Checks across sections (each section's own checks are in its model)."""
    if cfg.backend not in ("local",):
        raise ConfigError(f"backend={cfg.backend!r} is not available yet (available: local)")
    if cfg.queue.lease_seconds <= cfg.workers.lease_renew_interval:
        raise ConfigError(
            "queue.lease_seconds must exceed workers.lease_renew_interval, or live workers "
            "would lose their leases"
        )
