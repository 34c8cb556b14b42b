"""Ray metrics (`ray.util.metrics`) behind the metrics seam: exported by Ray's per-node
metrics agent (with Ray's `ray_` prefix) where the cluster runs it, e.g. `ray start` with
`ray[default]`; a private local Ray without its dashboard has no agent, which is why the
driver also serves a plain /metrics (actors/observe.py).

The same families as the plain registry (rollout/record/metrics.py). A counter is registered without
its `_total`: Ray's exporter names counters itself."""

from __future__ import annotations

from typing import Any

from ray.util import metrics as ray_metrics

from rollout.record.metrics import Family


class RayInstruments:
    def __init__(self) -> None:
        self._made: dict[str, Any] = {}

    def _get(self, family: Family) -> Any:
        made = self._made.get(family.name)
        if made is None:
            keys = family.labels
            if family.kind == "counter":
                made = ray_metrics.Counter(family.name.removesuffix("_total"), family.help,
                                           tag_keys=keys)
            elif family.kind == "gauge":
                made = ray_metrics.Gauge(family.name, family.help, tag_keys=keys)
            else:
                made = ray_metrics.Histogram(family.name, family.help,
                                             boundaries=[b for b in family.buckets if b > 0],
                                             tag_keys=keys)
            self._made[family.name] = made
        return made

    def inc(self, family: Family, labels: dict[str, str], value: float = 1.0) -> None:
        self._get(family).inc(value, tags=labels or None)

    def set(self, family: Family, labels: dict[str, str], value: float) -> None:
        self._get(family).set(value, tags=labels or None)

    def observe(self, family: Family, labels: dict[str, str], value: float) -> None:
        self._get(family).observe(value, tags=labels or None)
