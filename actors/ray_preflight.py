"""Preflight for a Ray cluster to join (`ray.address` / `RAY_ADDRESS`), before `ray.init`.

Without it a dead address costs ray.init's 20-40 s of retries, and a cluster with token auth
that does not accept this process (no `RAY_AUTH_MODE=token`, or another token) a 20 s wait and
a bare ConnectionError. Here each is one `PreflightError` line naming what to change.
"""

from __future__ import annotations

import os
import sys
import threading

from rollout.retry import probe_tcp
from rollout.settings.preflight import PreflightError

# A GCS that answers takes well under a second; one that does not would cost ray.init's 20-40 s
# of retries.
GCS_PROBE_TIMEOUT = 8.0


def check_ray_address(address: str | None, key: str = "ray.address") -> None:
    """A cluster to join must be there, and must accept this process: without the cluster's
    token (`RAY_AUTH_MODE=token`) `ray.init` retries for 20 s and fails with a bare
    ConnectionError."""
    if not address or address == "local":
        return
    auto = address == "auto"
    if auto:
        from ray._private.services import find_bootstrap_address

        found = find_bootstrap_address(None)
        if not found:
            raise PreflightError(f"{key}=auto, but no Ray cluster runs on this machine: start "
                                 f"one (`ray start --head`) or set {key} to the head's "
                                 "address (host:6379)")
        address = found
    client = address.startswith("ray://")
    hostport = address.removeprefix("ray://").rstrip("/")
    host, sep, port_text = hostport.rpartition(":")
    if not sep or not port_text.isdigit():
        raise PreflightError(f"{key}={address} is not an address of a Ray head: use host:port "
                             "(the head's --port, 6379 by default), ray://host:10001 or auto")
    problem = probe_tcp(host.strip("[]"), int(port_text))
    if problem:
        raise PreflightError(f"the Ray cluster at {key}={address} is not reachable ({problem}); "
                             f"start it (`ray start --head`) or fix {key}")
    # `auto` turns token auth on by itself when a token is at hand (Ray's rule), so only an
    # explicit address is asked whether it accepts this process as it is configured.
    if not client and not auto:
        _check_gcs_accepts_us(hostport, address, key)


def _check_gcs_accepts_us(hostport: str, address: str, key: str) -> None:
    """Ask the cluster's GCS for its id: refused credentials are an AuthenticationError at
    once. Ray's C++ client logs each refusal on stderr; that is muted, the error says it."""
    outcome: dict[str, BaseException | None] = {}

    def ask() -> None:
        try:
            from ray._raylet import GcsClient

            GcsClient(address=hostport)
            outcome["error"] = None
        except BaseException as e:  # reported by the caller
            outcome["error"] = e

    with _stderr_muted():
        # A thread: a port that accepts but is not a GCS would hold the client for 40 s.
        asker = threading.Thread(target=ask, name="ray-address-preflight", daemon=True)
        asker.start()
        asker.join(GCS_PROBE_TIMEOUT)
    if "error" not in outcome:
        raise PreflightError(f"something listens at {key}={address}, but no Ray GCS answered "
                             f"within {GCS_PROBE_TIMEOUT:g}s; use the head's --port "
                             "(6379 by default)")
    error = outcome["error"]
    if error is None:
        return
    from ray.exceptions import AuthenticationError

    if isinstance(error, AuthenticationError):
        raise PreflightError(
            f"the Ray cluster at {key}={address} uses token auth and refused this process: "
            "export RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, or the file "
            "~/.ray/auth_token; `ray get-auth-token` on the head prints it)")
    why = (str(error).splitlines() or [type(error).__name__])[0]
    raise PreflightError(f"the Ray cluster at {key}={address} did not answer ({why}); "
                         f"check that {key} names the head's GCS port")


class _stderr_muted:
    """Redirect file descriptor 2 to /dev/null for a block (C++ logs go straight to it)."""

    def __enter__(self) -> None:
        sys.stderr.flush()
        self._saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc: object) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
