"""How to reach and authenticate to FirecREST: the `Credentials` read from the environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ci_runner.errors import UsageError


@dataclass(frozen=True)
class Credentials:
    """How to reach and authenticate to FirecREST (names of pyfirecrest's CLI)."""

    url: str
    token_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    api_key_header: str = "X-API-Key"
    system: str | None = None

    def secrets(self) -> tuple[str, ...]:
        """The values that must never be shown (to mask them in CI logs)."""
        return tuple(value for value in (self.client_secret, self.api_key) if value)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Credentials:
        """Read FIRECREST_URL plus either AUTH_TOKEN_URL/FIRECREST_CLIENT_ID/FIRECREST_CLIENT_SECRET or
        FIRECREST_API_KEY (+ FIRECREST_API_KEY_HEADER); FIRECREST_SYSTEM optional. UsageError names
        every missing variable (never a value)."""
        def get(name: str) -> str | None:
            value = environ.get(name, "").strip()
            return value or None

        url = get("FIRECREST_URL")
        api_key = get("FIRECREST_API_KEY")
        oidc = ["AUTH_TOKEN_URL", "FIRECREST_CLIENT_ID", "FIRECREST_CLIENT_SECRET"]
        missing = [] if url else ["FIRECREST_URL"]
        if api_key is None:
            missing += [name for name in oidc if get(name) is None]
        if missing:
            how = "" if api_key else " (or FIRECREST_API_KEY instead of the client credentials)"
            raise UsageError(f"missing environment variable(s) for FirecREST: {', '.join(missing)}{how}")
        assert url is not None
        return cls(
            url=url,
            token_url=get("AUTH_TOKEN_URL"),
            client_id=get("FIRECREST_CLIENT_ID"),
            client_secret=get("FIRECREST_CLIENT_SECRET"),
            api_key=api_key,
            api_key_header=get("FIRECREST_API_KEY_HEADER") or "X-API-Key",
            system=get("FIRECREST_SYSTEM"),
        )
