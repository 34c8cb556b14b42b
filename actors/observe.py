"""The driver's side of watching a run: the timeline, the HTML report, the gauges, /metrics.

`RunObserver.tick(snapshot)` is called after every poll of the actors. It appends a point to
`<run_dir>/timeline.jsonl` every TIMELINE_EVERY seconds (slots, tasks, trainer: what the
report's time plots need), rebuilds report.html every `metrics.report_interval` seconds in a
thread (never more than one build at a time, never on the driver's loop, and less often
when a build is slow: at most REPORT_SHARE of one core), and feeds the
cluster gauges to the metrics seam. `close()` writes the last point and the final report.
Nothing here may stop a run: failures are logged once.

With `metrics.port` set, `start()` serves GET /metrics (Prometheus text format): the driver's
gauges (slots, hosts, tasks, trainer) and the sink actor's trajectory and group families,
fetched from it on each scrape. Port 0 picks a free port (`metrics_url` tells which).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from actors.metrics import RayInstruments
from rollout.settings.config import MetricsConfig
from rollout.record.events import EventTail
from rollout.record.metrics import NoopMetrics, PrometheusRegistry, StatsMetrics
from rollout.report import build_report
from rollout.report.data import TIMELINE_FILE
from rollout.report.data import collect
from rollout.record.stats import ClusterStats, GroupStats, TrajectoryStats
from rollout.record.wandb_log import LoggerConfig, WandbLogger

log = logging.getLogger(__name__)

TIMELINE_EVERY = 2.0  # seconds between timeline points
REPORT_SHARE = 0.05  # at most this share of one core goes to refreshing report.html


def timeline_point(snap: Any) -> dict[str, Any]:
    """One timeline line from the driver's Snapshot (actors/cluster.py)."""
    q, s = snap.queue, snap.sink
    images: dict[str, dict[str, int]] = {}
    for p in snap.pools:
        for image, d in (p.get("images") or {}).items():
            agg = images.setdefault(image, {"hosts": 0, "slots": 0, "in_use": 0})
            for k in agg:
                agg[k] += int(d.get(k, 0))
    return {
        "t": round(time.time(), 3),
        "completed": q.get("completed", 0), "dropped": q.get("dropped", 0),
        "leased": q.get("leased", 0), "pending": q.get("pending", 0),
        "trajectories": sum(w.trajectories_done for w in snap.workers),
        "in_flight": sum(w.trajectories_in_flight for w in snap.workers),
        "slots_in_use": sum(p.get("slots_in_use", 0) for p in snap.pools),
        "slots_total": sum(p.get("slots_total", 0) for p in snap.pools),
        "images": images,
        "delivered": s.get("delivered", 0), "outbox": s.get("pending", 0),
        "trainer_paused": bool(s.get("paused")), "trainer_queue": s.get("trainer_queue"),
    }


class RunObserver:
    def __init__(self, run_dir: Path, cfg: MetricsConfig, logger: LoggerConfig | None = None,
                 run_id: str = "", config: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self._started = time.monotonic()
        self.wandb = (WandbLogger(logger, self.run_dir, run_id, config or {})
                      if logger is not None and logger.type == "wandb" else None)
        self._wandb_every = logger.log_interval if logger is not None else 0.0
        self._next_wandb = time.monotonic() + self._wandb_every
        self._wandb_step: asyncio.Task[None] | None = None
        self._tail = EventTail(self.run_dir)
        self._next_point = 0.0
        self._next_report = 0.0  # the first tick writes one: the user can open it at once
        self._building: asyncio.Task[None] | None = None
        self._warned: set[str] = set()
        self.registry = PrometheusRegistry()
        self.metrics = (StatsMetrics(self.registry, RayInstruments()) if cfg.enabled
                        else NoopMetrics())
        self._sink: Any = None
        self._runner: web.AppRunner | None = None
        self.metrics_url: str | None = None

    async def start(self, sink: Any) -> None:
        """Start wandb when asked for; serve /metrics when `metrics.port` is set (`sink`:
        the TrainerSink actor)."""
        self._sink = sink
        if self.wandb is not None:
            await asyncio.to_thread(self.wandb.start)
        if not self.cfg.enabled or self.cfg.port is None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port)
        try:
            await site.start()
        except OSError as e:  # the port is taken: the run goes on without the endpoint
            log.error("cannot serve /metrics on %s:%s (%s); set metrics.port to a free port",
                      self.cfg.host, self.cfg.port, e)
            await self._runner.cleanup()
            self._runner = None
            return
        port = self._runner.addresses[0][1]
        self.metrics_url = f"http://{self.cfg.host}:{port}/metrics"
        log.info("Prometheus metrics at %s", self.metrics_url)

    async def _serve(self, request: web.Request) -> web.Response:
        text = self.registry.render()
        if self._sink is not None:
            try:
                text += await asyncio.wait_for(self._sink.metrics_text.remote(), 10)
            except Exception as e:  # the sink is busy or gone (teardown): the driver's part
                self._warn_once("fetching the sink's metrics", e)
        return web.Response(text=text, content_type="text/plain",
                            headers={"X-Content-Type-Options": "nosniff"},
                            charset="utf-8")

    def _warn_once(self, what: str, error: BaseException) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s failed (%s: %s); the run goes on", what, type(error).__name__, error)

    def tick(self, snap: Any, final: bool = False) -> None:
        now = time.monotonic()
        point = timeline_point(snap)
        cluster = ClusterStats.from_point(point, snap.pools)
        self.metrics.cluster(cluster)
        if self.wandb is not None and not self.wandb.failed:
            self.wandb.cluster(cluster)
            if not final and now >= self._next_wandb and self._wandb_step is None:
                self._next_wandb = now + self._wandb_every
                self._wandb_step = asyncio.get_running_loop().create_task(self._log_wandb())
        if not self.cfg.enabled:
            return
        if final or now >= self._next_point:
            self._next_point = now + TIMELINE_EVERY
            try:
                with (self.run_dir / TIMELINE_FILE).open("a", encoding="utf-8") as fh:
                    point = {**point, **({"final": True} if final else {})}
                    fh.write(json.dumps(point, separators=(",", ":")) + "\n")
            except OSError as e:
                self._warn_once("writing the timeline", e)
        if not final and now >= self._next_report and self._building is None:
            self._next_report = now + self.cfg.report_interval
            self._building = asyncio.get_running_loop().create_task(self._build())

    async def _build(self) -> None:
        started = time.monotonic()
        try:
            await asyncio.to_thread(build_report, self.run_dir)
        except Exception as e:
            self._warn_once("refreshing report.html", e)
        finally:
            # A big run's report takes seconds to build: refresh it at most so often that
            # building costs under REPORT_SHARE of one core.
            took = time.monotonic() - started
            self._next_report = max(self._next_report, time.monotonic() + took / REPORT_SHARE)
            self._building = None

    def _wandb_feed_and_write(self) -> None:
        """In a thread: the new trajectory lines into wandb's figures, then one step."""
        assert self.wandb is not None
        groups = set()
        for line in self._tail.read():
            self.wandb.trajectory(TrajectoryStats.from_line(line))
            self.wandb.sample(line)
            key = (line.get("task"), line.get("attempt"))
            if key not in groups:
                groups.add(key)
                self.wandb.group(GroupStats.from_fate(str(line.get("group", ""))))
        self.wandb.write(self.wandb.collect(time.monotonic() - self._started))

    async def _log_wandb(self) -> None:
        try:
            await asyncio.to_thread(self._wandb_feed_and_write)
        except Exception as e:
            self._warn_once("logging to wandb", e)
        finally:
            self._wandb_step = None

    async def _finish_wandb(self) -> None:
        if self.wandb is None:
            return
        if self._wandb_step is not None:
            await asyncio.gather(self._wandb_step, return_exceptions=True)
        try:
            await asyncio.to_thread(self._wandb_feed_and_write)
            figures = (await asyncio.to_thread(collect, self.run_dir))["reliability"]
            await asyncio.to_thread(self.wandb.finish, {
                f"reliability/{k}": v for k, v in figures.items() if isinstance(v, (int, float))})
        except Exception as e:
            self._warn_once("finishing the wandb run", e)

    async def close(self, snap: Any) -> Path | None:
        """The last timeline point and the final report (after the event log is flushed);
        /metrics stops."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if not self.cfg.enabled:
            await self._finish_wandb()
            return None
        if self._building is not None:
            await asyncio.gather(self._building, return_exceptions=True)
        self.tick(snap, final=True)
        await self._finish_wandb()
        try:
            return await asyncio.to_thread(build_report, self.run_dir)
        except Exception as e:
            self._warn_once("writing report.html", e)
            return None
