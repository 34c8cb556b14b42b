import pytest
import ray


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray on loopback, shared by the tests of one module."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="rollout",
             _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()
