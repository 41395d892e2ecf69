"""A local FirecREST v2-compatible server (plus OAuth2 token endpoint) for trying and testing ci-runner.

Its server stack is the `sandbox` extra (`pip install 'ci-runner[sandbox]'`); a CI install of ci-runner
does not have it, so the commands import the server through `server_module()`, which says how to get it.
"""

from __future__ import annotations

from types import ModuleType

from ci_runner.errors import UsageError

# Top-level import names of the `sandbox` extra (python-multipart is `python_multipart`, formerly `multipart`).
EXTRA_MODULES = frozenset({"starlette", "uvicorn", "python_multipart", "multipart", "jwt"})
INSTALL_HINT = "pip install 'ci-runner[sandbox]' (in a checkout of ci-runner: pip install '.[sandbox]')"


def server_module() -> ModuleType:
    """`ci_runner.sandbox.server`; UsageError naming the extra when one of its packages is missing."""
    try:
        from ci_runner.sandbox import server
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in EXTRA_MODULES:
            raise
        raise UsageError(f"the sandbox needs the `sandbox` extra ({error.name} is not installed): "
                         f"{INSTALL_HINT}") from None
    return server
