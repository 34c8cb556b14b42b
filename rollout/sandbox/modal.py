"""`ModalBackend`: slot servers as Modal sandboxes (`backend=modal`).

One sandbox per host: the image is the task's image (`Image.from_registry`) plus python,
bubblewrap and the slot server's own code; the slot server is the sandbox's entrypoint,
listening on `port`, reached through Modal's encrypted tunnel (`sandbox.tunnels()`), its
token passed as a Modal secret (never in argv, tags or logs). Only the async API (`.aio`).

Guarantees (tests/sandbox/test_modal_*.py, against tests/fake_modal):
- Lifetime: a sandbox lives `timeout` seconds from creation; its host is retired
  `lease_reserve` seconds before that (`Host.meta["retire_at"]`, honoured by the fleet: no
  new lease after it, retired once no slot is leased), and the launch config is refused
  unless `lease_reserve` covers a trajectory's budget + prepare + grading + margin. So no
  trajectory is ever scored on a sandbox past its timeout.
- Rate: creations go through the fleet's limiter (default 4/s, `max_starting` at once);
  throttling (`ResourceExhaustedError`, service errors, the `max_sandboxes` cap) is retried
  with exponential backoff and jitter.
- Leaks: every sandbox is tagged {run_id, pool, image, session} at creation. `discover()`
  terminates this run's and pool's sandboxes of earlier sessions (a driver that died: their
  tokens died with it, so they cannot be adopted) and never touches other runs. `close()`
  terminates everything this backend created, including creations still in flight, and
  sweeps by session tag; an atexit / SIGTERM backstop terminates what is left.
- `start_host` cancelled anywhere leaves nothing running: the create runs shielded and a
  sandbox it produced after the caller left is terminated.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib
import logging
import secrets as _secrets
import signal
import threading
import time
import uuid
from typing import Any, ClassVar, Literal

import aiohttp
from pydantic import Field, model_validator

from rollout.retry import NotReady, WaitTimeout, retrying, wait_until
from rollout.sandbox.client import SlotServerClient
from rollout.sandbox.config import BackendConfig, Placement
from rollout.sandbox.registry import register
from rollout.types import Host, SandboxError
from sandbox_image.config import TOKEN_ENV, SlotLimits

log = logging.getLogger(__name__)

MAX_TIMEOUT = 24 * 3600  # Modal's longest sandbox lifetime


@register
class ModalConfig(BackendConfig):
    """`backend=modal`: Modal sandboxes, one slot server each (see conf/backend/modal.yaml)."""

    placement: ClassVar[Placement] = "sharded"

    name: Literal["modal"] = "modal"
    sdk: str = "modal"  # the module imported as the SDK (tests: tests.fake_modal)
    app_name: str = Field("rollout-sandboxes", min_length=1)
    # Task image -> registry tag of its Modal image; unmapped images are used as tags.
    images: dict[str, str] = Field(default_factory=dict)
    default_registry_image: str = "python:3.11-slim"  # for tasks without an image
    add_python: str | None = "3.11"
    apt_packages: list[str] = Field(default_factory=lambda: ["bubblewrap", "git"])
    pip_packages: list[str] = Field(default_factory=lambda: ["aiohttp>=3.9", "pydantic>=2.5,<3"])
    cpu: float | None = Field(None, gt=0)
    memory: int | None = Field(None, gt=0)  # MiB
    gpu: str | None = None
    secrets: list[str] = Field(default_factory=list)  # Modal secret names: env of the server
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str = "/root"
    data_dir: str = "/tmp/rollout-slots"
    port: int = Field(8000, ge=1, le=65535)
    timeout: int = Field(7200, ge=1, le=MAX_TIMEOUT)  # sandbox lifetime from creation
    idle_timeout: int | None = Field(None, ge=1)
    lease_reserve: float = Field(2400.0, gt=0, allow_inf_nan=False)  # longest slot lease
    block_network: bool = False
    outbound_cidr_allowlist: list[str] | None = None
    outbound_domain_allowlist: list[str] | None = None
    max_sandboxes: int | None = Field(None, ge=1)  # of this app, whoever created them
    ready_timeout: float = Field(300.0, gt=0, allow_inf_nan=False)  # create -> healthy
    create_retries: int = Field(8, ge=0)
    retry_backoff: float = Field(0.5, gt=0, allow_inf_nan=False)
    retry_backoff_max: float = Field(15.0, gt=0, allow_inf_nan=False)
    # Fleet defaults for Modal: Modal's own creation limit is ~4-5/s per account.
    start_rate: float = Field(4.0, gt=0, allow_inf_nan=False)
    max_starting: int = Field(16, ge=1)
    host_start_timeout: float = Field(600.0, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _lifetime_and_network(self) -> ModalConfig:
        if self.timeout <= self.lease_reserve:
            raise ValueError(
                f"backend.timeout ({self.timeout}s) must exceed backend.lease_reserve "
                f"({self.lease_reserve:g}s): hosts are retired lease_reserve seconds before "
                "their sandbox times out (a few times lease_reserve wastes least)")
        if self.block_network:
            # Modal refuses open ports on such a sandbox ("Cannot specify open ports when
            # `block_network` is enabled", modal/sandbox/_common.py), and the slot server is
            # reached through one: every start would fail. Slots have no network anyway.
            raise ValueError(
                "backend.block_network=true cannot work: Modal refuses open ports on a "
                "sandbox with block_network, and the slot server is reached through its "
                "tunnel port. Slots have no network regardless (each its own loopback-only "
                "namespace); to limit the sandbox's own egress set "
                "backend.outbound_cidr_allowlist or backend.outbound_domain_allowlist")
        return self

    def preflight(self) -> str | None:
        """Before a run: the SDK imports and has credentials (`modal setup`'s
        ~/.modal.toml or MODAL_TOKEN_ID / MODAL_TOKEN_SECRET). One line, or None."""
        try:
            importlib.import_module(self.sdk)
        except ImportError as e:
            return (f"backend=modal needs the {self.sdk} package ({e}); "
                    "pip install 'rollout-cluster[modal]' and run `modal setup`")
        try:
            settings = importlib.import_module(f"{self.sdk}.config").config
        except (ImportError, AttributeError):
            return None  # an SDK without Modal's config module (the tests' fake)
        if not (settings.get("token_id") and settings.get("token_secret")):
            return ("backend=modal has no Modal credentials: run `modal setup` (it writes "
                    "~/.modal.toml) or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET")
        return None

    def check_lease_budget(self, needed: float) -> None:
        if self.lease_reserve < needed:
            raise ValueError(
                f"backend.lease_reserve ({self.lease_reserve:g}s) is shorter than one "
                f"trajectory's worst case ({needed:g}s: agent.wall_clock_budget + "
                "tasks.prepare_timeout + grading with its retry + margin); a sandbox could "
                "time out before scoring. Raise backend.lease_reserve (and backend.timeout) "
                "or lower the budgets")

    def create(self, limits: SlotLimits, run_id: str) -> ModalBackend:
        return ModalBackend(self, limits, run_id)


class _AtCapacity(Exception):
    """The app already runs `max_sandboxes` sandboxes (retried like throttling)."""


# Backends of this process not yet closed, for the atexit / SIGTERM backstop (strong
# references: a backend dropped without close() is exactly what the backstop is for).
_LIVE: set[ModalBackend] = set()
_backstop_installed = False


def _backstop() -> None:
    for backend in list(_LIVE):
        backend.terminate_all_blocking()


def _install_backstop() -> None:
    global _backstop_installed
    if _backstop_installed:
        return
    _backstop_installed = True
    atexit.register(_backstop)
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        _backstop()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    with contextlib.suppress(ValueError):  # not the main thread of the interpreter
        signal.signal(signal.SIGTERM, on_sigterm)


def _split_run_id(run_id: str) -> tuple[str, str]:
    """A sharded pool's run id is `<run>-<shard>` (actors/cluster.py): tag both parts."""
    run, sep, pool = run_id.rpartition("-")
    return (run, pool) if sep and run else (run_id, "0")


class ModalBackend:
    """Implements `rollout.protocols.Backend` over Modal sandboxes."""

    name = "modal"

    def __init__(self, cfg: ModalConfig, limits: SlotLimits, run_id: str) -> None:
        self.cfg = cfg
        self.limits = limits
        try:
            self.sdk = importlib.import_module(cfg.sdk)
        except ImportError as e:
            raise SandboxError(f"backend=modal needs the modal package ({e}); "
                               "pip install 'rollout-cluster[modal]' and run `modal setup`"
                               ) from None
        self.run_tag, self.pool_tag = _split_run_id(run_id)
        self.session = uuid.uuid4().hex[:12]
        self._app: Any = None
        self._app_lock = asyncio.Lock()
        self._images: dict[str, Any] = {}
        self._sandboxes: dict[str, Any] = {}  # created by us and not yet seen terminated
        self._creating: set[asyncio.Task[Any]] = set()
        errors = self.sdk.exception
        self._transient = (errors.ResourceExhaustedError, errors.ServiceError,
                           errors.InternalError, _AtCapacity)
        _LIVE.add(self)
        _install_backstop()

    # --- helpers --------------------------------------------------------------------------

    def tags(self, image: str | None) -> dict[str, str]:
        return {"run_id": self.run_tag, "pool": self.pool_tag, "image": image or "default",
                "session": self.session}

    async def _get_app(self) -> Any:
        async with self._app_lock:
            if self._app is None:
                self._app = await self.sdk.App.lookup.aio(self.cfg.app_name,
                                                         create_if_missing=True)
            return self._app

    def _image(self, image: str | None) -> Any:
        tag = self.cfg.images.get(image or "", image) or self.cfg.default_registry_image
        if tag not in self._images:
            img = self.sdk.Image.from_registry(tag, add_python=self.cfg.add_python)
            if self.cfg.apt_packages:
                img = img.apt_install(*self.cfg.apt_packages)
            if self.cfg.pip_packages:
                img = img.pip_install(*self.cfg.pip_packages)
            self._images[tag] = img.add_local_python_source("sandbox_image")
        return self._images[tag]

    def _entrypoint(self, slots: int) -> list[str]:
        return ["python", "-m", "sandbox_image", "--host", "0.0.0.0",
                "--port", str(self.cfg.port), "--slots", str(slots),
                "--data-dir", self.cfg.data_dir, *self.limits.to_argv(), "--leases", "required"]

    async def _list(self, **tags: str) -> list[Any]:
        app = await self._get_app()
        return [sb async for sb in self.sdk.Sandbox.list.aio(app_id=app.app_id, tags=tags)]

    # --- create ---------------------------------------------------------------------------

    async def _create_once(self, image: str | None, slots: int, token: str) -> Any:
        cfg = self.cfg
        app = await self._get_app()
        if cfg.max_sandboxes is not None and len(await self._list()) >= cfg.max_sandboxes:
            raise _AtCapacity(f"app {cfg.app_name!r} runs max_sandboxes={cfg.max_sandboxes}")
        secrets = [self.sdk.Secret.from_dict({TOKEN_ENV: token}),
                   *(self.sdk.Secret.from_name(n) for n in cfg.secrets)]
        sandbox = await self.sdk.Sandbox.create.aio(
            *self._entrypoint(slots), app=app, tags=self.tags(image), image=self._image(image),
            env=dict(cfg.env) or None, secrets=secrets, timeout=cfg.timeout,
            idle_timeout=cfg.idle_timeout, workdir=cfg.workdir, cpu=cfg.cpu,
            memory=cfg.memory, gpu=cfg.gpu, block_network=cfg.block_network,
            outbound_cidr_allowlist=(list(cfg.outbound_cidr_allowlist)
                                     if cfg.outbound_cidr_allowlist else None),
            outbound_domain_allowlist=(list(cfg.outbound_domain_allowlist)
                                       if cfg.outbound_domain_allowlist else None),
            encrypted_ports=[cfg.port])
        self._sandboxes[sandbox.object_id] = sandbox
        return sandbox

    async def _create(self, image: str | None, slots: int, token: str) -> Any:
        def on_retry(n: int, error: BaseException, wait: float) -> None:
            log.warning("modal sandbox creation throttled (%s); retry %d in %.1fs",
                        error, n, wait)

        return await retrying(self._transient, retries=self.cfg.create_retries,
                              backoff=self.cfg.retry_backoff,
                              backoff_max=self.cfg.retry_backoff_max,
                              on_retry=on_retry)(self._create_once, image, slots, token)

    async def start_host(self, image: str | None, slots: int) -> Host:
        token = _secrets.token_urlsafe(32)
        born = time.time()
        # Shielded: a create the caller abandons still ends, and its sandbox is reaped.
        task = asyncio.ensure_future(self._create(image, slots, token))
        self._creating.add(task)
        task.add_done_callback(self._creating.discard)
        try:
            sandbox = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._reap_abandoned)
            raise
        try:
            url = await self._wait_ready(sandbox, token)
        except BaseException:
            await asyncio.shield(self._terminate(sandbox.object_id))
            raise
        retire_at = born + self.cfg.timeout - self.cfg.lease_reserve
        log.info("started modal sandbox %s for image %r at %s", sandbox.object_id, image, url)
        return Host(host_id=sandbox.object_id, url=url, token=token, image=image, slots=slots,
                    meta={"sandbox_id": sandbox.object_id, "retire_at": retire_at,
                          "expires_at": born + self.cfg.timeout})

    def _reap_abandoned(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is None:
            reap = asyncio.ensure_future(self._terminate(task.result().object_id))
            self._creating.add(reap)  # close() waits for it too
            reap.add_done_callback(self._creating.discard)

    async def _wait_ready(self, sandbox: Any, token: str) -> str:
        """The tunnel's URL once the slot server answers its health check."""
        started = time.monotonic()
        tunnels = await sandbox.tunnels.aio(timeout=int(self.cfg.ready_timeout))
        url = tunnels[self.cfg.port].url
        async with aiohttp.ClientSession() as session:
            client = SlotServerClient(session, url, token)

            async def healthy() -> str:
                try:
                    await client.health(timeout=5)
                    return url
                except Exception as e:  # noqa: BLE001 - not up yet, or gone: look
                    if (code := await sandbox.poll.aio()) is not None:
                        raise SandboxError(
                            f"modal sandbox {sandbox.object_id} exited with code {code} "
                            "before its slot server was ready (see `modal sandbox logs "
                            f"{sandbox.object_id}` or the Modal dashboard)") from e
                    raise NotReady(str(e)) from e

            try:  # ready_timeout counts from the start, the tunnel's wait included
                return await wait_until(
                    healthy, what=f"slot server in modal sandbox {sandbox.object_id}",
                    timeout=max(0.0, self.cfg.ready_timeout - (time.monotonic() - started)),
                    interval=0.25)
            except WaitTimeout as e:
                raise SandboxError(f"slot server in modal sandbox {sandbox.object_id} not "
                                   f"ready within {self.cfg.ready_timeout:g}s: {e.reason}") from e

    # --- stop / liveness ------------------------------------------------------------------

    async def _terminate(self, sandbox_id: str) -> None:
        sandbox = self._sandboxes.get(sandbox_id)
        try:
            if sandbox is None:
                sandbox = await self.sdk.Sandbox.from_id.aio(sandbox_id)
            await asyncio.wait_for(sandbox.terminate.aio(wait=True), 60)
        except self.sdk.exception.NotFoundError:
            pass
        except Exception as e:  # noqa: BLE001 - stop_host never raises; the sweep retries
            log.warning("terminating modal sandbox %s failed: %s", sandbox_id, e)
            return
        self._sandboxes.pop(sandbox_id, None)

    async def stop_host(self, host: Host) -> None:
        if host.host_id in self._sandboxes:
            await asyncio.shield(self._terminate(host.host_id))

    async def hosts_alive(self, hosts: list[Host]) -> set[str]:
        if not hosts:
            return set()
        try:
            running = {sb.object_id for sb in await self._list(run_id=self.run_tag,
                                                               pool=self.pool_tag)}
        except Exception as e:  # noqa: BLE001 - a flaky control plane is not a dead host
            log.warning("modal Sandbox.list failed (%s); relying on health checks", e)
            return {h.host_id for h in hosts if h.host_id in self._sandboxes}
        return {h.host_id for h in hosts if h.host_id in running}

    async def discover(self) -> list[Host]:
        """Terminate this run's and pool's sandboxes left by an earlier driver; adopt none."""
        # One list call; what this session created is known without reading its tags.
        stale = [sb for sb in await self._list(run_id=self.run_tag, pool=self.pool_tag)
                 if sb.object_id not in self._sandboxes]
        if stale:
            log.warning("run %s pool %s: terminating %d modal sandbox(es) left by an earlier "
                        "driver of this run", self.run_tag, self.pool_tag, len(stale))
            await asyncio.gather(*(self._terminate_found(sb) for sb in stale))
        return []

    async def _terminate_found(self, sandbox: Any) -> None:
        self._sandboxes.setdefault(sandbox.object_id, sandbox)
        await self._terminate(sandbox.object_id)

    async def close(self) -> None:
        await asyncio.gather(*self._creating, return_exceptions=True)
        _LIVE.discard(self)
        await asyncio.gather(*(self._terminate(s) for s in list(self._sandboxes)))
        if self._app is not None:  # the sweep: anything of this session a reply lost
            with contextlib.suppress(Exception):
                leftovers = await self._list(run_id=self.run_tag, pool=self.pool_tag,
                                             session=self.session)
                await asyncio.gather(*(self._terminate_found(sb) for sb in leftovers))

    def terminate_all_blocking(self) -> None:
        """The backstop (atexit / SIGTERM): blocking SDK calls, no event loop needed."""
        for sandbox_id in list(self._sandboxes):
            with contextlib.suppress(Exception):
                self.sdk.Sandbox.from_id(sandbox_id).terminate()
            self._sandboxes.pop(sandbox_id, None)
