"""conf/ray/cluster.yaml must be a valid Ray cluster-launcher config (Ray's own schema) that
runs this project: Ray's image with this project's Python and this Ray, the project and the
cluster's token on every node, token auth on every `ray start`."""

import json
import sys
from pathlib import Path

import jsonschema
import ray
import ray.autoscaler
import yaml

ROOT = Path(__file__).resolve().parents[1]


def load() -> dict:
    return yaml.safe_load((ROOT / "conf/ray/cluster.yaml").read_text())


def test_cluster_yaml_matches_rays_schema():
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cfg = load()
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types and len(types) >= 2


def test_every_node_runs_rays_image_of_this_python_and_this_ray():
    docker = load()["docker"]
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert docker["image"] == f"rayproject/ray:{ray.__version__}-{py}-cpu"
    # The slot servers' sandboxes (namespaces, loop-mounted slot disks) need root with
    # CAP_SYS_ADMIN inside the container.
    assert {"--privileged", "--user=root"} <= set(docker["run_options"])


def test_the_project_and_the_token_reach_every_node():
    cfg = load()
    assert cfg["file_mounts"]["~/rollout-cluster"] == "."
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    setup = " ".join(cfg["setup_commands"])
    assert "bubblewrap" in setup and "torch==2.13.0" in setup
    assert 'pip install -q -e "$HOME/rollout-cluster[embedded]"' in setup  # ~ in quotes stays ~
    for cmd in cfg["head_start_ray_commands"][1:] + cfg["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token ray start" in cmd, cmd
    assert "--dashboard-host=127.0.0.1" in cfg["head_start_ray_commands"][1]
