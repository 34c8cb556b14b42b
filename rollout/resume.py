"""Resuming a run dir: its saved config.yaml is the run's config, whatever the command line
omits.

`python launch.py run.dir=runs/X` on a dir that holds a config.yaml continues that run with
the config it was started with. The command line may repeat what the run was started with;
an override that would change a saved key is refused (`ResumeConflict`, listing every such
key with its saved and new value) unless the command line also says
`run.resume_overrides=true`, which applies the changes. Keys that only steer this launch
(`OPERATIONAL`: the live view, log level, Ctrl-C grace, where Ray and /metrics are) may
always be set.

What an override touches: `key=value` that key (its whole value); `group=option` every key
that option's YAML file sets (conf/<group>/<option>.yaml), so `policy=embedded` on a gold run
is a change of `policy.type`. Ray-free and Hydra-free: it compares plain mappings, the
command line's composed config against the saved one.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from rollout.overrides import CONF_DIR, GROUPS

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


def _group_keys(group: str, option: str, conf_dir: Path) -> list[str]:
    """The keys `group=option` sets: the leaves of its YAML file, under its package."""
    path = conf_dir / group / f"{option}.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return [group]
    content = yaml.safe_load(text) or {}
    # A header `# @package _global_` (the presets) puts its keys at the top level.
    package = "" if "# @package _global_" in text.splitlines()[:1] else group
    return _leaves(content, package)


def touched_keys(args: list[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """The config keys the command line sets, in order (Hydra's own keys left out)."""
    keys: list[str] = []
    for arg in args:
        if arg.startswith("-"):
            continue
        name, sep, value = arg.lstrip("+~").partition("=")
        name = name.strip()
        if name == "hydra" or name.startswith("hydra."):
            continue
        if name in GROUPS and sep and not arg.startswith(("+", "~")):
            keys += _group_keys(name, value.strip(), conf_dir)
        else:
            keys.append(name)
    return list(dict.fromkeys(keys))


def _show(value: Any) -> str:
    if value is _MISSING:
        return "unset"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resume_config(saved: dict[str, Any], composed: dict[str, Any], args: list[str],
                  conf_dir: Path = CONF_DIR) -> tuple[dict[str, Any], list[str]]:
    """The config a resumed run goes on with: `saved`, with the keys the command line sets
    (`args`, as composed into `composed`) applied where they are operational or equal.
    Returns it and the keys it changes ("key: saved -> new"). Raises ResumeConflict when
    the command line changes saved keys and does not say `run.resume_overrides=true`."""
    effective = copy.deepcopy(saved)
    changes: list[str] = []
    for key in touched_keys(args, conf_dir):
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
