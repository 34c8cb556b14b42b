"""`logger=wandb`: the run's numbers in a Weights & Biases run, offline by default.

A `Metrics` implementation (rollout/protocols.py) fed by the driver: it accumulates typed
stats between two `collect()` calls and `write()`s one step (the driver calls it in a thread,
every `logger.log_interval` seconds). Names follow Atropos/SkyRL where they exist:
`generate/avg_reward`, `generate/avg_num_turns`, `generate/num_timeout_trajectories`,
`train_perf/items_sent`, `train_perf/items_rejected`, ...; `progress/*` and `time/*` as in
prime-rl. At the end a `rollouts` table holds a sample of trajectories (their messages, score,
outcome) and the summary the reliability figures.

Guarantees: logging never blocks or fails a run. A missing or broken wandb (import error,
unwritable dir, a failing call) is logged once; from then on this logger does nothing.
`mode=online` is used only when credentials exist (WANDB_API_KEY, or `wandb login`'s
~/.netrc entry); otherwise it logs offline and says so.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from rollout.config_model import ConfigModel, Str
from rollout.record.stats import ClusterStats, GroupStats, TrajectoryStats

log = logging.getLogger(__name__)

TIMEOUT_OUTCOMES = {"timeout"}
ERROR_OUTCOMES = {"sandbox_error", "policy_error", "grading_error"}
TABLE_COLUMNS = ["task", "trajectory", "outcome", "score", "turns", "tokens", "messages"]


class LoggerConfig(ConfigModel):
    section: ClassVar[str] = "logger"

    type: Literal["none", "wandb"] = "none"
    project: Str = "rollout-cluster"
    entity: Str | None = None
    name: Str | None = None  # default: the run id
    group: Str | None = None
    tags: list[Str] = Field(default_factory=list)
    mode: Literal["offline", "online"] = "offline"
    dir: Str | None = None  # default: the run dir (an offline run is <dir>/wandb/offline-run-*)
    log_interval: Annotated[float, Field(gt=0)] = 10.0
    table_size: Annotated[int, Field(ge=0)] = 32  # trajectories sampled into the table


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def messages_text(line: dict[str, Any]) -> str:
    """A trajectory's turns and tool calls as readable text, from its event line."""
    out = []
    for kind, _, _, f in line.get("ev", []):
        if kind == "turn":
            out.append(f"assistant: {f.get('text', '')}")
        elif kind == "tool":
            out.append(f"tool {f.get('name')} (exit {f.get('exit')}): {f.get('out', '')}")
        elif kind == "verify":
            out.append(f"grading: score {f.get('score')} ({f.get('reason')})")
    return "\n".join(out)


class WandbLogger:
    def __init__(self, cfg: LoggerConfig, run_dir: Path, run_id: str,
                 config: dict[str, Any]) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.config = config
        self.run: Any = None
        self.failed = False
        self._lock = threading.Lock()  # write() runs in a thread; one call at a time
        self._step = 0
        self._reset()
        self._cluster: ClusterStats | None = None
        self._sample: list[dict[str, Any]] = []
        self._seen = 0
        self._rng = random.Random(0)

    def _reset(self) -> None:
        self._outcomes: Counter[str] = Counter()
        self._scores: list[float] = []
        self._turns: list[int] = []
        self._tokens: list[int] = []
        self._phases: dict[str, list[float]] = {}
        self._groups: Counter[str] = Counter()

    def _fail(self, what: str, error: BaseException) -> None:
        if not self.failed:
            log.warning("wandb: %s failed (%s: %s); the run goes on without wandb", what,
                        type(error).__name__, error)
        self.failed = True

    # -- lifecycle (call in a thread: wandb may block) ---------------------------------------

    def start(self) -> None:
        try:
            import wandb

            mode = self.cfg.mode
            if mode == "online" and not has_credentials():
                log.warning("wandb: no credentials (set WANDB_API_KEY or run `wandb login`); "
                            "logging offline")
                mode = "offline"
            where = Path(self.cfg.dir) if self.cfg.dir else self.run_dir
            where.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=self.cfg.project, entity=self.cfg.entity,
                name=self.cfg.name or self.run_id, group=self.cfg.group,
                tags=list(self.cfg.tags) or None, mode=mode, dir=str(where),
                config=self.config, reinit="create_new",
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True,
                                        disable_git=True, save_code=False,
                                        disable_job_creation=True))
            log.info("wandb: logging %s to %s", mode, self.run.dir)
        except BaseException as e:  # ImportError, a bad dir, a refused login, ...
            self._fail("start", e)

    def write(self, payload: dict[str, Any]) -> None:
        if self.failed or self.run is None or not payload:
            return
        with self._lock:
            try:
                self._step += 1
                self.run.log(payload, step=self._step)
            except Exception as e:
                self._fail("log", e)

    def finish(self, summary: dict[str, Any]) -> None:
        if self.failed or self.run is None:
            return
        with self._lock:
            try:
                import wandb

                if self._sample:
                    table = wandb.Table(columns=TABLE_COLUMNS)
                    for line in self._sample:
                        table.add_data(line.get("task"), line.get("id"), line.get("outcome"),
                                       line.get("score"), line.get("turns"), line.get("tokens"),
                                       messages_text(line))
                    self._step += 1
                    self.run.log({"rollouts": table}, step=self._step)
                for k, v in summary.items():
                    if v is not None:
                        self.run.summary[k] = v
                self.run.finish()
            except Exception as e:
                self._fail("finish", e)
            finally:
                self.run = None

    # -- Metrics (the driver's loop) -----------------------------------------------------------

    def trajectory(self, s: TrajectoryStats) -> None:
        self._outcomes[s.outcome] += 1
        if s.score is not None:
            self._scores.append(s.score)
        self._turns.append(s.turns)
        self._tokens.append(s.tokens)
        for phase, seconds in s.phases:
            self._phases.setdefault(phase, []).append(seconds)

    def group(self, s: GroupStats) -> None:
        self._groups[s.result] += 1

    def cluster(self, s: ClusterStats) -> None:
        self._cluster = s

    def sample(self, line: dict[str, Any]) -> None:
        """Reservoir-sample trajectory lines for the rollout table."""
        self._seen += 1
        if len(self._sample) < self.cfg.table_size:
            self._sample.append(line)
        elif self.cfg.table_size:
            j = self._rng.randrange(self._seen)
            if j < self.cfg.table_size:
                self._sample[j] = line

    def collect(self, elapsed: float) -> dict[str, Any]:
        """The step since the last collect (and reset the interval's figures)."""
        def mean(xs: list[float] | list[int]) -> float | None:
            return sum(xs) / len(xs) if xs else None

        n = sum(self._outcomes.values())
        out: dict[str, Any] = {"time/elapsed": round(elapsed, 2)}
        if n:
            out.update({
                "generate/num_trajectories": n,
                "generate/avg_reward": mean(self._scores),
                "generate/avg_num_turns": mean(self._turns),
                "generate/avg_num_tokens": mean(self._tokens),
                "generate/num_timeout_trajectories": sum(self._outcomes[o] for o in TIMEOUT_OUTCOMES),
                "generate/num_error_trajectories": sum(self._outcomes[o] for o in ERROR_OUTCOMES),
            })
            for phase, xs in self._phases.items():
                out[f"train_perf/{phase}_time_mean"] = mean(xs)
        if self._groups:
            out["train_perf/items_sent"] = self._groups["delivered"]
            out["train_perf/items_rejected"] = self._groups["dropped"]
            out["train_perf/groups_retried"] = self._groups["retried"]
        c = self._cluster
        if c is not None:
            out.update({f"progress/tasks_{k}": v for k, v in c.tasks.items()})
            out["progress/slots_busy"] = sum(b for b, _ in c.slots.values())
            out["progress/slots_free"] = sum(f for _, f in c.slots.values())
            out["progress/outbox_groups"] = c.outbox
            out["progress/trainer_paused"] = int(c.trainer_paused)
            if c.trainer_queue is not None:
                out["progress/trainer_queue_size"] = c.trainer_queue
        self._reset()
        return {k: v for k, v in out.items() if v is not None}
