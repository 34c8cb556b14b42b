"""Command-line overrides: every documented key settable as `key=value`, typos caught early.

Hydra refuses `a.b=1` when the composed YAML does not list `a.b` (it wants `+a.b=1`), and
its advice for a typo is to add the `+`. Here the typed config is the schema: an override
of a key the schema knows becomes `++a.b=1` (set, whether or not a YAML file lists it), and
an override of a key it does not know is refused with the closest valid key suggested.
Group selections (`policy=gold`), Hydra's own keys (`hydra.*`) and explicit `+`/`++`/`~`
overrides pass through untouched.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Iterable

# Hydra config groups under conf/ that a user selects with `group=option`.
GROUPS = ("conf", "backend", "policy", "trainer", "logger")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


class OverrideError(ValueError):
    """A command-line override names a key the configuration does not have."""


def _fields(cls: Any) -> dict[str, Any] | None:
    """Field name -> type hint of a dataclass or pydantic model class; None otherwise."""
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}
    model_fields = getattr(cls, "model_fields", None)
    if isinstance(model_fields, dict):
        return {name: f.annotation for name, f in model_fields.items()}
    return None


def _classes(hint: Any) -> list[Any]:
    """The config classes a hint may hold (unwrapping Optional / unions / Annotated)."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _classes(typing.get_args(hint)[0])
    if origin is not None and typing.get_args(hint) and origin not in (list, tuple, dict):
        return [c for a in typing.get_args(hint) for c in _classes(a)]
    return [hint] if _fields(hint) is not None else []


def _is_mapping(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is typing.Annotated or (origin is not None and origin not in (list, tuple, dict)):
        return any(_is_mapping(a) for a in typing.get_args(hint))
    return hint is dict or origin is dict


class KeySchema:
    """The dotted keys a configuration accepts. Below a mapping-typed key (e.g.
    `policy.template_kwargs`, `sandbox.env`) any sub-key is accepted."""

    def __init__(self, sections: dict[str, Iterable[Any]]) -> None:
        self.keys: set[str] = set()
        self.open: set[str] = set()  # mapping-typed keys: free-form below
        for section, classes in sections.items():
            self.keys.add(section)
            for cls in classes:
                self._walk(section, cls)

    def _walk(self, prefix: str, cls: Any) -> None:
        for name, hint in (_fields(cls) or {}).items():
            key = f"{prefix}.{name}"
            self.keys.add(key)
            if _is_mapping(hint):
                self.open.add(key)
            for sub in _classes(hint):
                self._walk(key, sub)

    def knows(self, key: str) -> bool:
        if key in self.keys:
            return True
        parts = key.split(".")
        return any(".".join(parts[:i]) in self.open for i in range(1, len(parts)))

    def suggest(self, key: str) -> str | None:
        section = key.split(".", 1)[0]
        pool = [k for k in self.keys if k.startswith(section + ".")] or sorted(self.keys)
        close = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
        return close[0] if close else None


def launch_schema() -> KeySchema:
    """The schema of `launch.py`'s configuration (rollout.settings.config.load_config's sections);
    a section typed per kind (`backend.*`, `tasks.*`, `policy.*`, `trainer.*`) is the union
    of every registered kind's keys (the chosen kind's model refuses the others, naming it)."""
    from rollout.settings.config import LaunchConfig, section_variants

    sections: dict[str, list[Any]] = {}
    for name, hint in (_fields(LaunchConfig) or {}).items():
        if name == "extra":
            continue
        if (variants := section_variants(name)) is not None:
            sections[name] = variants
        else:
            sections.setdefault(name, []).extend(_classes(hint))
    return KeySchema(sections)


def _selected_backend(args: list[str]) -> str | None:
    """The backend group chosen on the command line (None: the default, local)."""
    chosen = [a.split("=", 1)[1].strip() for a in args if a.split("=", 1)[0].strip() == "backend"]
    return chosen[-1] if chosen else "local"


def _backend_knows(name: str | None, key: str) -> bool:
    """Whether the selected backend's config has the field `key` (backend.<field>...)."""
    from rollout.sandbox.registry import UnknownBackend, config_class

    try:
        cls = config_class(name or "local")
    except UnknownBackend:
        return True  # an unknown backend is reported where the group is resolved
    return key.split(".")[1] in cls.model_fields


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The options of a config group: the YAML files in conf/<group>/."""
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def check_groups(args: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Refuse `group=option` where the group has no such option, listing the options (Hydra's
    own message is many lines and exits 1)."""
    for arg in args:
        key, sep, option = arg.lstrip("+").partition("=")
        key, option = key.strip(), option.strip()
        if not sep or key not in GROUPS or arg.startswith("~"):
            continue
        options = group_options(key, conf_dir)
        if option not in options:
            hint = difflib.get_close_matches(option, options, n=1)
            raise OverrideError(f"unknown {key} {option!r}"
                                + (f"; did you mean {hint[0]}?" if hint else "")
                                + f" ({key} options: {', '.join(options)})")


def normalize_overrides(args: list[str], schema: KeySchema | None = None) -> list[str]:
    """Rewrite plain `key=value` overrides of known keys to `++key=value`; refuse unknown
    keys with a suggestion and unknown group options with the list (`OverrideError`).
    Anything else is returned unchanged."""
    check_groups(args)
    schema = schema or launch_schema()
    selected = _selected_backend(args)
    out = []
    for arg in args:
        if arg.startswith(("-", "+", "~")) or "=" not in arg:
            out.append(arg)
            continue
        key = arg.split("=", 1)[0].strip()
        if key.startswith("hydra.") or key == "hydra" or key in GROUPS:
            out.append(arg)
            continue
        if key == "ray":
            raise OverrideError(
                "ray is a config section, not a group (conf/ray/cluster.yaml is for `ray up`); "
                "set its keys instead, e.g. ray.address=auto")
        moved = "sandbox." + key.split(".", 1)[1] if key.startswith("backend.") else ""
        if moved and schema.knows(moved) and not _backend_knows(selected, key):
            raise OverrideError(f"{key} is a slot limit, the same on every backend: "
                                f"set {moved} instead")
        if not schema.knows(key):
            hint = schema.suggest(key)
            raise OverrideError(f"unknown key {key}" + (f"; did you mean {hint}?" if hint else
                                f"; valid sections: {', '.join(sorted(k for k in schema.keys if '.' not in k))}"))
        if key in schema.keys and "." not in key:
            raise OverrideError(f"{key} is a section; set one of its keys, e.g. {key}.<key>=...")
        out.append("++" + arg)
    return out
