"""Token endpoint and token checks, as a FirecREST v2 deployment with Keycloak behaves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import firecrest as fc
import httpx
import jwt
import pytest
from helpers.firecrest_clients import StaticToken, auth_for, raw_client, running_sandbox, sync_client
from helpers.waiting import wait_until

from ci_runner.sandbox.server import Sandbox


def start(tmp_path: Path, **options: object) -> Iterator[Sandbox]:
    yield from running_sandbox(tmp_path, "local", **options)


@pytest.fixture
def sb(tmp_path: Path) -> Iterator[Sandbox]:
    yield from start(tmp_path, api_key="k3y")


def token(sb: Sandbox, **extra: str) -> httpx.Response:
    data = {"grant_type": "client_credentials", "client_id": sb.client_id, "client_secret": sb.client_secret, **extra}
    return httpx.post(sb.token_url, data=data, timeout=30)


def rejection(sb: Sandbox, authorization: object) -> tuple[int, dict]:
    with pytest.raises(fc.UnexpectedStatusException) as error:
        sync_client(sb, authorization).systems()
    response = error.value.responses[-1]
    return response.status_code, response.json()


def test_token_response_shape_and_client_auth_methods(sb: Sandbox) -> None:
    answer = token(sb)
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"access_token", "expires_in", "token_type", "scope", "refresh_expires_in", "not-before-policy"}
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 300)

    for method in ("client_secret_post", "client_secret_basic"):
        assert sync_client(sb, auth_for(sb, client_auth_method=method)).systems()[0]["name"] == sb.system

    assert token(sb, client_secret="wrong").status_code == 401
    assert token(sb, grant_type="password").status_code == 400
    with pytest.raises(fc.ClientsCredentialsException):
        fc.ClientCredentialsAuth(sb.client_id, "wrong", sb.token_url).get_access_token()


def test_missing_invalid_and_forged_tokens_are_401(sb: Sandbox) -> None:
    with raw_client(sb) as raw:
        missing = raw.get(f"/compute/{sb.system}/jobs/1")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json() == {"errorType": "error", "message": "Not authenticated", "causedBy": None, "data": None,
                              "user": None}
    assert rejection(sb, StaticToken("garbage")) == (401, {
        "errorType": "error", "message": "Access token is invalid.", "causedBy": None, "data": None, "user": None})
    forged = jwt.encode({"exp": 2**31, "clientId": sb.client_id}, "not-the-key" * 4, algorithm="HS256")
    assert rejection(sb, StaticToken(forged))[1]["message"] == "Access token is invalid."


def test_token_with_less_than_30_s_left_is_refused(tmp_path: Path) -> None:
    for sb in start(tmp_path, token_ttl=20):
        code, body = rejection(sb, auth_for(sb))
        assert (code, body["message"]) == (401, "Access token expires too soon (less than 30s remaining).")


def test_expired_token_is_refused(tmp_path: Path) -> None:
    for sb in start(tmp_path, token_ttl=1, min_token_ttl=0):
        stale = StaticToken(token(sb).json()["access_token"])

        def refused() -> str | None:
            try:
                sync_client(sb, stale).systems()
                return None
            except fc.UnexpectedStatusException as error:
                return error.responses[-1].json()["message"]

        assert wait_until(refused, 10, "the token to expire", 0.2) == "Access token expired"


def test_client_refreshes_before_expiry_and_keeps_working(tmp_path: Path) -> None:
    """TTL 61 s with min_token_validity=60: pyfirecrest fetches a new token after ~1 s, each one accepted."""
    for sb in start(tmp_path, token_ttl=61):
        client = sync_client(sb)

        def refreshed() -> bool:
            assert client.systems()[0]["name"] == sb.system
            return sb.request_log.count("POST", "/auth/token") >= 2

        wait_until(refreshed, 15, "a second token request", 0.2)
        assert {r.status for r in sb.request_log.records} == {200}


def test_api_key_header(sb: Sandbox) -> None:
    assert sync_client(sb, fc.ApiKeyAuth("k3y")).systems()[0]["name"] == sb.system
    code, body = rejection(sb, fc.ApiKeyAuth("nope"))
    assert (code, body["message"]) == (401, "API key is invalid.")


def test_api_key_is_off_unless_configured(tmp_path: Path) -> None:
    for sb in start(tmp_path):
        assert rejection(sb, fc.ApiKeyAuth("k3y"))[1]["message"] == "Not authenticated"
