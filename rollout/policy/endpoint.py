"""`EndpointPolicy`: the base of every client that talks to a model server over HTTP."""

from __future__ import annotations

from typing import Any

from rollout.policy.conversation import TokenPolicy
from rollout.policy.http import PooledHTTP


class EndpointPolicy(TokenPolicy):
    """A TokenPolicy with one pooled HTTP session to `cfg.base_url`, closed by `close()`."""

    def __init__(self, cfg: Any, renderer: Any) -> None:
        super().__init__(cfg, renderer)
        self.http = PooledHTTP(
            cfg.base_url,
            api_key_env=cfg.api_key_env,
            max_connections=cfg.max_connections,
            max_retries=cfg.max_retries,
            request_timeout=cfg.request_timeout,
        )

    async def close(self) -> None:
        await self.http.close()
