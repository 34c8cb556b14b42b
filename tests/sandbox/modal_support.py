"""Shared by the modal backend's tests: a private fake-modal control plane per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.sandbox.modal import ModalConfig
from tests.fake_modal import _control

FAKE_SDK = "tests.fake_modal"


@pytest.fixture
def fake_modal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """`$FAKE_MODAL_DIR` for this test; every sandbox left is ended after the test (the
    test's own assertions about leaks run before this)."""
    state = tmp_path / "fake-modal"
    monkeypatch.setenv(_control.ENV, str(state))
    _control.root()
    yield state
    _control.kill_everything()


def modal_config(**overrides: Any) -> ModalConfig:
    settings: dict[str, Any] = {"sdk": FAKE_SDK, "app_name": "rollout-test",
                                "ready_timeout": 60.0, "retry_backoff": 0.05,
                                "retry_backoff_max": 0.5}
    return ModalConfig(**{**settings, **overrides})


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]
