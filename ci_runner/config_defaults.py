"""The configuration's defaults as data: the value a key takes when `.ci-runner.yml` leaves it out.

One definition each: `Config`, `MatrixSpec`, `run_context.RunOptions`, `budget` and `cluster` take them
from here. `schema.json` states the same defaults for the README reference, in the file's own
notation (`"2m"`, `"256MiB"`); tests/unit/test_config_defaults.py fails when the two disagree.
"""

from __future__ import annotations

from typing import Literal

CONFIG_FILE = ".ci-runner.yml"  # the configuration file `--config` defaults to
DEFAULT_CHECKOUT: Literal["clone", "upload", "none"] = "clone"
DEFAULT_MAX_ENTRIES = 256  # matrix.max_entries
DEFAULT_REQUESTS_PER_MINUTE = 10  # the smallest site quota we know of
DEFAULT_API_RETRY_LIMIT = 120.0  # seconds: rides out a FirecREST restart or a short outage
DEFAULT_RESUBMIT = 0
DEFAULT_CLEANUP = False
DEFAULT_JOB_ARRAYS = True
DEFAULT_PACK = False
DEFAULT_MAX_OUTPUT = 256 * 1024 * 1024  # bytes of an entry's output printed before skipping to its tail
DEFAULT_MAX_ARTIFACT_SIZE = 256 * 1024 * 1024  # artifacts (and JUnit files) larger than this are not fetched
