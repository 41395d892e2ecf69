"""OAuth2 client-credentials tokens (HS256 JWTs) and their validation, as the real FirecREST checks them.

The token endpoint answers like Keycloak (`access_token, expires_in, refresh_expires_in, token_type,
not-before-policy, scope`). API calls are checked like FirecREST's OIDC auth: missing bearer → 401
"Not authenticated"; bad signature or garbage → "Access token is invalid."; expired → "Access token
expired"; fewer than `min_token_ttl` seconds left → "Access token expires too soon (less than 30s
remaining).". Optionally a static API key in `X-API-Key` authenticates too (pyfirecrest `ApiKeyAuth`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import jwt

ALGORITHM = "HS256"
API_KEY_HEADER = "x-api-key"
SCOPE = "firecrest-v2 profile"


class AuthError(Exception):
    """401 (or 400 on the token endpoint); `message` is the FirecREST/OAuth2 text."""

    def __init__(self, status: int, message: str, oauth_error: str = "invalid_client") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.oauth_error = oauth_error


@dataclass(frozen=True)
class Principal:
    """Who made an API call: the OAuth2 client id (or "api-key") and the Unix user the sandbox runs as."""

    client: str
    username: str


@dataclass(frozen=True)
class TokenAuthority:
    """Issues and checks the sandbox's tokens. `key` signs them; it lives only as long as the server."""

    client_id: str
    client_secret: str
    username: str
    token_ttl: float = 300.0
    min_token_ttl: float = 30.0
    api_key: str | None = None
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def issue(self, form: Mapping[str, str], authorization: str | None, ttl: float | None = None,
              now: float | None = None) -> dict[str, object]:
        """The token response for a client-credentials request (form fields + optional Basic header)."""
        if form.get("grant_type") != "client_credentials":
            raise AuthError(400, f"Unsupported grant_type: {form.get('grant_type')!r}", "unsupported_grant_type")
        client_id, secret = _client_credentials(form, authorization)
        if not (hmac.compare_digest(client_id, self.client_id) and hmac.compare_digest(secret, self.client_secret)):
            raise AuthError(401, "Invalid client or Invalid client credentials", "unauthorized_client")
        issued = time.time() if now is None else now
        lifetime = self.token_ttl if ttl is None else ttl
        claims = {
            "iat": int(issued),
            "exp": int(issued + lifetime),
            "jti": secrets.token_hex(8),
            "azp": client_id,
            "clientId": client_id,
            "preferred_username": self.username,
            "scope": SCOPE,
        }
        token = jwt.encode(claims, self.key, algorithm=ALGORITHM)
        return {
            "access_token": token,
            "expires_in": int(lifetime),
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": SCOPE,
        }

    def authenticate(self, headers: Mapping[str, str], now: float | None = None) -> Principal:
        """Check an API call's headers (lower-case keys); raise `AuthError(401, ...)` like FirecREST."""
        if self.api_key is not None and API_KEY_HEADER in headers:
            if hmac.compare_digest(headers[API_KEY_HEADER], self.api_key):
                return Principal("api-key", self.username)
            raise AuthError(401, "API key is invalid.")
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "Not authenticated")
        try:
            claims = jwt.decode(token.strip(), self.key, algorithms=[ALGORITHM], options={"require": ["exp"]})
        except jwt.ExpiredSignatureError as exc:
            raise AuthError(401, "Access token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError(401, "Access token is invalid.") from exc
        left = claims["exp"] - (time.time() if now is None else now)
        if left < self.min_token_ttl:
            raise AuthError(401, f"Access token expires too soon (less than {self.min_token_ttl:g}s remaining).")
        return Principal(str(claims.get("clientId", "?")), str(claims.get("preferred_username", self.username)))

    def identify(self, headers: Mapping[str, str], fallback: str) -> str:
        """Best-effort client name for quotas and the request log; never raises."""
        if self.api_key is not None and API_KEY_HEADER in headers:
            return "api-key"
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            try:
                claims = jwt.decode(token.strip(), self.key, algorithms=[ALGORITHM], options={"verify_exp": False})
                return str(claims.get("clientId", fallback))
            except jwt.InvalidTokenError:
                return fallback
        return fallback


def _client_credentials(form: Mapping[str, str], authorization: str | None) -> tuple[str, str]:
    """client_secret_basic (HTTP Basic header) or client_secret_post (form fields)."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise AuthError(401, "Invalid client or Invalid client credentials", "invalid_client") from exc
        client_id, _, secret = decoded.partition(":")
        return client_id, secret
    client_id, secret = form.get("client_id"), form.get("client_secret")
    if not client_id or secret is None:
        raise AuthError(401, "Invalid client or Invalid client credentials", "invalid_client")
    return client_id, secret
