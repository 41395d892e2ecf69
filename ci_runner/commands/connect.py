"""Opening the cluster for a command, and the run's first contact with FirecREST (which fails fast,
naming every setting involved, while nothing has been submitted yet)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Mapping

from ci_runner.errors import InfraError, UsageError

if TYPE_CHECKING:
    from ci_runner.api import SystemInfo
    from ci_runner.cluster import Cluster, RetryPolicy

PRE_SUBMIT_RETRY_LIMIT = 15.0  # seconds: before the first submit a wrong URL or credential fails fast
ONE_SHOT_REQUESTS_PER_MINUTE = 60  # `cancel`, `systems`: a few requests, once


async def first_contact(cluster: Cluster, *, pre_submit: bool = True) -> SystemInfo:
    """The system's entry in /status/systems: the run's first request, and its check of the settings.

    `pre_submit`: nothing has been submitted yet, so there is nothing to lose by failing fast: the
    request (token included) is retried for at most PRE_SUBMIT_RETRY_LIMIT seconds instead of
    `api_retry_limit` (meant for a FirecREST restart in the middle of a run), and a failure says what
    was tried and which setting to check. The cluster's own policy is back in force afterwards.
    """
    configured = cluster.retry
    if pre_submit:
        cluster.retry = pre_submit_policy(configured)
    try:
        return await cluster.system_info()
    except (UsageError, InfraError) as error:
        raise type(error)(f"{error}\nNothing was submitted (before the first submit a request is retried for at "
                          f"most {PRE_SUBMIT_RETRY_LIMIT:g} s). {settings_hint(cluster)}") from None
    finally:
        cluster.retry = configured


def pre_submit_policy(configured: RetryPolicy) -> RetryPolicy:
    """`configured`, bounded to PRE_SUBMIT_RETRY_LIMIT seconds (a shorter configured limit stays)."""
    return dataclasses.replace(configured, max_total=min(configured.max_total, PRE_SUBMIT_RETRY_LIMIT),
                               limit_name="the limit before the first submit")


def settings_hint(cluster: Cluster) -> str:
    """What to check when FirecREST cannot be used at all: every setting involved, with its value
    (never a secret's)."""
    credentials = cluster.credentials
    if credentials.api_key:
        login = f"FIRECREST_API_KEY (and FIRECREST_API_KEY_HEADER, now {credentials.api_key_header!r})"
    else:
        login = (f"AUTH_TOKEN_URL (now {credentials.token_url!r}), FIRECREST_CLIENT_ID (now "
                 f"{credentials.client_id!r}) and FIRECREST_CLIENT_SECRET (the client's secret)")
    return (f"Check FIRECREST_URL (now {credentials.url!r}: the site's FirecREST v2 base URL, reachable from "
            f"this runner), {login}, and the system name (now {cluster.system!r}: --system, the config's "
            "`system` or FIRECREST_SYSTEM; `ci-runner systems` lists them). See Troubleshooting in the README.")


def site_workdir(info: SystemInfo) -> str:
    """`ci-runner/` under the system's default work dir (when the config sets no `workdir`)."""
    if info.default_workdir is None:
        raise InfraError(f"system {info.name!r} lists no file systems: set `workdir` in the config")
    return f"{info.default_workdir.rstrip('/')}/ci-runner"


def open_cluster(environ: Mapping[str, str], system: str | None, requests_per_minute: int,
                 on_secret: Callable[[str], None] | None = None, retry_limit: float | None = None) -> Cluster:
    """A Cluster from the FIRECREST_* environment (UsageError naming what is missing); `on_secret`
    learns every access token as it is fetched (to mask it); `retry_limit`: seconds one request is
    retried (default: RetryPolicy's)."""
    from ci_runner.budget import RequestBudget
    from ci_runner.cluster import Cluster, RetryPolicy
    from ci_runner.credentials import Credentials

    retry = RetryPolicy() if retry_limit is None else RetryPolicy(max_total=retry_limit)
    return Cluster(Credentials.from_env(environ), system or None, budget=RequestBudget(requests_per_minute),
                   retry=retry, on_secret=on_secret)
