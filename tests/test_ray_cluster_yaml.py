"""conf/ray/cluster.yaml must be a valid Ray cluster-launcher config (Ray's own schema)."""

import json
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_matches_rays_schema():
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cfg = yaml.safe_load((ROOT / "conf/ray/cluster.yaml").read_text())
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types and len(types) >= 2
    setup = " ".join(cfg["setup_commands"])
    assert "bubblewrap" in setup and "torch==2.13.0" in setup and "rollout-cluster" in setup
