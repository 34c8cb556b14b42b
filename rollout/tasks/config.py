"""Typed configuration for task sources and the SWE-smith environment.

Hydra configs are turned into these dataclasses once (see `TaskSourceConfig.from_mapping`),
so the rest of the task code never touches a raw DictConfig.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

BUNDLED = "bundled"


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rollout", "repos")


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

    def validate(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_items is not None and self.max_items < 0:
            raise ValueError(f"max_items must be >= 0 or None, got {self.max_items}")
        if self.test_timeout <= 0:
            raise ValueError(f"test_timeout must be > 0, got {self.test_timeout}")

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()
