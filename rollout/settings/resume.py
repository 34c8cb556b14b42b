"""Resuming a run dir: its saved config.yaml is the run's config, whatever the command line
omits.

`python launch.py run.dir=runs/X` on a dir that holds a config.yaml continues that run with
the config it was started with. The command line may repeat what the run was started with;
an override that would change a saved key is refused (`ResumeConflict`, listing every such
key with its saved and new value) unless the command line also says
`run.resume_overrides=true`, which applies the changes. Keys that only steer this launch
(`OPERATIONAL`: the live view, log level, Ctrl-C grace, where Ray and /metrics are) may
always be set.

What is compared: `key=value` with that key's saved value (the whole value); `group=option`
with the option the run was started with (Hydra records the choices in the run dir's
hydra/hydra.yaml, which a resumed launch leaves as it is). A different option is a different
run (`policy=embedded` on a gold run): refused even with the flag; use a new run.dir. A run
dir without that record compares every key the option's YAML file sets
(conf/<group>/<option>.yaml). Ray-free and Hydra-free: plain mappings, the command line's
composed config against the saved one.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from rollout.settings.overrides import CONF_DIR, GROUPS

CONFIG_FILE = "config.yaml"
FLAG = "run.resume_overrides"
# How this launch behaves, not what the run computes: free to differ on resume.
OPERATIONAL = frozenset({"run.dir", FLAG, "run.progress", "run.log_level", "run.shutdown_grace",
                         "ray.address", "ray.num_cpus", "metrics.port", "metrics.host",
                         "metrics.report_interval"})
_MISSING = object()
_SHOWN = 4  # differing keys named in the one-line error; the rest are counted


class ResumeConflict(ValueError):
    """The command line changes keys of the run dir's saved config."""


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run dir was started with (None: not a run dir yet). A config.yaml that
    cannot be read raises ResumeConflict (nothing would say what to resume with)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ResumeConflict(f"cannot read {path} to resume that run: "
                             f"{str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ResumeConflict(f"{path} is not a saved run config (a mapping); "
                             "pick another run.dir")
    return data


def _get(tree: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        child = tree.get(part)
        if not isinstance(child, dict):
            child = tree[part] = {}
        tree = child
    if value is _MISSING:
        tree.pop(last, None)
    else:
        tree[last] = copy.deepcopy(value)


def _leaves(tree: Any, prefix: str) -> list[str]:
    if isinstance(tree, dict) and tree:
        return [leaf for k, v in tree.items() if k != "defaults"
                for leaf in _leaves(v, f"{prefix}.{k}" if prefix else str(k))]
    return [prefix] if prefix else []


def saved_choices(run_dir: Path) -> dict[str, str] | None:
    """The group options a run was started with (None: not recorded)."""
    try:
        data = yaml.safe_load((Path(run_dir) / "hydra" / "hydra.yaml").read_text(encoding="utf-8"))
        choices = data["hydra"]["runtime"]["choices"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return {str(k): str(v) for k, v in choices.items()} if isinstance(choices, dict) else None


def _group_file(group: str, option: str, conf_dir: Path) -> dict[str, Any] | None:
    """What `group=option` sets, as a mapping from the top of the config (None: no file)."""
    path = conf_dir / group / f"{option}.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    content = yaml.safe_load(text) or {}
    # A header `# @package _global_` (the presets) puts its keys at the top level.
    return content if "# @package _global_" in text.splitlines()[:1] else {group: content}


def _group_keys(group: str, option: str, conf_dir: Path) -> list[str]:
    """The keys `group=option` sets: the leaves of its YAML file, under its package."""
    content = _group_file(group, option, conf_dir)
    return [group] if content is None else _leaves(content, "")


def _trusted(choices: dict[str, str] | None, saved: dict[str, Any],
             conf_dir: Path) -> dict[str, str] | None:
    """The recorded choices the saved config agrees with: an option whose file names a
    different `type`, `name` or `kind` than the saved config was not what made it (a
    run dir an older launch.py resumed had hydra/ rewritten by the resuming command)."""
    if not choices:
        return choices
    out = {}
    for group, option in choices.items():
        content = _group_file(group, option, conf_dir) if group in GROUPS else None
        if content is not None and any(
                _get(saved, leaf) != _get(content, leaf) for leaf in _leaves(content, "")
                if leaf.rsplit(".", 1)[-1] in ("type", "name", "kind")):
            continue
        out[group] = option
    return out


def touched_keys(args: list[str], conf_dir: Path = CONF_DIR,
                 choices: dict[str, str] | None = None) -> list[str]:
    """The config keys the command line sets, in order (Hydra's own keys left out); a group
    selection whose option is recorded in `choices` is left to `changed_groups`."""
    keys: list[str] = []
    for arg in args:
        if arg.startswith("-"):
            continue
        name, sep, value = arg.lstrip("+~").partition("=")
        name = name.strip()
        if name == "hydra" or name.startswith("hydra."):
            continue
        if name in GROUPS and sep and not arg.startswith(("+", "~")):
            if choices is None or name not in choices:
                keys += _group_keys(name, value.strip(), conf_dir)
        else:
            keys.append(name)
    return list(dict.fromkeys(keys))


def _show(value: Any) -> str:
    if value is _MISSING:
        return "unset"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def changed_groups(args: list[str], choices: dict[str, str] | None) -> list[str]:
    """`group: recorded -> new` for each group selection that differs from the record."""
    out = []
    for arg in args:
        name, sep, value = arg.partition("=")
        if sep and name.strip() in GROUPS and choices and name.strip() in choices \
                and choices[name.strip()] != value.strip():
            out.append(f"{name.strip()}: {choices[name.strip()]} -> {value.strip()}")
    return out


def resume_config(saved: dict[str, Any], composed: dict[str, Any], args: list[str],
                  choices: dict[str, str] | None = None,
                  conf_dir: Path = CONF_DIR) -> tuple[dict[str, Any], list[str]]:
    """The config a resumed run goes on with: `saved`, with the keys the command line sets
    (`args`, as composed into `composed`) applied where they are operational or equal.
    `choices`: the group options the run was started with. Returns the config and the
    keys it changes ("key: saved -> new"). Raises ResumeConflict when the command line
    picks another group option, or changes saved keys without `run.resume_overrides=true`."""
    choices = _trusted(choices, saved, conf_dir)
    groups = changed_groups(args, choices)
    if groups:
        raise ResumeConflict(
            f"run.dir holds a run started with other config groups ({'; '.join(groups)}); "
            "resume it without them (its config.yaml is used), or start a new run.dir")
    effective = copy.deepcopy(saved)
    changes: list[str] = []
    for key in touched_keys(args, conf_dir, choices):
        new, old = _get(composed, key), _get(saved, key)
        if key not in OPERATIONAL and new != old:
            changes.append(f"{key}: {_show(old)} -> {_show(new)}")
        _set(effective, key, new)
    allow = _get(composed, FLAG) is True
    _set(effective, FLAG, _get(saved, FLAG))  # a permission of this launch, not saved
    if changes and not allow:
        shown = "; ".join(changes[:_SHOWN])
        more = f" and {len(changes) - _SHOWN} more" if len(changes) > _SHOWN else ""
        raise ResumeConflict(
            f"run.dir holds a run started with another config ({shown}{more}); resume it "
            f"without these overrides (its config.yaml is used), or add {FLAG}=true to "
            "apply them")
    return effective, changes
