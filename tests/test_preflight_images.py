"""Preflight resolves every image the tasks name before a run starts (issue 26, case 7)."""

from __future__ import annotations

import dataclasses

import pytest

from rollout.settings.preflight import PreflightError, check_images
from rollout.tasks import load_tasks
from tests.launch_config import compose_config


def test_every_task_image_must_resolve_before_the_run(tmp_path):
    cfg = compose_config(["conf=swe_smith", f"run.dir={tmp_path}"])
    tasks = load_tasks(cfg.tasks)
    check_images(tasks, cfg.backend.name, cfg.sandbox.images)  # the bundled image is mapped
    layout = tmp_path / "layout"
    layout.mkdir()
    ok = [dataclasses.replace(tasks[0], image=label)
          for label in ("host", f"oci:{layout}", str(layout), "sha256:" + "0" * 64)]
    check_images(tasks + ok, "local", cfg.sandbox.images)
    unknown = [dataclasses.replace(t, image=f"swebench/sweb.eval.x86_64.{i}:latest")
               for i, t in enumerate(tasks[:3])]
    with pytest.raises(PreflightError) as err:
        check_images(tasks + unknown, "local", cfg.sandbox.images)
    message = str(err.value)
    assert "\n" not in message and "'swebench/sweb.eval.x86_64.0:latest'" in message
    assert "and 2 more" in message and "sandbox.images" in message
    check_images(unknown, "modal", {})  # Modal maps task images itself
