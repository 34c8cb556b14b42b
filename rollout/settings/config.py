"""The launch configuration, validated once into frozen pydantic models.

Hydra composes a plain mapping (see conf/); `load_config` turns it into a `LaunchConfig` or
raises `ConfigError` with a one-line message naming the bad key (see rollout/config_model.py).
Nothing past this point touches a raw DictConfig, and nothing changes the validated config:
what is derived later (the embedded server's URL, the trainer's env name) is a new object.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator

from rollout.agent.loop import AgentConfig
from rollout.config_model import ConfigError, ConfigModel, KindSection, Str, format_error
from rollout.policy import PolicyConfig
from rollout.sandbox.config import BackendConfig, PoolSection
from sandbox_image.config import SlotLimits
from rollout.sandbox.registry import UnknownBackend, backend_config, config_class, names
from rollout.tasks import TaskSourceConfig
from rollout.trainer.sink import TrainerConfig
from rollout.record.wandb_log import LoggerConfig


class RunSection(ConfigModel):
    section: ClassVar[str] = "run"

    dir: Str = "runs/default"  # reuse a run dir to resume (task cursor + outbox)
    # on resume (run.dir holds a config.yaml), apply overrides that change the saved config
    resume_overrides: bool = False
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
    # Trajectories running at once, all workers together (split evenly over them). None: no
    # bound but num x groups_in_flight x group_size; with policy=embedded, sized at start from
    # the server's measured tokens/s (rollout/policy/embedded/sizing.py). A number always wins.
    trajectories_in_flight: Annotated[int | None, Field(ge=1)] = None
    acquire_timeout: float = 300.0
    lease_renew_interval: float = 10.0

    @field_validator("trajectories_in_flight")
    @classmethod
    def _one_per_worker_at_least(cls, value: int | None, info: ValidationInfo) -> int | None:
        num = info.data.get("num")
        if value is not None and num is not None and value < num:
            raise ValueError(f"is {value}, below workers.num={num}: every worker runs at least "
                             f"one; lower workers.num too")
        return value

    def per_worker_trajectories(self) -> int | None:
        """Each worker's share of `trajectories_in_flight` (rounded down: never more in all)."""
        return None if self.trajectories_in_flight is None else self.trajectories_in_flight // self.num


class QueueConfig(ConfigModel):
    section: ClassVar[str] = "queue"

    # a worker that stops renewing loses its tasks after this
    lease_seconds: float = 120.0
    max_attempts: Annotated[int, Field(ge=1)] = 3


class MetricsConfig(ConfigModel):
    section: ClassVar[str] = "metrics"

    # Trajectory events (events.jsonl), the HTML report and the metrics; false: none of them.
    enabled: bool = True
    port: Annotated[int, Field(ge=0, le=65535)] | None = None  # the driver's /metrics; None: off
    host: Str = "127.0.0.1"  # where /metrics listens (0.0.0.0 for a Prometheus elsewhere)
    report_interval: Annotated[float, Field(gt=0)] = 30.0  # seconds between report.html refreshes


class ToolServerSection(ConfigModel):
    """The external tool server (rollout/toolserver/): launch.py starts it when `launch` is
    true (the agent's `agent.tool_server_url` is then filled in), or give that URL yourself."""

    section: ClassVar[str] = "tool_server"

    launch: bool = False
    host: Str = "127.0.0.1"  # where a launched server listens
    concurrency: Annotated[int, Field(ge=1)] = 16  # calls run at once; the rest wait
    # Each external tool's own config, e.g. {http_fetch: {allow_hosts: [example.org],
    # max_bytes: 200000, timeout: 30, auth: [{host: example.org, env: EXAMPLE_TOKEN}]}}.
    tools: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Variables of launch's environment that only the tool server gets: launch hands them to
    # it and removes them from its own environment before Ray (and every slot) starts.
    secret_env: list[Str] = Field(default_factory=list)
    plugins: list[Str] = Field(default_factory=list)  # modules that register more tools


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
    metrics: MetricsConfig
    tool_server: ToolServerSection
    # Sections chosen by kind hold the kind's own model (a subclass): dumped as that model,
    # with the kind's keys (config.yaml of a replay, the logger's copy).
    backend: SerializeAsAny[BackendConfig]  # the selected backend's own typed config (backend.name)
    sandbox: SlotLimits  # what every slot enforces, whatever the backend
    pool: PoolSection
    policy: SerializeAsAny[PolicyConfig]
    agent: AgentConfig
    tasks: SerializeAsAny[TaskSourceConfig]
    trainer: SerializeAsAny[TrainerConfig]
    logger: LoggerConfig
    extra: dict[str, Any] = Field(default_factory=dict)


SECTIONS = ("run", "env", "workers", "queue", "ray", "metrics", "tool_server", "policy", "agent",
            "tasks", "trainer", "logger")


def section_variants(name: str) -> list[type[ConfigModel]] | None:
    """Every model a section chosen by kind may be (each registered kind's: `backend.name`,
    `policy.type`, `trainer.type`, `tasks.kind`), for the command line's key schema; None for
    a section of one model."""
    if name == "backend":
        return [config_class(n) for n in names()]
    cls = LaunchConfig.model_fields[name].annotation
    if isinstance(cls, type) and issubclass(cls, KindSection):
        return list(dict.fromkeys(cls.kinds().values()))
    return None


def _backend(data: Any) -> BackendConfig:
    """`backend:` validated by the config class its `name` selects in the registry."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"backend must be a mapping, got {data!r}")
    data = dict(data or {})
    try:
        return backend_config(data)
    except UnknownBackend as e:
        raise ConfigError(str(e)) from None
    except ValidationError as e:
        raise ConfigError(format_error(e, config_class(data["name"]), "backend")) from None


def _section(cls: Any, data: Any, where: str) -> Any:
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    try:
        return cls.model_validate(dict(data or {}))
    except ValidationError as e:
        raise ConfigError(format_error(e, cls, where)) from None


def load_config(raw: dict[str, Any]) -> LaunchConfig:
    raw = dict(raw)
    raw.pop("hydra", None)
    raw.pop("conf", None)  # the preset's name, recorded by Hydra's defaults list
    backend = _backend(raw.pop("backend", None))
    sandbox = _section(SlotLimits, raw.pop("sandbox", None), "sandbox")
    pool = _section(PoolSection, raw.pop("pool", None), "pool")
    sections = {name: {} if (data := raw.pop(name, None)) is None else data
                for name in SECTIONS}
    if raw:
        raise ConfigError(
            f"unknown top-level key(s): {', '.join(sorted(raw))}; "
            f"valid: backend, sandbox, pool, {', '.join(SECTIONS)}"
        )
    typed = {name: LaunchConfig.model_fields[name].annotation for name in SECTIONS}
    validated = {name: typed[name].load(data, name) for name, data in sections.items()}
    cfg = LaunchConfig(backend=backend, sandbox=sandbox, pool=pool, **validated)
    _cross_check(cfg)
    return cfg


def slot_limits(cfg: LaunchConfig) -> SlotLimits:
    """The slot limits with what each task source's kind needs exposed (the grading
    interpreters): slots must run them."""
    limits = cfg.sandbox
    exposed = [path for tasks, _ in cfg.tasks.mixture() for path in tasks.exposed_paths()]
    return limits.model_copy(update={"expose": (*limits.expose, *exposed)})


# Seconds of slack on top of a trajectory's worst case before its host may die.
LEASE_MARGIN = 60.0


def lease_budget(cfg: LaunchConfig) -> float:
    """The longest one trajectory may hold its slot: the agent's wall-clock budget, the
    slot's preparation and grading (the worst task source's, as its kind counts it:
    `TaskSourceConfig.lease_seconds`), plus a margin."""
    worst = max(tasks.lease_seconds() for tasks, _ in cfg.tasks.mixture())
    return cfg.agent.wall_clock_budget + worst + LEASE_MARGIN


def _cross_check(cfg: LaunchConfig) -> None:
    """Checks across sections (each section's own checks are in its model)."""
    try:
        cfg.backend.check_lease_budget(lease_budget(cfg))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    from rollout.agent.toolbox import external_names

    external = external_names(cfg.agent.tools)
    if external and not (cfg.agent.tool_server_url or cfg.tool_server.launch):
        raise ConfigError(f"agent.tools names external tools ({', '.join(external)}): set "
                          "tool_server.launch=true or agent.tool_server_url=URL")
    if cfg.queue.lease_seconds <= cfg.workers.lease_renew_interval:
        raise ConfigError(
            "queue.lease_seconds must exceed workers.lease_renew_interval, or live workers "
            "would lose their leases"
        )
