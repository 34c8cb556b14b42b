"""What the benchmarks share: percentiles and a private local Ray on loopback."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def pct(samples: list[float], q: float) -> float:
    """The q-quantile of `samples` (seconds) in milliseconds; nan when there are none."""
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000 if s else float("nan")


@contextlib.contextmanager
def local_ray() -> Iterator[None]:
    """A private local Ray bound to 127.0.0.1 (as launch.py starts one), shut down after."""
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="rollout",
             _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
