"""The few Nomad HTTP API calls of the `nomad` backend (rollout/sandbox/nomad.py).

Adds the ACL token header (X-Nomad-Token) and the namespace and region query parameters;
error bodies are Nomad's plain text. Transient failures (no answer, timeouts, 5xx, 429, and
`400 job scaling blocked due to active deployment`) are retried with capped exponential
backoff. An atexit backstop purges the jobs this process registered and never closed.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

import aiohttp

from rollout.retry import retrying
from rollout.types import SandboxError

if TYPE_CHECKING:
    from rollout.sandbox.nomad_config import NomadSettings as NomadConfig

log = logging.getLogger(__name__)


def capability(method: str, path: str) -> str | None:
    """The namespace ACL capability Nomad checks for one of the backend's calls (None: the
    call needs no capability). From nomad/*_endpoint.go: registering and deregistering
    (purging) a job is submit-job, reading jobs, evaluations and allocations read-job, the
    job list list-jobs, stopping an allocation alloc-lifecycle, task logs read-logs."""
    if path.startswith("/v1/status/") or path.startswith("/v1/agent/"):
        return None
    if path.startswith("/v1/client/fs/logs/"):
        return "read-logs"
    if path.startswith("/v1/allocation/") and path.endswith("/stop"):
        return "alloc-lifecycle"
    if path.endswith("/scale") and method != "GET":
        return "scale-job"
    if path == "/v1/jobs" and method == "GET":
        return "list-jobs"
    return "submit-job" if method in ("POST", "PUT", "DELETE") else "read-job"


class NomadAPIError(SandboxError):
    """Nomad answered with an error (its body is plain text). A 403 names what the token
    lacks: the capability of that call, or the token itself."""

    def __init__(self, method: str, path: str, status: int, body: str,
                 namespace: str = "default") -> None:
        hint = ""
        if status == 403:
            if "token not found" in body.lower():
                hint = (" (Nomad does not know the ACL token: set NOMAD_TOKEN or backend.token "
                        "to a valid token's secret)")
            else:
                cap = capability(method, path)
                hint = (f" (token lacks {cap}: the ACL token in NOMAD_TOKEN / backend.token "
                        f"needs the {cap} capability in namespace {namespace!r}; the "
                        "backend needs submit-job, read-job, list-jobs and read-logs)")
        super().__init__(f"Nomad {method} {path}: HTTP {status}: {body.strip()[:300]}{hint}")
        self.status = status
        self.body = body


class NomadUnavailable(SandboxError):
    """The Nomad API did not answer (outage, timeout, 5xx) within the retry window."""


def _transient(status: int, body: str) -> bool:
    return status >= 500 or status == 429 or (
        status == 400 and "active deployment" in body)


def _retryable(e: BaseException) -> bool:
    """An outage, a timeout, a 5xx or 429: worth another try."""
    if isinstance(e, NomadAPIError):
        return _transient(e.status, e.body)
    return isinstance(e, (aiohttp.ClientError, asyncio.TimeoutError, OSError))


def _why(e: BaseException) -> str:
    return str(e) if isinstance(e, NomadAPIError) else f"{type(e).__name__}: {e}"


class NomadAPI:
    """The few HTTP calls the backend makes. Adds the token header and the namespace and
    region query parameters; retries transient failures with capped exponential backoff."""

    def __init__(self, cfg: NomadConfig) -> None:
        self.cfg = cfg
        self.base = cfg.address.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        cfg = self.cfg
        if not self.base.startswith("https://"):
            return True
        ctx = ssl.create_default_context(cafile=cfg.ca_cert)
        if cfg.client_cert and cfg.client_key:
            ctx.load_cert_chain(cfg.client_cert, cfg.client_key)
        if cfg.tls_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"X-Nomad-Token": self.cfg.token} if self.cfg.token else {}
            self._session = aiohttp.ClientSession(
                headers=headers, connector=aiohttp.TCPConnector(ssl=self._ssl(), limit=32))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def once(self, method: str, path: str, *, params: dict[str, str] | None = None,
                   body: Any = None, timeout: float | None = None,
                   raw: bool = False) -> tuple[Any, int]:
        """One request: (decoded JSON, or the text with `raw`; X-Nomad-Index). Raises
        NomadAPIError for an error status, aiohttp/timeout errors for no answer."""
        query = {"namespace": self.cfg.namespace, **(params or {})}
        if self.cfg.region:
            query["region"] = self.cfg.region
        kwargs: dict[str, Any] = {}
        if self.cfg.tls_server_name and self.base.startswith("https://"):
            kwargs["server_hostname"] = self.cfg.tls_server_name
        async with self.session().request(
                method, self.base + path, params=query, json=body,
                timeout=aiohttp.ClientTimeout(total=timeout or self.cfg.request_timeout),
                **kwargs) as r:
            text = await r.text()
            if r.status >= 400:
                raise NomadAPIError(method, path, r.status, text, self.cfg.namespace)
            index = int(r.headers.get("X-Nomad-Index", "0") or 0)
            if raw:
                return text, index
            return (await r.json(content_type=None) if text else None), index

    async def call(self, method: str, path: str, *, params: dict[str, str] | None = None,
                   body: Any = None, window: float | None = None) -> Any:
        """`once`, retrying transient failures; with `window`, for at most that many seconds
        (then NomadUnavailable), else until cancelled."""
        def on_retry(n: int, e: BaseException, wait: float) -> None:
            log.warning("Nomad %s %s failed (%s); retrying in %.1fs", method, path, _why(e), wait)

        try:
            return (await retrying(_retryable, retries=None, window=window, backoff=0.2,
                                   backoff_max=5.0, on_retry=on_retry)(
                self.once, method, path, params=params, body=body))[0]
        except Exception as e:
            if window is not None and _retryable(e):  # retried for the whole window
                raise NomadUnavailable(f"Nomad API at {self.base} unavailable for "
                                       f"{window:g}s ({method} {path}): {_why(e)}") from e
            raise


def probe(cfg: NomadConfig, timeout: float = 5.0) -> str | None:
    """Before a run: None if the Nomad API at `cfg.address` answers and accepts the token
    for listing jobs, else one line naming the key to change. Blocking (stdlib only)."""
    api = NomadAPI(cfg)
    query = urllib.parse.urlencode({"prefix": cfg.job_prefix, "namespace": cfg.namespace,
                                    **({"region": cfg.region} if cfg.region else {})})
    req = urllib.request.Request(f"{api.base}/v1/jobs?{query}",
                                 headers={"X-Nomad-Token": cfg.token or ""})
    try:
        ctx = api._ssl()
        with urllib.request.urlopen(  # noqa: S310 - the configured Nomad
                req, timeout=timeout, context=ctx if isinstance(ctx, ssl.SSLContext) else None):
            return None
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace").strip()[:200]
        if e.code == 403:
            what = ("does not know the token" if "not found" in body.lower()
                    else "refused the token (it needs list-jobs, submit-job, read-job and "
                    "read-logs in the namespace)")
            return (f"Nomad at backend.address={cfg.address} {what}: set backend.token (or "
                    f"NOMAD_TOKEN), namespace {cfg.namespace!r}")
        return (f"Nomad at backend.address={cfg.address} answered GET /v1/jobs with HTTP "
                f"{e.code} ({body}); check backend.address / backend.namespace / region")
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused: nothing listens there"
        elif isinstance(reason, (TimeoutError, socket.timeout)):
            why = f"no answer within {timeout:g}s"
        else:
            why = str(reason)
        return (f"the Nomad API at backend.address={cfg.address} is not reachable ({why}); "
                "start Nomad or set backend.address (or NOMAD_ADDR)")


# job id -> the API of every job this process registered and has not purged: the
# atexit backstop purges them if the process exits without `close()`.
_OPEN_JOBS: dict[str, NomadAPI] = {}


@atexit.register
def _purge_open_jobs() -> None:
    for job_id, api in list(_OPEN_JOBS.items()):
        query = urllib.parse.urlencode({"purge": "true", "namespace": api.cfg.namespace,
                                        **({"region": api.cfg.region} if api.cfg.region
                                           else {})})
        req = urllib.request.Request(f"{api.base}/v1/job/{job_id}?{query}", method="DELETE",
                                     headers={"X-Nomad-Token": api.cfg.token or ""})
        ctx = api._ssl()
        try:
            urllib.request.urlopen(req, timeout=10,  # noqa: S310 - the configured Nomad
                                   context=ctx if isinstance(ctx, ssl.SSLContext) else None)
        except Exception as e:  # noqa: BLE001 - a backstop: log and go on
            log.warning("atexit: could not purge Nomad job %s: %s", job_id, e)
        _OPEN_JOBS.pop(job_id, None)
