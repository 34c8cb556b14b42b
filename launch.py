"""Run the rollout cluster: `python launch.py conf=swe_smith [overrides]`.

Composes the Hydra config (conf/), validates it once, starts or joins Ray, starts the
embedded policy server when `policy=embedded`, runs the actors until every task is done
(or Ctrl-C / SIGTERM), and prints a summary. Exit code 0 on a clean run, 1 when tasks were
left unfinished by an interrupt or a failure, 2 on a configuration error.
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


def _fail(msg: str, code: int = 2) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Join a cluster (returns True) or start a private local Ray on loopback (False)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, namespace="rollout", log_to_driver=False)
        return True
    else:
        # A private local Ray on loopback: nothing listens on public interfaces.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # address="local": never silently join some other Ray found on this machine.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 namespace="rollout", _node_ip_address="127.0.0.1", log_to_driver=False)
        return False


def start_policy_server(cfg: Any, run_dir: Path, joined: bool) -> Any:
    """Start the embedded policy server when asked for; fill in base_url and tokenizer."""
    policy = cfg.policy
    needs_tokenizer = policy.tokenizer in ("", "embedded")
    server = None
    if policy.type == "embedded" and not policy.base_url:
        from rollout.policy.embedded.launcher import EmbeddedServerProcess

        server = EmbeddedServerProcess(log_file=run_dir / "embedded-policy.log",
                                       host=_policy_host(joined))
        log.info("starting the embedded policy server (first start converts the model)")
        policy.base_url = server.start()
        log.info("embedded policy at %s", policy.base_url)
    if needs_tokenizer and policy.type in ("embedded", "gold", "scripted"):
        from rollout.policy.embedded.model import ensure_checkpoint

        policy.tokenizer = str(ensure_checkpoint())
    return server


def _policy_host(joined: bool) -> str:
    # Workers on other nodes of a joined cluster must reach the server; alone, stay on loopback.
    if not joined:
        return "127.0.0.1"
    import ray

    return ray.util.get_node_ip_address()


async def run_cluster(cfg: Any, run_dir: Path) -> int:
    from actors.cluster import RolloutCluster
    from actors.progress import ProgressView
    from rollout.tasks import load_tasks

    tasks = load_tasks(cfg.tasks)
    if not tasks:
        _fail(f"no tasks loaded from tasks.source={cfg.tasks.source!r}")
    cluster = RolloutCluster(cfg, tasks, run_dir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, cluster.request_stop, signal.Signals(sig).name)
    show = cfg.run.progress if cfg.run.progress is not None else sys.stdout.isatty()
    view = ProgressView(cfg, enabled=show)
    with view:
        await cluster.start()
        snap = await cluster.run(on_tick=view.update)
    summary = view.summary(snap)
    print(summary)
    (run_dir / "summary.txt").write_text(summary + "\n")
    unfinished = snap.queue.get("pending", 0) + snap.queue.get("leased", 0)
    return 0 if unfinished == 0 and not snap.stopping else 1


@hydra.main(config_path="conf", config_name="launch", version_base=None)
def main(dcfg: DictConfig) -> None:
    from rollout.config import ConfigError, load_config

    try:
        raw = OmegaConf.to_container(dcfg, resolve=True, throw_on_missing=True)
        cfg = load_config(raw)  # type: ignore[arg-type]
    except ConfigError as e:
        _fail(str(e))
    except Exception as e:  # OmegaConf's missing-value and interpolation errors
        key = getattr(e, "full_key", None)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        _fail(f"{key}: {first} (set it on the command line, e.g. {key}=...)" if key else first)
    logging.getLogger().setLevel(cfg.run.log_level)
    run_dir = Path(cfg.run.dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(dcfg, resolve=True))
    joined = init_ray(cfg.ray.address, cfg.ray.num_cpus)
    server = None
    try:
        server = start_policy_server(cfg, run_dir, joined)
        code = asyncio.run(run_cluster(cfg, run_dir))
    finally:
        if server is not None:
            server.stop()
        import ray

        ray.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
