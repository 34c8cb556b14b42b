"""The frozen config crosses Ray intact, and what the cluster derives from it is a new object."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
from pydantic import ValidationError

from actors.cluster import RolloutCluster
from rollout.settings.config import LaunchConfig
from tests.actors.helpers import gold_config


@ray.remote
def _inside_a_worker(cfg: LaunchConfig) -> tuple[LaunchConfig, str]:
    try:
        cfg.trainer.env_name = "changed"  # type: ignore[misc]
    except ValidationError as e:
        return cfg, e.errors()[0]["type"]
    return cfg, "changed"


def test_a_frozen_config_round_trips_through_ray(ray_local, tmp_path: Path):
    cfg = gold_config(tmp_path, "trainer=atropos", "env.name=calc")
    back, outcome = ray.get(_inside_a_worker.remote(cfg))
    assert outcome == "frozen_instance"  # still frozen in the worker
    assert back == cfg and back is not cfg
    assert back.tasks.profile("swesmith/rollout__workpool.7ac578b2").plugin_autoload is True


def test_the_sink_gets_a_derived_trainer_config(tmp_path: Path):
    cfg = gold_config(tmp_path, "trainer=atropos", "env.name=calc", "env.weight=2",
                      "env.min_batch_allocation=0.25")
    trainer = RolloutCluster(cfg, [], tmp_path)._trainer_config()
    assert (trainer.env_name, trainer.weight, trainer.min_batch_allocation) == ("calc", 2.0, 0.25)
    assert trainer.url == cfg.trainer.url and trainer.type == "atropos"
    assert (cfg.trainer.env_name, cfg.trainer.weight) == ("swe_smith", 1.0)  # untouched
    with pytest.raises(ValidationError, match="frozen"):
        trainer.weight = 3.0  # type: ignore[misc]
