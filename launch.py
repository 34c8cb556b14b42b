"""Run the rollout cluster: `python launch.py conf=swe_smith [overrides]`.

Composes the Hydra config (conf/), validates it once, checks what can be checked before
anything starts (tasks load, policy server and trainer API answer, bubblewrap and the slot
server's interpreter are usable, a Ray cluster to join answers and accepts this process, the
policy client every worker builds can be built), starts or joins Ray,
starts the embedded policy server when `policy=embedded`, runs the actors until every task
is done (or Ctrl-C / SIGTERM), and prints a summary (also the last thing in launch.log).

A `run.dir` that holds a config.yaml is resumed with that saved config (rollout/settings/resume.py):
the command line may repeat it, and an override that changes it is refused (exit 2, the keys
listed, the run dir untouched) unless `run.resume_overrides=true` is given.

Exit codes: 0 every task finished (delivered, or dropped by the trainer's rules); 1 tasks
left unfinished (interrupt) or dropped for an infrastructure failure (sandbox, policy,
grading), or the run failed once started (its error in launch.log and summary.txt); 2 a
configuration or preflight error (one line, no traceback, no run dir left) or a refused
resume.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("launch")


# What Hydra writes into a fresh run dir before our code runs.
_HYDRA_FILES = {"hydra", "launch.log"}

# Set before Hydra runs when run.dir is a run to resume: the config it goes on with (its
# saved config.yaml, plus the overrides allowed to change it) and the keys they change.
_RESUMED: dict[str, Any] | None = None
_RESUME_CHANGES: list[str] = []


def _fail(msg: str, code: int = 2) -> None:
    _remove_unused_run_dir()
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


def _remove_unused_run_dir() -> None:
    """A launch that stops before it starts leaves no run dir behind: remove the one Hydra
    made if it holds nothing but Hydra's own files (a resumed run's dir holds more)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        run_dir = Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # not under Hydra (tests calling helpers directly)
        return
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= _HYDRA_FILES:
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent == run_dir:
                h.close()
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)


def _log_to_file_only(text: str) -> None:
    """Append `text` to launch.log (the run's file log) without echoing it on the console."""
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.acquire()
            try:
                h.stream.write(text + "\n")
                h.flush()
            finally:
                h.release()


def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Join a cluster (returns True) or start a private local Ray on loopback (False)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        # Under token auth (RAY_AUTH_MODE=token) the token comes from RAY_AUTH_TOKEN or
        # ~/.ray/auth_token; preflight has already checked that the cluster accepts it.
        ray.init(address=address, namespace="rollout", log_to_driver=False)
        return True
    else:
        # A private local Ray on loopback: nothing listens on public interfaces.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # address="local": never silently join some other Ray found on this machine.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 namespace="rollout", _node_ip_address="127.0.0.1", log_to_driver=False)
        return False


def start_policy_server(cfg: Any, run_dir: Path, joined: bool) -> tuple[Any, Any]:
    """Start the embedded policy server when asked for. Returns the server (or None) and the
    config with policy.base_url and policy.tokenizer filled in: a new, validated object (the
    loaded config is never changed)."""
    policy = cfg.policy
    changes: dict[str, str] = {}
    server = None
    if policy.kind.serve is not None and not policy.base_url:
        server = policy.kind.serve(run_dir / f"{policy.type}-policy.log", _policy_host(joined))
        log.info("starting the %s policy server (a first start may convert the model)",
                 policy.type)
        changes["base_url"] = server.start()
        log.info("%s policy at %s", policy.type, changes["base_url"])
    try:
        if policy.tokenizer == "embedded" and policy.kind.local_tokenizer:
            from rollout.policy.embedded.model import ensure_checkpoint

            changes["tokenizer"] = str(ensure_checkpoint())
        if changes:
            cfg = cfg.replace(policy=policy.replace(**changes))
        if server is not None:
            cfg = size_to_embedded_server(cfg, server.base_url, server.max_batch_size)
    except BaseException:  # the caller never sees the server: stop it here
        if server is not None:
            server.stop()
        raise
    return server, cfg


def size_to_embedded_server(cfg: Any, base_url: str, batch: int) -> Any:
    """Time a short real generation on the embedded server and bound the trajectories in
    flight so that one turn finishes well inside the LLM timeout (rollout/policy/embedded/
    sizing.py). An explicit workers.trajectories_in_flight wins. Returns the (new) config."""
    from rollout.policy.embedded import sizing

    timeout = min(cfg.agent.llm_timeout, cfg.policy.request_timeout)
    max_tokens = cfg.policy.max_tokens
    log.info("timing the embedded policy server (a short generation)")
    try:
        tp = asyncio.run(sizing.measure(base_url, batch=batch, max_tokens=max_tokens,
                                        llm_timeout=timeout))
    except Exception as e:  # not fatal: the run's policy errors will say what is wrong
        log.warning("could not time the embedded policy server (%s): trajectories in flight "
                    "are not bounded", e)
        return cfg
    limit = sizing.trajectory_limit(tp, max_tokens=max_tokens, llm_timeout=timeout)
    log.info(sizing.describe(tp, limit=limit, max_tokens=max_tokens, llm_timeout=timeout))
    alone = tp.turn_seconds(1, max_tokens)
    if alone > sizing.TURN_SHARE * timeout:
        log.warning("one %d-token turn takes ~%.0fs on this machine even alone (over a quarter "
                    "of the %gs llm_timeout): lower policy.max_tokens or raise agent.llm_timeout",
                    max_tokens, alone, timeout)
    workers, what = sizing.sized_workers(cfg.workers, group_size=cfg.env.group_size, limit=limit)
    log.info("embedded policy: %s", what)
    return cfg.replace(workers=workers) if workers is not cfg.workers else cfg


def _policy_host(joined: bool) -> str:
    # Workers on other nodes of a joined cluster must reach the server; alone, stay on loopback.
    if not joined:
        return "127.0.0.1"
    import ray

    return ray.util.get_node_ip_address()


class ToolServerProcess:
    """The external tool server launch.py started (rollout/toolserver/); `stop` ends it."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()
                self.proc.wait()


def start_tool_server(cfg: Any, run_dir: Path) -> tuple[ToolServerProcess | None, Any]:
    """With tool_server.launch=true: start the tool server with the only copy of the
    secrets (tool_server.secret_env, taken out of this process's environment so nothing
    started later inherits them) and a fresh token (put in this environment, where the
    workers read it); returns it and the config with agent.tool_server_url filled in."""
    import json
    import secrets
    import subprocess

    from rollout.agent.toolbox import external_names

    ts = cfg.tool_server
    if not ts.launch:
        return None, cfg
    missing = [v for v in ts.secret_env if v not in os.environ]
    if missing:
        raise RuntimeError(f"tool_server.secret_env names {', '.join(missing)}, not set in "
                           "launch's environment")
    token = secrets.token_urlsafe(32)
    env = {k: os.environ[k] for k in ("PATH", "LANG", "PYTHONPATH", "HOME") if k in os.environ}
    env.update({v: os.environ.pop(v) for v in ts.secret_env})
    env["ROLLOUT_TOOL_SERVER_TOKEN"] = token
    tools = {name: {} for name in external_names(cfg.agent.tools)}
    tools.update(ts.tools)
    config = {"tools": tools, "concurrency": ts.concurrency, "plugins": list(ts.plugins)}
    logfile = (run_dir / "tool_server.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollout.toolserver", "--host", ts.host, "--port", "0",
         "--config", json.dumps(config)], cwd=Path(__file__).resolve().parent, env=env,
        stdout=subprocess.PIPE, stderr=logfile, start_new_session=True)
    server = ToolServerProcess(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()  # the first line says where it listens
    if "listening on " not in line:
        server.stop()
        raise RuntimeError(f"the tool server did not start (exit {proc.poll()}); see "
                           f"{run_dir / 'tool_server.log'}")
    url = line.rsplit(" ", 1)[1].strip()
    os.environ[cfg.agent.tool_server_token_env] = token
    log.info("tool server: %s (%s)", url, ", ".join(sorted(tools)) or "no tools")
    return server, cfg.replace(agent=cfg.agent.replace(tool_server_url=url))


def preflight(cfg: Any) -> tuple[list[Any], dict[str, int]]:
    """Everything that can be checked before Ray starts; returns the loaded tasks and what
    the load skipped (by reason). Raises PreflightError (or the loader's own clear errors)
    with a one-line message."""
    from rollout.settings import preflight as pf
    from rollout.tasks.mix import TaskEnvs, load_mixed

    pf.check_isolation(cfg.backend.name, cfg.sandbox.isolation)
    pf.check_backend(cfg.backend)
    if cfg.backend.name == "local":
        from rollout.sandbox.local import server_pythonpath

        pf.check_server_python(cfg.backend.python, "backend.python", server_pythonpath())
    from actors.ray_preflight import check_ray_address

    check_ray_address(*_ray_address(cfg))
    pf.check_trainer(cfg.trainer)
    pf.check_policy(cfg.policy)
    pf.check_tokenizer_files(cfg.policy)  # the common mistakes, before the slow part
    tasks, report = load_mixed(cfg.tasks)
    skipped = dict(report.skipped)
    pf.check_tasks(tasks, cfg.tasks.source, skipped)
    envs = TaskEnvs(cfg.tasks)
    pf.check_sandbox_specs(tasks, envs, cfg.sandbox)
    pf.check_task_budgets(tasks, envs, cfg)
    pf.check_images(tasks, cfg.backend.name, cfg.sandbox.images, cfg.sandbox.image_sources)
    # The policy client every worker builds, built once here (it imports transformers, and
    # torch where the tokenizer's class needs AutoTokenizer: in the main thread, as torch
    # loaded from a second thread while ray.init ran died in oneMKL's loader).
    pf.check_tokenizer(cfg.policy, envs)
    return tasks, skipped


def _ray_address(cfg: Any) -> tuple[str | None, str]:
    """The cluster to join (None: a private local Ray) and the key that names it."""
    if cfg.ray.address:
        return cfg.ray.address, "ray.address"
    return os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"


class ActorsFailedToStart(Exception):
    """The run's actors (sandbox pools, queue, sink, workers) could not start."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause  # what actors.cluster.cause_of reports


def exit_code(snap: Any) -> int:
    unfinished = snap.queue.get("pending", 0) + snap.queue.get("leased", 0)
    if unfinished or snap.stopping or snap.queue.get("infra_dropped", 0):
        return 1
    return 0


def _import_the_run() -> None:
    """Import what the run needs before Ray starts. Under `ray job submit` this code lives in
    the job's unpacked working dir, and Ray's working-dir plugin unpacks it afresh (removes
    the directory, then unzips) when it creates a runtime env that names it: a module first
    imported in that moment is missing from disk (seen once in the suite, under load, as
    `FileNotFoundError: .../working_dir_files/_ray_pkg_.../actors/cluster.py`)."""
    import actors.cluster  # noqa: F401
    import actors.progress  # noqa: F401
    import rollout.record.run_record  # noqa: F401
    import rollout.report  # noqa: F401


async def run_cluster(cfg: Any, run_dir: Path, tasks: list[Any], resumed: bool = False) -> int:
    from actors.cluster import RolloutCluster
    from actors.progress import ProgressView
    from rollout.record.run_record import RunRecord

    cluster = RolloutCluster(cfg, tasks, run_dir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, cluster.request_stop, signal.Signals(sig).name)
    show = cfg.run.progress if cfg.run.progress is not None else sys.stdout.isatty()
    view = ProgressView(cfg, enabled=show)
    with view:
        try:
            await cluster.start()
        except Exception as e:
            raise ActorsFailedToStart(e) from e
        snap = await cluster.run(on_tick=view.update)
    summary = view.summary(snap, RunRecord.read(run_dir), resumed=resumed)
    # A gold run's verdict comes before the summary, which stays the last thing said.
    gold = _gold_verdict(run_dir) if cfg.policy.kind.reference else 0
    _write_summary(run_dir, summary)
    if cfg.metrics.enabled:  # again, now with the summary in it
        from rollout.report import build_report

        try:
            log.info("report: %s", build_report(run_dir))
        except Exception as e:  # the run is over and recorded; the report is a view of it
            log.warning("writing report.html failed: %s", e)
    return gold or exit_code(snap)


def _gold_verdict(run_dir: Path) -> int:
    """A gold run validates the tasks: name those whose reference solution did not score
    1.0 (on stderr and in launch.log); 1 if there are any."""
    from rollout.record.run_record import gold_failures

    failed = gold_failures(run_dir)
    if not failed:
        return 0
    lines = [f"error: gold failed on {len(failed)} task(s); their environment or row is "
             "broken (fix or filter them before training):"]
    lines += [f"  {task}: {why}" for task, why in sorted(failed.items())]
    print("\n".join(lines), file=sys.stderr, flush=True)
    _log_to_file_only("\n".join(lines))
    return 1


def _write_summary(run_dir: Path, summary: str) -> None:
    """On stdout, as the last thing in launch.log, and in summary.txt."""
    print(summary, flush=True)
    _log_to_file_only(summary)
    (run_dir / "summary.txt").write_text(summary + "\n")


def _run_failed(run_dir: Path, error: BaseException, stage: str) -> int:
    """A run that fails once its run dir exists: the cause in one line on stderr and in
    launch.log, and a summary.txt that says why. Returns the exit code (1)."""
    from actors.cluster import cause_of

    why = cause_of(error)
    print(f"error: the run failed {stage}: {why}", file=sys.stderr, flush=True)
    log.debug("the run failed %s", stage, exc_info=error)  # the traceback, for a debug log
    _log_to_file_only(f"error: the run failed {stage}: {why}")
    _write_summary(run_dir, "\n".join([
        f"run failed {stage}: {why}",
        f"  nothing more ran; the run dir keeps what was recorded. After fixing the cause, "
        f"launch again with run.dir={run_dir} (add run.resume_overrides=true if the fix is "
        "a changed setting) or with a new run.dir",
    ]))
    return 1


@hydra.main(config_path="conf", config_name="launch", version_base=None)
def main(dcfg: DictConfig) -> None:
    from rollout.settings.config import ConfigError, load_config

    try:
        raw = (_RESUMED if _RESUMED is not None
               else OmegaConf.to_container(dcfg, resolve=True, throw_on_missing=True))
        cfg = load_config(raw)  # type: ignore[arg-type]
    except ConfigError as e:
        _fail(str(e))
    except Exception as e:  # OmegaConf's missing-value and interpolation errors
        key = getattr(e, "full_key", None)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        _fail(f"{key}: {first} (set it on the command line, e.g. {key}=...)" if key else first)
    logging.getLogger().setLevel(cfg.run.log_level)
    from rollout.settings.preflight import PreflightError

    try:
        tasks, skipped = preflight(cfg)
    except (PreflightError, OSError, ValueError, RuntimeError) as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    run_dir = Path(cfg.run.dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    from rollout.record.run_record import write_load_report

    write_load_report(run_dir, skipped)  # the summary counts what the load skipped
    if _RESUMED is None:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(dcfg, resolve=True))
    else:
        log.info("resuming %s with its saved config.yaml", run_dir)
        if _RESUME_CHANGES:  # allowed by run.resume_overrides=true; the old values in the log
            log.warning("run.resume_overrides=true: changing %s", "; ".join(_RESUME_CHANGES))
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(raw)))
    server = tools = None
    stage = "at start (tool server)"
    try:
        tools, cfg = start_tool_server(cfg, run_dir)
        stage = "at start (Ray)"
        _import_the_run()
        joined = init_ray(cfg.ray.address, cfg.ray.num_cpus)
        stage = "at start (policy server)"
        server, cfg = start_policy_server(cfg, run_dir, joined)
        stage = "while running"
        code = asyncio.run(run_cluster(cfg, run_dir, tasks, resumed=_RESUMED is not None))
    except ActorsFailedToStart as e:
        code = _run_failed(run_dir, e, "at start (sandbox pools and actors)")
    except Exception as e:
        code = _run_failed(run_dir, e, stage)
    finally:
        if server is not None:
            server.stop()
        if tools is not None:
            tools.stop()
        import ray

        ray.shutdown()
    sys.exit(code)


def _normalize_argv() -> None:
    """Plain `key=value` for every documented key; unknown keys refused with a suggestion."""
    from rollout.settings.overrides import OverrideError, normalize_overrides

    try:
        sys.argv[1:] = normalize_overrides(sys.argv[1:])
    except OverrideError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _run_dir_arg(args: list[str]) -> str | None:
    """The run.dir the command line names (None: the default, a new timestamped dir)."""
    given = [a.split("=", 1)[1] for a in args
             if "=" in a and a.split("=", 1)[0].lstrip("+").strip() == "run.dir"]
    return given[-1].strip() if given else None


def _compose(args: list[str]) -> dict[str, Any]:
    """The command line's config, composed as Hydra main composes it (Hydra's own keys out)."""
    from hydra import compose, initialize_config_dir

    overrides = [a for a in args if not a.lstrip("+~").startswith("hydra")]
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent / "conf"),
                               version_base=None):
        dcfg = compose(config_name="launch", overrides=overrides)
    return OmegaConf.to_container(dcfg, resolve=True)  # type: ignore[return-value]


def _prepare_resume() -> None:
    """Before Hydra touches anything: if run.dir holds a saved config, resume with it, or
    refuse (exit 2, one line) overrides that would change it; the run dir stays untouched."""
    global _RESUMED, _RESUME_CHANGES
    from rollout.settings.resume import ResumeConflict, resume_config, saved_choices, saved_config

    args = sys.argv[1:]
    where = _run_dir_arg(args)
    if where is None or any(a.startswith("-") for a in args):  # --help, --cfg: Hydra's own
        return
    try:
        saved = saved_config(Path(where))
        if saved is None:
            return
        try:
            composed = _compose(args)
        except Exception as e:  # a missing value or bad interpolation: Hydra's one line
            raise ResumeConflict(str(e).splitlines()[0] if str(e) else type(e).__name__)
        _RESUMED, _RESUME_CHANGES = resume_config(saved, composed, args,
                                                  saved_choices(Path(where)))
        # hydra/ keeps recording how the run was made (its first launch's overrides and
        # group choices), not this launch's command line.
        sys.argv.append("hydra.output_subdir=null")
    except ResumeConflict as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _normalize_argv()
    _prepare_resume()
    main()
