"""Typed configuration for task sources: the settings every kind has, and SWE-smith's.

Hydra configs are validated into these frozen models once (rollout/settings/config.py; direct callers
use `TaskSourceConfig.from_mapping`), so the rest of the task code never touches a raw
DictConfig.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator

from rollout.config_model import ConfigError, ConfigModel, KindSection, Str

BUNDLED = "bundled"


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rollout", "repos")


class GradingProfile(ConfigModel):
    """How one repo's tests are run when graded (SWE-smith keeps one such profile per repo).

    Unset fields fall back to the `tasks.*` defaults. `paths` are appended to sys.path,
    relative to the workspace; None means detect: the workspace, plus `src` when the tree
    has `src/<package>/` (a src layout). `env` is given as a mapping and kept as pairs.
    """

    section: ClassVar[str] = "profile"

    python: Str | None = None
    paths: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    plugin_autoload: bool | None = None
    test_timeout: Annotated[float, Field(gt=0)] | None = None

    @field_validator("paths", mode="before")
    @classmethod
    def _relative_paths(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str) or not isinstance(value, (list, tuple)) \
                or not all(isinstance(p, str) for p in value):
            raise ValueError("must be a list of paths")
        if any(p.startswith("/") or ".." in p.split("/") for p in value):
            raise ValueError("must be relative paths inside the repo")
        return tuple(value)

    @field_validator("env", mode="before")
    @classmethod
    def _env_pairs(cls, value: Any) -> Any:
        if isinstance(value, tuple):  # already pairs (a copy of a validated profile)
            return value
        if value is None:
            return ()
        if not isinstance(value, Mapping):
            raise ValueError("must be a mapping of variable names to values")
        return tuple((str(k), str(v)) for k, v in value.items())


def _profile_keys(repo: str) -> list[str]:
    bare = repo.removeprefix("swesmith/")
    keys = [repo, bare, bare.rsplit("/", 1)[-1]]
    owner, sep, rest = keys[-1].partition("__")
    if sep:
        name = rest.rsplit(".", 1)[0] if "." in rest else rest
        keys += [f"{owner}/{name}", name]
    return list(dict.fromkeys(keys))


@functools.lru_cache(maxsize=1)
def _bundled_profiles() -> dict[str, GradingProfile]:
    """Profiles of the bundled repos, from the file make_tasks also reads."""
    path = Path(__file__).with_name("bundled") / "repos" / "repos.json"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    fields = GradingProfile.model_fields
    return {name: GradingProfile.load({k: v for k, v in entry.items() if k in fields},
                                      f"{path}:{name}")
            for name, entry in table.items()}


DEFAULT_KIND = "swe_smith"


class TaskSourceConfig(KindSection):
    """Where tasks come from: the settings every task kind has. Each kind registers its own
    settings model, a subclass with the keys only it reads (`TaskKind.settings` in
    rollout/tasks/registry.py; SWE-smith's is `SweSmithSource` below, the terminal kind's
    `TerminalSource`), so a key of another kind is refused with the kind it belongs to.
    `TaskSourceConfig(kind=..., ...)` and `TaskSourceConfig.load(...)` build the model the
    kind registered: the section is a union discriminated by `kind`, resolved by the registry.

    source: "bundled" (instances shipped with the project), a path to a .jsonl/.json/.parquet
        file, or a Hugging Face dataset name (e.g. "SWE-bench/SWE-smith"; needs `datasets`).
    split: for HF datasets the dataset split ("train"); for every source, "train"/"eval"
        additionally selects a deterministic hash-based partition when `eval_fraction` > 0.
    filter: "python" keeps only rows whose tests are pytest node ids; "" keeps everything;
        any other string keeps rows whose instance_id or repo contains it.
    """

    section: ClassVar[str] = "tasks"

    source: Str = BUNDLED
    split: Str = "train"
    filter: Str = "python"
    shuffle: bool = False
    seed: int = 0
    max_items: Annotated[int, Field(ge=0)] | None = None
    eval_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    kind: Str = DEFAULT_KIND
    cache_dir: Str = Field(default_factory=default_cache_dir)
    prepare_timeout: float = 60.0  # a slot's preparation for a task (setup, checkout)
    python: Str = "python"  # the interpreter slots run (grading, the python tool); exposed
    # Several task sources mixed by weight, e.g. [{kind: swe_smith, weight: 3},
    # {kind: terminal, weight: 1, source: /data/terminal}]: each entry sets `kind`, `weight`
    # (> 0) and any key of its kind's settings for its own source (the rest from this
    # section, where its kind has the key). Empty: one source, the section itself.
    sources: list[dict[str, Any]] = Field(default_factory=list)

    discriminator: ClassVar[str] = "kind"
    default_kind: ClassVar[str] = DEFAULT_KIND

    @classmethod
    def kinds(cls) -> dict[str, type[KindSection]]:
        return {name: settings_class(name) for name in registered_kinds()}

    @classmethod
    def kind_class(cls, name: Any, where: str) -> type[KindSection]:
        # Only this kind's module is imported (the others' dependencies may be missing).
        if not isinstance(name, str):
            raise ConfigError(f"{where}.kind must be a string, got {name!r}")
        return settings_class(name, where)

    @classmethod
    def _switch_hint(cls, kind: Any) -> str:
        # A preset (conf=swe_smith) sets its kind's keys: `tasks.kind=terminal` on top of it
        # meets them; the kind's own preset is what to pick.
        presets = Path(__file__).resolve().parents[2] / "conf" / "conf"
        return (f" (conf={kind} is the preset of tasks.kind={kind})"
                if isinstance(kind, str) and (presets / f"{kind}.yaml").is_file() else "")

    @field_validator("sources")
    @classmethod
    def _source_entries(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, entry in enumerate(value):
            if not isinstance(entry.get("kind"), str) or not entry["kind"]:
                raise ValueError(f"entry {i} needs a kind (e.g. {{kind: swe_smith, weight: 1}})")
            weight = entry.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
                raise ValueError(f"entry {i} ({entry['kind']}): weight must be a number > 0, "
                                 f"got {weight!r}")
            try:
                allowed = set(settings_class(entry["kind"]).model_fields) - {"sources"}
            except ConfigError as e:  # "tasks.kind: unknown task kind ...": name the entry
                raise ValueError(f"entry {i}: {str(e).split(': ', 1)[1]}") from None
            unknown = sorted(set(entry) - allowed - {"weight"})
            if unknown:
                raise ValueError(f"entry {i} ({entry['kind']}): unknown key(s) "
                                 f"{', '.join(unknown)}; valid: weight, {', '.join(sorted(allowed))}")
        return value

    def mixture(self) -> list[tuple[TaskSourceConfig, float]]:
        """Each task source of the run with its weight: the `sources` entries over this
        section's values, or this section alone."""
        if not self.sources:
            return [(self, 1.0)]
        out = []
        for i, entry in enumerate(self.sources):
            target = settings_class(entry["kind"], f"tasks.sources[{i}]")
            base = {name: getattr(self, name) for name in type(self).model_fields
                    if name != "sources" and name in target.model_fields}
            fields = {k: v for k, v in entry.items() if k != "weight"}
            out.append((target.load({**base, **fields}, f"tasks.sources[{i}]"),
                        float(entry.get("weight", 1.0))))
        return out

    def env_configs(self) -> dict[str, TaskSourceConfig]:
        """The config each task kind's env is made from: its first source's."""
        out: dict[str, TaskSourceConfig] = {}
        for cfg, _ in self.mixture():
            out.setdefault(cfg.kind, cfg)
        return out

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | TaskSourceConfig | None) -> TaskSourceConfig:
        """A config as given (`load_tasks({"source": ...})`): an instance, a mapping or None."""
        return cfg if isinstance(cfg, cls) else cls.load(cfg)

    # -- what the run derives from a kind's settings (each kind answers for its own) --------

    def lease_seconds(self) -> float:
        """The longest a task of this source holds its slot beyond the agent's own budget:
        preparation and grading (a kind that grades longer says so)."""
        return self.prepare_timeout

    def exposed_paths(self) -> tuple[str, ...]:
        """What slots must see of the host for this source's tasks (interpreters)."""
        return (self.python,) if self.python else ()

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()


class CommonSource(TaskSourceConfig):
    """The settings of a kind that registers none of its own (math, say): the common ones."""


class SweSmithSource(TaskSourceConfig):
    """SWE-smith's settings: how a slot is prepared from a repo mirror and graded by the
    repo's tests.

    repo_sources: where mirrors come from, tried in order. Each entry is a directory holding
        `<name>.bundle` files or `<name>` / `<name>.git` repos, or a URL template with
        `{repo}` (the row's repo, `swesmith/` prefix kept) or `{name}` (without it).
    """

    repo_sources: list[Str] = Field(default_factory=lambda: ["https://github.com/{repo}.git"])
    test_timeout: Annotated[float, Field(gt=0)] = 120.0
    pytest_plugin_autoload: bool = True
    # Per-repo test profiles, keyed by the row's repo (`owner/name`, with or without the
    # `swesmith/` prefix, or its last component): python, paths, env, plugin_autoload, test_timeout.
    profiles: dict[str, GradingProfile] = Field(default_factory=dict)
    # Grading runs at once per sandbox host from one worker (0 = no bound): full suites on a
    # small host starve each other into timeouts.
    grading_concurrency: Annotated[int, Field(ge=0)] = 2
    # A timed-out grading run is retried once in the same slot with this many times the
    # timeout (0 = no retry here; the group is still retried by the queue).
    timeout_retry_factor: Annotated[float, Field(ge=0, le=100)] = 2.0
    # Hidden canary tests planted in each grading run (rollout/tasks/canaries.py); off only
    # to measure what the other layers catch alone.
    canaries: bool = True

    def profile(self, repo: str) -> GradingProfile:
        """The test profile of a row's repo: `tasks.profiles` first, then the bundled repos'
        own (bundled/repos/repos.json). Keys tried: the repo as given, without `swesmith/`,
        its last part, and for SWE-smith names (`owner__name.commit`) `owner/name` and `name`."""
        keys = _profile_keys(repo)
        for table in (self.profiles, _bundled_profiles()):
            for key in keys:
                if key in table:
                    return table[key]
        return GradingProfile()

    def lease_seconds(self) -> float:
        # The slowest repo's tests, and a timed-out run retried with timeout_retry_factor x.
        tests = max([self.test_timeout, *(p.test_timeout for p in self.profiles.values()
                                          if p.test_timeout)])
        return self.prepare_timeout + tests * (1 + self.timeout_retry_factor)

    def exposed_paths(self) -> tuple[str, ...]:
        return (*super().exposed_paths(), *(p.python for p in self.profiles.values() if p.python))


def settings_class(kind: str, where: str = "tasks") -> type[TaskSourceConfig]:
    """The settings model task kind `kind` registered (`CommonSource` if none)."""
    from rollout.tasks.registry import UnknownTaskKind, names, task_kind

    try:
        return task_kind(kind).settings or CommonSource
    except UnknownTaskKind:
        raise ConfigError(f"{where}.kind: unknown task kind {kind!r}; registered kinds: "
                          f"{', '.join(names())}") from None


def registered_kinds() -> list[str]:
    from rollout.tasks.registry import names

    return names()
