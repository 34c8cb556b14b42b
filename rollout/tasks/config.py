"""Typed configuration for task sources and the SWE-smith environment.

Hydra configs are turned into these dataclasses once (see `TaskSourceConfig.from_mapping`),
so the rest of the task code never touches a raw DictConfig.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

BUNDLED = "bundled"


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rollout", "repos")


@dataclass(frozen=True)
class GradingProfile:
    """How one repo's tests are run when graded (SWE-smith keeps one such profile per repo).

    Unset fields fall back to the `tasks.*` defaults. `paths` are appended to sys.path,
    relative to the workspace; None means detect: the workspace, plus `src` when the tree
    has `src/<package>/` (a src layout).
    """

    python: str | None = None
    paths: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    plugin_autoload: bool | None = None
    test_timeout: float | None = None

    @classmethod
    def from_mapping(cls, where: str, data: Any) -> GradingProfile:
        if isinstance(data, cls):
            return data
        if not hasattr(data, "items"):
            raise ValueError(f"{where} must be a mapping, got {data!r}")
        data = dict(data.items())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
                             f"valid keys: {', '.join(sorted(known))}")
        if data.get("paths") is not None:
            paths = data["paths"]
            if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
                raise ValueError(f"{where}.paths must be a list of paths")
            if any(p.startswith("/") or ".." in p.split("/") for p in paths):
                raise ValueError(f"{where}.paths must be relative paths inside the repo")
            data["paths"] = tuple(paths)
        env = data.get("env") or {}
        if not hasattr(env, "items"):
            raise ValueError(f"{where}.env must be a mapping of variable names to values")
        data["env"] = tuple((str(k), str(v)) for k, v in env.items())
        timeout = data.get("test_timeout")
        if timeout is not None and (not isinstance(timeout, (int, float)) or not timeout > 0):
            raise ValueError(f"{where}.test_timeout must be a number > 0, got {timeout!r}")
        return cls(**data)


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
    fields = {f.name for f in dataclasses.fields(GradingProfile)}
    return {name: GradingProfile.from_mapping(f"{path}:{name}",
                                              {k: v for k, v in entry.items() if k in fields})
            for name, entry in table.items()}


@dataclass
class TaskSourceConfig:
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

    source: str = BUNDLED
    split: str = "train"
    filter: str = "python"
    shuffle: bool = False
    seed: int = 0
    max_items: int | None = None
    eval_fraction: float = 0.0
    kind: str = "swe_smith"
    cache_dir: str = field(default_factory=default_cache_dir)
    repo_sources: list[str] = field(default_factory=lambda: ["https://github.com/{repo}.git"])
    test_timeout: float = 120.0
    prepare_timeout: float = 60.0
    python: str = "python"
    pytest_plugin_autoload: bool = True
    # Per-repo test profiles, keyed by the row's repo (`owner/name`, with or without the
    # `swesmith/` prefix, or its last component): python, paths, env, plugin_autoload, test_timeout.
    profiles: dict[str, Any] = field(default_factory=dict)
    # Grading runs at once per sandbox host from one worker (0 = no bound): full suites on a
    # small host starve each other into timeouts.
    grading_concurrency: int = 2
    # A timed-out grading run is retried once in the same slot with this many times the
    # timeout (0 = no retry here; the group is still retried by the queue).
    timeout_retry_factor: float = 2.0

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> TaskSourceConfig:
        """Build from a dict or DictConfig, rejecting unknown keys with a clear message."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        data = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown task config keys {unknown}; valid keys are {sorted(known)}"
            )
        if "repo_sources" in data and data["repo_sources"] is not None:
            data["repo_sources"] = [str(s) for s in data["repo_sources"]]
        out = cls(**data)
        out.validate()
        return out

    def __post_init__(self) -> None:
        self.profiles = {str(k): GradingProfile.from_mapping(f"profiles.{k}", v)
                         for k, v in dict(self.profiles).items()}

    def validate(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_items is not None and self.max_items < 0:
            raise ValueError(f"max_items must be >= 0 or None, got {self.max_items}")
        if not self.test_timeout > 0:
            raise ValueError(f"test_timeout must be > 0, got {self.test_timeout}")
        if self.grading_concurrency < 0:
            raise ValueError(f"grading_concurrency must be >= 0, got {self.grading_concurrency}")
        if not 0 <= self.timeout_retry_factor <= 100:
            raise ValueError(f"timeout_retry_factor must be in [0, 100], got "
                             f"{self.timeout_retry_factor}")

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
