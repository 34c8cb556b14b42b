"""SlotLimits: one set of defaults, validated, rendered to flags and parsed back unchanged."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from sandbox_image.config import ConfigError, SlotLimits, config_from_args

BASE = ["--data-dir", "/var/tmp/unused-slot-data"]


@pytest.fixture(autouse=True)
def token(monkeypatch) -> None:
    monkeypatch.setenv("SLOT_SERVER_TOKEN", "t" * 32)


def test_the_defaults() -> None:
    d = SlotLimits()
    assert (d.isolation, d.network, d.memory_mb, d.pids) == ("auto", False, 4096, 1024)
    assert (d.output_cap, d.output_kill, d.file_cap) == (1 << 20, 64 << 20, 64 << 20)
    assert d.exec_timeout_cap == 1800.0
    assert d.command_cap == 128 * 1024 - 1
    assert (d.disk_mb, d.inodes) == (4096, 262144)
    assert d.env == {} and d.expose == ()


def test_flag_defaults_are_the_model_defaults() -> None:
    cfg, _ = config_from_args(BASE)
    assert cfg.limits == SlotLimits()


@pytest.mark.parametrize("limits", [
    SlotLimits(),
    SlotLimits(isolation="required", network=True, memory_mb=None, pids=None, output_cap=1000,
               output_kill=5000, exec_timeout_cap=12.5, file_cap=4096, command_cap=100,
               disk_mb=None, inodes=None, env={"A": "x=y", "B": "-leading dash", "C": ""},
               expose=("/opt/venv", "/tmp/with space")),
    SlotLimits(exec_timeout_cap=0.1 + 0.2, disk_mb=64, inodes=4096),
])
def test_to_argv_round_trips(limits: SlotLimits) -> None:
    cfg, _ = config_from_args(limits.to_argv() + BASE)
    assert cfg.limits == limits


@pytest.mark.parametrize("fields, words", [
    ({"exec_timeout_cap": math.nan}, ["exec_timeout_cap", "finite"]),
    ({"exec_timeout_cap": math.inf}, ["exec_timeout_cap", "finite"]),
    ({"exec_timeout_cap": 0}, ["exec_timeout_cap", "greater than 0"]),
    ({"memory_mb": -5}, ["memory_mb", "greater than or equal"]),
    ({"output_cap": 10, "output_kill": 5}, ["output_kill", "output_cap"]),
    ({"command_cap": 10 << 20}, ["command_cap", "less than or equal"]),
    ({"isolation": "sometimes"}, ["isolation"]),
    ({"env": {"NOT A NAME": "x"}}, ["env"]),
    ({"disk_mb": 1}, ["disk_mb"]),
    ({"surprise": 1}, ["surprise", "Extra inputs"]),
])
def test_bad_limits_are_refused_with_the_field_named(fields: dict, words: list[str]) -> None:
    with pytest.raises(ValidationError) as e:
        SlotLimits(**fields)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_limits_are_frozen() -> None:
    with pytest.raises(ValidationError):
        SlotLimits().memory_mb = 1  # type: ignore[misc]


@pytest.mark.parametrize("flags, words", [
    (["--exec-timeout-cap", "nan"], ["exec_timeout_cap", "finite"]),
    (["--max-timeout", "inf"], ["exec_timeout_cap", "finite"]),
    (["--pids", "-1"], ["pids"]),
    (["--output-cap", "100", "--output-kill", "10"], ["output_kill"]),
    (["--command-cap", str(1 << 20)], ["command_cap"]),
])
def test_bad_flags_are_a_config_error(flags: list[str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_args(BASE + flags)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_zero_means_unlimited_on_the_command_line() -> None:
    cfg, _ = config_from_args(BASE + ["--memory-mb", "0", "--pids", "0", "--disk-mb", "0"])
    assert (cfg.limits.memory_mb, cfg.limits.pids, cfg.limits.disk_mb) == (None, None, None)
