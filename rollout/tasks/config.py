"""Typed configuration for task sources and the SWE-smith environment.

Hydra configs are validated into these frozen models once (rollout/config.py; direct callers
use `TaskSourceConfig.from_mapping`), so the rest of the task code never touches a raw
DictConfig.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from rollout.config_model import ConfigModel, Str

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


class TaskSourceConfig(ConfigModel):
    """Where tasks come from and how a SWE-smith slot is prepared and graded.

    source: "bundled" (instances shipped with the project), a path to a .jsonl/.json/.parquet
        file, or a Hugging Face dataset name (e.g. "SWE-bench/SWE-smith"; needs `datasets`).
    split: for HF datasets the dataset split ("train"); for every source, "train"/"eval"
        additionally selects a deterministic hash-based partition when `eval_fraction` > 0.
    filter: "python" keeps only rows whose tests are pytest node ids; "" keeps everything;
        any other string keeps rows whose instance_id or repo contains it.
    repo_sources: where mirrors come from, tried in order. Each entry is a directory holding
        `<name>.bundle` files or `<name>` / `<name>.git` repos, or a URL template with
        `{repo}` (the row's repo, `swesmith/` prefix kept) or `{name}` (without it).
    """

    section: ClassVar[str] = "tasks"

    source: Str = BUNDLED
    split: Str = "train"
    filter: Str = "python"
    shuffle: bool = False
    seed: int = 0
    max_items: Annotated[int, Field(ge=0)] | None = None
    eval_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    kind: Str = "swe_smith"
    cache_dir: Str = Field(default_factory=default_cache_dir)
    repo_sources: list[Str] = Field(default_factory=lambda: ["https://github.com/{repo}.git"])
    test_timeout: Annotated[float, Field(gt=0)] = 120.0
    prepare_timeout: float = 60.0
    python: Str = "python"
    pytest_plugin_autoload: bool = True
    # Terminal tasks: "auto" grades with the task's own verifier script where it has one
    # (Harbor's tests/test.sh, Terminal-Bench's run-tests.sh), else its pytest files;
    # "pytest" prefers the pytest files (e.g. offline slots, when the script downloads tools).
    verifier: Literal["auto", "pytest"] = "auto"
    # Terminal tasks: the memory and storage a task.toml asks for must fit the slots
    # (checked before the run starts); false ignores them.
    task_resources: bool = True
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
    # Several task sources mixed by weight, e.g. [{kind: swe_smith, weight: 3},
    # {kind: terminal, weight: 1, source: /data/terminal}]: each entry sets `kind`, `weight`
    # (> 0) and any key of this section for its own source (the rest as above). Empty: one
    # source, the section itself.
    sources: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("sources")
    @classmethod
    def _source_entries(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        allowed = set(cls.model_fields) - {"sources"}
        for i, entry in enumerate(value):
            if not isinstance(entry.get("kind"), str) or not entry["kind"]:
                raise ValueError(f"entry {i} needs a kind (e.g. {{kind: swe_smith, weight: 1}})")
            weight = entry.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
                raise ValueError(f"entry {i} ({entry['kind']}): weight must be a number > 0, "
                                 f"got {weight!r}")
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
        base = {name: getattr(self, name) for name in type(self).model_fields if name != "sources"}
        out = []
        for i, entry in enumerate(self.sources):
            fields = {k: v for k, v in entry.items() if k != "weight"}
            out.append((TaskSourceConfig.load({**base, **fields}, f"tasks.sources[{i}]"),
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

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()
